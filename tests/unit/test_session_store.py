"""SQLite session store: round trip, history, idempotency, tenants, kill -9 durability."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from configs.schema import ClusterConfig
from deployments.session_store import (
    MAX_TEXT_CHARS,
    SessionRecord,
    SQLiteSessionStore,
    TurnRecord,
    open_session_store,
)
from models.errors import InputError
from models.llm.base import ChatMessage

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def turn(sid: str, i: int, reply: str | None = None, **kw: object) -> TurnRecord:
    return TurnRecord(sid, i, f"question {i}", f"answer {i}" if reply is None else reply,
                      marks_ms={"endpoint": 10.0 * i, "tts_first_audio": 10.0 * i + 420.5},
                      created_ms=1_700_000_000_000.0 + i, **kw)


@pytest.fixture
def store(tmp_path: Path):
    s = SQLiteSessionStore(tmp_path / "db" / "sessions.sqlite3", clock=lambda: 1234.5)
    yield s
    s.close()


def test_session_and_turns_round_trip_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "dir" / "s.sqlite3"
    s = open_session_store(ClusterConfig(session_store_path=str(path)))
    rec = s.create_session("sess-1", "acme", "maple-clinic", renderer="renderer#1")
    assert rec == SessionRecord("sess-1", "acme", "maple-clinic", rec.created_ms, "active",
                                "renderer#1")
    t = turn("sess-1", 0, refused=True, interrupted=True)
    s.append_turn(t, "acme")
    s.close()

    s2 = SQLiteSessionStore(path)  # another renderer reopens the store
    assert s2.get_session("sess-1", "acme") == rec
    assert s2.turns("sess-1", "acme") == [t]
    s2.set_renderer("sess-1", "acme", "renderer#2")
    assert s2.get_session("sess-1", "acme").renderer == "renderer#2"
    assert [r.session_id for r in s2.active_sessions()] == ["sess-1"]
    s2.close_session("sess-1", "acme")
    assert s2.get_session("sess-1", "acme").state == "closed"
    assert s2.active_sessions() == [] and s2.active_sessions("acme") == []
    assert s2.history("sess-1", "acme") == [ChatMessage("user", "question 0"),
                                            ChatMessage("assistant", "answer 0")]
    s2.close()


def test_history_is_ordered_skips_empty_replies_and_keeps_last_turns(store) -> None:
    store.create_session("s", "t", "maple-clinic")
    for i in (3, 0, 2, 1, 4):  # out of order on purpose
        store.append_turn(turn("s", i, reply="  " if i == 2 else None), "t")
    hist = store.history("s", "t")
    assert [m.content for m in hist] == ["question 0", "answer 0", "question 1", "answer 1",
                                         "question 3", "answer 3", "question 4", "answer 4"]
    assert [m.role for m in hist] == ["user", "assistant"] * 4
    assert [m.content for m in store.history("s", "t", last_turns=2)] == [
        "question 3", "answer 3", "question 4", "answer 4"]
    assert store.history("s", "t", last_turns=0) == []
    assert len(store.history("s", "t", last_turns=99)) == 8
    assert [t.turn_id for t in store.turns("s", "t")] == [0, 1, 2, 3, 4]
    with pytest.raises(InputError):
        store.history("s", "t", last_turns=-1)


def test_append_is_idempotent_per_turn_id(store) -> None:
    store.create_session("s", "t", "p")
    store.append_turn(turn("s", 0), "t")
    store.append_turn(turn("s", 0), "t")  # a retry after a lost reply
    store.append_turn(turn("s", 0, reply="different"), "t")  # first write wins
    assert store.turns("s", "t") == [turn("s", 0)]


def test_tenants_are_isolated(store) -> None:
    store.create_session("s", "alpha", "p")
    store.append_turn(turn("s", 0), "alpha")
    assert store.get_session("s", "beta") is None
    assert store.turns("s", "beta") == [] and store.history("s", "beta") == []
    with pytest.raises(InputError, match="no session"):
        store.append_turn(turn("s", 1), "beta")
    with pytest.raises(InputError, match="no session"):
        store.set_renderer("s", "beta", "evil")
    with pytest.raises(InputError, match="no session"):
        store.close_session("s", "beta")
    assert store.active_sessions("beta") == []
    # the same id under another tenant is a different session
    store.create_session("s", "beta", "p")
    assert store.turns("s", "beta") == [] and len(store.turns("s", "alpha")) == 1
    assert {r.tenant for r in store.active_sessions()} == {"alpha", "beta"}


def test_bad_input_is_rejected_with_what_is_allowed(store) -> None:
    with pytest.raises(InputError, match="letters, digits"):
        store.create_session("bad id!", "t", "p")
    with pytest.raises(InputError, match="tenant"):
        store.create_session("s", "a/b", "p")
    with pytest.raises(InputError, match="session_id"):
        store.create_session("x" * 200, "t", "p")
    store.create_session("s", "t", "p")
    with pytest.raises(InputError, match="already has"):
        store.create_session("s", "t", "p")
    with pytest.raises(InputError, match="at most"):
        store.append_turn(turn("s", 0, reply="x" * (MAX_TEXT_CHARS + 1)), "t")
    with pytest.raises(InputError, match="turn_id"):
        store.append_turn(turn("s", -1), "t")
    with pytest.raises(InputError, match="marks_ms"):
        store.append_turn(TurnRecord("s", 0, "q", "a", marks_ms={"x": float("nan")}), "t")
    with pytest.raises(InputError, match="no session"):
        store.append_turn(turn("missing", 0), "t")
    assert store.turns("s", "t") == []


def test_concurrent_appends_from_threads(store) -> None:
    store.create_session("s", "t", "p")
    errors: list[BaseException] = []

    def worker(k: int) -> None:
        try:
            for i in range(k, 200, 8):
                store.append_turn(turn("s", i), "t")
                store.append_turn(turn("s", i), "t")
        except BaseException as exc:  # surfaced by the assert below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    assert [t.turn_id for t in store.turns("s", "t")] == list(range(200))


_CHILD = """
import sys
import time
from deployments.session_store import SQLiteSessionStore, TurnRecord
store = SQLiteSessionStore(sys.argv[1])
for i in range(int(sys.argv[2])):
    store.append_turn(TurnRecord("s", i, f"question {i}", f"answer {i}",
                                 marks_ms={"turn_end": float(i)}), "t")
    print(f"committed {i}", flush=True)
time.sleep(60)  # wait for the kill even when every append is done
"""


@pytest.mark.parametrize("trial", range(3))
def test_kill_9_loses_no_committed_turn(tmp_path: Path, trial: int) -> None:
    path = tmp_path / "s.sqlite3"
    s = SQLiteSessionStore(path)
    s.create_session("s", "t", "p")
    s.close()
    n_turns = 50
    kill_after = random.Random(trial).randrange(n_turns)
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(path), str(n_turns)],
                            cwd=ROOT, stdout=subprocess.PIPE, text=True)
    committed = -1
    assert proc.stdout is not None
    for line in proc.stdout:
        committed = int(line.split()[1])
        if committed >= kill_after:
            proc.send_signal(signal.SIGKILL)  # the child keeps appending until it dies
            break
    proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    reopened = SQLiteSessionStore(path)
    got = reopened.turns("s", "t")
    ids = [t.turn_id for t in got]
    assert ids[: committed + 1] == list(range(committed + 1)), (committed, ids)
    assert ids == list(range(len(ids)))  # no torn or partial turn
    assert all(t.reply_text == f"answer {t.turn_id}" for t in got)
    reopened.close()


# --- heartbeats and orphaned sessions -------------------------------------------------------

STALE_MS = 15_000.0


def test_sessions_of_a_renderer_that_stopped_beating_are_lost_and_free_their_slots(store):
    store.heartbeat("renderer#dead", now_ms=1_000.0)
    store.heartbeat("renderer#live", now_ms=1_000.0)
    for sid in ("a", "b"):
        store.create_session(sid, "acme", "p", renderer="renderer#dead")
    store.create_session("c", "acme", "p", renderer="renderer#live")
    store.create_session("d", "beta", "p", renderer="renderer#dead")
    store.create_session("e", "beta", "p")  # no renderer: nothing to judge it by
    store.close_session("b", "acme")
    assert store.count_active("acme") == 2

    store.heartbeat("renderer#live", now_ms=16_000.0)
    assert store.reap_orphans(STALE_MS, now_ms=15_999.0) == []  # not yet stale
    assert store.reap_orphans(STALE_MS, now_ms=16_001.0) == [("acme", "a"), ("beta", "d")]
    assert store.get_session("a", "acme").state == "lost"
    assert store.get_session("b", "acme").state == "closed"  # a closed one stays closed
    assert store.get_session("c", "acme").state == "active"
    assert store.count_active("acme") == 1 and store.count_active("beta") == 1
    assert {r.session_id for r in store.active_sessions()} == {"c", "e"}
    assert store.reap_orphans(STALE_MS, now_ms=16_002.0) == []  # nothing twice


def test_a_live_renderer_keeps_its_sessions_however_old(store):
    store.create_session("s", "acme", "p", renderer="r1")  # created at 1234.5
    for now in (1_000.0, 10_000.0, 20_000.0, 1_000_000.0):
        store.heartbeat("r1", now_ms=now)
        assert store.reap_orphans(STALE_MS, now_ms=now + 2_000.0) == []
    assert store.get_session("s", "acme").state == "active"


def test_a_new_renderer_is_not_reaped_before_its_first_beat(tmp_path: Path):
    now = [100_000.0]
    store = SQLiteSessionStore(tmp_path / "s.sqlite3", clock=lambda: now[0])
    store.create_session("new", "acme", "p", renderer="r-new")  # never beat yet
    now[0] += STALE_MS - 1.0
    assert store.reap_orphans(STALE_MS) == []
    assert store.get_session("new", "acme").state == "active"
    now[0] += 2.0  # still silent once the record is older than the stale time: dead
    assert store.reap_orphans(STALE_MS) == [("acme", "new")]
    store.close()


def test_a_lost_session_keeps_its_history_and_resumes_like_a_closed_one(store):
    store.create_session("s", "acme", "p", renderer="r-dead")
    store.append_turn(turn("s", 0), "acme")
    assert store.reap_orphans(STALE_MS, now_ms=1234.5 + STALE_MS + 1) == [("acme", "s")]
    # what a resume reads and writes (Renderer._open): the record, its history, then close
    assert store.get_session("s", "acme").state == "lost"
    assert store.history("s", "acme") == [ChatMessage("user", "question 0"),
                                          ChatMessage("assistant", "answer 0")]
    store.close_session("s", "acme")
    assert store.get_session("s", "acme").state == "closed"
    assert store.count_active("acme") == 0


def test_stale_beats_are_dropped_and_an_older_file_gains_the_table(tmp_path: Path):
    import sqlite3

    path = tmp_path / "old.sqlite3"
    old = sqlite3.connect(path)  # a file written before renderers beat
    old.executescript(
        "CREATE TABLE schema_version (version INTEGER NOT NULL);"
        "INSERT INTO schema_version VALUES (1);"
        "CREATE TABLE sessions (tenant TEXT NOT NULL, session_id TEXT NOT NULL, "
        "persona TEXT NOT NULL, created_ms REAL NOT NULL, state TEXT NOT NULL, renderer TEXT, "
        "PRIMARY KEY (tenant, session_id));"
        "INSERT INTO sessions VALUES ('acme', 'old', 'p', 5.0, 'active', 'r-gone');")
    old.close()
    store = SQLiteSessionStore(path)
    assert store.count_active("acme") == 1
    store.heartbeat("r-gone", now_ms=10.0)
    store.heartbeat("r-live", now_ms=STALE_MS + 50.0)
    assert store.reap_orphans(STALE_MS, now_ms=STALE_MS + 100.0) == [("acme", "old")]
    store.close()
    db = sqlite3.connect(path)  # a dead renderer's beat does not stay forever
    assert db.execute("SELECT renderer FROM renderers").fetchall() == [("r-live",)]
    db.close()


def test_bad_heartbeat_and_reap_arguments_say_what_to_pass(store):
    with pytest.raises(InputError, match="renderer"):
        store.heartbeat(None)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="stale_after_ms"):
        store.reap_orphans(0)
    with pytest.raises(InputError, match="now_ms"):
        store.reap_orphans(STALE_MS, now_ms=float("nan"))
