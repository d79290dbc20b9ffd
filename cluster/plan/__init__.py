"""Capacity planning: ``avatarctl plan`` turns a traffic profile, SLOs, list prices and the
benchmarks' measured capacities into node counts, worker-group sizes and costs per region.

- :mod:`cluster.plan.inputs`: traffic profile, SLOs, stack, fleet choices, price list.
- :mod:`cluster.plan.figures`: measured capacities from benchmark JSON, documented defaults.
- :mod:`cluster.plan.solve`: the pure arithmetic (pools, nodes, costs, binding resource).
- :mod:`cluster.plan.result`: what a plan is made of (pools, region plans, comparisons).
- :mod:`cluster.plan.report`: rich tables, JSON, the PNG plot.
- :mod:`cluster.plan.emit`: worker-group sizes written into copies of the manifests.
"""

from cluster.plan.figures import Figure, Measured, load_measured
from cluster.plan.inputs import PriceList, TrafficProfile, load_pricing, load_traffic
from cluster.plan.solve import Plan, RegionPlan, make_plan

__all__ = [
    "Figure", "Measured", "Plan", "PriceList", "RegionPlan", "TrafficProfile", "load_measured",
    "load_pricing", "load_traffic", "make_plan",
]
