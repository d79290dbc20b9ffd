"""Baseline placement policies the scheduler is measured against: nearest-RTT, cheapest and
random. They see what the scheduler sees (the same validated measurements, load reports and
drained regions) and only ever pick a region with a free session."""

from __future__ import annotations

import random
from collections.abc import Callable, Collection, Sequence

from cluster.placement.decide import client_view
from cluster.placement.model import ClientMeasurement, Snapshot
from models.errors import ClusterFull

Baseline = Callable[[Snapshot, ClientMeasurement, float, Collection[str], Sequence[int]], int]


def usable_regions(snap: Snapshot, now_s: float, avoid: Collection[str],
                   pending: Sequence[int]) -> list[int]:
    """Regions that report, are not draining or avoided, and have a free session."""
    stale_before = now_s - snap.view.report_timeout_s
    found = [i for i in range(len(snap.names))
             if snap.reported_at_s[i] >= stale_before and not snap.draining[i]
             and snap.free[i] - pending[i] >= 1 and snap.names[i] not in avoid]
    if not found:
        raise ClusterFull("no region has a free session")
    return found


def nearest(snap: Snapshot, measurement: ClientMeasurement, now_s: float,
            avoid: Collection[str], pending: Sequence[int]) -> int:
    """The region with the lowest (measured or estimated) RTT."""
    rtt = client_view(snap, measurement, now_s)[0]
    return min(usable_regions(snap, now_s, avoid, pending), key=rtt.__getitem__)


def cheapest(snap: Snapshot, measurement: ClientMeasurement, now_s: float,
             avoid: Collection[str], pending: Sequence[int]) -> int:
    """The region with the lowest cost per avatar-hour, whatever the latency."""
    client_view(snap, measurement, now_s)  # the same validation as every policy
    return min(usable_regions(snap, now_s, avoid, pending), key=snap.cost_usd.__getitem__)


def random_policy(seed: int) -> Baseline:
    """Uniformly at random among usable regions (reproducible with ``seed``)."""
    rng = random.Random(seed)

    def choose(snap: Snapshot, measurement: ClientMeasurement, now_s: float,
               avoid: Collection[str], pending: Sequence[int]) -> int:
        client_view(snap, measurement, now_s)
        return rng.choice(usable_regions(snap, now_s, avoid, pending))

    return choose


BASELINES: dict[str, Callable[[int], Baseline]] = {
    "nearest": lambda seed: nearest,
    "cheapest": lambda seed: cheapest,
    "random": random_policy,
}
