"""Redis session store against a real redis-server on 127.0.0.1 (appendfsync always)."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from configs.schema import ClusterConfig
from deployments.session_store import TurnRecord, open_session_store
from deployments.session_store_redis import RedisSessionStore
from models.errors import BackendError, BackendUnavailable, InputError

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("redis-server") is None,
                       reason="redis-server is not on PATH; `make install` installs it"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A private redis-server: its own port and data directory, AOF fsynced on every write."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port),
             "--dir", str(self.data_dir), "--appendonly", "yes", "--appendfsync", "always",
             "--save", "", "--daemonize", "no", "--protected-mode", "yes",
             "--logfile", str(self.data_dir / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(host="127.0.0.1", port=self.port)
        deadline = time.monotonic() + 10
        try:
            while not self._ping(client):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    log = (self.data_dir / "redis.log").read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"redis-server did not start:\n{log}")
                time.sleep(0.02)
        finally:
            client.close()

    @staticmethod
    def _ping(client: redis.Redis) -> bool:
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill9()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    srv = RedisServer(tmp_path)
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def store(server: RedisServer) -> Iterator[RedisSessionStore]:
    s = open_session_store(ClusterConfig(session_store_url=server.url))
    assert isinstance(s, RedisSessionStore)
    yield s
    s.close()


def turn(sid: str, i: int, reply: str | None = None) -> TurnRecord:
    return TurnRecord(sid, i, f"question {i}", f"answer {i}" if reply is None else reply,
                      refused=i % 3 == 0, interrupted=i % 2 == 0,
                      marks_ms={"endpoint": 10.0 * i, "turn_end": 10.0 * i + 900.25},
                      created_ms=1_700_000_000_000.0 + i)


def test_round_trip_history_and_idempotent_append(store, server) -> None:
    rec = store.create_session("s-1", "acme", "maple-clinic", renderer="renderer#1")
    with pytest.raises(InputError, match="already has"):
        store.create_session("s-1", "acme", "maple-clinic")
    for i in (2, 0, 1, 3):
        store.append_turn(turn("s-1", i, reply="" if i == 1 else None), "acme")
    store.append_turn(turn("s-1", 0, reply="a retry that must not win"), "acme")

    other = RedisSessionStore(server.url)  # another renderer on another node
    assert other.get_session("s-1", "acme") == rec
    assert other.turns("s-1", "acme") == [turn("s-1", i, reply="" if i == 1 else None)
                                          for i in range(4)]
    assert [m.content for m in other.history("s-1", "acme", last_turns=2)] == [
        "question 2", "answer 2", "question 3", "answer 3"]
    assert len(other.history("s-1", "acme")) == 6
    other.set_renderer("s-1", "acme", "renderer#2")
    assert store.get_session("s-1", "acme").renderer == "renderer#2"
    assert [r.session_id for r in store.active_sessions()] == ["s-1"]
    other.close_session("s-1", "acme")
    assert store.get_session("s-1", "acme").state == "closed"
    assert store.active_sessions() == []
    other.close()


def test_tenants_are_isolated(store, server) -> None:
    store.create_session("s", "alpha", "p")
    store.append_turn(turn("s", 0), "alpha")
    assert store.get_session("s", "beta") is None
    assert store.turns("s", "beta") == []
    with pytest.raises(InputError, match="no session"):
        store.append_turn(turn("s", 1), "beta")
    with pytest.raises(InputError, match="no session"):
        store.set_renderer("s", "beta", "x")
    with pytest.raises(InputError, match="tenant"):
        store.get_session("s", "alpha:turns")
    raw = redis.Redis.from_url(server.url, decode_responses=True)
    assert all(":alpha:" in k for k in raw.keys("avatar:*") if k != "avatar:tenants")
    raw.close()


def test_concurrent_appends_from_threads(store) -> None:
    store.create_session("s", "t", "p")
    errors: list[BaseException] = []

    def worker(k: int) -> None:
        try:
            for i in range(k, 120, 6):
                store.append_turn(turn("s", i), "t")
                store.append_turn(turn("s", i, reply="duplicate"), "t")
        except BaseException as exc:  # surfaced by the assert below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    got = store.turns("s", "t")
    assert got == [turn("s", i) for i in range(120)]


@pytest.mark.parametrize("trial", range(3))
def test_kill_9_of_the_server_loses_no_committed_turn(server, trial: int) -> None:
    store = RedisSessionStore(server.url, socket_timeout_s=2.0)
    store.create_session("s", "t", "p")
    committed: list[int] = []
    stopped = threading.Event()

    def appender() -> None:
        try:
            for i in range(10_000):
                store.append_turn(turn("s", i), "t")
                committed.append(i)
        except BackendError:
            stopped.set()

    th = threading.Thread(target=appender)
    th.start()
    target = 10 + 15 * trial
    deadline = time.monotonic() + 10
    while len(committed) < target and time.monotonic() < deadline:
        time.sleep(0.001)
    server.kill9()  # appends are in flight when the server dies
    th.join(timeout=10)
    assert stopped.is_set() and len(committed) >= target
    store.close()

    server.start()  # same port, same data directory
    again = RedisSessionStore(server.url)
    ids = [t.turn_id for t in again.turns("s", "t")]
    assert ids[: len(committed)] == committed
    assert ids == list(range(len(ids))) and len(ids) - len(committed) <= 1
    assert again.get_session("s", "t") is not None
    again.close()


def test_unreachable_server_is_a_clear_error() -> None:
    with pytest.raises(BackendUnavailable, match="redis-server"):
        RedisSessionStore(f"redis://127.0.0.1:{_free_port()}/0", socket_timeout_s=0.5)


# --- heartbeats and orphaned sessions -------------------------------------------------------

STALE_MS = 15_000.0


def clocked(server: RedisServer, start_ms: float) -> tuple[RedisSessionStore, list[float]]:
    now = [start_ms]
    return RedisSessionStore(server.url, clock=lambda: now[0]), now


def test_sessions_of_a_renderer_that_stopped_beating_are_lost_and_free_their_slots(server):
    store, _ = clocked(server, 1_000.0)
    store.heartbeat("renderer#dead:1")
    store.heartbeat("renderer#live:2")
    for sid in ("a", "b"):
        store.create_session(sid, "acme", "p", renderer="renderer#dead:1")
    store.create_session("c", "acme", "p", renderer="renderer#live:2")
    store.create_session("d", "beta", "p", renderer="renderer#dead:1")
    store.create_session("e", "beta", "p")  # no renderer: nothing to judge it by
    store.close_session("b", "acme")
    assert store.count_active("acme") == 2

    store.heartbeat("renderer#live:2", now_ms=16_000.0)
    other = RedisSessionStore(server.url)  # any renderer may reap: the store is shared
    assert other.reap_orphans(STALE_MS, now_ms=15_999.0) == []
    assert other.reap_orphans(STALE_MS, now_ms=16_001.0) == [("acme", "a"), ("beta", "d")]
    assert store.get_session("a", "acme").state == "lost"
    assert store.get_session("b", "acme").state == "closed"
    assert store.get_session("c", "acme").state == "active"
    assert store.count_active("acme") == 1 and store.count_active("beta") == 1
    assert {r.session_id for r in store.active_sessions()} == {"c", "e"}
    assert other.reap_orphans(STALE_MS, now_ms=16_002.0) == []
    raw = redis.Redis.from_url(server.url, decode_responses=True)
    assert raw.zrange("avatar:renderers", 0, -1) == ["renderer#live:2"]  # stale beat dropped
    raw.close()
    other.close()
    store.close()


def test_a_live_renderer_keeps_its_sessions_and_a_new_one_waits_for_its_beat(server):
    store, now = clocked(server, 100_000.0)
    store.create_session("old", "acme", "p", renderer="r1")
    for _ in range(5):  # r1 beats every 10 s: its session stays however old it gets
        now[0] += 10_000.0
        store.heartbeat("r1")
        assert store.reap_orphans(STALE_MS, now_ms=now[0] + 1_000.0) == []
    store.create_session("new", "acme", "p", renderer="r-new")  # has not beaten yet
    now[0] += STALE_MS - 1
    store.heartbeat("r1")
    assert store.reap_orphans(STALE_MS) == []
    now[0] += 2  # still silent once its record is older than the stale time: dead
    assert store.reap_orphans(STALE_MS) == [("acme", "new")]
    assert store.get_session("old", "acme").state == "active"
    store.close()


def test_a_lost_session_keeps_its_history_and_resumes_like_a_closed_one(server):
    store, now = clocked(server, 1_000.0)
    store.create_session("s", "acme", "p", renderer="r-dead")
    store.append_turn(turn("s", 0), "acme")
    now[0] += STALE_MS + 1
    assert store.reap_orphans(STALE_MS) == [("acme", "s")]
    assert store.get_session("s", "acme").state == "lost"
    assert [m.content for m in store.history("s", "acme")] == ["question 0", "answer 0"]
    store.close_session("s", "acme")  # what a resume does after reading the history
    assert store.get_session("s", "acme").state == "closed"
    assert store.count_active("acme") == 0
    store.close()


def test_a_session_rehomed_after_the_scan_is_not_reaped(server):
    store, now = clocked(server, 1_000.0)
    store.create_session("s", "acme", "p", renderer="r-dead")
    now[0] += STALE_MS + 1
    store.heartbeat("r-live")
    scan = store._orphan_candidates
    found: list[tuple[str, str]] = []

    def scan_then_rehome(cutoff: float) -> list[tuple[str, str]]:
        found.extend(scan(cutoff))
        store.set_renderer("s", "acme", "r-live")  # another renderer takes it over meanwhile
        return found

    store._orphan_candidates = scan_then_rehome  # type: ignore[method-assign]
    assert store.reap_orphans(STALE_MS) == [] and found == [("acme", "s")]
    assert store.get_session("s", "acme").state == "active"
    store.close()
