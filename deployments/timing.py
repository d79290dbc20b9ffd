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


def percentiles(samples: Iterable[float | None], quantiles: Sequence[int] = (50, 95),
                digits: int = 1) -> dict[str, float | int | None]:
    """``{"p50": .., "p95": .., "n": ..}`` of the samples present (None and NaN skipped);
    each percentile is None when there are none. Benchmarks' JSON uses this shape."""
    present = [float(s) for s in samples if s is not None and not math.isnan(s)]
    out: dict[str, float | int | None] = {
        f"p{q}": round(percentile(present, q), digits) if present else None for q in quantiles}
    out["n"] = len(present)
    return out


def summarize(samples: Iterable[float], quantiles: Sequence[int] = (50, 95)) -> dict[str, float]:
    """``{"p50": .., "p95": ..}`` rounded to 0.1 ms; NaN-free (missing -> null in JSON)."""
    values = [float(s) for s in samples if s is not None and not math.isnan(s)]
    out: dict[str, float] = {f"p{q}": round(percentile(values, q), 1) for q in quantiles}
    out["n"] = len(values)
    return out


STAGES = (
    "endpoint",
    "asr",
    "retrieval",
    "llm_first_token",
    "first_clause",
    "first_audio",
    "voice_to_first_audio",
    "text_to_first_audio",
    "turn",
)
"""Per-stage latencies exported as metrics (see :func:`stage_latencies`)."""


def stage_latencies(marks: dict[str, float]) -> dict[str, float]:
    """Stage name -> milliseconds for one turn's marks (only the stages the marks allow).

    A voice turn is measured from the end of the user's speech, a typed turn from the moment
    its text arrived (``asr_final``); ``first_audio`` is from ``asr_final`` for both.
    """
    voice = "speech_end" in marks
    spans = {
        "endpoint": ("speech_end", "endpoint"),
        "asr": ("speech_end", "asr_final"),
        "retrieval": ("asr_final", "retrieval_done"),
        "llm_first_token": ("retrieval_done", "llm_first_token"),
        "first_clause": ("asr_final", "first_clause"),
        "first_audio": ("asr_final", "tts_first_audio"),
        "voice_to_first_audio" if voice else "text_to_first_audio":
            ("speech_end" if voice else "asr_final", "tts_first_audio"),
        "turn": ("asr_final", "turn_end"),
    }
    out: dict[str, float] = {}
    for stage, (start, end) in spans.items():
        if start in marks and end in marks:
            out[stage] = max(0.0, marks[end] - marks[start])
    return out
