"""Shared TTS helpers: text normalisation, sentence splitting, phoneme names, audio chunking.

Every backend runs its input through :func:`normalize_text` first, so all of them reject the same
bad input (empty, unspeakable, over-long) with the same :class:`~models.errors.InputError`.
Phoneme names are IPA without stress marks; pauses are :data:`SILENCE`.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from models.errors import InputError
from models.frames import PhonemeTiming, TTSChunk

MAX_TEXT_CHARS = 5000
"""Longest text one synthesis call accepts (about five minutes of speech)."""

SILENCE = "_"
"""Phoneme name of a pause (word gap, comma, end of sentence)."""

STRESS_MARKS = "ˈˌ"

_MD_LINK = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")
_MD_QUOTE = re.compile(r"(?m)^[ \t]*>+")
_MD_SYMBOLS = re.compile(r"[*_#`~|\\{}\[\]^]+")
_WHITESPACE = re.compile(r"\s+")
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([,.!?;:])")
_SENTENCE_END = re.compile(r"[.!?…]+[\"')\]]*(?=\s|$)")
_ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof sr jr st vs etc e.g i.e no approx dept fig inc ltd co mt".split()
)


def normalize_text(text: str, *, max_chars: int = MAX_TEXT_CHARS) -> str:
    """Return ``text`` cleaned for synthesis.

    Removes control and invisible format characters, markdown markup (``**bold**``, ``# head``,
    ``[link](url)`` keeps ``link``) and collapses whitespace. Raises :class:`InputError` when the
    text is not a string, longer than ``max_chars``, or has nothing speakable left.
    """
    if not isinstance(text, str):
        raise InputError(f"TTS text must be a string, got {type(text).__name__}")
    if len(text) > max_chars:
        raise InputError(
            f"TTS text is {len(text)} characters; the limit is {max_chars} per call: "
            "send it in shorter pieces (sentences or clauses)"
        )
    text = unicodedata.normalize("NFKC", text)
    text = _MD_QUOTE.sub(" ", text)
    text = "".join(
        " " if unicodedata.category(ch) in ("Cc", "Zl", "Zp")
        else "" if unicodedata.category(ch) in ("Cf", "Cs", "Co", "Cn")
        else ch
        for ch in text
    )
    text = _MD_LINK.sub(r"\1", text)
    text = _MD_SYMBOLS.sub(" ", text)
    text = _WHITESPACE.sub(" ", text).strip()
    text = _SPACE_BEFORE_PUNCT.sub(r"\1", text)
    if not any(ch.isalnum() for ch in text):
        raise InputError("TTS text has nothing to speak (no letters or digits): send words")
    return text


def split_sentences(text: str) -> list[str]:
    """Split normalised text into sentences, keeping their end punctuation.

    A cut needs ``.``, ``!``, ``?`` or ``…`` followed by whitespace, so decimals ("3.5") and
    common abbreviations ("Dr. Smith", "e.g. this") stay inside their sentence.
    """
    sentences: list[str] = []
    start = 0
    for match in _SENTENCE_END.finditer(text):
        piece = text[start : match.end()].strip()
        if match.group() == ".":
            last_word = piece[:-1].rsplit(" ", 1)[-1].lower()
            if last_word in _ABBREVIATIONS or len(last_word) == 1:
                continue
        if piece:
            sentences.append(piece)
        start = match.end()
    tail = text[start:].strip()
    if tail:
        sentences.append(tail)
    return sentences


def clean_phoneme(name: str) -> str:
    """An engine's phoneme name as plain IPA: stress marks removed, empty names are pauses."""
    name = name.strip().translate({ord(mark): None for mark in STRESS_MARKS})
    return name or SILENCE


def merge_pauses(timings: Iterable[PhonemeTiming]) -> list[PhonemeTiming]:
    """Drop zero-length phonemes and merge adjacent pauses into one."""
    merged: list[PhonemeTiming] = []
    for timing in timings:
        if timing.duration_ms <= 0:
            continue
        prev = merged[-1] if merged else None
        if prev is not None and prev.phoneme == SILENCE == timing.phoneme:
            end = timing.start_ms + timing.duration_ms
            merged[-1] = PhonemeTiming(SILENCE, prev.start_ms, end - prev.start_ms)
        else:
            merged.append(timing)
    return merged


def samples_to_ms(samples: float, sample_rate_hz: int) -> float:
    """Sample count to milliseconds."""
    return 1000.0 * samples / sample_rate_hz


def chunk_audio(
    pcm: np.ndarray,
    sample_rate_hz: int,
    offset_ms: float,
    phonemes: Sequence[PhonemeTiming],
    chunk_ms: int,
) -> Iterator[TTSChunk]:
    """Cut one utterance's int16 audio (starting at ``offset_ms``) into chunks of at most
    ``chunk_ms``; each phoneme goes with the chunk its start falls in."""
    step = max(1, int(sample_rate_hz * chunk_ms / 1000))
    ordered = sorted(phonemes, key=lambda p: p.start_ms)
    index = 0
    for begin in range(0, len(pcm), step):
        piece = pcm[begin : begin + step]
        start_ms = offset_ms + samples_to_ms(begin, sample_rate_hz)
        is_last = begin + step >= len(pcm)
        end_ms = offset_ms + samples_to_ms(begin + len(piece), sample_rate_hz)
        inside: list[PhonemeTiming] = []
        while index < len(ordered) and (is_last or ordered[index].start_ms < end_ms):
            inside.append(ordered[index])
            index += 1
        yield TTSChunk(piece, sample_rate_hz, start_ms, tuple(inside))


def float_to_int16(audio: np.ndarray) -> np.ndarray:
    """Float audio in -1..1 to int16 PCM (clipped)."""
    return (np.clip(np.asarray(audio, dtype=np.float32), -1.0, 1.0) * 32767.0).astype(np.int16)


# CMU ARPABET (stress digits removed) to IPA, for engines with ARPABET token sets (NeMo).
ARPABET_TO_IPA = {
    "AA": "ɑ", "AE": "æ", "AH": "ʌ", "AO": "ɔ", "AW": "aʊ", "AY": "aɪ", "B": "b", "CH": "tʃ",
    "D": "d", "DH": "ð", "EH": "ɛ", "ER": "ɝ", "EY": "eɪ", "F": "f", "G": "ɡ", "HH": "h",
    "IH": "ɪ", "IY": "i", "JH": "dʒ", "K": "k", "L": "l", "M": "m", "N": "n", "NG": "ŋ",
    "OW": "oʊ", "OY": "ɔɪ", "P": "p", "R": "ɹ", "S": "s", "SH": "ʃ", "T": "t", "TH": "θ",
    "UH": "ʊ", "UW": "u", "V": "v", "W": "w", "Y": "j", "Z": "z", "ZH": "ʒ",
}


def token_to_ipa(token: str) -> str:
    """A model's input token as an IPA phoneme: ARPABET (``AH0``) is converted, IPA is kept,
    spaces, punctuation and padding become :data:`SILENCE`."""
    bare = token.strip().rstrip("012")
    if bare in ARPABET_TO_IPA:
        return ARPABET_TO_IPA[bare]
    if not bare or not any(ch.isalpha() for ch in bare) or bare.startswith("<"):
        return SILENCE
    return clean_phoneme(bare)
