"""Prometheus export of :class:`deployments.metrics.MetricsSink` through Ray's metrics agent.

Each node's agent serves every replica's metrics on the node's metrics export port
(``ray start --metrics-export-port``; ``cluster.metrics_port`` for a local Ray), with Ray's
``ray_`` prefix, next to Ray Serve's own metrics. Recording is cheap and local to the replica.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from deployments.metrics import LATENCY_BOUNDARIES_MS, RENDER_BOUNDARIES_MS, MetricsSink


def _instruments() -> dict[str, Any]:
    from ray.util import metrics as m

    return {
        "stage": m.Histogram("avatar_stage_latency_ms", "Per-turn stage latency (ms).",
                             boundaries=list(LATENCY_BOUNDARIES_MS), tag_keys=("stage",)),
        "sessions": m.Gauge("avatar_sessions", "Live sessions on a renderer replica.",
                            tag_keys=("replica",)),
        "capacity": m.Gauge("avatar_session_capacity", "Session capacity of a renderer "
                            "replica.", tag_keys=("replica",)),
        "rendered": m.Counter("avatar_frames_rendered_total", "Frames rendered.",
                              tag_keys=("replica",)),
        "dropped": m.Counter("avatar_frames_dropped_total", "Frame ticks missed because a "
                             "render step overran.", tag_keys=("replica",)),
        "batch": m.Histogram("avatar_render_batch_ms", "One batched render step (ms).",
                             boundaries=list(RENDER_BOUNDARIES_MS), tag_keys=("replica",)),
        "rejections": m.Counter("avatar_admission_rejections_total", "Sessions refused.",
                                tag_keys=("reason",)),
        "created": m.Counter("avatar_sessions_created_total", "Sessions created."),
        "turns": m.Counter("avatar_turns_total", "Finished turns by outcome.",
                           tag_keys=("outcome",)),
        "lost": m.Counter("avatar_sessions_lost_total", "Sessions of dead renderers closed "
                          "as lost (their clients never resumed them)."),
    }


@dataclass
class RayMetrics(MetricsSink):
    """Keeps the in-memory figures and exports them; ``replica`` tags per-replica series."""

    replica: str = "unknown"
    _m: dict[str, Any] = field(default_factory=_instruments)

    def stage_latency(self, stage: str, ms: float) -> None:
        super().stage_latency(stage, ms)
        if stage == "render_batch":
            self._m["batch"].observe(ms, tags={"replica": self.replica})
        else:
            self._m["stage"].observe(ms, tags={"stage": stage})

    def sessions(self, live: int, capacity: int) -> None:
        super().sessions(live, capacity)
        self._m["sessions"].set(live, tags={"replica": self.replica})
        self._m["capacity"].set(capacity, tags={"replica": self.replica})

    def frames(self, rendered: int, dropped: int) -> None:
        super().frames(rendered, dropped)
        if rendered:
            self._m["rendered"].inc(rendered, tags={"replica": self.replica})
        if dropped:
            self._m["dropped"].inc(dropped, tags={"replica": self.replica})

    def rejection(self, reason: str) -> None:
        super().rejection(reason)
        self._m["rejections"].inc(1, tags={"reason": reason})

    def session_created(self) -> None:
        super().session_created()
        self._m["created"].inc(1)

    def turn(self, outcome: str) -> None:
        super().turn(outcome)
        self._m["turns"].inc(1, tags={"outcome": outcome})

    def sessions_lost(self, count: int) -> None:
        super().sessions_lost(count)
        if count:
            self._m["lost"].inc(count)
