"""Service-level objectives a load test is judged by (``configs/slo/*.yaml``), and the verdict.

An SLO file lists objectives, each a figure of the load test's JSON (a dotted path such as
``voice_to_first_audio_ms.p95``) with a ``max`` or a ``min``. A figure the run could not
measure breaks a ``required`` objective and is reported as not measured otherwise. Unknown
keys and unknown figures fail when the file is loaded, not after a run.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from cluster.bench.e2e_metrics import lookup
from models.errors import ConfigError, InputError

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SLO = REPO_ROOT / "configs" / "slo" / "default.yaml"

PERCENTILE_FIGURES = (
    "session_setup_ms", "voice_to_first_audio_ms", "voice_to_first_frame_ms",
    "text_to_first_audio_ms", "barge_in_stop_ms", "av_offset_ms", "abs_av_offset_ms",
    "frame_interval_ms", "frame_jitter_ms", "session_fps")
"""Figures reported as ``{"p5"?, "p50", "p95", "p99", "n"}`` over the run."""
SCALAR_FIGURES = ("rejection_rate", "failure_rate", "memory_growth_pct", "frames_dropped",
                  "leaked_sessions")
GROUP_FIGURES = {"freezes": ("total", "sessions", "per_session_minute", "longest_ms",
                             "during_harness_stall"),
                 "lost_turns": ("total", "rate")}
QUANTILES = ("p5", "p50", "p95", "p99", "n")


class Objective(BaseModel):
    """One figure and its bound."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    figure: str = Field(description="Dotted path into the load test's figures.")
    max: float | None = Field(None, description="The figure must be at most this.")
    min: float | None = Field(None, description="The figure must be at least this.")
    required: bool = Field(True, description="An unmeasured figure breaks the SLO.")
    why: str = Field("", description="What a user notices when this breaks.")

    @model_validator(mode="after")
    def _one_bound(self) -> Objective:
        if (self.max is None) == (self.min is None):
            raise ValueError(f"{self.figure}: give exactly one of max or min")
        if not known_figure(self.figure):
            raise ValueError(f"{self.figure}: not a load-test figure; use one of "
                             f"{', '.join(figure_names())}")
        return self

    @property
    def op(self) -> str:
        return "<=" if self.max is not None else ">="

    @property
    def bound(self) -> float:
        return float(self.max if self.max is not None else self.min)  # type: ignore[arg-type]


class SLO(BaseModel):
    """A named set of objectives."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    description: str = ""
    objectives: tuple[Objective, ...] = Field(min_length=1)


def figure_names() -> list[str]:
    """Every figure path an objective may name."""
    names = [f"{f}.{q}" for f in PERCENTILE_FIGURES for q in QUANTILES]
    names += list(SCALAR_FIGURES)
    names += [f"{g}.{k}" for g, keys in GROUP_FIGURES.items() for k in keys]
    return names


def known_figure(path: str) -> bool:
    """Is ``path`` a figure the load test reports?"""
    return path in figure_names()


def load_slo(path: Path | str | None = None) -> SLO:
    """The SLO in ``path`` (default ``configs/slo/default.yaml``)."""
    file = Path(path) if path is not None else DEFAULT_SLO
    if not file.is_file():
        raise InputError(f"--slo {file}: no such file; pass a YAML file like "
                         f"{DEFAULT_SLO.relative_to(REPO_ROOT)}")
    try:
        data = yaml.safe_load(file.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{file}: not valid YAML ({exc})") from None
    return slo_from_dict(data, str(file))


def slo_from_dict(data: Any, source: str = "<slo>") -> SLO:
    """Validate an SLO mapping; :class:`ConfigError` names the file and the key."""
    try:
        return SLO.model_validate(data)
    except ValidationError as exc:
        parts = []
        for err in exc.errors()[:5]:
            where = ".".join(str(p) for p in err.get("loc", ()))
            parts.append(f"{where or 'top level'}: {err.get('msg', 'invalid')}")
        raise ConfigError(f"{source}: " + "; ".join(parts)) from None


def verdict(figures: dict[str, Any], slo: SLO) -> dict[str, Any]:
    """Each objective's status (``met``, ``broken`` or ``not_measured``) and whether the SLO
    holds: every objective met, or unmeasured where it is not required."""
    rows = []
    for obj in slo.objectives:
        value = lookup(figures, obj.figure)
        measured = isinstance(value, int | float) and not isinstance(value, bool) \
            and math.isfinite(value)
        if not measured:
            status = "broken" if obj.required else "not_measured"
        else:
            ok = value <= obj.bound if obj.op == "<=" else value >= obj.bound
            status = "met" if ok else "broken"
        rows.append({"figure": obj.figure, "op": obj.op, "bound": obj.bound,
                     "value": value if measured else None, "status": status,
                     "required": obj.required, "why": obj.why})
    broken = [r["figure"] for r in rows if r["status"] == "broken"]
    return {"slo": slo.name, "met": not broken, "broken": broken, "objectives": rows}
