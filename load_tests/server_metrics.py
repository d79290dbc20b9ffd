"""The server's side of a load test: what the cluster's ``/metrics`` (Prometheus text) says.

:func:`parse_prometheus` reads the exposition format; :func:`server_sample` sums the series a
load test reports: live sessions and capacity, frames rendered and dropped, admission
rejections, and the memory (RSS) and CPU of the Ray components (raylet, workers, Serve
replicas) from Ray's own process gauges. Ray prefixes every metric with ``ray_``; names are
matched with or without it. Pure functions over text.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)(\s+\S+)?$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')

SUMS = {
    "sessions": "avatar_sessions",
    "capacity": "avatar_session_capacity",
    "frames_rendered": "avatar_frames_rendered_total",
    "frames_dropped": "avatar_frames_dropped_total",
    "admission_rejections": "avatar_admission_rejections_total",
    "sessions_created": "avatar_sessions_created_total",
    "memory_rss_mb": "component_rss_mb",
    "cpu_percent": "component_cpu_percentage",
}
"""Sample field -> metric summed over all its series."""

Series = dict[str, list[tuple[dict[str, str], float]]]


def parse_prometheus(text: str, names: tuple[str, ...] | None = None) -> Series:
    """``{name: [(labels, value), ...]}`` of every sample line (comments and malformed lines
    are skipped; a ``ray_`` prefix is removed). ``names``: parse only lines of these metrics
    (a Ray node exports thousands of series; the rest are skipped without a regex)."""
    out: Series = {}
    prefixes = None if names is None else tuple(p + n for n in names for p in ("", "ray_"))
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if prefixes is not None and not line.startswith(prefixes):
            continue
        m = _LINE.match(line)
        if m is None:
            continue
        try:
            value = float(m.group(4))
        except ValueError:
            continue
        labels = {k: v.replace('\\"', '"').replace("\\\\", "\\")
                  for k, v in _LABEL.findall(m.group(3) or "")}
        name = m.group(1).removeprefix("ray_")
        out.setdefault(name, []).append((labels, value))
    return out


def server_sample(text: str) -> dict[str, float | None]:
    """The load test's server figures in one ``/metrics`` text (None: not exported)."""
    series = parse_prometheus(text, tuple(SUMS.values()))
    sample: dict[str, float | None] = {}
    for field, name in SUMS.items():
        found = [(labels, v) for labels, v in series.get(name, ()) if math.isfinite(v)]
        by_pid: dict[str, float] = {}
        for i, (labels, v) in enumerate(found):  # one process may be listed under two names
            key = labels.get("pid") or f"#{i}"
            by_pid[key] = max(by_pid.get(key, v), v)
        sample[field] = round(sum(by_pid.values()), 2) if by_pid else None
    return sample


def memory_growth_pct(samples: Sequence[tuple[float, dict[str, Any]]], from_s: float,
                      min_window_s: float = 0.0) -> float | None:
    """Growth (%) of the servers' RSS from the first sample at or after ``from_s`` to the last
    sample; None with fewer than two such samples or when they span less than
    ``min_window_s``."""
    rss = [(t, s.get("memory_rss_mb")) for t, s in samples if t >= from_s]
    rss = [(t, v) for t, v in rss if isinstance(v, int | float) and v > 0]
    if len(rss) < 2 or rss[-1][0] - rss[0][0] < min_window_s:
        return None
    return round(100.0 * (rss[-1][1] - rss[0][1]) / rss[0][1], 2)


def counter_delta(samples: Sequence[tuple[float, dict[str, Any]]], field: str) -> float | None:
    """How much a counter field grew from the first to the last sample that has it."""
    values = [s.get(field) for _, s in samples]
    present = [v for v in values if isinstance(v, int | float)]
    if len(present) < 2:
        return None
    return round(present[-1] - present[0], 2)
