"""What a capacity plan is made of: renderer options per GPU type, pools of nodes hour by hour,
one region's plan and the whole plan with its comparisons. Plain data with derived totals;
:mod:`cluster.plan.solve` fills them in."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from cluster.plan.figures import Figure
from cluster.plan.inputs import HOURS, RegionPrices, TrafficProfile

DAYS_PER_MONTH = 30  # the brief's month: $1/h x 720 h = $720
BASELINE_USD_PER_HOUR = (1.0, 5.0)  # one GPU per stream
HOSTED_USD_PER_AVATAR_HOUR = (6.0, 12.0)


@dataclass(frozen=True)
class RendererOption:
    """One GPU type as a renderer node in one region."""

    gpu: str
    price_per_hour_usd: float
    limits: dict[str, float]  # resource -> sessions one node holds at 100 %
    sessions_per_node: int  # what the plan puts on a node (target utilization, cap)
    binding: str
    problem: str | None = None  # why this type cannot meet the SLOs

    @property
    def cost_per_session_hour_usd(self) -> float:
        if not self.sessions_per_node:
            return math.inf
        return self.price_per_hour_usd / self.sessions_per_node


@dataclass(frozen=True)
class Pool:
    """Nodes of one kind in one region, hour by hour (UTC)."""

    name: str  # renderer, encode, llm, speech, cpu, head, network
    resource: str  # what one node is
    price_per_node_hour_usd: float
    nodes_by_hour: tuple[int, ...]
    capacity_per_node: float
    capacity_unit: str
    demand_at_peak: float
    headroom_at_peak: float
    binding: str
    cost_per_day_usd: float
    on: str | None = None  # hosted on another pool's nodes (no nodes of its own)

    @property
    def min_nodes(self) -> int:
        return min(self.nodes_by_hour)

    @property
    def max_nodes(self) -> int:
        return max(self.nodes_by_hour)


@dataclass(frozen=True)
class RegionPlan:
    """One region's fleet and costs."""

    name: str
    prices: RegionPrices
    hourly_sessions: tuple[float, ...]
    pools: tuple[Pool, ...]
    renderer: RendererOption
    options: tuple[RendererOption, ...]
    egress_cost_per_day_usd: float

    @property
    def peak_sessions(self) -> float:
        return max(self.hourly_sessions)

    @property
    def avatar_hours_per_day(self) -> float:
        return sum(self.hourly_sessions)

    @property
    def compute_cost_per_day_usd(self) -> float:
        return sum(p.cost_per_day_usd for p in self.pools if p.name != "network")

    @property
    def cost_per_day_usd(self) -> float:
        return self.compute_cost_per_day_usd + self.egress_cost_per_day_usd

    def pool(self, name: str) -> Pool | None:
        return next((p for p in self.pools if p.name == name), None)

    def worker_groups(self) -> dict[str, tuple[int, int]]:
        """Ray/KubeRay worker groups: (min, max) nodes over the day, one GPU per GPU node."""
        gpu = [sum(p.nodes_by_hour[h] for p in self.pools if p.name in ("renderer", "llm",
                                                                         "speech"))
               for h in range(HOURS)]
        cpu = self.pool("cpu")
        cpu_nodes = cpu.nodes_by_hour if cpu else (0,) * HOURS
        return {"gpu": (min(gpu), max(gpu)), "cpu": (min(cpu_nodes), max(cpu_nodes))}


@dataclass
class Plan:
    """The whole plan: regions, totals, comparisons, and every figure it used."""

    traffic: TrafficProfile
    regions: list[RegionPlan]
    figures: dict[str, Figure] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def avatar_hours_per_day(self) -> float:
        return sum(r.avatar_hours_per_day for r in self.regions)

    @property
    def cost_per_day_usd(self) -> float:
        return sum(r.cost_per_day_usd for r in self.regions)

    @property
    def compute_cost_per_day_usd(self) -> float:
        return sum(r.compute_cost_per_day_usd for r in self.regions)

    @property
    def cost_per_avatar_hour_usd(self) -> float:
        return self.cost_per_day_usd / self.avatar_hours_per_day

    @property
    def compute_cost_per_avatar_hour_usd(self) -> float:
        return self.compute_cost_per_day_usd / self.avatar_hours_per_day

    @property
    def monthly_cost_usd(self) -> float:
        return self.cost_per_day_usd * DAYS_PER_MONTH

    @property
    def sum_of_peaks(self) -> float:
        return sum(r.peak_sessions for r in self.regions)

    def comparisons(self) -> list[dict[str, object]]:
        """This plan against the brief's baseline and hosted avatar prices."""
        hours_month = self.avatar_hours_per_day * DAYS_PER_MONTH
        per_stream_month = tuple(p * 24 * DAYS_PER_MONTH for p in BASELINE_USD_PER_HOUR)
        plan = self.cost_per_avatar_hour_usd
        return [
            {"name": "this plan", "cost_per_avatar_hour_usd": [plan, plan],
             "monthly_usd": [self.monthly_cost_usd] * 2, "times_this_plan": [1.0, 1.0]},
            {"name": "baseline: one GPU per stream", "cost_per_avatar_hour_usd":
                list(BASELINE_USD_PER_HOUR), "monthly_usd":
                [self.sum_of_peaks * m for m in per_stream_month],
             "times_this_plan": [p / plan for p in BASELINE_USD_PER_HOUR]},
            {"name": "hosted avatar API", "cost_per_avatar_hour_usd":
                list(HOSTED_USD_PER_AVATAR_HOUR), "monthly_usd":
                [hours_month * p for p in HOSTED_USD_PER_AVATAR_HOUR],
             "times_this_plan": [p / plan for p in HOSTED_USD_PER_AVATAR_HOUR]},
        ]
