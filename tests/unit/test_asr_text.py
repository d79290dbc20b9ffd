"""Pure text helpers of the ASR layer: word error rate and Whisper output cleaning."""

from __future__ import annotations

import pytest

from models.asr.metrics import normalize_words, wer
from models.asr.whisper import clean_text, collapse_repetition

pytestmark = pytest.mark.unit


def test_wer_ignores_case_and_punctuation() -> None:
    assert wer("What time does the clinic open?", "what time does the clinic open") == 0.0
    assert normalize_words("Walk-in, Dr. O'Brien’s") == ["walk", "in", "dr", "o'brien's"]


def test_wer_counts_substitutions_insertions_and_deletions() -> None:
    ref = "what time does the clinic open on saturday"
    assert wer(ref, "what time does the clinic open on sunday") == pytest.approx(1 / 8)
    assert wer(ref, "what time does the clinic open") == pytest.approx(2 / 8)
    assert wer(ref, ref + " please now") == pytest.approx(2 / 8)
    assert wer("yes", "no no no") == pytest.approx(3.0)


def test_wer_of_empty_texts() -> None:
    assert wer("", "") == 0.0
    assert wer("", "hello") == 1.0
    assert wer("hello there", "") == 1.0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (" Where can I park my car? Where can I park my car? Where", "Where can I park my car?"),
        (" Yes. Yes. Yes. Yes.", "Yes."),
        ("Okay Okay Okay Okay", "Okay"),
        ("What is your phone number? What is your", "What is your phone number?"),
        ("I'd like to cancel my appointment.", "I'd like to cancel my appointment."),
        ("Bye bye.", "Bye bye."),
        ("that that is the question", "that that is the question"),
    ],
)
def test_collapse_repetition_cuts_loops_only(text: str, expected: str) -> None:
    assert collapse_repetition(text) == expected


@pytest.mark.parametrize(
    ("text", "quiet", "expected"),
    [
        (" . . . . .", False, ""),
        (" [BLANK_AUDIO]", False, ""),
        ("(upbeat music) ♪♪", False, ""),
        (" Thank you.", True, ""),
        (" you", True, ""),
        (" Thank you.", False, "Thank you."),
        (" What time do you open?", True, "What time do you open?"),
        (" [Music] Hello there.", False, "Hello there."),
    ],
)
def test_clean_text_drops_hallucinations(text: str, quiet: bool, expected: str) -> None:
    assert clean_text(text, quiet=quiet) == expected
