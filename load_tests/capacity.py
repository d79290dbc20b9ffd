"""``--find-capacity``: step the concurrent users up until the SLO breaks.

Each level is a run of its own (a ``constant`` profile of ``n`` users for the step's
duration); the search starts at ``start`` users, adds ``step`` after every level that met the
SLO and stops at the first level that broke it or at ``max_users``. ``max_sessions_at_slo`` is
the largest level that met the SLO (0 when even the first broke it). The search itself is pure:
it takes the function that runs a level, so it is tested without a cluster.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from models.errors import InputError

KEY_FIGURES = ("voice_to_first_audio_ms.p95", "text_to_first_audio_ms.p95",
               "session_fps.p5", "freezes.total", "rejection_rate")
"""Figures each level's row repeats, for a quick look at what gave way."""


def find_capacity(run_level: Callable[[int], dict[str, Any]], *, max_users: int,
                  start: int = 1, step: int = 1,
                  on_level: Callable[[int, dict[str, Any]], None] | None = None
                  ) -> dict[str, Any]:
    """Run levels ``start, start + step, ...`` (each ``run_level(n)`` returns a report with a
    ``verdict``) while the SLO holds; returns ``max_sessions_at_slo`` and every level."""
    from cluster.bench.e2e_metrics import lookup

    if not 1 <= start <= max_users:
        raise InputError(f"capacity search starts at {start} users; pick 1 to --users "
                         f"({max_users})")
    if step < 1:
        raise InputError(f"capacity step {step}: pick 1 or more")
    best, levels, n = 0, [], start
    broke_at: int | None = None
    while n <= max_users:
        report = run_level(n)
        met = bool(report["verdict"]["met"])
        levels.append({"users": n, "met": met, "broken": report["verdict"]["broken"],
                       "max_concurrent": report.get("max_concurrent"),
                       **{k: lookup(report.get("figures", {}), k) for k in KEY_FIGURES}})
        if on_level is not None:
            on_level(n, report)
        if not met:
            broke_at = n
            break
        best = n
        n += step
    return {"max_sessions_at_slo": best, "slo_broke_at": broke_at,
            "search_limit_reached": broke_at is None, "levels": levels}
