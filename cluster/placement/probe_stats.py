"""Probe results and the estimators behind them: RTT percentiles and RFC 3550 interarrival
jitter (docs/placement-probes.md). Pure functions over timestamps, no I/O."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from models.errors import InputError

if TYPE_CHECKING:
    from cluster.placement.model import Probe


@dataclass(frozen=True, slots=True)
class EchoSample:
    """One probe: when it left (client clock, ms), when the server got it (server clock, ms)
    and when its echo came back (client clock, ms); ``None`` for a lost one."""

    seq: int
    sent_ms: float
    server_ms: float | None = None
    received_ms: float | None = None

    @property
    def rtt_ms(self) -> float | None:
        """Round-trip time, or None if the echo was lost."""
        return None if self.received_ms is None else self.received_ms - self.sent_ms

    @property
    def downlink_transit_ms(self) -> float | None:
        """Server -> client transit plus the (constant) clock offset, or None if lost."""
        if self.received_ms is None or self.server_ms is None:
            return None
        return self.received_ms - self.server_ms

    @property
    def uplink_transit_ms(self) -> float | None:
        """Client -> server transit plus the (constant) clock offset, or None if lost."""
        return None if self.server_ms is None else self.server_ms - self.sent_ms


@dataclass(frozen=True, slots=True)
class RttStats:
    """Round-trip time percentiles of the echoes that came back, in ms."""

    p50: float
    p95: float
    min: float


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """What a client measured to one region's gateway.

    ``jitter_ms``: RFC 3550 interarrival jitter of the downlink (an exponential average over
    about the last 16 echoes); ``jitter_mad_ms``: the plain mean of ``|D(i-1,i)|`` over the
    whole run (the value ``jitter_ms`` estimates, with less noise); ``uplink_jitter_ms``: the
    RFC 3550 jitter of client -> server transit. ``rtt_ms`` is None when nothing came back.
    """

    target: str
    transport: str
    count: int
    received: int
    loss: float
    rtt_ms: RttStats | None
    jitter_ms: float
    jitter_mad_ms: float
    uplink_jitter_ms: float
    measured_at_s: float
    samples: tuple[EchoSample, ...] = ()

    def to_probe(self) -> Probe:
        """The scheduler's view of this measurement (median RTT, RFC 3550 jitter, loss); a
        gateway that never answered reads as unreachable (the largest RTT and jitter the
        scheduler accepts, loss 1)."""
        from cluster.placement.decide import MAX_PROBE_MS
        from cluster.placement.model import Probe

        if self.rtt_ms is None:
            return Probe(MAX_PROBE_MS, MAX_PROBE_MS, 1.0, self.measured_at_s)
        return Probe(self.rtt_ms.p50, self.jitter_ms, self.loss, self.measured_at_s)

    def to_dict(self, *, samples: bool = False) -> dict[str, Any]:
        """A JSON-ready summary (with the raw samples when ``samples``)."""
        out = asdict(self)
        if not samples:
            del out["samples"]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ProbeResult:
        """The inverse of :meth:`to_dict`."""
        rtt = data.get("rtt_ms")
        fields = {k: v for k, v in data.items() if k not in ("rtt_ms", "samples")}
        return cls(**fields, rtt_ms=RttStats(**rtt) if rtt else None,
                   samples=tuple(EchoSample(**s) for s in data.get("samples", ())))


def _deltas(transit_ms: Sequence[float | None]) -> list[float]:
    """``|D(i-1,i)|`` between consecutive received packets (lost ones, None, are skipped)."""
    got = [t for t in transit_ms if t is not None]
    return [abs(b - a) for a, b in itertools.pairwise(got)]


def rfc3550_jitter(transit_ms: Sequence[float | None]) -> float:
    """RFC 3550 (section 6.4.1) interarrival jitter of a transit-time series in send order:
    ``J(i) = J(i-1) + (|D(i-1,i)| - J(i-1)) / 16`` from ``J = 0``."""
    jitter = 0.0
    for d in _deltas(transit_ms):
        jitter += (d - jitter) / 16.0
    return jitter


def mean_abs_delta(transit_ms: Sequence[float | None]) -> float:
    """Mean of ``|D(i-1,i)|`` over consecutive received packets: what RFC 3550 jitter
    converges to, computed directly (0 with fewer than two)."""
    deltas = _deltas(transit_ms)
    return sum(deltas) / len(deltas) if deltas else 0.0


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) with linear interpolation; values need not be sorted."""
    if not values:
        raise InputError("percentile of an empty series")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def summarize(samples: Sequence[EchoSample], *, target: str, transport: str,
              measured_at_s: float, keep_samples: bool = True) -> ProbeResult:
    """Turn raw samples (any order) into a :class:`ProbeResult`."""
    ordered = sorted(samples, key=lambda s: s.seq)
    rtts = [r for s in ordered if (r := s.rtt_ms) is not None]
    down = [s.downlink_transit_ms for s in ordered]
    up = [s.uplink_transit_ms for s in ordered]
    stats = (RttStats(percentile(rtts, 50), percentile(rtts, 95), min(rtts)) if rtts else None)
    count = len(ordered)
    return ProbeResult(
        target=target, transport=transport, count=count, received=len(rtts),
        loss=1.0 - len(rtts) / count if count else 1.0, rtt_ms=stats,
        jitter_ms=rfc3550_jitter(down), jitter_mad_ms=mean_abs_delta(down),
        uplink_jitter_ms=rfc3550_jitter(up), measured_at_s=measured_at_s,
        samples=tuple(ordered) if keep_samples else (),
    )
