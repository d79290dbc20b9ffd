"""Text normalisation, sentence splitting and chunking shared by every TTS backend."""

from __future__ import annotations

import numpy as np
import pytest

from models.errors import InputError
from models.frames import PhonemeTiming
from models.tts.nemo import durations_to_timings, parse_voice
from models.tts.phonemes import (
    MAX_TEXT_CHARS,
    SILENCE,
    chunk_audio,
    clean_phoneme,
    merge_pauses,
    normalize_text,
    split_sentences,
    token_to_ipa,
)
from models.tts.piper import alignments_to_timings

pytestmark = pytest.mark.unit


def test_normalize_strips_markdown_controls_and_whitespace() -> None:
    raw = "# Hours\n\n**Open** daily,\t[see the site](http://x.example)\x00\u200b!\n> quoted"
    assert normalize_text(raw) == "Hours Open daily, see the site! quoted"


@pytest.mark.parametrize(
    "bad", ["", "   \n\t", "...!?", "\x00\x01\x02", "** ## __", "\ud800\udfff", "🙂🙂"]
)
def test_normalize_rejects_text_with_nothing_to_speak(bad: str) -> None:
    with pytest.raises(InputError, match="nothing to speak"):
        normalize_text(bad)


def test_normalize_rejects_over_long_text_and_non_strings() -> None:
    normalize_text("a" * MAX_TEXT_CHARS)
    with pytest.raises(InputError, match="limit is 5000"):
        normalize_text("a" * (MAX_TEXT_CHARS + 1))
    with pytest.raises(InputError, match="string"):
        normalize_text(b"hello")  # type: ignore[arg-type]


def test_split_sentences_keeps_abbreviations_and_decimals() -> None:
    text = "Dr. Smith is in at 9.30 today. Is that fine? Yes! Call e.g. the desk... Thanks"
    assert split_sentences(text) == [
        "Dr. Smith is in at 9.30 today.", "Is that fine?", "Yes!", "Call e.g. the desk...",
        "Thanks",
    ]
    assert split_sentences("One sentence without end") == ["One sentence without end"]


def test_phoneme_names_are_plain_ipa() -> None:
    assert clean_phoneme("ˈoʊ") == "oʊ"
    assert clean_phoneme("") == SILENCE
    assert token_to_ipa("AH0") == "ʌ"
    assert token_to_ipa("HH") == "h"
    assert token_to_ipa(" ") == SILENCE
    assert token_to_ipa(",") == SILENCE
    assert token_to_ipa("<pad>") == SILENCE
    assert token_to_ipa("ˈæ") == "æ"


def test_merge_pauses_joins_silences_and_drops_empty() -> None:
    merged = merge_pauses([
        PhonemeTiming("h", 0, 10), PhonemeTiming("_", 10, 5), PhonemeTiming("_", 15, 5),
        PhonemeTiming("x", 20, 0), PhonemeTiming("i", 20, 30),
    ])
    assert merged == [PhonemeTiming("h", 0, 10), PhonemeTiming("_", 10, 10),
                      PhonemeTiming("i", 20, 30)]


def test_chunk_audio_respects_size_and_places_phonemes_in_their_chunk() -> None:
    pcm = np.arange(1000, dtype=np.int16)
    phonemes = [PhonemeTiming("a", 600.0, 10), PhonemeTiming("b", 750.0, 10),
                PhonemeTiming("c", 1499.0, 1)]
    chunks = list(chunk_audio(pcm, 1000, 500.0, phonemes, 200))
    assert [len(c.pcm) for c in chunks] == [200, 200, 200, 200, 200]
    assert [c.offset_ms for c in chunks] == [500.0, 700.0, 900.0, 1100.0, 1300.0]
    assert np.array_equal(np.concatenate([c.pcm for c in chunks]), pcm)
    assert [[p.phoneme for p in c.phonemes] for c in chunks] == [["a"], ["b"], [], [], ["c"]]


def test_piper_alignments_merge_stress_and_length_marks() -> None:
    aligned = [("^", 100), ("h", 50), ("ˈ", 20), ("ɜ", 30), ("ː", 40), (" ", 10), (".", 10),
               ("$", 10)]
    timings = alignments_to_timings(aligned, 1000, offset_samples=1000)
    assert [t.phoneme for t in timings] == ["_", "h", "ɜː", "_"]
    assert timings[0].start_ms == 1000.0
    assert timings[2].start_ms == 1150.0  # the stress mark's samples open the vowel
    assert timings[2].duration_ms == 90.0
    assert timings[-1].start_ms + timings[-1].duration_ms == 1270.0


def test_nemo_durations_become_timings() -> None:
    timings = durations_to_timings([" ", "HH", "AH0", "L", "OW1", "."], [2, 3, 1, 4, 6, 2],
                                   256.0, 22050)
    assert [t.phoneme for t in timings] == ["_", "h", "ʌ", "l", "oʊ", "_"]
    ends = [t.start_ms + t.duration_ms for t in timings]
    assert ends[-1] == pytest.approx(1000 * 18 * 256 / 22050)
    assert parse_voice(None) == ("tts_en_fastpitch", "tts_en_hifigan")
    assert parse_voice("a.nemo+b.nemo") == ("a.nemo", "b.nemo")
