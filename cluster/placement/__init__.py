"""Placement scheduler: route each new session to the edge region with the lowest cost per
avatar-hour among those that meet the latency SLO (docs/placement.md).

:func:`decide` is a pure function over a :class:`Snapshot` of regions and a client's
measurements; :mod:`cluster.placement.simulate` replays a day of sessions through it."""

from cluster.placement.decide import client_view, decide
from cluster.placement.model import (
    SLO,
    Candidate,
    ClientMeasurement,
    CostModel,
    Decision,
    Probe,
    RegionState,
    ServerView,
    Snapshot,
    great_circle_km,
)
from cluster.placement.regions import DEFAULT_REGIONS_FILE, PlacementConfig, load_regions

__all__ = [
    "DEFAULT_REGIONS_FILE",
    "SLO",
    "Candidate",
    "ClientMeasurement",
    "CostModel",
    "Decision",
    "PlacementConfig",
    "Probe",
    "RegionState",
    "ServerView",
    "Snapshot",
    "client_view",
    "decide",
    "great_circle_km",
    "load_regions",
]
