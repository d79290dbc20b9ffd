"""Personal data: find and redact emails, phone numbers, payment card numbers and US SSNs.

Detection works on written forms (``jo@example.com``, ``(555) 201-7788``) and on the spoken
forms speech recognisers produce for emails (``jo dot smith at gmail dot com``). Card numbers
must pass the Luhn check; SSNs need the ``AAA-GG-SSSS`` shape, or nine digits right after the
words "social security" / "SSN".
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Literal

PIIKind = Literal["email", "phone", "card", "ssn"]

_EMAIL = re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
_SPOKEN_EMAIL = re.compile(
    r"\b[a-z0-9._-]+(?: (?:dot|underscore|dash) [a-z0-9]+)* at [a-z0-9-]+"
    r"(?: dot [a-z0-9-]+)* dot (?:com|org|net|edu|gov|us|io|co|info|biz)\b",
    re.IGNORECASE,
)
_CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
_SSN = re.compile(r"(?<![\d-])(\d{3})[- ](\d{2})[- ](\d{4})(?![\d-])")
_SSN_SPOKEN = re.compile(
    r"\b(?:social security|social|ssn|s s n)(?: number| no| #)?(?: is| was|:)?\W{0,3}"
    r"(\d{3})[- ]?(\d{2})[- ]?(\d{4})(?!\d)",
    re.IGNORECASE,
)
_PHONE = re.compile(
    r"(?<![\d-])(?:\+?1[ .-]?)?(?:\(\d{3}\)|\d{3})[ .-]?\d{3}[ .-]?\d{4}(?![\d-])"
)


@dataclass(frozen=True, slots=True)
class PIIMatch:
    """One piece of personal data found in a text: ``text[start:end]``."""

    kind: PIIKind
    start: int
    end: int
    value: str
    """Canonical value for comparisons: digits only, or the lowercased email."""


def luhn_valid(digits: str) -> bool:
    """True when the digit string passes the Luhn checksum used by payment cards."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _digits(text: str) -> str:
    return "".join(c for c in text if c.isdigit())


def _ssn_plausible(area: str, group: str, serial: str) -> bool:
    return area not in ("000", "666") and area[0] != "9" and group != "00" and serial != "0000"


def _spoken_email_value(text: str) -> str:
    words = text.lower().split()
    out = {"dot": ".", "at": "@", "underscore": "_", "dash": "-"}
    return "".join(out.get(w, w) for w in words)


def find_personal_data(text: str) -> list[PIIMatch]:
    """Every piece of personal data in ``text``, in order; overlapping finds are merged so
    the more specific kind wins (card, then SSN, then phone, then email)."""
    found: list[PIIMatch] = []

    def add(kind: PIIKind, start: int, end: int, value: str) -> None:
        if all(end <= m.start or start >= m.end for m in found):
            found.append(PIIMatch(kind, start, end, value))

    for m in _CARD.finditer(text):
        digits = _digits(m.group())
        if 13 <= len(digits) <= 19 and luhn_valid(digits):
            add("card", m.start(), m.end(), digits)
    for m in _SSN_SPOKEN.finditer(text):
        if _ssn_plausible(*m.groups()):
            add("ssn", m.start(1), m.end(3), "".join(m.groups()))
    for m in _SSN.finditer(text):
        if _ssn_plausible(*m.groups()):
            add("ssn", m.start(), m.end(), "".join(m.groups()))
    for m in _PHONE.finditer(text):
        add("phone", m.start(), m.end(), _digits(m.group())[-10:])
    for m in _EMAIL.finditer(text):
        add("email", m.start(), m.end(), m.group().lower())
    for m in _SPOKEN_EMAIL.finditer(text):
        add("email", m.start(), m.end(), _spoken_email_value(m.group()))
    return sorted(found, key=lambda m: m.start)


def redact(
    text: str,
    matches: Collection[PIIMatch],
    replacement: Callable[[PIIMatch], str],
) -> str:
    """``text`` with each match replaced by ``replacement(match)``."""
    out: list[str] = []
    pos = 0
    for m in sorted(matches, key=lambda m: m.start):
        out.append(text[pos:m.start])
        out.append(replacement(m))
        pos = m.end
    out.append(text[pos:])
    return "".join(out)
