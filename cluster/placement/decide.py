"""The placement decision: a pure function over a :class:`Snapshot` and a client's measurements.

1. :func:`client_view` validates the client's probes (bounds, clock) and replaces missing or
   stale ones by the server's own estimate from great-circle distance.
2. A region is *feasible* when it reports (no report for ``report_timeout_s`` = drained), is not
   draining, has a free session and its RTT, jitter and loss meet the SLO.
3. Among feasible regions the lowest score wins: cost per avatar-hour plus a latency and jitter
   penalty. Regions above their reconnect reserve and with a recent report (within
   ``late_report_s``) come first; the others only when none of those is feasible.
4. A reconnecting session keeps its previous region while it stays feasible and no region
   scores ``switch_margin_usd`` less (stickiness with hysteresis).
5. With no feasible region the session goes where the SLO is missed by the least (best
   effort, ``slo_met=False``); with no free capacity anywhere, :class:`ClusterFull`.

No I/O, no clock: the caller passes ``now_s`` and its own placements since the last reports.
The common case (a fresh probe of every region, every region reporting) takes one pass over
the regions (:func:`_fresh_pass`); anything else takes the general path, with the same rules.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence

from cluster.placement.model import (
    AVOIDED,
    DRAINED,
    DRAINING,
    EARTH_RADIUS_KM,
    FULL,
    JITTER,
    LATE,
    LOSS,
    OK,
    RESERVE,
    RTT,
    ClientMeasurement,
    Decision,
    Probe,
    Ranking,
    ServerView,
    Snapshot,
    unit_vector,
)
from models.errors import ClusterFull, InputError

MAX_PROBE_MS = 10_000.0
_INF = math.inf


def _probe_error(region: str, p: Probe, now_s: float, skew_s: float) -> InputError:
    """Say precisely what is wrong with a probe that failed the bounds check."""
    where = f"measurement for region {region!r}"
    for key, top in (("rtt_ms", MAX_PROBE_MS), ("jitter_ms", MAX_PROBE_MS), ("loss", 1.0)):
        value = getattr(p, key)
        if not isinstance(value, int | float) or not 0.0 <= value <= top:
            allowed = "a fraction between 0 and 1" if key == "loss" else f"between 0 and {top:g}"
            return InputError(f"{where}: {key} must be {allowed}, got {value!r}; send what the "
                              "probe measured")
    t = p.measured_at_s
    if not isinstance(t, int | float) or t != t:
        return InputError(f"{where}: measured_at_s must be a time in UNIX seconds, got {t!r}")
    return InputError(f"{where}: measured_at_s is {t - now_s:.1f} s in the future (allowed skew "
                      f"{skew_s:g} s); send the time the probe ran, in UNIX seconds on a "
                      "synchronised clock")


def client_view(
    snap: Snapshot, measurement: ClientMeasurement, now_s: float
) -> tuple[list[float], list[float], list[float], list[bool]]:
    """Per region (in snapshot order): RTT ms, jitter ms, loss and whether it is the server's
    estimate. Where a fresh probe is missing the estimate is the client's stale probe with
    margins, else great-circle distance. Raises :class:`InputError` for a probe out of bounds
    or from the future; probes of unknown regions are ignored."""
    n = len(snap.names)
    rtt: list[float] = [-1.0] * n
    jit: list[float] = [0.0] * n
    loss: list[float] = [0.0] * n
    view = snap.view
    horizon = now_s + view.max_clock_skew_s
    oldest = now_s - view.max_measurement_age_s
    index = snap.index
    fresh = 0
    stale: list[tuple[int, float, float, float, float]] = []
    for name, p in measurement.probes.items():
        r, j, lo, t = p.rtt_ms, p.jitter_ms, p.loss, p.measured_at_s
        try:
            ok = (0.0 <= r <= MAX_PROBE_MS and 0.0 <= j <= MAX_PROBE_MS and 0.0 <= lo <= 1.0
                  and t <= horizon)
        except TypeError:
            ok = False
        if not ok:
            raise _probe_error(name, p, now_s, view.max_clock_skew_s)
        i = index.get(name)
        if i is None:
            continue
        if t < oldest:
            stale.append((i, r, j, lo, t))
            continue
        rtt[i] = r
        jit[i] = j
        loss[i] = lo
        fresh += 1
    if fresh == n:
        return rtt, jit, loss, [False] * n
    est = [False] * n
    if fresh:
        access_jit = est_loss = _INF
        for i in range(n):
            if rtt[i] >= 0.0:
                if jit[i] < access_jit:
                    access_jit = jit[i]
                if loss[i] < est_loss:
                    est_loss = loss[i]
    else:
        access_jit, est_loss = view.access_jitter_ms, 0.0
    if stale:
        _use_stale(view, now_s, stale, rtt, jit, loss, est)
        if fresh + sum(est) == n:
            return rtt, jit, loss, est
        if not fresh and any(est):
            access_jit = min(jit[i] for i in range(n) if est[i])
            est_loss = min(loss[i] for i in range(n) if est[i])
    lat, lon = measurement.latitude_deg, measurement.longitude_deg
    if lat is None or lon is None:
        for i in range(n):
            if rtt[i] < 0.0:
                rtt[i], jit[i], est[i] = _INF, _INF, True
        return rtt, jit, loss, est
    # Great-circle distance x route factor, plus the client's last mile: its lowest measured
    # jitter and loss when it sent any probe, else the configured allowance.
    cx, cy, cz = unit_vector(lat, lon)
    km_to_ms = 2.0 * view.route_factor / view.fiber_km_per_ms * EARTH_RADIUS_KM
    fixed = view.base_rtt_ms + view.access_rtt_ms
    per_rtt = view.jitter_per_rtt
    position = snap.position
    acos = math.acos
    for i in range(n):
        if rtt[i] < 0.0:
            x, y, z = position[i]
            dot = cx * x + cy * y + cz * z
            value = fixed + km_to_ms * acos(dot if -1.0 <= dot <= 1.0 else 1.0 if dot > 0 else -1.0)
            rtt[i] = value
            jit[i] = access_jit + per_rtt * value
            loss[i] = est_loss
            est[i] = True
    return rtt, jit, loss, est


def _use_stale(view: ServerView, now_s: float, stale: list[tuple[int, float, float, float, float]],
               rtt: list[float], jit: list[float], loss: list[float], est: list[bool]) -> None:
    """Fill regions without a fresh probe from stale ones (not older than
    ``stale_probe_max_age_s``), with the configured safety margins."""
    oldest = now_s - view.stale_probe_max_age_s
    for i, r, j, lo, t in stale:
        if rtt[i] < 0.0 and t >= oldest:
            rtt[i] = r + view.stale_rtt_margin_ms
            jit[i] = j * view.stale_jitter_factor
            loss[i] = min(1.0, lo * view.stale_loss_factor)
            est[i] = True


def decide(
    snap: Snapshot,
    measurement: ClientMeasurement,
    *,
    now_s: float,
    previous_region: str | None = None,
    avoid: Collection[str] = (),
    pending: Sequence[int] | None = None,
) -> Decision:
    """Choose a region for a new or reconnecting session.

    ``previous_region``: where a reconnecting session was (stickiness). ``avoid``: regions the
    client just failed to reach. ``pending``: sessions placed per region (snapshot order) since
    the loads in ``snap`` were reported. Raises :class:`InputError` for a bad measurement and
    :class:`ClusterFull` when no region has a free session."""
    pend = snap.no_pending if pending is None else pending
    n = len(snap.names)
    if len(pend) != n:
        raise InputError(f"pending needs one count per region ({n}, in snapshot order), got "
                         f"{len(pend)}")
    if len(measurement.probes) == n and not avoid and now_s <= snap.fresh_until_s:
        found = _fresh_pass(snap, measurement, now_s, pend)
        if found is not None:
            return _choose(snap, found, now_s, previous_region)
    rtt, jit, loss, est = client_view(snap, measurement, now_s)
    flagged = _flagged(snap, now_s, avoid) if avoid or now_s > snap.fresh_until_s else {}
    max_rtt, max_jit, max_loss, pen_rtt, pen_jit = snap.limits
    cost_usd, free0, reserve = snap.cost_usd, snap.free, snap.reserve
    codes = [OK] * n
    best = second_tier = alt1 = alt2 = -1
    best_score = second_score_tier = cost1 = cost2 = _INF
    n_feasible = 0
    for i in range(n):
        if i in flagged:
            code = flagged[i]
            if code != LATE:
                codes[i] = code
                continue
        free = free0[i] - pend[i]
        if free < 1:
            codes[i] = FULL
            continue
        r = rtt[i]
        j = jit[i]
        if r <= max_rtt and j <= max_jit and loss[i] <= max_loss:
            n_feasible += 1
            c = cost_usd[i]
            score = c + pen_rtt * r + pen_jit * j
            if c < cost2:  # the two cheapest feasible regions, for the explanation
                if c < cost1:
                    alt2, cost2, alt1, cost1 = alt1, cost1, i, c
                else:
                    alt2, cost2 = i, c
            if free <= reserve[i] or i in flagged:
                codes[i] = LATE if i in flagged else RESERVE
                if score < second_score_tier:
                    second_tier, second_score_tier = i, score
            elif score < best_score:
                best, best_score = i, score
        else:
            codes[i] = RTT if r > max_rtt else JITTER if j > max_jit else LOSS
    ranking = Ranking(snap, now_s, codes, rtt, jit, loss, est)
    if best < 0:
        best, best_score = second_tier, second_score_tier
    return _choose(snap, (ranking, best, best_score, alt1 if alt1 != best else alt2, n_feasible),
                   now_s, previous_region)


def _fresh_pass(snap: Snapshot, measurement: ClientMeasurement, now_s: float,
                pend: Sequence[int]) -> tuple[Ranking, int, float, int, int] | None:
    """The common case in one pass: a fresh, valid probe for every region, every region
    reporting, nothing to avoid. The same rules as :func:`decide`'s general loop; returns None
    (the general path takes over, and reports any bad probe) at the first irregularity."""
    names, n = snap.names, len(snap.names)
    view = snap.view
    horizon, oldest = now_s + view.max_clock_skew_s, now_s - view.max_measurement_age_s
    max_rtt, max_jit, max_loss, pen_rtt, pen_jit = snap.limits
    cost_usd, free0, reserve = snap.cost_usd, snap.free, snap.reserve
    get = measurement.probes.get
    rtt: list[float] = [0.0] * n
    jit: list[float] = [0.0] * n
    loss: list[float] = [0.0] * n
    codes = [OK] * n
    best = second_tier = alt1 = alt2 = -1
    best_score = second_score_tier = cost1 = cost2 = _INF
    n_feasible = 0
    for i in range(n):
        p = get(names[i])
        if p is None:
            return None
        r, j, lo, t = p.rtt_ms, p.jitter_ms, p.loss, p.measured_at_s
        try:
            if not (0.0 <= r <= MAX_PROBE_MS and 0.0 <= j <= MAX_PROBE_MS and 0.0 <= lo <= 1.0
                    and oldest <= t <= horizon):
                return None
        except TypeError:
            return None
        rtt[i] = r
        jit[i] = j
        loss[i] = lo
        free = free0[i] - pend[i]
        if free < 1:
            codes[i] = FULL
        elif r <= max_rtt and j <= max_jit and lo <= max_loss:
            n_feasible += 1
            c = cost_usd[i]
            score = c + pen_rtt * r + pen_jit * j
            if c < cost2:
                if c < cost1:
                    alt2, cost2, alt1, cost1 = alt1, cost1, i, c
                else:
                    alt2, cost2 = i, c
            if free <= reserve[i]:
                codes[i] = RESERVE
                if score < second_score_tier:
                    second_tier, second_score_tier = i, score
            elif score < best_score:
                best, best_score = i, score
        else:
            codes[i] = RTT if r > max_rtt else JITTER if j > max_jit else LOSS
    ranking = Ranking(snap, now_s, codes, rtt, jit, loss, [False] * n)
    if best < 0:
        best, best_score = second_tier, second_score_tier
    return ranking, best, best_score, alt1 if alt1 != best else alt2, n_feasible


def _choose(snap: Snapshot, found: tuple[Ranking, int, float, int, int], now_s: float,
            previous_region: str | None) -> Decision:
    """Stickiness, best effort or ClusterFull, and the explanation, from a ranking and its best
    feasible region (-1: none) with its score, the cheapest other feasible region and the
    number of feasible regions."""
    ranking, best, best_score, alt, n_feasible = found
    codes, cost = ranking.codes, snap.cost
    prev = snap.index.get(previous_region) if previous_region is not None else None
    if best >= 0:
        sticky = prev == best
        left = ""
        if prev is not None and not sticky:
            if codes[prev] <= RESERVE:
                prev_score = ranking.score(prev)
                if prev_score <= best_score + cost.switch_margin_usd:
                    best, sticky = prev, True
                    alt = -1 if n_feasible < 2 else min(
                        (k for k, code in enumerate(codes) if code <= LATE and k != prev),
                        key=snap.cost_usd.__getitem__)
                else:
                    left = (f"left {snap.names[prev]}: saves ${prev_score - best_score:.4f} > "
                            f"margin ${cost.switch_margin_usd:g}")
            else:
                left = f"left {snap.names[prev]}: {ranking.reason(prev)}"
        text = _explain(ranking, best, alt, n_feasible, sticky, left)
        return _decision(ranking, best, True, sticky, text)
    fallback = _closest_to_slo(ranking)
    if fallback < 0:
        summary = ", ".join(f"{name} {ranking.reason(i)}" for i, name in enumerate(snap.names))
        raise ClusterFull(f"no region can take a session ({summary}); retry later")
    slo = snap.slo
    text = (f"{snap.names[fallback]}: no region meets the SLO (rtt <= {slo.max_rtt_ms:g} ms, "
            f"jitter <= {slo.max_jitter_ms:g} ms, loss <= {slo.max_loss:.1%}); best effort, "
            f"closest to it: {ranking.reason(fallback)}"
            f"{' (estimated)' if ranking.estimated[fallback] else ''}, "
            f"{snap.cost_text[fallback]}")
    return _decision(ranking, fallback, False, fallback == prev, text)


def _closest_to_slo(ranking: Ranking) -> int:
    """Among regions that could take the session but miss the SLO, the one that misses it by
    the least: the smallest sum of relative excesses over the RTT, jitter and loss limits
    (cost breaks ties); -1 if none."""
    slo = ranking.snapshot.slo
    best, best_key = -1, _INF
    for i, code in enumerate(ranking.codes):
        if code in (RTT, JITTER, LOSS):
            lo = ranking.loss[i]
            key = (max(0.0, ranking.rtt_ms[i] / slo.max_rtt_ms - 1.0)
                   + max(0.0, ranking.jitter_ms[i] / slo.max_jitter_ms - 1.0)
                   + (max(0.0, lo / slo.max_loss - 1.0) if slo.max_loss > 0 else float(lo > 0))
                   + 1e-6 * ranking.score(i))
            if key < best_key:
                best, best_key = i, key
    return best


def _flagged(snap: Snapshot, now_s: float, avoid: Collection[str]) -> dict[int, int]:
    """Regions with a reason code set before their figures are looked at: drained (no load
    report for report_timeout_s), draining or unreachable for this client (all excluded), or
    LATE (no report for late_report_s: a second choice)."""
    view = snap.view
    drained_before, late_before = now_s - view.report_timeout_s, now_s - view.late_report_s
    flagged = {snap.index[name]: AVOIDED for name in avoid if name in snap.index}
    for i, (at, draining) in enumerate(zip(snap.reported_at_s, snap.draining, strict=True)):
        if at < drained_before:
            flagged[i] = DRAINED
        elif draining:
            flagged[i] = DRAINING
        elif at < late_before and i not in flagged:
            flagged[i] = LATE
    return flagged


def _decision(ranking: Ranking, i: int, slo_met: bool, sticky: bool, text: str) -> Decision:
    snap = ranking.snapshot
    return Decision(snap.names[i], snap.gateway_url[i], snap.cost_usd[i], ranking.score(i),
                    ranking.rtt_ms[i], ranking.jitter_ms[i], slo_met, sticky,
                    ranking.estimated[i], text, ranking)


def _explain(ranking: Ranking, i: int, alt: int, n_feasible: int, sticky: bool,
             left: str) -> str:
    """``alt``: the cheapest other feasible region (-1 if none)."""
    texts, codes = ranking.snapshot.texts, ranking.codes
    est = " ms est., jitter " if ranking.estimated[i] else " ms, jitter "
    text = (f"{texts.head[i][sticky]}{int(ranking.rtt_ms[i] + 0.5)}{est}"
            f"{int(ranking.jitter_ms[i] + 0.5)}{texts.cost[i]}")
    if left:
        text += f"; {left}"
    text += texts.feasible[n_feasible]
    if codes[i] == RESERVE:
        text += "; uses the reconnect reserve (every feasible region is nearly full)"
    elif codes[i] == LATE:
        text += "; its load report is late (no feasible region has a recent one)"
    if alt >= 0:
        text += texts.alt[i][alt]
        if ranking.snapshot.cost_usd[alt] < ranking.snapshot.cost_usd[i]:
            text += ranking.reason(alt) if codes[alt] != OK else (
                "within the switch margin" if sticky else "higher latency and jitter")
    return text
