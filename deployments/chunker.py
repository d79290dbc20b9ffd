"""Cut a streaming reply into speakable clauses so speech starts at the first clause.

The first clause is cut as early as a clause boundary allows (comma, semicolon, colon, dash)
once it holds ``first_min_chars``; later clauses are cut at sentence ends, or at a clause
boundary once they grow past ``max_chars``. Abbreviations ("Dr.", "a.m.") and decimals
("7.30", "$1.50") never end a sentence.
"""

from __future__ import annotations

import re

_ABBREVIATIONS = {
    "dr", "mr", "mrs", "ms", "st", "jr", "sr", "vs", "etc", "e.g", "i.e", "a.m", "p.m",
    "no", "ave", "blvd", "rd", "dept", "approx", "appt", "min", "max", "mt", "ft",
}
_SENTENCE_END = re.compile(r"[.!?]+[\"')\]]*(?=\s)")
_CLAUSE_END = re.compile(r"(?:[,;:]|\s[-–—])(?=\s)")
_LAST_WORD = re.compile(r"([A-Za-z.]+)\.$")


def _is_abbreviation(text: str, end: int) -> bool:
    """True when the period ending at ``end`` belongs to an abbreviation or an initial."""
    if text[end - 1] != ".":
        return False
    match = _LAST_WORD.search(text[:end])
    if not match:
        return False
    word = match.group(1).lower().rstrip(".")
    return word in _ABBREVIATIONS or len(word) == 1


class ClauseChunker:
    """Stateful: ``push`` deltas, get complete clauses; ``flush`` at the end of the reply."""

    def __init__(self, first_min_chars: int = 12, max_chars: int = 160) -> None:
        self.first_min_chars = first_min_chars
        self.max_chars = max_chars
        self._buffer = ""
        self._emitted = 0

    def push(self, delta: str) -> list[str]:
        self._buffer += delta
        out: list[str] = []
        while (cut := self._find_cut()) is not None:
            clause, self._buffer = self._buffer[:cut].strip(), self._buffer[cut:].lstrip()
            if clause:
                out.append(clause)
                self._emitted += 1
        return out

    def flush(self) -> list[str]:
        clause, self._buffer = self._buffer.strip(), ""
        if clause:
            self._emitted += 1
            return [clause]
        return []

    def _find_cut(self) -> int | None:
        text = self._buffer
        for match in _SENTENCE_END.finditer(text):
            end = match.end()
            if match.group(0) == "." and _is_abbreviation(text, match.start() + 1):
                after = text[end:].lstrip()
                times = text[: end].lower().endswith(("a.m.", "p.m."))
                if not (times and after[:1].isupper()):
                    continue
            if len(text[:end].strip()) >= 2:
                return end
        min_chars = self.first_min_chars if self._emitted == 0 else self.max_chars
        for match in _CLAUSE_END.finditer(text):
            if len(text[: match.end()].strip()) >= min_chars:
                return match.end()
        if len(text) > self.max_chars:
            space = text.rfind(" ", 0, self.max_chars)
            return space if space > 0 else self.max_chars
        return None
