"""The placement scheduler's data: policy settings, region snapshots, client measurements and
decisions.

Settings (:class:`SLO`, :class:`CostModel`, :class:`ServerView`) are frozen pydantic models read
once from a regions file. Everything on the hot path is a frozen slotted dataclass: a
:class:`Snapshot` precomputes each region's cost per avatar-hour and position when it is built,
so a decision is a loop over plain floats.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from pydantic import Field, model_validator

from configs.schema import RegionConfig, Strict
from models.errors import InputError

EARTH_RADIUS_KM = 6371.0


class SLO(Strict):
    """What a session needs from its region's network path and capacity."""

    max_rtt_ms: float = Field(150.0, gt=0, description="Round-trip time client <-> gateway.")
    max_jitter_ms: float = Field(30.0, gt=0, description="Inter-arrival jitter of probes.")
    max_loss: float = Field(0.02, ge=0, le=1, description="Packet loss fraction.")
    reserve_fraction: float = Field(
        0.02, ge=0, lt=1, description="Share of each region's capacity kept free for "
        "reconnecting sessions: new sessions use it only when no other feasible region has room."
    )


class CostModel(Strict):
    """Cost per avatar-hour = GPU share + LLM/TTS share + egress; the score adds penalties."""

    egress_gb_per_avatar_hour: float = Field(
        0.35, ge=0, description="Video and audio sent to one client per hour (0.35 GB = about "
        "0.8 Mbit/s: 256 px H.264 at 25 fps plus Opus)."
    )
    llm_tts_sessions_per_gpu: float = Field(
        40.0, gt=0, description="Conversations whose ASR, LLM and TTS one GPU of the region "
        "serves (most of a conversation is listening): sets the LLM/TTS share."
    )
    llm_tts_fixed_per_avatar_hour_usd: float = Field(
        0.0, ge=0, description="Per avatar-hour LLM/TTS cost outside the region's GPUs "
        "(a hosted API), added to every region alike."
    )
    latency_penalty_usd_per_ms_hour: float = Field(
        0.00002, ge=0, description="Score added per ms of RTT: breaks near-ties toward "
        "closer regions (100 ms = $0.002 per avatar-hour)."
    )
    jitter_penalty_usd_per_ms_hour: float = Field(
        0.00005, ge=0, description="Score added per ms of jitter."
    )
    switch_margin_usd: float = Field(
        0.01, ge=0, description="Hysteresis: a reconnecting session leaves its previous "
        "region only if another scores at least this much lower per avatar-hour."
    )


class ServerView(Strict):
    """When the server trusts client measurements and region reports, and its own estimate."""

    @model_validator(mode="after")
    def _ordered(self) -> ServerView:
        if self.late_report_s > self.report_timeout_s:
            raise ValueError("late_report_s must not exceed report_timeout_s")
        return self

    max_measurement_age_s: float = Field(
        60.0, gt=0, description="Older client probes are ignored (the server estimates instead)."
    )
    stale_probe_max_age_s: float = Field(
        1800.0, ge=0, description="A probe older than max_measurement_age_s but not this old "
        "still informs the server's estimate, with the margins below (0 = ignore stale probes)."
    )
    stale_rtt_margin_ms: float = Field(20.0, ge=0, description="Added to a stale probe's RTT.")
    stale_jitter_factor: float = Field(1.5, ge=1, description="Multiplies a stale jitter.")
    stale_loss_factor: float = Field(1.5, ge=1, description="Multiplies a stale loss.")
    max_clock_skew_s: float = Field(
        2.0, ge=0, description="A probe time later than now by more than this is rejected."
    )
    late_report_s: float = Field(
        7.5, gt=0, description="A region whose last load report is older is used only when "
        "no region with a recent report is feasible: a failed region is shunned within 1.5 "
        "report intervals, before it is drained."
    )
    report_timeout_s: float = Field(
        15.0, gt=0, description="A region whose last load report is older is drained from "
        "decisions (three missed 5 s reports)."
    )
    fiber_km_per_ms: float = Field(200.0, gt=0, description="Light in fibre: km per ms.")
    route_factor: float = Field(
        1.5, ge=1, description="Estimated path length over great-circle distance."
    )
    base_rtt_ms: float = Field(5.0, ge=0, description="Fixed RTT of the estimate.")
    access_rtt_ms: float = Field(
        45.0, ge=0, description="Last-mile RTT added to the estimate: a congested mobile "
        "link's, so that the estimate errs on the safe side."
    )
    access_jitter_ms: float = Field(
        22.0, ge=0, description="Last-mile jitter assumed when the client measured nothing "
        "fresh (with fresh probes: the lowest jitter it measured)."
    )
    jitter_per_rtt: float = Field(
        0.1, ge=0, description="Estimated path jitter per ms of estimated RTT."
    )


@dataclass(frozen=True, slots=True)
class Probe:
    """One client's measurement of one region's gateway: RTT, jitter, loss, and when
    (``measured_at_s``: UNIX seconds on the server's clock)."""

    rtt_ms: float
    jitter_ms: float
    loss: float
    measured_at_s: float


@dataclass(frozen=True, slots=True)
class ClientMeasurement:
    """What is known about a client: its probes (region name -> :class:`Probe`) and, from the
    server's side, its approximate location (GeoIP) for the fallback estimate."""

    probes: Mapping[str, Probe] = field(default_factory=dict)
    latitude_deg: float | None = None
    longitude_deg: float | None = None


def unit_vector(latitude_deg: float, longitude_deg: float) -> tuple[float, float, float]:
    """A point on the sphere as a 3-D unit vector (great-circle distances by dot product)."""
    lat, lon = math.radians(latitude_deg), math.radians(longitude_deg)
    return (math.cos(lat) * math.cos(lon), math.cos(lat) * math.sin(lon), math.sin(lat))


def great_circle_km(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Distance in km between two (latitude, longitude) points in degrees."""
    ua, ub = unit_vector(*a), unit_vector(*b)
    dot = max(-1.0, min(1.0, ua[0] * ub[0] + ua[1] * ub[1] + ua[2] * ub[2]))
    return EARTH_RADIUS_KM * math.acos(dot)


@dataclass(frozen=True, slots=True)
class RegionState:
    """One region as the scheduler sees it: static config plus its last load report."""

    name: str
    gateway_url: str
    gpu_type: str
    price_per_gpu_hour_usd: float
    egress_price_per_gb_usd: float
    sessions_per_gpu: int
    capacity_sessions: int
    active_sessions: int = 0
    reported_at_s: float = 0.0
    latitude_deg: float = 0.0
    longitude_deg: float = 0.0
    draining: bool = False

    def __post_init__(self) -> None:
        for key in ("price_per_gpu_hour_usd", "egress_price_per_gb_usd", "capacity_sessions",
                    "active_sessions"):
            value = getattr(self, key)
            if not value >= 0:
                raise InputError(f"region {self.name!r}: {key} must be >= 0, got {value!r}")
        if self.sessions_per_gpu < 1:
            raise InputError(f"region {self.name!r}: sessions_per_gpu must be >= 1, got "
                             f"{self.sessions_per_gpu!r}")

    @classmethod
    def from_config(cls, cfg: RegionConfig, *, active_sessions: int = 0,
                    reported_at_s: float = 0.0, draining: bool = False) -> RegionState:
        """The configured region with a load report."""
        return cls(
            name=cfg.name, gateway_url=cfg.gateway_url, gpu_type=cfg.gpu_type,
            price_per_gpu_hour_usd=cfg.price_per_gpu_hour_usd,
            egress_price_per_gb_usd=cfg.egress_price_per_gb_usd,
            sessions_per_gpu=cfg.sessions_per_gpu,
            capacity_sessions=cfg.renderer_capacity_sessions, active_sessions=active_sessions,
            reported_at_s=reported_at_s, latitude_deg=cfg.latitude_deg,
            longitude_deg=cfg.longitude_deg, draining=draining,
        )

    def cost_per_avatar_hour_usd(self, cost: CostModel) -> float:
        """GPU share (renderer) + LLM/TTS share + egress, in USD per avatar-hour."""
        gpu = self.price_per_gpu_hour_usd / self.sessions_per_gpu
        llm_tts = (self.price_per_gpu_hour_usd / cost.llm_tts_sessions_per_gpu
                   + cost.llm_tts_fixed_per_avatar_hour_usd)
        return gpu + llm_tts + cost.egress_gb_per_avatar_hour * self.egress_price_per_gb_usd


class _Texts(NamedTuple):
    """Pieces of explanations precomputed per snapshot, so that a decision formats no floats
    but RTT and jitter."""

    head: tuple[tuple[str, str], ...]     # [region][sticky]
    cost: tuple[str, ...]                 # [region]: " ms, $0.0848/avatar-h)"
    feasible: tuple[str, ...]             # [count]: "; 3/8 regions feasible"
    alt: tuple[tuple[str, ...], ...]  # [chosen][other]: "; next X +$0.0054", "; X -$0.0077 but "

    @classmethod
    def build(cls, names: tuple[str, ...], cost_usd: tuple[float, ...]) -> _Texts:
        n = len(names)

        def alt(a: float, k: int) -> str:
            b = cost_usd[k]
            return (f"; next {names[k]} +${b - a:.4f}" if b >= a
                    else f"; {names[k]} -${a - b:.4f} but ")

        return cls(
            head=tuple((f"{name}: lowest cost meeting the SLO (rtt ",
                        f"{name}: kept on reconnect (rtt ") for name in names),
            cost=tuple(f" ms, ${c:.4f}/avatar-h)" for c in cost_usd),
            feasible=tuple(f"; {k}/{n} regions feasible" for k in range(n + 1)),
            alt=tuple(tuple(alt(a, k) for k in range(n)) for a in cost_usd),
        )


@dataclass(frozen=True)
class Snapshot:
    """Regions, their loads and the policy at one instant, with per-region constants
    precomputed for :func:`cluster.placement.decide.decide`."""

    regions: tuple[RegionState, ...]
    slo: SLO = field(default_factory=SLO)
    cost: CostModel = field(default_factory=CostModel)
    view: ServerView = field(default_factory=ServerView)
    names: tuple[str, ...] = field(init=False, repr=False)
    index: Mapping[str, int] = field(init=False, repr=False)
    cost_usd: tuple[float, ...] = field(init=False, repr=False)
    capacity: tuple[int, ...] = field(init=False, repr=False)
    load: tuple[int, ...] = field(init=False, repr=False)
    free: tuple[int, ...] = field(init=False, repr=False)
    no_pending: tuple[int, ...] = field(init=False, repr=False)
    cost_text: tuple[str, ...] = field(init=False, repr=False)
    gateway_url: tuple[str, ...] = field(init=False, repr=False)
    fresh_until_s: float = field(init=False, repr=False)
    texts: _Texts = field(init=False, repr=False)
    limits: tuple[float, float, float, float, float] = field(init=False, repr=False)
    reserve: tuple[int, ...] = field(init=False, repr=False)
    reported_at_s: tuple[float, ...] = field(init=False, repr=False)
    draining: tuple[bool, ...] = field(init=False, repr=False)
    position: tuple[tuple[float, float, float], ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.regions:
            raise InputError("a placement snapshot needs at least one region")
        names = tuple(r.name for r in self.regions)
        if len(set(names)) != len(names):
            raise InputError(f"region names must be unique, got {list(names)}")
        put = object.__setattr__
        put(self, "names", names)
        put(self, "index", {name: i for i, name in enumerate(names)})
        put(self, "cost_usd", tuple(r.cost_per_avatar_hour_usd(self.cost) for r in self.regions))
        put(self, "capacity", tuple(r.capacity_sessions for r in self.regions))
        put(self, "load", tuple(r.active_sessions for r in self.regions))
        put(self, "free", tuple(r.capacity_sessions - r.active_sessions for r in self.regions))
        put(self, "no_pending", (0,) * len(self.regions))
        put(self, "gateway_url", tuple(r.gateway_url for r in self.regions))
        put(self, "cost_text", tuple(f"${c:.4f}/avatar-h" for c in self.cost_usd))
        put(self, "texts", _Texts.build(names, self.cost_usd))
        put(self, "limits", (self.slo.max_rtt_ms, self.slo.max_jitter_ms, self.slo.max_loss,
                             self.cost.latency_penalty_usd_per_ms_hour,
                             self.cost.jitter_penalty_usd_per_ms_hour))
        put(self, "reserve", tuple(math.ceil(r.capacity_sessions * self.slo.reserve_fraction)
                                   for r in self.regions))
        put(self, "reported_at_s", tuple(r.reported_at_s for r in self.regions))
        put(self, "draining", tuple(r.draining for r in self.regions))
        put(self, "fresh_until_s", self._fresh_until())
        put(self, "position", tuple(unit_vector(r.latitude_deg, r.longitude_deg)
                                    for r in self.regions))

    def with_reports(self, active_sessions: Sequence[int], reported_at_s: Sequence[float],
                     draining: Sequence[bool] | None = None) -> Snapshot:
        """The same regions with new load reports (one entry per region, in order)."""
        if len(active_sessions) != len(self.regions) or len(reported_at_s) != len(self.regions):
            raise InputError(f"load reports need one entry per region ({len(self.regions)})")
        flags = self.draining if draining is None else draining
        regions = tuple(
            RegionState(r.name, r.gateway_url, r.gpu_type, r.price_per_gpu_hour_usd,
                        r.egress_price_per_gb_usd, r.sessions_per_gpu, r.capacity_sessions,
                        int(a), float(t), r.latitude_deg, r.longitude_deg, bool(d))
            for r, a, t, d in zip(self.regions, active_sessions, reported_at_s, flags,
                                  strict=True)
        )
        # Static per-region constants carry over; only the reported figures are new.
        new = object.__new__(Snapshot)
        new.__dict__.update(self.__dict__)
        put = object.__setattr__
        put(new, "regions", regions)
        put(new, "load", tuple(r.active_sessions for r in regions))
        put(new, "free", tuple(r.capacity_sessions - r.active_sessions for r in regions))
        put(new, "reported_at_s", tuple(r.reported_at_s for r in regions))
        put(new, "draining", tuple(r.draining for r in regions))
        put(new, "fresh_until_s", new._fresh_until())
        return new

    def _fresh_until(self) -> float:
        """Until when every region's report is recent and none is draining (-inf if one is
        draining): before it, a decision skips the per-region checks."""
        if any(self.draining):
            return -math.inf
        return min(self.reported_at_s) + self.view.late_report_s


class Candidate(NamedTuple):
    """One region as ranked for one decision; ``reason`` says why it is or is not feasible."""

    region: str
    cost_per_avatar_hour_usd: float
    score_usd: float
    rtt_ms: float
    jitter_ms: float
    loss: float
    estimated: bool
    feasible: bool
    reason: str


# Why a region is or is not feasible for one decision (Ranking.codes). OK, RESERVE and LATE
# are feasible; RESERVE (nearly full) and LATE (late load report) only as a second choice.
OK, RESERVE, LATE, DRAINED, DRAINING, AVOIDED, FULL, RTT, JITTER, LOSS = range(10)


class Ranking(NamedTuple):
    """A decision's raw per-region figures (lists in snapshot order); :meth:`candidates`
    formats them when asked, so that the decision itself formats only its explanation."""

    snapshot: Snapshot
    now_s: float
    codes: list[int]
    rtt_ms: list[float]
    jitter_ms: list[float]
    loss: list[float]
    estimated: list[bool]

    def code(self, i: int) -> int:
        """The reason code of region ``i``."""
        return self.codes[i]

    def score(self, i: int) -> float:
        """Region ``i``'s score: cost per avatar-hour plus latency and jitter penalties."""
        cost = self.snapshot.cost
        return (self.snapshot.cost_usd[i] + cost.latency_penalty_usd_per_ms_hour * self.rtt_ms[i]
                + cost.jitter_penalty_usd_per_ms_hour * self.jitter_ms[i])

    def reason(self, i: int) -> str:
        """Why region ``i`` is or is not feasible, in words."""
        code, snap = self.code(i), self.snapshot
        slo = snap.slo
        if code == OK:
            return "ok"
        if code == RESERVE:
            return "ok (reconnect reserve)"
        if code == LATE:
            return f"ok (late load report: {self.now_s - snap.reported_at_s[i]:.0f} s)"
        if code == DRAINED:
            return f"drained: no load report for {self.now_s - snap.reported_at_s[i]:.0f} s"
        if code == DRAINING:
            return "draining"
        if code == AVOIDED:
            return "unreachable for this client"
        if code == FULL:
            return "full"
        if code == RTT:
            return f"rtt {self.rtt_ms[i]:.0f} ms > {slo.max_rtt_ms:g}"
        if code == JITTER:
            return f"jitter {self.jitter_ms[i]:.0f} ms > {slo.max_jitter_ms:g}"
        return f"loss {self.loss[i]:.1%} > {slo.max_loss:.1%}"

    def candidates(self) -> tuple[Candidate, ...]:
        """Every region ranked: feasible ones by score, then the rest by score."""
        snap = self.snapshot
        scores = [self.score(i) for i in range(len(self.codes))]
        order = sorted(range(len(self.codes)), key=lambda i: (self.codes[i] > LATE, scores[i]))
        return tuple(
            Candidate(snap.names[i], snap.cost_usd[i], scores[i], self.rtt_ms[i],
                      self.jitter_ms[i], self.loss[i], self.estimated[i],
                      self.codes[i] <= LATE, self.reason(i))
            for i in order
        )


class Decision(NamedTuple):
    """Where a session goes, what it costs, and why (``explanation`` goes back to the client).

    ``candidates`` ranks every region: feasible ones by score, then the rest. (A named tuple:
    immutable and cheap to build on the hot path.)"""

    region: str
    gateway_url: str
    cost_per_avatar_hour_usd: float
    score_usd: float
    rtt_ms: float
    jitter_ms: float
    slo_met: bool
    sticky: bool
    estimated: bool
    explanation: str
    ranking: Ranking

    @property
    def candidates(self) -> tuple[Candidate, ...]:
        """Every region ranked, with its cost, path figures and reason."""
        return self.ranking.candidates()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary returned with the session."""
        return {
            "region": self.region, "gateway_url": self.gateway_url,
            "cost_per_avatar_hour_usd": round(self.cost_per_avatar_hour_usd, 6),
            "rtt_ms": _ms(self.rtt_ms), "jitter_ms": _ms(self.jitter_ms),
            "slo_met": self.slo_met, "sticky": self.sticky, "estimated": self.estimated,
            "explanation": self.explanation,
            "candidates": [
                {"region": c.region, "cost_per_avatar_hour_usd": round(c.cost_per_avatar_hour_usd,
                                                                        6),
                 "rtt_ms": _ms(c.rtt_ms), "jitter_ms": _ms(c.jitter_ms),
                 "estimated": c.estimated, "feasible": c.feasible, "reason": c.reason}
                for c in self.candidates
            ],
        }


def _ms(value: float) -> float | None:
    """A JSON-safe millisecond figure: None when unknown (no probe and no client location)."""
    return round(value, 1) if math.isfinite(value) else None
