"""Schedule simulated users against a target per a load profile, bounded in count and time.

Every :data:`TICK_S` the runner compares the users in a session with the profile's target:
it starts one more (at most one per :data:`START_GAP_S`, and not before a refused create's
``Retry-After``) or asks the newest users to hang up after their current turn. A user whose
script is done hangs up and is replaced. At ``duration_s`` every user is asked to hang up;
:data:`GRACE_S` later the stragglers are cut (a hard stop), so a run never outlasts
``duration_s + GRACE_S`` plus the last analyses.

Alongside, it samples the target's ``/metrics`` every ``metrics_every_s`` and its own CPU
share (:func:`time.process_time` over wall time, all threads of this process) and event-loop
lag (how late a 100 ms sleep wakes: a late loop delays every user's frame timestamps).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from deployments.timing import percentiles
from load_tests.profiles import LoadProfile
from load_tests.server_metrics import server_sample
from load_tests.user import SessionResult, UserContext, conversation, run_user

TICK_S = 0.25
START_GAP_S = 0.5
"""At most one new session per this many seconds (no thundering herd at a step)."""
GRACE_S = 25.0
"""After the run's duration: how long users may take to finish their turn and hang up."""
MAX_BACKOFF_S = 10.0
LAG_PERIOD_S = 0.1


SETTLE_EVERY_S = 2.0


@dataclass(frozen=True)
class RunSettings:
    """One run: where, how many, how long."""

    target: str
    profile: LoadProfile
    turns: int = 6
    """Scripted turns per session (a user hangs up after them and is replaced)."""
    seed: int = 0
    probe: bool = True
    metrics_every_s: float = 10.0
    settle_s: float = 30.0
    """After the last user hung up, sample ``/metrics`` every 2 s until it shows no live
    session, for at most this long (Ray exports gauges every few seconds, and a session
    closes a moment after its hang-up); the last sample's live sessions are the leaked ones."""


@dataclass
class Progress:
    """What the live display shows."""

    t_s: float
    duration_s: float
    target_users: int
    active: int
    ok: int
    rejected: int
    failed: int
    turns: int
    p95_ms: dict[str, float | None]
    harness_cpu_share: float | None


@dataclass
class RunData:
    """Everything a run observed; :func:`load_tests.report.build_report` reads it."""

    settings: RunSettings
    sessions: list[SessionResult] = field(default_factory=list)
    load: list[tuple[float, int, int]] = field(default_factory=list)
    """``(t_s, target users, users in a session)`` every tick."""
    server: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    """``(t_s, server_sample)`` from ``/metrics``."""
    harness: list[tuple[float, float]] = field(default_factory=list)
    """``(t_s, CPU share of one core)`` between metric samples."""
    loop_lag: list[tuple[float, float]] = field(default_factory=list)
    """``(t_s, ms)``: how late each 100 ms sleep of the harness's event loop woke."""
    metrics_error: str | None = None
    last_cpu: tuple[float, float] | None = None
    """``(t_s, process CPU s)`` at the previous sample."""
    wall_s: float = 0.0
    cpu_s: float = 0.0


def probe_url(target: str) -> str:
    """The gateway's probe WebSocket for an ``http(s)://`` target."""
    return "ws" + target.removeprefix("http").rstrip("/") + "/v1/probe"


async def run_load(settings: RunSettings, questions: list[str], audio: dict[str, Any],
                   progress: Callable[[Progress], None] | None = None,
                   transport: Any = None) -> RunData:
    """Drive the profile against ``settings.target``; returns what was observed.
    ``transport``: an ``httpx`` transport for the HTTP calls (tests pass a mock)."""
    import httpx

    data = RunData(settings)
    origin = time.monotonic()
    cpu0 = time.process_time()
    live: dict[str, list[float]] = {}

    def on_turn(figure: str, ms: float) -> None:
        live.setdefault(figure, []).append(ms)

    limits = httpx.Limits(max_connections=4 * settings.profile.users + 8)
    async with httpx.AsyncClient(base_url=settings.target, timeout=httpx.Timeout(30.0),
                                 limits=limits, transport=transport) as http:
        ctx = UserContext(http, audio, origin,
                          probe_url(settings.target) if settings.probe else None, on_turn)
        sampler = asyncio.create_task(_sample(http, data, origin, settings.metrics_every_s))
        lag = asyncio.create_task(_watch_lag(data.loop_lag, origin))
        try:
            await _schedule(settings, ctx, questions, data, origin, live, progress)
        finally:
            for task in (sampler, lag):
                task.cancel()
            await asyncio.gather(sampler, lag, return_exceptions=True)
            await _settle(http, data, origin, settings.settle_s)
    data.wall_s = round(time.monotonic() - origin, 2)
    data.cpu_s = round(time.process_time() - cpu0, 2)
    return data


async def _schedule(settings: RunSettings, ctx: UserContext, questions: list[str],
                    data: RunData, origin: float, live: dict[str, list[float]],
                    progress: Callable[[Progress], None] | None) -> None:
    profile = settings.profile
    users: dict[asyncio.Task[SessionResult], asyncio.Event] = {}
    next_start = backoff_until = 0.0
    started = 0
    while (t := time.monotonic() - origin) < profile.duration_s:
        for done in _reap(users, data):
            if done.outcome == "rejected":  # the server is full: wait as it asks
                wait = min(MAX_BACKOFF_S, done.retry_after_s or 1.0)
                backoff_until = max(backoff_until, time.monotonic() + wait)
        target = profile.users_at(t)
        running = [task for task, stop in users.items() if not stop.is_set()]
        now = time.monotonic()
        if len(running) < target and now >= max(next_start, backoff_until):
            plan = conversation(questions, settings.turns, settings.seed * 100_003 + started)
            stop = asyncio.Event()
            users[asyncio.create_task(run_user(ctx, started, plan, stop))] = stop
            started += 1
            next_start = now + START_GAP_S
        elif len(running) > target:
            for task in running[target:]:
                users[task].set()
        data.load.append((round(t, 2), target, len(running)))
        if progress is not None:
            progress(_progress(data, t, target, len(running), live))
        await asyncio.sleep(TICK_S)
    for stop in users.values():
        stop.set()
    if users:
        _, pending = await asyncio.wait(list(users), timeout=GRACE_S)
        for task in pending:
            task.cancel()
        await asyncio.gather(*users, return_exceptions=True)
    _reap(users, data)


def _reap(users: dict[asyncio.Task[SessionResult], asyncio.Event], data: RunData
          ) -> list[SessionResult]:
    """Move finished users' results into ``data``; returns the new ones."""
    new = []
    for task in [t for t in users if t.done()]:
        del users[task]
        if task.cancelled():
            result = SessionResult(-1, float("nan"), outcome="cut",
                                   error="cut by the hard stop")
        elif (exc := task.exception()) is not None:
            result = SessionResult(-1, float("nan"), error=repr(exc)[:300])
        else:
            result = task.result()
        data.sessions.append(result)
        new.append(result)
    return new


def _progress(data: RunData, t: float, target: int, active: int,
              live: dict[str, list[float]]) -> Progress:
    count = {k: sum(1 for s in data.sessions if s.outcome == k)
             for k in ("ok", "rejected", "failed")}
    p95 = {k: percentiles(v[-200:], (95,))["p95"] for k, v in live.items()}
    share = data.harness[-1][1] if data.harness else None
    return Progress(round(t, 1), data.settings.profile.duration_s, target, active,
                    count["ok"], count["rejected"], count["failed"],
                    sum(len(v) for v in live.values()), p95, share)


async def _sample(http: Any, data: RunData, origin: float, every_s: float) -> None:
    import httpx

    while True:
        try:
            await _sample_once(http, data, origin)
        except httpx.HTTPError as exc:
            data.metrics_error = f"GET /metrics: {type(exc).__name__}"
        await asyncio.sleep(every_s)


async def _settle(http: Any, data: RunData, origin: float, within_s: float) -> None:
    """Final samples: until the server shows no live session, or ``within_s`` passed."""
    import httpx

    deadline = time.monotonic() + within_s
    while True:
        with contextlib.suppress(httpx.HTTPError):
            await _sample_once(http, data, origin)
        live = data.server[-1][1].get("sessions") if data.server else None
        if not live or time.monotonic() >= deadline:
            return
        await asyncio.sleep(SETTLE_EVERY_S)


async def _sample_once(http: Any, data: RunData, origin: float) -> None:
    """One ``/metrics`` sample and the harness's CPU share since the previous one."""
    t = time.monotonic() - origin
    cpu = time.process_time()
    if data.last_cpu is not None and t > data.last_cpu[0]:
        t_last, cpu_last = data.last_cpu
        data.harness.append((round(t, 2), round((cpu - cpu_last) / (t - t_last), 3)))
    data.last_cpu = (t, cpu)
    resp = await http.get("/metrics", timeout=5.0)
    if resp.status_code != 200:
        data.metrics_error = f"GET /metrics answered {resp.status_code}: {resp.text[:120]}"
        return
    data.server.append((round(t, 2), server_sample(resp.text)))


async def _watch_lag(out: list[tuple[float, float]], origin: float) -> None:
    while True:
        t = time.monotonic()
        await asyncio.sleep(LAG_PERIOD_S)
        woke = time.monotonic()
        out.append((round(woke - origin, 2), round((woke - t - LAG_PERIOD_S) * 1000.0, 1)))


def harness_figures(data: RunData) -> dict[str, Any]:
    """The harness's own load: CPU share (of one core and of the machine), peak memory and
    event-loop lag."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    share = data.cpu_s / data.wall_s if data.wall_s > 0 else None
    lags = [ms for _, ms in data.loop_lag]
    lag = percentiles(lags, (50, 99))
    return {
        "cpu_s": data.cpu_s, "wall_s": data.wall_s,
        "cpu_share_of_one_core": None if share is None else round(share, 3),
        "cpu_share_of_machine": None if share is None else round(share / (cores or 1), 3),
        "cores": cores,
        "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1),
        "loop_lag_ms": {**lag, "max": max(lags) if lags else None},
    }
