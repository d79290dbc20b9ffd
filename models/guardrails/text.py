"""Text normalisation shared by the rails.

User turns arrive from speech recognition as often as from a keyboard, so rules match on a
normal form that irons out what recognisers vary: case, punctuation, apostrophes, accents,
hesitation fillers and runs of whitespace. ``"Ignore -- um -- ALL previous instructions!"`` and
``"ignore all previous instructions"`` have the same normal form.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

_APOSTROPHES = re.compile(r"['’‘`´]")
_NON_WORD = re.compile(r"[^a-z0-9]+")
FILLERS = frozenset({"um", "umm", "uh", "uhh", "uhm", "erm", "er", "ah", "hmm", "hm", "mm"})
"""Hesitation words recognisers transcribe; dropped from the normal form."""


def normalize(text: str) -> str:
    """Lowercase ASCII words separated by single spaces.

    Accents are stripped (``español`` -> ``espanol``), apostrophes removed (``what's`` ->
    ``whats``), every other non-alphanumeric character becomes a space (``self-harm`` ->
    ``self harm``) and hesitation fillers are dropped.
    """
    decomposed = unicodedata.normalize("NFKD", text)
    ascii_text = "".join(c for c in decomposed if not unicodedata.combining(c)).lower()
    ascii_text = _APOSTROPHES.sub("", ascii_text)
    return " ".join(w for w in _NON_WORD.sub(" ", ascii_text).split() if w not in FILLERS)


def shingles(words: list[str], size: int) -> Iterable[tuple[str, ...]]:
    """Every run of ``size`` consecutive words, in order."""
    return (tuple(words[i:i + size]) for i in range(len(words) - size + 1))
