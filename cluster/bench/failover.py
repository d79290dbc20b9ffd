"""``avatarctl bench failover``: SIGKILL a replica mid-conversation and measure how the
conversation goes on.

The app runs on a Ray cluster of ``nodes`` nodes started on this machine
(``ray.cluster_utils.Cluster``: one raylet per node, one fake GPU each, so one renderer per
node), or on an existing cluster (``cluster.ray_address``). Each trial:

1. opens a session through the Gateway's HTTP API (its SSE event stream; with ``video``, also
   WebRTC media from the aiortc client) and has ``turns`` typed turns, each committed
   (``turn_end``);
2. asks one more question and, as its reply starts, SIGKILLs a replica process: the session's
   renderer (``renderer``), or a replica of the shared LLM or TTS (``llm``, ``tts``);
3. renderer: the client sees the event stream end with status 410, posts
   ``{"resume": <id>}`` with its token and reconnects to another renderer; shared replica: the
   interrupted turn must still end with the answer or a spoken apology, never silence;
4. asks one more question on the (new) session and waits for its answer.

Per trial: ``detect_ms`` (kill -> the client knows), ``recovered_ms`` (kill -> the new
session open with its history, and with video its first frame), the next answer's
``answer_ms``, the history carried against the turns committed, and whether every committed
turn is in the session store afterwards (a kill -9 loses none). After the trials every session
is closed, and the store must hold no active session: no leaked slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cluster.bench.conversation import TURN_TIMEOUT_S, Conversation, now
from cluster.bench.serve import summary
from configs.schema import AppConfig
from models.errors import BackendError, InputError

KINDS = ("renderer", "llm", "tts")
DEPLOYMENT = {"renderer": "Renderer", "llm": "LLM", "tts": "TTS"}
RECOVERY_TARGET_MS = 5000.0
QUESTIONS = (
    "What time do you open on Saturday?",
    "Do you offer telehealth visits?",
    "Can I split my bill into monthly payments?",
    "How do I request a prescription refill?",
    "Where can I park?",
)
Progress = Callable[[str], None]


# --- the kill -----------------------------------------------------------------------------------


def replica_actors(deployment: str) -> list[str]:
    """Names of the running replica actors of ``deployment`` (namespace ``serve``)."""
    import ray

    from cluster.app import APP_NAME

    prefix = f"SERVE_REPLICA::{APP_NAME}#{deployment}#"
    return sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                  if a["namespace"] == "serve" and a["name"].startswith(prefix))


def sigkill(actor_name: str) -> None:
    """SIGKILL the process of a replica actor, from inside it: no cleanup runs, as when a
    machine or a process dies (works on any node of the cluster)."""
    import signal

    import ray

    actor = ray.get_actor(actor_name, namespace="serve")
    actor.__ray_call__.remote(lambda _self: os.kill(os.getpid(), signal.SIGKILL))


# --- one trial ----------------------------------------------------------------------------------


@dataclass
class Trial:
    """What one kill did to one conversation."""

    index: int
    kill: str
    killed: str = ""
    resumed_on: str = ""
    committed_turns: int = 0
    history_turns: int | None = None
    stored_turns: int | None = None
    lost_turns: int | None = None
    detect_ms: float | None = None
    recovered_ms: float | None = None
    created_ms: float | None = None
    resume_attempts: int = 0
    interrupted_turn: str = ""
    answer_ms: float | None = None
    ok: bool = False
    problems: list[str] = field(default_factory=list)


async def run_trial(index: int, kill: str, http: Any, config: AppConfig, turns: int,
                    video: bool, open_sessions: list[Conversation]) -> Trial:
    """One conversation, one SIGKILL of ``kill``, and what followed."""
    trial = Trial(index, kill)
    conv = Conversation(http, video)
    open_sessions.append(conv)
    await conv.open()
    for i in range(turns):
        turn_id, start = await conv.send(QUESTIONS[(index + i) % len(QUESTIONS)])
        _, end = await conv.answer(turn_id, start, now())
        if end is None:
            trial.problems.append(f"turn {turn_id} before the kill did not end")
            return trial
        trial.committed_turns += 1
    turn_id, start = await conv.send(QUESTIONS[(index + turns) % len(QUESTIONS)])
    started = await conv.tape.wait(lambda k, _d: k in ("text_delta", "clause", "audio"),
                                   start, now() + TURN_TIMEOUT_S)
    if started is None:
        trial.problems.append("the reply to kill during never started")
        return trial
    if kill == "renderer":
        owner = str(conv.info.get("renderer", ""))
        trial.killed = next((n for n in replica_actors("Renderer") if n.endswith(owner)), "")
    else:
        names = replica_actors(DEPLOYMENT[kill])
        trial.killed = names[index % len(names)] if names else ""
    if not trial.killed:
        trial.problems.append(f"no running {kill} replica to kill")
        return trial
    killed_at = now()
    await asyncio.to_thread(sigkill, trial.killed)
    if kill == "renderer":
        await _renderer_lost(trial, conv, killed_at, config, video, http, open_sessions)
    else:
        await _shared_lost(trial, conv, turn_id, start)
    active = open_sessions[-1]
    if not trial.problems:
        turn_id, start = await active.send("Thanks. " + QUESTIONS[index % len(QUESTIONS)])
        trial.answer_ms, end = await active.answer(turn_id, start, now())
        if end is None or not str(end.get("reply", "")).strip():
            trial.problems.append("no answer after the kill")
    trial.ok = not trial.problems
    return trial


async def _renderer_lost(trial: Trial, conv: Conversation, killed_at: float,
                         config: AppConfig, video: bool, http: Any,
                         open_sessions: list[Conversation]) -> None:
    lost = await conv.tape.wait(lambda k, d: k == "error" and "status" in d, 0,
                                killed_at + TURN_TIMEOUT_S)
    if lost is None and conv.tape.ended is None:
        trial.problems.append("the client was never told that its renderer died")
        return
    seen = lost[0] if lost else conv.tape.ended
    assert seen is not None
    trial.detect_ms = round((seen - killed_at) * 1000.0, 1)
    if lost is not None and lost[2].get("status") not in (410, None):
        trial.problems.append(f"the stream ended with status {lost[2].get('status')}, not 410")
    await conv.close(remote=False)
    resumed = Conversation(http, video)
    open_sessions.append(resumed)
    try:
        trial.resume_attempts = await resumed.open(resume=conv)
    except BackendError as exc:
        trial.problems.append(f"resume failed: {exc}")
        return
    trial.recovered_ms = round((now() - killed_at) * 1000.0, 1)
    if resumed.created_at is not None:
        trial.created_ms = round((resumed.created_at - killed_at) * 1000.0, 1)
    trial.resumed_on = str(resumed.info.get("renderer", ""))
    trial.history_turns = int(resumed.info.get("history_turns") or 0)
    carried = min(trial.committed_turns, config.conversation.history_turns or 10**9)
    if trial.history_turns != carried:
        trial.problems.append(f"history carried {trial.history_turns} turns, expected {carried}")
    stored = await asyncio.to_thread(_stored_turns, config, conv.sid,
                                     str(conv.info.get("tenant", "")))
    trial.stored_turns = stored
    trial.lost_turns = max(0, trial.committed_turns - stored)
    if trial.lost_turns:
        trial.problems.append(f"{trial.lost_turns} committed turns missing from the store")


async def _shared_lost(trial: Trial, conv: Conversation, turn_id: int, start: int) -> None:
    """The interrupted turn must end with the answer or an apology that reached the user."""
    _, end = await conv.answer(turn_id, start, now())
    if end is None:
        trial.problems.append("the interrupted turn never ended")
        return
    reply = str(end.get("reply", "")).strip()
    trial.interrupted_turn = reply[:120]
    spoke = await conv.tape.wait(
        lambda k, d: k == "clause" or (k == "audio" and d.get("turn_id") == turn_id), start,
        now())
    if not reply or spoke is None:
        trial.problems.append("silence: the interrupted turn ended with nothing said")


def _stored_turns(config: AppConfig, session_id: str, tenant: str) -> int:
    from deployments.session_store import open_session_store

    store = open_session_store(config.cluster)
    try:
        return len(store.turns(session_id, tenant))
    finally:
        with contextlib.suppress(Exception):
            store.close()  # type: ignore[attr-defined]


def _active_sessions(config: AppConfig) -> int:
    from deployments.session_store import open_session_store

    store = open_session_store(config.cluster)
    try:
        return len(store.active_sessions())
    finally:
        with contextlib.suppress(Exception):
            store.close()  # type: ignore[attr-defined]


# --- the run ------------------------------------------------------------------------------------


def report(trials: list[Trial], leaked: int | None, setup: dict[str, Any]) -> dict[str, Any]:
    """The benchmark's JSON: per-trial rows, a summary and the targets."""
    renderer = [t for t in trials if t.kill == "renderer"]
    recovered = [t.recovered_ms for t in renderer]
    lost = sum(t.lost_turns or 0 for t in trials)
    rec = summary(recovered)
    rec["max"] = max((r for r in recovered if r is not None), default=None)
    figures = {
        "trials": len(trials), "passed": sum(t.ok for t in trials),
        "detect_ms": summary([t.detect_ms for t in renderer]), "recovered_ms": rec,
        "answer_ms": summary([t.answer_ms for t in trials]),
        "lost_committed_turns": lost, "leaked_sessions": leaked,
        "history_mismatches": sum(1 for t in renderer if t.history_turns is not None
                                  and t.history_turns != t.committed_turns),
        "silent_turns": sum(1 for t in trials if any("silence" in p for p in t.problems)),
    }
    p95 = rec.get("p95")
    targets = {
        "all_trials_pass": bool(trials) and figures["passed"] == len(trials),
        "recovered_p95_le_5000_ms": not renderer or (p95 is not None
                                                     and p95 <= RECOVERY_TARGET_MS),
        "no_committed_turn_lost": lost == 0,
        "no_leaked_session": leaked == 0,
    }
    return {"benchmark": "failover", "setup": setup, "summary": figures, "targets": targets,
            "trials": [asdict(t) for t in trials]}


@contextlib.contextmanager
def local_nodes(nodes: int) -> Iterator[str]:
    """A Ray cluster of ``nodes`` raylets on this machine, one fake GPU each; its address."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 2, "num_gpus": 1, "include_dashboard": False,
        "object_store_memory": 96 * 1024 * 1024})
    try:
        for _ in range(nodes - 1):
            cluster.add_node(num_cpus=1, num_gpus=1, object_store_memory=80 * 1024 * 1024)
        yield cluster.address
    finally:
        cluster.shutdown()


def bench_config(config: AppConfig, data: Path, renderers: int, port: int) -> AppConfig:
    """``config`` for the bench: one renderer per node, small CPU shares, its own store."""
    from configs.loader import with_overrides

    small = {"num_cpus": 0.05}
    return with_overrides(config, {
        "cluster": {"session_store_path": str(data / "sessions.sqlite3"), "http_port": port,
                    "metrics_port": None,
                    "admission": {"sessions_per_minute_per_ip": 6000, "burst": 100}},
        "models": {"knowledge": {"qdrant_path": str(data / "qdrant")}},
        "deployments": {
            "gateway": small, "asr": {**small, "num_replicas": 1},
            "knowledge": {**small, "num_replicas": 1},
            "llm": {**small, "num_replicas": 1}, "tts": {**small, "num_replicas": 1},
            "renderer": {**small, "num_replicas": renderers, "num_gpus": 1,
                         "graceful_shutdown_timeout_s": 2},
        },
    })


async def _trials(url: str, config: AppConfig, kinds: tuple[str, ...], trials: int,
                  turns: int, video: bool, renderers: int, say: Progress
                  ) -> tuple[list[Trial], int | None]:
    import httpx

    done: list[Trial] = []
    sessions: list[Conversation] = []
    async with httpx.AsyncClient(base_url=url, timeout=30.0) as http:
        for i in range(trials):
            kind = kinds[i % len(kinds)]
            # One failure at a time: the replicas killed before are replaced first (else the
            # session could find no live renderer at all while they start).
            await _wait_replicas("Renderer", renderers)
            await _wait_replicas(DEPLOYMENT[kind], 1)
            try:
                trial = await run_trial(i, kind, http, config, turns, video, sessions)
            except BackendError as exc:
                trial = Trial(i, kind, problems=[str(exc)])
            done.append(trial)
            state = "ok" if trial.ok else "FAILED: " + "; ".join(trial.problems)
            say(f"trial {i + 1}/{trials} ({kind}): recovered "
                f"{trial.recovered_ms} ms, answer {trial.answer_ms} ms, {state}")
            for conv in sessions:
                await conv.close()
            sessions.clear()
            await _wait_gone(trial.killed)
    await asyncio.sleep(1.0)
    leaked = await asyncio.to_thread(_active_sessions, config)
    return done, leaked


async def _wait_gone(actor_name: str, timeout_s: float = 60.0) -> None:
    """Wait until the killed replica is no longer listed (Serve then counts it as gone)."""
    deadline = now() + timeout_s
    while actor_name and now() < deadline:
        deployment = actor_name.split("#")[1] if "#" in actor_name else ""
        if actor_name not in await asyncio.to_thread(replica_actors, deployment):
            return
        await asyncio.sleep(0.5)


async def _wait_replicas(deployment: str, least: int, timeout_s: float = 120.0) -> None:
    """Wait until ``deployment`` has ``least`` running replicas (Serve replaces killed ones)."""
    from ray import serve

    from cluster.app import APP_NAME

    deadline = now() + timeout_s
    while now() < deadline:
        status = serve.status().applications[APP_NAME].deployments[deployment]
        if status.replica_states.get("RUNNING", 0) >= least:
            return
        await asyncio.sleep(0.5)
    raise BackendError(f"{deployment} has fewer than {least} running replicas after "
                       f"{timeout_s:.0f} s")


def run_failover_bench(config: AppConfig, *, trials: int = 20, kinds: tuple[str, ...] = (
        "renderer",), nodes: int = 3, turns: int = 2, video: bool = False, port: int = 8071,
        progress: Progress | None = None) -> dict[str, Any]:
    """Start the cluster, run the trials, tear everything down; the JSON report."""
    from cluster.local import serve_app

    say = progress or (lambda _m: None)
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise InputError(f"--kill takes {', '.join(KINDS)} (comma separated), not "
                         f"{', '.join(bad) or 'nothing'}")
    if "renderer" in kinds and nodes < 2:
        raise InputError("a renderer kill needs --nodes 2 or more: the session resumes on "
                         "another renderer")
    if trials < 1 or turns < 0:
        raise InputError("--trials must be at least 1 and --turns at least 0")
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="avatar-failover-") as tmp:
        data = Path(tmp)
        with local_nodes(nodes) as address:
            cfg = bench_config(config, data, nodes, port)
            cfg = cfg.model_copy(update={"cluster": cfg.cluster.model_copy(
                update={"ray_address": address})})
            with serve_app(cfg, progress=say) as url:
                done, leaked = asyncio.run(
                    _trials(url, cfg, kinds, trials, turns, video, nodes, say))
    setup = {"nodes": nodes, "renderers": nodes, "turns_before_kill": turns, "video": video,
             "kill": list(kinds), "cores": os.cpu_count(), "load_avg": list(os.getloadavg()),
             "seconds": round(time.time() - started, 1)}
    return report(done, leaked, setup)
