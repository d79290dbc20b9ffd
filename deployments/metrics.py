"""What the cluster measures about itself, behind one small interface.

The renderer and the gateway report through a :class:`MetricsSink`. The default keeps plain
counters in memory (tests and ``stats()`` read them); :mod:`cluster.metrics` exports the same
calls to Prometheus through Ray's metrics agent. Names (Prometheus adds Ray's ``ray_`` prefix):

* ``avatar_stage_latency_ms{stage}``: histogram of each turn's stage latencies
  (:data:`deployments.timing.STAGES`)
* ``avatar_sessions{replica}``, ``avatar_session_capacity{replica}``: gauges
* ``avatar_frames_rendered_total{replica}``, ``avatar_frames_dropped_total{replica}``
* ``avatar_render_batch_ms{replica}``: histogram of one batched render step
* ``avatar_admission_rejections_total{reason}``: full, draining, bad_request, rate_limited,
  unauthorized, tenant_quota
* ``avatar_sessions_created_total``, ``avatar_turns_total{outcome}``: answered, refused,
  interrupted, error
* ``avatar_sessions_lost_total``: sessions of dead renderers closed as lost (never resumed)
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

LATENCY_BOUNDARIES_MS = (5, 10, 25, 50, 100, 150, 200, 300, 400, 500, 700, 1000, 1500, 2500,
                         5000, 10000)
RENDER_BOUNDARIES_MS = (1, 2, 5, 10, 20, 40, 80, 160)


@dataclass
class MetricsSink:
    """In-memory metrics; subclasses also export them. Every method is cheap and sync."""

    counters: Counter[str] = field(default_factory=Counter)
    gauges: dict[str, float] = field(default_factory=dict)
    latencies: dict[str, list[float]] = field(default_factory=dict)

    def stage_latency(self, stage: str, ms: float) -> None:
        samples = self.latencies.setdefault(stage, [])
        samples.append(ms)
        del samples[:-1000]

    def sessions(self, live: int, capacity: int) -> None:
        self.gauges["sessions"] = live
        self.gauges["capacity"] = capacity

    def frames(self, rendered: int, dropped: int) -> None:
        self.counters["frames_rendered"] += rendered
        self.counters["frames_dropped"] += dropped

    def render_batch(self, ms: float) -> None:
        self.stage_latency("render_batch", ms)

    def rejection(self, reason: str) -> None:
        self.counters[f"rejected_{reason}"] += 1

    def session_created(self) -> None:
        self.counters["sessions_created"] += 1

    def turn(self, outcome: str) -> None:
        self.counters[f"turns_{outcome}"] += 1

    def sessions_lost(self, count: int) -> None:
        """Sessions of dead renderers closed as lost by this replica."""
        self.counters["sessions_lost"] += count
