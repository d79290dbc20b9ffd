"""``avatarctl bench serve``: what Ray Serve adds over the same work done in one process.

One run starts a local Ray with the whole application (:func:`cluster.local.serve_app`) and,
in the driver, the same models in-process, then measures, always interleaved A/B so both
paths see the same machine load:

- ``hop_overhead_ms``: one Serve handle call to the Knowledge deployment's ``search`` minus
  the same search in-process (what :class:`~deployments.workers.KnowledgeWorker` does: the
  store's search in a worker thread), same query, order alternating per iteration. Reported
  as percentiles of the per-pair differences, not as a difference of percentiles.
- ``turn_overhead_ms``: the same typed question through the cluster (``POST .../text``, the
  first ``audio`` event on the SSE stream) and through an in-process renderer
  (:func:`~deployments.renderer.renderer_from_services`: ``send_text``, the first audio
  event of its session), paired by question. ``server_text_to_first_audio_ms`` is the same
  span from each turn's own timing marks (``asr_final`` to ``tts_first_audio``): the part of
  the overhead spent inside the pipeline (model hops) rather than at the HTTP edge.
- ``session_create_ms``: wall time of ``POST /v1/sessions`` (video off), one at a time, each
  deleted after.

The cluster gets private copies of the Qdrant folder and the session store (local Qdrant
locks its folder to one process) and no Prometheus export port, so it runs beside others.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import shutil
import socket
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Self

from configs.schema import AppConfig
from deployments.timing import percentiles
from models.errors import BackendError, InputError

Progress = Callable[[str], None]
TARGETS = {"hop_overhead_p50_ms": 3.0, "turn_overhead_p50_ms": 15.0}
DEFAULT_PORT = 8031
WARMUP_HOPS = 10
TURN_TIMEOUT_S = 30.0
PATHS = ("serve", "in_process")


# --- pure figures -----------------------------------------------------------------------------


def summary(values: Sequence[float | None], digits: int = 1) -> dict[str, Any]:
    """``{"p50", "p95", "n"}`` of the values that are present (p50/p95 None when none are)."""
    return percentiles(values, (50, 95), digits)


def paired_differences(a: Sequence[float | None], b: Sequence[float | None]) -> list[float]:
    """``a[i] - b[i]`` for every pair where both were measured."""
    if len(a) != len(b):
        raise ValueError(f"paired series differ in length: {len(a)} and {len(b)}")
    return [x - y for x, y in zip(a, b, strict=True) if x is not None and y is not None]


def overhead(serve: Sequence[float | None], local: Sequence[float | None],
             digits: int = 1) -> dict[str, Any]:
    """Percentiles of the per-pair differences (serve minus in-process)."""
    return summary(paired_differences(serve, local), digits)


def check_targets(report: dict[str, Any]) -> dict[str, bool]:
    """Each target met? (a figure that could not be measured is not met)."""
    values = {"hop_overhead_p50_ms": report["hop_overhead_ms"]["p50"],
              "turn_overhead_p50_ms": report["turn_overhead_ms"]["p50"]}
    return {key: values[key] is not None and values[key] <= bound
            for key, bound in TARGETS.items()}


def build_report(raw: dict[str, Any], setup: dict[str, Any]) -> dict[str, Any]:
    """The benchmark's JSON from its raw measurements.

    ``raw``: ``hops`` {serve, in_process: [ms]} (paired by index), ``turns`` [{question,
    serve: {first_audio_ms, server_first_audio_ms, reply}, in_process: {...}}],
    ``session_create_ms`` [ms] and ``startup_s``.
    """
    hops, turns = raw["hops"], raw["turns"]

    def series(path: str, key: str) -> list[float | None]:
        return [t[path].get(key) for t in turns]

    serve_t2a, local_t2a = series("serve", "first_audio_ms"), series("in_process",
                                                                     "first_audio_ms")
    report: dict[str, Any] = {
        "hop_overhead_ms": overhead(hops["serve"], hops["in_process"], 2),
        "hop_ms": {p: summary(hops[p], 2) for p in PATHS},
        "turn_overhead_ms": overhead(serve_t2a, local_t2a),
        "text_to_first_audio_ms": {"serve": summary(serve_t2a), "in_process": summary(local_t2a)},
        "server_text_to_first_audio_ms": {
            p: summary(series(p, "server_first_audio_ms")) for p in PATHS},
        "session_create_ms": summary(raw["session_create_ms"]),
        "startup_s": round(raw["startup_s"], 1),
        "targets": dict(TARGETS),
    }
    report["met"] = check_targets(report)
    report["same_replies"] = sum(1 for t in turns if t["serve"].get("reply") is not None
                                 and t["serve"].get("reply") == t["in_process"].get("reply"))
    report["setup"] = setup
    report["turn_log"] = [{
        "question": t["question"],
        **{f"{p}_ms": _round(t[p].get("first_audio_ms")) for p in PATHS},
        "overhead_ms": _round(None if s is None or loc is None else s - loc),
        **{f"{p}_server_ms": _round(t[p].get("server_first_audio_ms")) for p in PATHS},
    } for t, s, loc in zip(turns, serve_t2a, local_t2a, strict=True)]
    return report


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


class SSEParser:
    """Server-Sent Events, one line at a time: :meth:`feed` returns ``(type, data)`` when a
    blank line ends an event (``data`` parsed as JSON)."""

    def __init__(self) -> None:
        self._kind: str | None = None
        self._data: list[str] = []

    def feed(self, line: str) -> tuple[str, dict[str, Any]] | None:
        line = line.rstrip("\r\n")
        if not line:
            kind, data = self._kind or "message", "\n".join(self._data)
            self._kind, self._data = None, []
            return (kind, json.loads(data)) if data else None
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "event":
            self._kind = value
        elif name == "data":
            self._data.append(value)
        return None


async def interleaved(first: Callable[[str], Awaitable[Any]],
                      second: Callable[[str], Awaitable[Any]], queries: Sequence[str], n: int,
                      warmup: int = WARMUP_HOPS) -> tuple[list[float], list[float]]:
    """``n`` paired timings (ms) of ``first(q)`` and ``second(q)`` on the same query, the
    order alternating per pair, after ``warmup`` unrecorded pairs."""
    a: list[float] = []
    b: list[float] = []
    for i in range(warmup + n):
        query = queries[i % len(queries)]
        times = {}
        for fn in ((first, second) if i % 2 == 0 else (second, first)):
            t0 = time.perf_counter()
            await fn(query)
            times[fn] = (time.perf_counter() - t0) * 1000.0
        if i >= warmup:
            a.append(times[first])
            b.append(times[second])
    return a, b


# --- the two paths of a typed turn ------------------------------------------------------------


class _Tape:
    """Every event of one session, with its perf_counter arrival time."""

    def __init__(self) -> None:
        self.items: list[tuple[float, str, dict[str, Any]]] = []
        self.changed = asyncio.Event()

    def add(self, kind: str, data: dict[str, Any]) -> None:
        self.items.append((time.perf_counter(), kind, data))
        self.changed.set()

    async def wait_for(self, kind: str, turn_id: int, start: int, deadline: float
                       ) -> tuple[float, dict[str, Any]] | None:
        i = start
        while True:
            for at, k, data in self.items[i:]:
                if k == kind and data.get("turn_id") == turn_id:
                    return at, data
            i = len(self.items)
            if time.perf_counter() >= deadline:
                return None
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), deadline - time.perf_counter())
            except TimeoutError:
                return None


class _ServeSession:
    """A session through the Gateway over HTTP, its events read from the SSE stream."""

    def __init__(self, client: Any) -> None:
        self.client, self.tape, self.sid, self._reader = client, _Tape(), "", None
        self.headers: dict[str, str] = {}

    async def open(self) -> None:
        await self.attach(await _post(self.client, "/v1/sessions", {"video": False}))

    async def attach(self, created: dict[str, Any]) -> Self:
        """Take over a created session (``POST /v1/sessions``'s reply) and open its event
        stream."""
        self.sid = str(created["session_id"])
        self.headers = {"Authorization": f"Bearer {created['token']}"}
        self._reader = asyncio.create_task(self._read())
        deadline = time.perf_counter() + TURN_TIMEOUT_S
        while not self.tape.items:  # the stream is open once its first event arrives
            if self._reader.done():
                self._reader.result()
                raise BackendError("the session's event stream closed before its first event")
            if time.perf_counter() > deadline:
                raise BackendError(f"no event on the session's stream in {TURN_TIMEOUT_S:.0f} s")
            await asyncio.sleep(0.01)
        return self

    async def _read(self) -> None:
        parser = SSEParser()
        async with self.client.stream("GET", f"/v1/sessions/{self.sid}/events",
                                      headers=self.headers) as resp:
            if resp.status_code != 200:
                raise BackendError(f"GET events answered {resp.status_code}")
            async for line in resp.aiter_lines():
                if (event := parser.feed(line)) is not None:
                    self.tape.add(*event)

    async def send(self, text: str) -> int:
        return int((await _post(self.client, f"/v1/sessions/{self.sid}/text",
                                {"text": text}, self.headers))["turn_id"])

    async def close(self) -> None:
        await self.client.delete(f"/v1/sessions/{self.sid}", headers=self.headers)
        await _cancel(self._reader)


class _LocalSession:
    """A session on the in-process renderer, its events read from its subscription."""

    def __init__(self, renderer: Any) -> None:
        self.renderer, self.tape, self.sid, self._reader = renderer, _Tape(), "", None

    async def open(self) -> None:
        self.sid = str((await self.renderer.create_session(video=False))["session_id"])
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for kind, data in self.renderer.events(self.sid):
            self.tape.add(kind, data)

    async def send(self, text: str) -> int:
        return await self.renderer.send_text(self.sid, text)

    async def close(self) -> None:
        await self.renderer.close_session(self.sid)
        await _cancel(self._reader)


async def _post(client: Any, path: str, body: dict[str, Any],
                headers: dict[str, str] | None = None) -> dict[str, Any]:
    resp = await client.post(path, json=body, headers=headers)
    if resp.status_code >= 300:
        raise BackendError(f"POST {path} answered {resp.status_code}: {resp.text[:200]}")
    return resp.json()


async def _cancel(task: asyncio.Task[Any] | None) -> None:
    if task is not None:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def typed_turn(session: _ServeSession | _LocalSession, text: str,
                     timeout_s: float = TURN_TIMEOUT_S) -> dict[str, Any]:
    """Send one question; time to its first audio, its server-side span and its reply."""
    cursor = len(session.tape.items)
    t0 = time.perf_counter()
    turn_id = await session.send(text)
    deadline = t0 + timeout_s
    first = await session.tape.wait_for("audio", turn_id, cursor, deadline)
    end = await session.tape.wait_for("turn_end", turn_id, cursor, deadline)
    out: dict[str, Any] = {"first_audio_ms": None if first is None else (first[0] - t0) * 1e3,
                           "server_first_audio_ms": None, "reply": None}
    if end is not None:
        marks = end[1].get("marks_ms", {})
        if "tts_first_audio" in marks and "asr_final" in marks:
            out["server_first_audio_ms"] = marks["tts_first_audio"] - marks["asr_final"]
        out["reply"] = end[1].get("reply")
    return out


# --- the run ----------------------------------------------------------------------------------


def _isolated(config: AppConfig, tmp: Path, port: int | None) -> tuple[AppConfig, AppConfig]:
    """(cluster config, in-process config): each on its own copy of the Qdrant folder, the
    cluster on a local Ray with its own session store, no metrics export, on ``port``."""
    from cluster.app import absolute_paths

    config = absolute_paths(config)
    knowledge = config.models.knowledge

    def variant(name: str, cluster: dict[str, Any]) -> AppConfig:
        k_update: dict[str, Any] = {}
        if knowledge.qdrant_url is None and knowledge.qdrant_path not in (None, ":memory:"):
            src, dst = Path(knowledge.qdrant_path), tmp / f"qdrant-{name}"
            if src.is_dir():
                shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".lock"))
            k_update["qdrant_path"] = str(dst)
        models = config.models.model_copy(update={"knowledge": knowledge.model_copy(
            update=k_update)})
        return config.model_copy(update={"models": models, "cluster": config.cluster.model_copy(
            update={"session_store_path": str(tmp / f"sessions-{name}.sqlite3"), **cluster})})

    http_port = port or config.cluster.http_port
    with socket.socket() as probe:
        try:
            probe.bind((config.cluster.http_host, http_port))
        except OSError:
            raise InputError(f"port {http_port} on {config.cluster.http_host} is in use; pass "
                             "--port with a free one") from None
    served = variant("cluster", {"http_port": http_port, "metrics_port": None,
                                 "ray_address": None})
    return served, variant("local", {})


async def _measure(url: str, config: AppConfig, questions: list[str], hops: int, sessions: int,
                   say: Progress) -> dict[str, Any]:
    import httpx
    from ray import serve

    from cluster.app import APP_NAME
    from deployments.renderer import renderer_from_services
    from deployments.services import build_services
    from deployments.session_store import SQLiteSessionStore

    say("loading the in-process models")
    services = await asyncio.to_thread(build_services, config, None, progress=say)
    store = SQLiteSessionStore(config.cluster.session_store_path)
    renderer = renderer_from_services(services, store, replica_id="in-process", video=False)
    kb, top_k = services.knowledge_base, config.models.knowledge.top_k
    handle = serve.get_deployment_handle("Knowledge", APP_NAME)

    async def remote(query: str) -> Any:
        return await handle.search.remote(kb.tenant, kb.name, query, top_k)

    async def local(query: str) -> Any:
        return await asyncio.to_thread(services.store.search, kb.tenant, kb.name, query, top_k)

    raw: dict[str, Any] = {}
    try:
        async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(TURN_TIMEOUT_S)) as c:
            say(f"{hops} Knowledge hops, interleaved")
            raw["hops"] = dict(zip(PATHS, await interleaved(remote, local, questions, hops),
                                   strict=True))
            paths = {"serve": _ServeSession(c), "in_process": _LocalSession(renderer)}
            for path in paths.values():
                await path.open()
            turns = []
            try:
                for path in paths.values():  # warm-up turn (lazy model state), not recorded
                    await typed_turn(path, questions[0])
                for i, question in enumerate(questions):
                    say(f"typed turn {i + 1}/{len(questions)}")
                    order = PATHS if i % 2 == 0 else PATHS[::-1]
                    turns.append({"question": question,
                                  **{p: await typed_turn(paths[p], question) for p in order}})
            finally:
                for path in paths.values():
                    await path.close()
            raw["turns"] = turns
            say(f"{sessions} session creations")
            creates = []
            for _ in range(sessions):
                t0 = time.perf_counter()
                created = await _post(c, "/v1/sessions", {"video": False})
                creates.append((time.perf_counter() - t0) * 1000.0)
                await c.delete(f"/v1/sessions/{created['session_id']}",
                               headers={"Authorization": f"Bearer {created['token']}"})
            raw["session_create_ms"] = creates
    finally:
        await renderer.aclose()
        await services.aclose()
        store.close()
    return raw


def run_serve_bench(config: AppConfig, *, turns: int = 12, sessions: int = 20, hops: int = 200,
                    port: int | None = None, progress: Progress | None = None) -> dict[str, Any]:
    """Serve's overhead over in-process calls, in one run on a local Ray (see the module
    docstring); ``port`` (default ``cluster.http_port``) must be free."""
    import ray

    from cluster.bench.scenario import load_eval
    from cluster.local import serve_app

    say = progress or (lambda _msg: None)
    answerable, _ = load_eval(config.persona)
    if not 1 <= turns <= len(answerable):
        raise InputError(f"--turns is {turns}; persona {config.persona!r} has "
                         f"{len(answerable)} answerable questions, pick 1 to {len(answerable)}")
    questions = [t.text for t in answerable[:turns]]
    load = os.getloadavg()[0]
    wall = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="avatar-bench-serve-") as tmp:
        served, local = _isolated(config, Path(tmp), port)
        t0 = time.perf_counter()
        with serve_app(served, progress=say) as url:
            startup_s = time.perf_counter() - t0
            raw = asyncio.run(_measure(url, local, questions, hops, sessions, say))
    raw["startup_s"] = startup_s
    setup = {
        "profile": config.profile, "port": served.cluster.http_port, "hops": hops,
        "turns": turns, "sessions": sessions, "cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)), "platform": platform.platform(),
        "machine": platform.machine(), "python": platform.python_version(),
        "ray": ray.__version__, "load_avg_1m_at_start": round(load, 2),
        "llm": config.models.llm.backend, "tts": config.models.tts.backend,
        "embedder": config.models.knowledge.embedder,
        "wall_s": round(time.perf_counter() - wall, 1),
    }
    return build_report(raw, setup)
