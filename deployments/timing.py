"""Per-turn timing marks on the media clock, and pure summaries of latency samples."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

MARKS = (
    "speech_start",
    "speech_end",
    "endpoint",
    "asr_final",
    "input_rail_done",
    "retrieval_done",
    "llm_first_token",
    "first_clause",
    "tts_first_audio",
    "llm_done",
    "turn_end",
)
"""Marks in pipeline order; each is milliseconds on the session's media clock."""


@dataclass(slots=True)
class TurnTimings:
    turn_id: int
    source: str  # "voice" or "text"
    marks: dict[str, float] = field(default_factory=dict)

    def mark(self, name: str, at_ms: float) -> None:
        if name not in MARKS:
            raise ValueError(f"unknown timing mark {name!r}; known: {MARKS}")
        self.marks.setdefault(name, at_ms)

    def span(self, start: str, end: str) -> float | None:
        if start in self.marks and end in self.marks:
            return self.marks[end] - self.marks[start]
        return None

    def as_dict(self) -> dict[str, object]:
        return {"turn_id": self.turn_id, "source": self.source, "marks_ms": dict(self.marks)}


def percentile(samples: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile, q in [0, 100]."""
    if not samples:
        return math.nan
    ordered = sorted(samples)
    pos = (len(ordered) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def summarize(samples: Iterable[float], quantiles: Sequence[int] = (50, 95)) -> dict[str, float]:
    """``{"p50": .., "p95": ..}`` rounded to 0.1 ms; NaN-free (missing -> null in JSON)."""
    values = [float(s) for s in samples if s is not None and not math.isnan(s)]
    out: dict[str, float] = {f"p{q}": round(percentile(values, q), 1) for q in quantiles}
    out["n"] = len(values)
    return out
