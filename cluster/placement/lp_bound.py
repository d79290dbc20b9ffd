"""A lower bound on the cost per avatar-hour of any placement of a workload: a linear program
solved by HiGHS (``scipy.optimize.linprog(method="highs")``).

Clients are grouped into classes by the set of regions that truly meet their SLO (a bitmask);
time into 30-minute slots. Variables are the avatar-hours of each class served by each region
in each slot. Each class's avatar-hours in a slot must be served; each region serves at most
capacity x slot length x the share of the slot it is up. Serving a class from a region outside
its set costs a large penalty, leaving the capacity unused a larger one, so the LP first
minimises SLO misses and then cost. Sessions may move between regions at every slot boundary
and fractionally: any real placement is a feasible point, so the optimum is a lower bound.
"""

from __future__ import annotations

import time

import numpy as np
from scipy.optimize import linprog
from scipy.sparse import coo_matrix

from cluster.placement.model import Snapshot
from cluster.placement.workload import Workload
from models.errors import BackendError

SLOT_S = 1800.0


def _demand(work: Workload, n_slots: int) -> tuple[np.ndarray, np.ndarray]:
    """Avatar-hours per (class, slot) and each class's region mask."""
    masks, cls = np.unique(work.feasible_mask, return_inverse=True)
    demand = np.zeros((len(masks), n_slots))
    start, end = work.arrival_s, work.end_s
    first = (start // SLOT_S).astype(np.int64)
    span = int(((end // SLOT_S).astype(np.int64) - first).max()) if work.size else 0
    for k in range(span + 1):
        slot = first + k
        overlap = np.minimum(end, (slot + 1) * SLOT_S) - np.maximum(start, slot * SLOT_S)
        keep = overlap > 0
        np.add.at(demand, (cls[keep], slot[keep]), overlap[keep] / 3600.0)
    return demand, masks


def lp_bound(snap: Snapshot, work: Workload) -> dict:
    """Solve the LP; returns its cost per avatar-hour and how much it had to miss the SLO."""
    started = time.perf_counter()
    n_regions = len(snap.names)
    horizon = float(work.end_s.max()) if work.size else SLOT_S
    n_slots = int(np.ceil(horizon / SLOT_S))
    demand, masks = _demand(work, n_slots)
    cost = np.asarray(snap.cost_usd)
    penalty, unserved = 10.0 * cost.max(), 100.0 * cost.max()
    up = np.ones((n_regions, n_slots))
    for region, a, b in work.failures:
        for t in range(int(a // SLOT_S), min(n_slots, int(b // SLOT_S) + 1)):
            down = min(b, (t + 1) * SLOT_S) - max(a, t * SLOT_S)
            up[region, t] -= max(0.0, down) / SLOT_S
    cap_hours = np.asarray(snap.capacity, dtype=float)[:, None] * (SLOT_S / 3600.0) * up

    pairs = np.argwhere(demand > 0)  # (class, slot) rows of the equality constraints
    n_pairs = len(pairs)
    n_vars = n_pairs * (n_regions + 1)
    var = np.arange(n_pairs * n_regions).reshape(n_pairs, n_regions)
    region_ok = (masks[pairs[:, 0], None] >> np.arange(n_regions)) & 1
    c = np.concatenate([(cost[None, :] + penalty * (1 - region_ok)).ravel(),
                        np.full(n_pairs, unserved)])
    eq_rows = np.concatenate([np.repeat(np.arange(n_pairs), n_regions), np.arange(n_pairs)])
    eq_cols = np.concatenate([var.ravel(), n_pairs * n_regions + np.arange(n_pairs)])
    a_eq = coo_matrix((np.ones(len(eq_rows)), (eq_rows, eq_cols)), shape=(n_pairs, n_vars))
    b_eq = demand[pairs[:, 0], pairs[:, 1]]
    ub_rows = (np.arange(n_regions)[None, :] * n_slots + pairs[:, 1, None]).ravel()
    a_ub = coo_matrix((np.ones(var.size), (ub_rows, var.ravel())),
                      shape=(n_regions * n_slots, n_vars))
    b_ub = cap_hours.ravel()
    result = linprog(c, A_ub=a_ub.tocsr(), b_ub=b_ub, A_eq=a_eq.tocsr(), b_eq=b_eq,
                     bounds=(0, None), method="highs")
    if result.status != 0:
        raise BackendError(f"the LP bound did not solve: {result.message}", retryable=False)
    x = result.x[: n_pairs * n_regions].reshape(n_pairs, n_regions)
    served = float(x.sum())
    total = float(b_eq.sum())
    return {
        "cost_per_avatar_hour_usd": round(float((x * cost[None, :]).sum()) / served, 5)
        if served else 0.0,
        "avatar_hours": round(served, 1),
        "slo_missed_hours_share": round(float((x * (1 - region_ok)).sum()) / total, 6)
        if total else 0.0,
        "unserved_hours_share": round(1.0 - served / total, 6) if total else 0.0,
        "client_classes": len(masks),
        "slots": n_slots,
        "variables": n_vars,
        "solve_s": round(time.perf_counter() - started, 2),
    }
