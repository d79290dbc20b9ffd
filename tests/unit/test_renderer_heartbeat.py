"""Renderers beat in the session store, and a live renderer closes as lost the sessions of a
renderer that died (killed, never resumed), so they stop holding their tenant's quota. A real
Renderer and SQLite store, fake models, intervals shortened to tenths of a second."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from configs import load_config
from configs.schema import AppConfig
from deployments.renderer import Renderer
from deployments.session_store import SQLiteSessionStore, wall_ms
from models.errors import BackendError
from tests.fakes import FakeLLM, FakeStore, FakeTTS, ScriptedASRSession

pytestmark = pytest.mark.unit

TENANT = "maple"  # the tenant of the maple-clinic persona


class FakeASR:
    """``StreamingASR.open_session`` for sessions that only get typed turns."""

    def open_session(self, clock: Any, **_: Any) -> ScriptedASRSession:
        return ScriptedASRSession()


class FlakyStore(SQLiteSessionStore):
    """The SQLite store whose heartbeats and reaps fail the first ``failures`` times."""

    def __init__(self, path: Path, failures: int = 0) -> None:
        super().__init__(path)
        self.failures = {"heartbeat": failures, "reap_orphans": failures}

    def _maybe_fail(self, name: str) -> None:
        if self.failures[name] > 0:
            self.failures[name] -= 1
            raise BackendError(f"session store unreachable ({name})", retryable=True)

    def heartbeat(self, renderer: str, now_ms: float | None = None) -> None:
        self._maybe_fail("heartbeat")
        super().heartbeat(renderer, now_ms)

    def reap_orphans(self, stale_after_ms: float,
                     now_ms: float | None = None) -> list[tuple[str, str]]:
        self._maybe_fail("reap_orphans")
        return super().reap_orphans(stale_after_ms, now_ms)


@pytest.fixture
def config(tmp_path: Path) -> AppConfig:
    return load_config("local", env={}, overrides={
        "cluster": {"session_store_path": str(tmp_path / "sessions.sqlite3")}})


def make_renderer(config: AppConfig, store: SQLiteSessionStore) -> Renderer:
    renderer = Renderer(config, replica_id="renderer-live", asr=FakeASR(), llm=FakeLLM(),
                        tts=FakeTTS(), knowledge=FakeStore(), embedder=None,
                        session_store=store)
    renderer.heartbeat_s, renderer.reap_interval_s, renderer.orphan_after_s = 0.05, 0.1, 0.5
    return renderer


def leave_orphans(config: AppConfig, *ids: str) -> None:
    """Sessions of a renderer that beat for the last time a minute ago and was killed."""
    minute_ago = wall_ms() - 60_000.0
    dead = SQLiteSessionStore(config.cluster.session_store_path, clock=lambda: minute_ago)
    dead.heartbeat("renderer-dead")
    for sid in ids:
        dead.create_session(sid, TENANT, "maple-clinic", renderer="renderer-dead")
    dead.close()


async def wait_for_state(store: SQLiteSessionStore, sid: str, state: str,
                         timeout_s: float = 2.0) -> float:
    start = time.monotonic()
    while store.get_session(sid, TENANT).state != state:
        assert time.monotonic() - start < timeout_s, f"{sid} is still not {state}"
        await asyncio.sleep(0.02)
    return time.monotonic() - start


async def test_a_live_renderer_closes_a_dead_renderers_sessions_and_keeps_its_own(config):
    leave_orphans(config, "orphan-1", "orphan-2")
    store = SQLiteSessionStore(config.cluster.session_store_path)
    renderer = make_renderer(config, store)
    try:
        assert store.count_active(TENANT) == 2  # the dead renderer's sessions hold the quota
        own = str((await renderer.create_session(video=False))["session_id"])
        await wait_for_state(store, "orphan-1", "lost")
        assert store.get_session("orphan-2", TENANT).state == "lost"
        await asyncio.sleep(2 * renderer.orphan_after_s)  # beating keeps its own alive
        assert store.get_session(own, TENANT).state == "active"
        assert store.count_active(TENANT) == 1
        assert renderer.metrics.counters["sessions_lost"] == 2
        resumed = await renderer.create_session(video=False, resume="orphan-1")
        assert resumed["resumed_from"] == "orphan-1"  # a late client still resumes it
        assert store.get_session("orphan-1", TENANT).state == "closed"
    finally:
        await renderer.aclose()
        store.close()


async def test_store_errors_do_not_stop_the_heartbeat_or_the_reaping(config, caplog):
    leave_orphans(config, "orphan")
    store = FlakyStore(Path(config.cluster.session_store_path), failures=3)
    renderer = make_renderer(config, store)
    try:
        own = str((await renderer.create_session(video=False))["session_id"])
        await wait_for_state(store, "orphan", "lost")
        assert store.failures == {"heartbeat": 0, "reap_orphans": 0}  # every failure was hit
        await asyncio.sleep(2 * renderer.orphan_after_s)
        assert store.get_session(own, TENANT).state == "active"
        assert any("heartbeat not stored" in r.getMessage() for r in caplog.records)
        assert all(not task.done() for task in renderer._tasks)
    finally:
        await renderer.aclose()
        store.close()
