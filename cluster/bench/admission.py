"""``avatarctl bench admission``: refusals under overload and fairness between tenants.

One run starts a local cluster (:func:`cluster.local.serve_app`, on private copies of the
knowledge and session stores, as ``bench serve`` does) with one renderer of ``sessions``
capacity, two tenants (tenant B: the profile's persona; tenant A: ``maple-annex``, answering
from the same texts) and ``cluster.admission.max_sessions_per_tenant`` = ``quota``, then:

- **overload**: ``capacity`` sessions (of both tenants, each below its quota) hold the
  renderer full; rounds alternate between *quiet* and *excess*, where ``capacity / 2`` more
  would-be sessions keep asking for a session (1.5x capacity offered). Every round, every
  admitted session asks one typed question at once. Figures: the refusals' latency at the
  client (target p95 <= 100 ms) and the admitted sessions' text-to-first-audio p95 with the
  excess over without it (ratio; the SLO's bound from ``configs/slo/default.yaml`` applies).
- **fairness**: tenant B holds ``capacity - quota`` sessions; tenant A asks for 10x its quota
  at once (exactly ``quota`` must be admitted) and its admitted sessions keep talking (a
  typed question, its answer, ``think_ms`` of pause). Rounds rotate between A *idle* (its
  sessions open and silent), A *at quota* (its sessions talking) and A *flooding* (talking,
  and the other 9x its quota asking for sessions); each round B's sessions ask one question
  at once. The figure: B's text-to-first-audio p95 with the flood over A at its quota
  (target increase <= 10 %); the increase over A idle is reported beside it.

A refused would-be session asks again after the refusal's Retry-After (``retry_ms`` 0, a
well-behaved client: the flood's rate is then its size over Retry-After) or every
``retry_ms`` (a client that ignores it). Arms are interleaved round by round with rotating
order and ask the same questions, so the machine's drift falls on all arms alike.
Measurements stop starting rounds after :data:`BUDGET_S` seconds.
"""

from __future__ import annotations

import asyncio
import os
import platform
import random
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cluster.bench.admission_figures import (
    FAIRNESS_ARMS,
    OVERLOAD_ARMS,
    TENANT_A,
    Plan,
    arm_order,
    bench_config,
    build_report,
    plan_for,
    slo_bound_ms,
)
from cluster.bench.serve import TURN_TIMEOUT_S, _isolated, _ServeSession, typed_turn
from configs.schema import AppConfig
from models.errors import BackendError, InputError

Progress = Callable[[str], None]
DEFAULT_PORT = 8032
BUDGET_S = 200.0
OVERLOAD_SHARE = 0.4
"""Part of :data:`BUDGET_S` the overload rounds may use; the fairness rounds get the rest."""
WARM_S = 0.3
"""How long the excess or the talking runs before a measured round starts."""
MAX_RETRY_AFTER_S = 10.0


# --- clients ------------------------------------------------------------------------------------


class TenantSession(_ServeSession):
    """A session of one persona (so of its tenant) created by :func:`attempt` and taken over
    with :meth:`attach`."""


async def attempt(client: Any, persona: str) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """One ``POST /v1/sessions``: its record (status, ms, the refusal's Retry-After in s or
    None) and the created session (None when refused)."""
    import httpx

    t0 = time.perf_counter()
    try:
        resp = await client.post("/v1/sessions", json={"video": False, "persona": persona})
    except httpx.HTTPError as exc:
        raise BackendError(f"POST /v1/sessions for {persona} failed: {exc!r:.200}") from exc
    ms = (time.perf_counter() - t0) * 1000.0
    try:
        retry_after_s: float | None = float(resp.headers["retry-after"])
    except (KeyError, ValueError):
        retry_after_s = None
    record = {"status": resp.status_code, "ms": ms, "retry_after_s": retry_after_s}
    if resp.status_code not in (201, 429, 503):
        raise BackendError(f"POST /v1/sessions for {persona} answered {resp.status_code}: "
                           f"{resp.text[:200]}")
    return record, resp.json() if resp.status_code == 201 else None


async def open_sessions(client: Any, personas: Sequence[str]) -> list[TenantSession]:
    """One admitted session per persona, one at a time."""
    sessions: list[TenantSession] = []
    for persona in personas:
        record, created = await attempt(client, persona)
        if created is None:
            raise BackendError(f"a session of {persona} was refused ({record['status']}) while "
                               "the cluster had room; is another run using this cluster?")
        sessions.append(await TenantSession(client).attach(created))
    return sessions


class Flood:
    """Would-be sessions, one per persona in ``personas``, each asking for a session until
    stopped: again after the refusal's Retry-After (at most :data:`MAX_RETRY_AFTER_S`, as a
    well-behaved client does), or every ``retry_s`` when given (a client that ignores it).
    One that is admitted (a slot freed) is closed at once."""

    def __init__(self, client: Any, personas: Sequence[str], retry_s: float | None, *,
                 spread_s: float = 0.0) -> None:
        self.client, self.personas, self.retry_s = client, list(personas), retry_s
        self.spread_s = spread_s  # first attempts spread over one interval: a steady flood
        self.records: list[dict[str, Any]] = []
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._run(i, p)) for i, p in enumerate(self.personas)]

    async def stop(self) -> list[dict[str, Any]]:
        self._stop.set()
        await asyncio.gather(*self._tasks)
        return self.records

    async def _run(self, index: int, persona: str) -> None:
        await self._pause(self.spread_s * index / max(1, len(self.personas)))
        while not self._stop.is_set():
            record, created = await attempt(self.client, persona)
            self.records.append(record)
            if created is not None:
                await self.client.delete(f"/v1/sessions/{created['session_id']}", headers={
                    "Authorization": f"Bearer {created['token']}"})
            wait = self.retry_s if self.retry_s is not None else \
                min(record["retry_after_s"] or 1.0, MAX_RETRY_AFTER_S)
            await self._pause(wait)

    async def _pause(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._stop.wait(), seconds)
        except TimeoutError:
            pass


class Talk:
    """Sessions that keep talking: a typed question, its answer, ``think_s`` of pause."""

    def __init__(self, sessions: Sequence[TenantSession], questions: Sequence[str],
                 think_s: float, seed: int = 0) -> None:
        self.sessions, self.questions, self.think_s = list(sessions), list(questions), think_s
        self.turns = 0
        self._stop = asyncio.Event()
        self._rng = random.Random(seed)
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._stop.clear()
        self._tasks = [asyncio.create_task(self._run(s)) for s in self.sessions]

    async def stop(self) -> int:
        """Stop after the turns in progress end; the turns finished so far."""
        self._stop.set()
        await asyncio.gather(*self._tasks)
        return self.turns

    async def _run(self, session: TenantSession) -> None:
        while not self._stop.is_set():
            await typed_turn(session, self._rng.choice(self.questions))
            self.turns += 1
            try:
                await asyncio.wait_for(self._stop.wait(), self.think_s)
            except TimeoutError:
                pass


async def measured_round(sessions: Sequence[TenantSession], questions: Sequence[str],
                         round_index: int) -> dict[str, list[float | None]]:
    """Every session asks one question at once (the same ones for the same round index)."""
    n = len(questions)
    turns = await asyncio.gather(*(typed_turn(s, questions[(round_index * len(sessions) + k) % n])
                                   for k, s in enumerate(sessions)))
    return {"first_audio_ms": [t["first_audio_ms"] for t in turns],
            "server_first_audio_ms": [t["server_first_audio_ms"] for t in turns]}


# --- the two parts ------------------------------------------------------------------------------


def _alternating(n: int, b: str) -> list[str]:
    return [b if i % 2 == 0 else TENANT_A for i in range(n)]


@dataclass
class _Run:
    """What both parts share: the HTTP client, the plan and the run's settings."""

    client: Any
    plan: Plan
    b: str
    questions: Sequence[str]
    turns: int
    retry_s: float | None
    spread_s: float
    think_s: float
    say: Progress

    def flood(self, personas: Sequence[str]) -> Flood:
        return Flood(self.client, personas, self.retry_s, spread_s=self.spread_s)


async def _overload(run: _Run, deadline: float) -> dict[str, Any]:
    plan = run.plan
    run.say(f"overload: opening {plan.capacity} sessions (the renderer's capacity)")
    sessions = await open_sessions(run.client, _alternating(plan.capacity, run.b))
    raw: dict[str, Any] = {"rounds": [], "attempts": [], "truncated": False}
    try:
        for r in range(run.turns):
            if time.perf_counter() > deadline:
                raw["truncated"] = True
                break
            for arm in arm_order(r, OVERLOAD_ARMS):
                run.say(f"overload: round {r + 1}/{run.turns}, {arm}")
                flood = run.flood(_alternating(plan.excess, run.b)) if arm == "excess" else None
                if flood is not None:
                    flood.start()
                    await asyncio.sleep(WARM_S)
                measured = await measured_round(sessions, run.questions, r)
                if flood is not None:
                    raw["attempts"] += await flood.stop()
                raw["rounds"].append({"round": r, "arm": arm, **measured})
    finally:
        for session in sessions:
            await session.close()
    return raw


async def _fairness(run: _Run, deadline: float) -> dict[str, Any]:
    plan = run.plan
    run.say(f"fairness: opening {plan.b_sessions} session(s) of tenant B")
    b_sessions = await open_sessions(run.client, [run.b] * plan.b_sessions)
    run.say(f"fairness: tenant A asks for {plan.flood} sessions at once (quota {plan.quota})")
    burst = await asyncio.gather(*(attempt(run.client, TENANT_A) for _ in range(plan.flood)))
    a_sessions = [await TenantSession(run.client).attach(created)
                  for _, created in burst if created is not None]
    raw: dict[str, Any] = {"burst": [record for record, _ in burst], "rounds": [],
                           "attempts": [], "a_turns": {"a_at_quota": 0, "a_flood": 0},
                           "truncated": False}
    try:
        for r in range(run.turns):
            if time.perf_counter() > deadline:
                raw["truncated"] = True
                break
            for arm in arm_order(r, FAIRNESS_ARMS):
                run.say(f"fairness: round {r + 1}/{run.turns}, {arm}")
                talk = None if arm == "a_idle" else \
                    Talk(a_sessions, run.questions, run.think_s, seed=r)
                flood = run.flood([TENANT_A] * (plan.flood - len(a_sessions))) \
                    if arm == "a_flood" else None
                for load in (talk, flood):
                    if load is not None:
                        load.start()
                if talk is not None:
                    await asyncio.sleep(WARM_S)
                measured = await measured_round(b_sessions, run.questions, r)
                if flood is not None:
                    raw["attempts"] += await flood.stop()
                if talk is not None:
                    raw["a_turns"][arm] += await talk.stop()
                raw["rounds"].append({"round": r, "arm": arm, **measured})
    finally:
        for session in b_sessions + a_sessions:
            await session.close()
    return raw


async def _measure(url: str, plan: Plan, b: str, questions: Sequence[str], turns: int,
                   retry_s: float | None, spread_s: float, think_s: float, say: Progress
                   ) -> dict[str, Any]:
    import httpx

    limits = httpx.Limits(max_connections=4 * plan.flood + 64, max_keepalive_connections=64)
    start = time.perf_counter()
    async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(TURN_TIMEOUT_S),
                                 limits=limits) as client:
        run = _Run(client, plan, b, questions, turns, retry_s, spread_s, think_s, say)
        say("warm-up turn")
        (warm,) = await open_sessions(client, [b])
        await typed_turn(warm, questions[0])
        await warm.close()
        over = await _overload(run, start + OVERLOAD_SHARE * BUDGET_S)
        fair = await _fairness(run, start + BUDGET_S)
    return {"overload": over, "fairness": fair,
            "truncated": over["truncated"] or fair["truncated"]}


def run_admission_bench(config: AppConfig, *, sessions: int = 4, turns: int = 8,
                        retry_ms: float = 0.0, think_ms: float = 500.0,
                        port: int | None = DEFAULT_PORT, progress: Progress | None = None
                        ) -> dict[str, Any]:
    """Refusal latency at 1.5x capacity and tenant fairness under a 10x flood, on a local
    cluster started here (see the module docstring); returns the benchmark's JSON.
    ``retry_ms``: how often a refused would-be session asks again; 0 honours Retry-After."""
    import ray

    from cluster.bench.scenario import load_eval
    from cluster.local import serve_app

    say = progress or (lambda _msg: None)
    if not 1 <= turns <= 50:
        raise InputError(f"--turns is {turns}; pick 1 to 50 rounds per arm")
    if not (retry_ms == 0 or 50 <= retry_ms <= 10_000) or not 0 <= think_ms <= 10_000:
        raise InputError("--retry-ms takes 0 (honour Retry-After) or 50 to 10000, and "
                         "--think-ms 0 to 10000 milliseconds")
    plan = plan_for(sessions)
    answerable, _ = load_eval(config.persona)
    questions = [t.text for t in answerable]
    slo_ms = slo_bound_ms()
    load = os.getloadavg()[0]
    wall = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="avatar-bench-admission-") as tmp:
        served, _ = _isolated(bench_config(config, plan), Path(tmp), port)
        t0 = time.perf_counter()
        with serve_app(served, progress=say) as url:
            startup_s = time.perf_counter() - t0
            retry_s = retry_ms / 1000.0 if retry_ms else None
            raw = asyncio.run(_measure(url, plan, config.persona, questions, turns, retry_s,
                                       retry_s or served.cluster.retry_after_s,
                                       think_ms / 1000.0, say))
    raw["startup_s"] = startup_s
    setup = {
        "profile": config.profile, "port": served.cluster.http_port, "turns": turns,
        "retry_ms": retry_ms, "think_ms": think_ms, "tenant_a": TENANT_A,
        "tenant_b": config.persona, "cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)), "platform": platform.platform(),
        "python": platform.python_version(), "ray": ray.__version__,
        "load_avg_1m_at_start": round(load, 2),
        "load_avg_1m_at_end": round(os.getloadavg()[0], 2), "llm": config.models.llm.backend,
        "tts": config.models.tts.backend, "wall_s": round(time.perf_counter() - wall, 1),
    }
    return build_report(raw, plan, setup, slo_ms)
