"""IPA phonemes to visemes, and visemes to target mouth shapes.

Fifteen viseme classes (the MPEG-4 / Oculus set): ``sil`` (rest), ``PP`` (p b m), ``FF`` (f v),
``TH`` (θ ð), ``DD`` (t d ɾ), ``kk`` (k ɡ ŋ h ʔ), ``CH`` (ʃ ʒ tʃ dʒ), ``SS`` (s z), ``nn`` (n l),
``RR`` (ɹ r ɚ ɜ), ``aa`` (ɑ æ a ʌ ɐ), ``E`` (e ɛ ə), ``I`` (i ɪ j), ``O`` (o ɔ ɒ), ``U`` (u ʊ w).

Phoneme names come from the TTS backends as IPA without stress marks (``"aɪ"``, ``"ɑː"``,
``"dʒ"``, ``"əl"``; pauses are ``"_"``). A name may hold several sounds (diphthongs, r-coloured
and syllabic pairs): :func:`phoneme_visemes` splits it into visemes with their share of the
phoneme's duration. Stress and length marks, tie bars and combining diacritics are ignored; an
unknown symbol maps to :data:`FALLBACK` (a neutral half-open mouth), never an error.
"""

from __future__ import annotations

import unicodedata
from functools import lru_cache

import numpy as np

from models.animate.params import MOUTH_REST

VISEMES: tuple[str, ...] = (
    "sil", "PP", "FF", "TH", "DD", "kk", "CH", "SS", "nn", "RR", "aa", "E", "I", "O", "U",
)
"""Viseme class names; rows of :data:`SHAPES` and :data:`DOMINANCE` follow this order."""

VISEME_INDEX = {v: i for i, v in enumerate(VISEMES)}
VOWELS = frozenset({"aa", "E", "I", "O", "U"})
FALLBACK = "E"
"""Viseme of a symbol nobody knows: a neutral, half-open mouth."""

SILENCE = "_"

# target mouth shape per viseme: jaw_open, lip_spread, lip_round, lip_close, teeth_show, tongue_up
_SHAPES = {
    "sil": tuple(float(x) for x in MOUTH_REST),
    "PP": (0.03, 0.05, 0.10, 1.00, 0.00, 0.00),
    "FF": (0.10, 0.25, 0.00, 0.55, 0.90, 0.00),
    "TH": (0.18, 0.20, 0.00, 0.15, 0.60, 0.90),
    "DD": (0.20, 0.25, 0.00, 0.10, 0.50, 0.80),
    "kk": (0.30, 0.20, 0.00, 0.05, 0.30, 0.10),
    "CH": (0.20, 0.05, 0.60, 0.10, 0.60, 0.50),
    "SS": (0.10, 0.45, 0.00, 0.15, 0.85, 0.60),
    "nn": (0.20, 0.25, 0.00, 0.10, 0.40, 0.85),
    "RR": (0.25, 0.05, 0.45, 0.05, 0.20, 0.40),
    "aa": (0.85, 0.30, 0.00, 0.00, 0.35, 0.00),
    "E": (0.50, 0.50, 0.00, 0.00, 0.45, 0.10),
    "I": (0.30, 0.75, 0.00, 0.05, 0.55, 0.20),
    "O": (0.60, 0.00, 0.70, 0.00, 0.10, 0.00),
    "U": (0.25, 0.00, 0.90, 0.10, 0.00, 0.10),
}

# Cohen-Massaro dominance per viseme and mouth parameter: how strongly a segment pulls each
# parameter towards its own target against its neighbours. Lingual consonants barely control
# the lips (they take the neighbouring vowels' rounding), labials dominate lip closure.
_V = (1.0, 1.0, 1.0, 1.0, 1.0, 0.5)
_DOMINANCE = {
    "sil": (1.0, 1.0, 1.0, 1.0, 1.0, 1.0),
    "PP": (0.6, 0.3, 0.4, 3.0, 0.5, 0.3),
    "FF": (0.5, 0.5, 0.4, 2.0, 2.0, 0.3),
    "TH": (0.5, 0.3, 0.2, 0.6, 0.8, 2.0),
    "DD": (0.5, 0.3, 0.2, 0.6, 0.8, 2.0),
    "kk": (0.4, 0.2, 0.2, 0.4, 0.4, 0.5),
    "CH": (0.6, 1.5, 1.5, 1.0, 1.0, 1.0),
    "SS": (0.7, 1.2, 0.8, 1.0, 1.5, 1.0),
    "nn": (0.5, 0.3, 0.2, 0.6, 0.8, 2.0),
    "RR": (0.5, 1.2, 1.2, 0.8, 0.6, 1.0),
    "aa": _V, "E": _V, "I": _V, "O": _V, "U": _V,
}

SHAPES = np.array([_SHAPES[v] for v in VISEMES], dtype=np.float32)
"""``(len(VISEMES), 6)`` target mouth parameters per viseme."""
DOMINANCE = np.array([_DOMINANCE[v] for v in VISEMES], dtype=np.float32)
"""``(len(VISEMES), 6)`` coarticulation dominance per viseme and mouth parameter."""

_SYMBOLS = {
    "PP": "p b m ʙ",
    "FF": "f v ɱ ɸ β",
    "TH": "θ ð",
    "DD": "t d ɾ ʈ ɖ ts dz",
    "kk": "k ɡ g ŋ q ɢ x ɣ χ h ɦ ʔ ʕ ħ c ɟ ç",
    "CH": "ʃ ʒ tʃ dʒ ɕ ʑ ʂ ʐ",
    "SS": "s z",
    "nn": "n l ɫ ɲ ɳ ɭ ʎ ɬ",
    "RR": "ɹ r ɻ ʀ ʁ ɚ ɝ ɜ ɞ",
    "aa": "a ɑ æ ʌ ɐ ä ɶ",
    "E": "e ɛ ə ɘ ɵ ɤ",
    "I": "i ɪ j ɨ ᵻ ʝ",
    "O": "o ɔ ɒ ø œ",
    "U": "u ʊ w ɯ y ʏ ʉ ʍ ɥ ɰ",
}
_TABLE = {sym: vis for vis, syms in _SYMBOLS.items() for sym in syms.split()}
_MULTI = sorted((s for s in _TABLE if len(s) > 1), key=len, reverse=True)
_IGNORED = set("ˈˌːˑ‿͡.-'") | {"\u02de"}  # stress, length, ties, syllable breaks, rhotic hook


def _symbols(phoneme: str) -> list[str]:
    """Split an IPA phoneme name into sound symbols, dropping marks and diacritics."""
    def keep(ch: str) -> bool:
        if ch in _TABLE:
            return True
        modifier = unicodedata.combining(ch) or unicodedata.category(ch) in ("Lm", "Sk")
        return ch not in _IGNORED and not modifier and not ch.isspace()

    text = "".join(ch for ch in unicodedata.normalize("NFD", phoneme) if keep(ch))
    out: list[str] = []
    i = 0
    while i < len(text):
        for multi in _MULTI:
            if text.startswith(multi, i):
                out.append(multi)
                i += len(multi)
                break
        else:
            out.append(text[i])
            i += 1
    return out


@lru_cache(maxsize=4096)
def phoneme_visemes(phoneme: str) -> tuple[tuple[str, float], ...]:
    """The visemes of one phoneme name with their shares of its duration (summing to 1).

    ``"_"`` and empty names are ``(("sil", 1.0),)``; ``"aɪ"`` is ``(("aa", .58), ("I", .42))``
    (the first sound of a diphthong is its nucleus and lasts longer); unknown symbols map to
    :data:`FALLBACK`.
    """
    if not isinstance(phoneme, str):
        return (("sil", 1.0),)
    if phoneme.strip() in ("", SILENCE):
        return (("sil", 1.0),)
    syms = _symbols(phoneme)
    if not syms:
        return ((FALLBACK, 1.0),)
    visemes = [_TABLE.get(s, _TABLE.get(s.lower(), FALLBACK)) for s in syms]
    # collapse repeats ("ɔːɹ" -> O RR, "ii" -> I)
    merged = [v for i, v in enumerate(visemes) if i == 0 or v != visemes[i - 1]]
    weights = np.array([1.4] + [1.0] * (len(merged) - 1))
    weights /= weights.sum()
    return tuple((v, float(w)) for v, w in zip(merged, weights, strict=True))


def viseme_of(phoneme: str) -> str:
    """The main (first) viseme of a phoneme name."""
    return phoneme_visemes(phoneme)[0][0]


def mouth_shape(viseme: str) -> np.ndarray:
    """Target mouth parameters (:data:`~models.animate.params.MOUTH_PARAMS` order) of a
    viseme; unknown names give the :data:`FALLBACK` shape."""
    return SHAPES[VISEME_INDEX.get(viseme, VISEME_INDEX[FALLBACK])].copy()
