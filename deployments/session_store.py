"""Sessions that outlive their renderer: history, persona and turn timings in a store.

A renderer appends each finished turn with :meth:`SessionStore.append_turn`; when the call
returns the turn is committed (on disk, fsynced) and survives a ``kill -9`` of any process.
Another renderer can then reload the full history with :meth:`SessionStore.history`.

Every call is scoped by tenant: a session id of another tenant is simply not there. The
default store is SQLite (one file, WAL, ``synchronous=FULL``); clusters point
``ClusterConfig.session_store_url`` at a Redis server (:mod:`deployments.session_store_redis`).
Methods are synchronous and thread-safe; async callers use ``asyncio.to_thread``.

Every live renderer beats in the store (:meth:`SessionStore.heartbeat`); a session whose
renderer stopped beating (its process killed, its node lost) and whose client never resumed it
is closed as ``'lost'`` by :meth:`SessionStore.reap_orphans`, which any renderer runs, so it no
longer counts against its tenant's quota or the region's load. Beats and reaps compare the
wall clocks of different nodes: keep them in step (NTP) to well within the stale time.
"""

from __future__ import annotations

import json
import math
import re
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from models.errors import BackendError, InputError
from models.llm.base import ChatMessage

if TYPE_CHECKING:
    from configs.schema import ClusterConfig

MAX_ID_CHARS = 128
MAX_TEXT_CHARS = 20_000
MAX_MARKS = 64
_ID_RE = re.compile(r"[A-Za-z0-9._-]+")

SessionState = Literal["active", "closed", "lost"]
"""``active``: counted by quotas and load reports; ``closed``: ended by its client or its
renderer; ``lost``: its renderer died and no client resumed it (see
:meth:`SessionStore.reap_orphans`). Closed and lost sessions resume alike."""


def wall_ms() -> float:
    """Wall-clock time in epoch milliseconds (the default clock of the stores)."""
    return time.time() * 1000.0


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """One conversation: who owns it, which persona speaks and which renderer serves it."""

    session_id: str
    tenant: str
    persona: str
    created_ms: float
    state: SessionState = "active"
    renderer: str | None = None


@dataclass(frozen=True, slots=True)
class TurnRecord:
    """One finished turn: what the user said, what the avatar answered, and its timing marks
    (milliseconds on the session's media clock, as in ``TurnTimings.marks``)."""

    session_id: str
    turn_id: int
    user_text: str
    reply_text: str
    refused: bool = False
    interrupted: bool = False
    marks_ms: dict[str, float] = field(default_factory=dict)
    created_ms: float = 0.0

    def to_json(self) -> str:
        """Compact JSON, the form both stores keep."""
        return json.dumps({
            "session_id": self.session_id, "turn_id": self.turn_id,
            "user_text": self.user_text, "reply_text": self.reply_text,
            "refused": self.refused, "interrupted": self.interrupted,
            "marks_ms": self.marks_ms, "created_ms": self.created_ms,
        }, separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> TurnRecord:
        """Inverse of :meth:`to_json`."""
        d = json.loads(text)
        return cls(d["session_id"], int(d["turn_id"]), d["user_text"], d["reply_text"],
                   bool(d["refused"]), bool(d["interrupted"]),
                   {str(k): float(v) for k, v in d["marks_ms"].items()}, float(d["created_ms"]))


# --- validation ---------------------------------------------------------------------------


def check_id(kind: str, value: object) -> str:
    """Return ``value`` if it is a short id of ``[A-Za-z0-9._-]``, else raise InputError."""
    if not isinstance(value, str) or not _ID_RE.fullmatch(value) or len(value) > MAX_ID_CHARS:
        raise InputError(f"{kind} must be 1-{MAX_ID_CHARS} characters of letters, digits, "
                         f"'.', '_' or '-'; got {value!r:.80}")
    return value


def check_renderer(value: object) -> str | None:
    """A renderer name is free text (replica ids contain ``#`` and ``:``) but short and
    printable."""
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > 256 or not value.isprintable():
        raise InputError(f"renderer must be a printable name of 1-256 characters or None; "
                         f"got {value!r:.80}")
    return value


def check_ms(name: str, value: object, *, positive: bool = False) -> float:
    """``value`` as a float if it is a finite number of milliseconds (> 0 when ``positive``),
    else InputError."""
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or (positive and value <= 0):
        raise InputError(f"{name} must be a finite number of milliseconds"
                         f"{' above 0' if positive else ''}; got {value!r:.40}")
    return float(value)


def check_heartbeat(renderer: object) -> str:
    """The name a renderer beats under: as :func:`check_renderer`, but never None."""
    name = check_renderer(renderer)
    if name is None:
        raise InputError("heartbeat needs the renderer's name; got None")
    return name


def check_turn(turn: TurnRecord) -> TurnRecord:
    """Validate a turn before it is stored; returns it with marks normalised to floats."""
    if not isinstance(turn, TurnRecord):
        raise InputError(f"append_turn takes a TurnRecord, got {type(turn).__name__}")
    check_id("session_id", turn.session_id)
    if isinstance(turn.turn_id, bool) or not isinstance(turn.turn_id, int) or turn.turn_id < 0:
        raise InputError(f"turn_id must be an integer >= 0; got {turn.turn_id!r}")
    for name in ("user_text", "reply_text"):
        text = getattr(turn, name)
        if not isinstance(text, str):
            raise InputError(f"{name} must be a string; got {type(text).__name__}")
        if len(text) > MAX_TEXT_CHARS:
            raise InputError(f"{name} is {len(text)} characters; at most {MAX_TEXT_CHARS} "
                             f"are stored per turn: shorten it")
    if not isinstance(turn.marks_ms, Mapping) or len(turn.marks_ms) > MAX_MARKS:
        raise InputError(f"marks_ms must be a mapping of at most {MAX_MARKS} timing marks")
    marks: dict[str, float] = {}
    for key, value in turn.marks_ms.items():
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if not isinstance(key, str) or len(key) > 64 or not ok or not math.isfinite(value):
            raise InputError(f"marks_ms must map mark names (<= 64 chars) to finite "
                             f"milliseconds; got {key!r:.70}: {value!r:.30}")
        marks[key] = float(value)
    return TurnRecord(turn.session_id, turn.turn_id, turn.user_text, turn.reply_text,
                      bool(turn.refused), bool(turn.interrupted), marks, float(turn.created_ms))


def turns_to_history(turns: list[TurnRecord], last_turns: int | None) -> list[ChatMessage]:
    """User/assistant pairs in turn order; turns with an empty reply are left out (nothing
    was said back, e.g. barge-in before the first word); ``last_turns`` keeps the newest."""
    if last_turns is not None and (isinstance(last_turns, bool) or last_turns < 0):
        raise InputError(f"last_turns must be None or an integer >= 0; got {last_turns!r}")
    said = [t for t in sorted(turns, key=lambda t: t.turn_id) if t.reply_text.strip()]
    if last_turns is not None:
        said = said[len(said) - last_turns:] if last_turns else []
    out: list[ChatMessage] = []
    for t in said:
        out += [ChatMessage("user", t.user_text), ChatMessage("assistant", t.reply_text)]
    return out


# --- the interface ------------------------------------------------------------------------


class SessionStore(ABC):
    """Durable, tenant-scoped sessions and their turns. Thread-safe, synchronous."""

    @abstractmethod
    def create_session(self, session_id: str, tenant: str, persona: str,
                       renderer: str | None = None) -> SessionRecord:
        """Create an active session; InputError if the tenant already has this id."""

    @abstractmethod
    def get_session(self, session_id: str, tenant: str) -> SessionRecord | None:
        """The session, or None if this tenant has no session with this id."""

    @abstractmethod
    def set_renderer(self, session_id: str, tenant: str, renderer: str | None) -> None:
        """Record which renderer serves the session now (after a failover)."""

    @abstractmethod
    def close_session(self, session_id: str, tenant: str) -> None:
        """Mark the session closed; its history stays readable."""

    @abstractmethod
    def append_turn(self, turn: TurnRecord, tenant: str) -> None:
        """Commit a finished turn: durable when this returns. Appending a turn id that is
        already stored is a no-op (the first write wins), so retries are safe."""

    @abstractmethod
    def turns(self, session_id: str, tenant: str) -> list[TurnRecord]:
        """Every committed turn, by turn id; [] for an unknown (or foreign) session."""

    @abstractmethod
    def active_sessions(self, tenant: str | None = None) -> list[SessionRecord]:
        """Active sessions of one tenant, or of all tenants, oldest first."""

    def count_active(self, tenant: str) -> int:
        """How many active sessions ``tenant`` holds (stores override this with a count
        that does not read the records)."""
        return len(self.active_sessions(tenant))

    @abstractmethod
    def heartbeat(self, renderer: str, now_ms: float | None = None) -> None:
        """Record that ``renderer`` is alive at ``now_ms`` (default: the store's clock)."""

    @abstractmethod
    def reap_orphans(self, stale_after_ms: float,
                     now_ms: float | None = None) -> list[tuple[str, str]]:
        """Mark ``'lost'`` every active session whose renderer has not beaten for more than
        ``stale_after_ms``, and return their ``(tenant, session_id)``, sorted.

        A renderer that never beat counts as stale only for records older than
        ``stale_after_ms`` (a new renderer is not reaped before its first beat); sessions
        with no renderer are left alone. Each record changes atomically: one that is
        resumed, closed or re-homed meanwhile is not touched. Lost sessions keep their
        history and resume like closed ones. Beats older than the stale time are dropped."""

    @abstractmethod
    def close(self) -> None:
        """Release connections."""

    def history(self, session_id: str, tenant: str,
                last_turns: int | None = None) -> list[ChatMessage]:
        """The chat history to seed a conductor with (see :func:`turns_to_history`)."""
        return turns_to_history(self.turns(session_id, tenant), last_turns)

    def _missing(self, session_id: str, tenant: str) -> InputError:
        return InputError(f"tenant {tenant!r} has no session {session_id!r}; create it first")


# --- SQLite -------------------------------------------------------------------------------

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS sessions (
    tenant TEXT NOT NULL, session_id TEXT NOT NULL, persona TEXT NOT NULL,
    created_ms REAL NOT NULL, state TEXT NOT NULL, renderer TEXT,
    PRIMARY KEY (tenant, session_id));
CREATE TABLE IF NOT EXISTS turns (
    tenant TEXT NOT NULL, session_id TEXT NOT NULL, turn_id INTEGER NOT NULL,
    user_text TEXT NOT NULL, reply_text TEXT NOT NULL, refused INTEGER NOT NULL,
    interrupted INTEGER NOT NULL, marks_ms TEXT NOT NULL, created_ms REAL NOT NULL,
    PRIMARY KEY (tenant, session_id, turn_id));
CREATE INDEX IF NOT EXISTS sessions_by_state ON sessions (state, created_ms);
CREATE TABLE IF NOT EXISTS renderers (renderer TEXT PRIMARY KEY, beat_ms REAL NOT NULL);
"""
# Added tables keep SCHEMA_VERSION: older code opens the file and ignores them.
_REAP = """
UPDATE sessions SET state='lost'
WHERE state='active' AND renderer IS NOT NULL
  AND renderer NOT IN (SELECT renderer FROM renderers WHERE beat_ms >= :cutoff)
  AND (created_ms < :cutoff OR renderer IN (SELECT renderer FROM renderers))
RETURNING tenant, session_id
"""
_SESSION_COLS = "session_id, tenant, persona, created_ms, state, renderer"


class SQLiteSessionStore(SessionStore):
    """One SQLite file in WAL mode with ``synchronous=FULL``: every commit is fsynced before
    it returns. One connection guarded by a lock serves all threads."""

    def __init__(self, path: str | Path, *, clock: Callable[[], float] = wall_ms) -> None:
        self.path = Path(path)
        self._clock = clock
        self._lock = threading.Lock()
        try:
            if str(path) != ":memory:":
                self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(path), check_same_thread=False, timeout=30.0,
                                       isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            self._check_version()
        except (sqlite3.Error, OSError) as exc:
            raise BackendError(f"cannot open the session store at {path}: {exc}; check that "
                               f"the directory is writable", retryable=False) from exc

    def _check_version(self) -> None:
        row = self._db.execute("SELECT MAX(version) FROM schema_version").fetchone()
        if row[0] is None:
            self._db.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
        elif row[0] > SCHEMA_VERSION:
            raise BackendError(f"session store {self.path} has schema version {row[0]}, newer "
                               f"than this code ({SCHEMA_VERSION}); upgrade avatar-cluster",
                               retryable=False)

    def _run(self, sql: str, args: tuple[object, ...] = ()) -> list[tuple]:
        with self._lock:
            try:
                return self._db.execute(sql, args).fetchall()
            except sqlite3.Error as exc:
                raise BackendError(f"session store {self.path}: {exc}") from exc

    def create_session(self, session_id: str, tenant: str, persona: str,
                       renderer: str | None = None) -> SessionRecord:
        rec = SessionRecord(check_id("session_id", session_id), check_id("tenant", tenant),
                            check_id("persona", persona), self._clock(), "active",
                            check_renderer(renderer))
        done = self._run("INSERT OR IGNORE INTO sessions (tenant, session_id, persona, "
                         "created_ms, state, renderer) VALUES (?, ?, ?, ?, ?, ?) RETURNING 1",
                         (tenant, session_id, persona, rec.created_ms, rec.state, rec.renderer))
        if not done:
            raise InputError(f"tenant {tenant!r} already has a session {session_id!r}; "
                             f"pick a new session id")
        return rec

    def get_session(self, session_id: str, tenant: str) -> SessionRecord | None:
        rows = self._run(f"SELECT {_SESSION_COLS} FROM sessions WHERE tenant=? AND session_id=?",
                         (check_id("tenant", tenant), check_id("session_id", session_id)))
        return SessionRecord(*rows[0]) if rows else None

    def _update(self, session_id: str, tenant: str, column: str, value: object) -> None:
        done = self._run(f"UPDATE sessions SET {column}=? WHERE tenant=? AND session_id=? "
                         f"RETURNING 1", (value, check_id("tenant", tenant),
                                          check_id("session_id", session_id)))
        if not done:
            raise self._missing(session_id, tenant)

    def set_renderer(self, session_id: str, tenant: str, renderer: str | None) -> None:
        self._update(session_id, tenant, "renderer", check_renderer(renderer))

    def close_session(self, session_id: str, tenant: str) -> None:
        self._update(session_id, tenant, "state", "closed")

    def append_turn(self, turn: TurnRecord, tenant: str) -> None:
        t = check_turn(turn)
        check_id("tenant", tenant)
        with self._lock:
            try:
                known = self._db.execute("SELECT 1 FROM sessions WHERE tenant=? AND "
                                         "session_id=?", (tenant, t.session_id)).fetchone()
                if known is None:
                    raise self._missing(t.session_id, tenant)
                self._db.execute(
                    "INSERT OR IGNORE INTO turns VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (tenant, t.session_id, t.turn_id, t.user_text, t.reply_text,
                     int(t.refused), int(t.interrupted), json.dumps(t.marks_ms),
                     t.created_ms or self._clock()))
            except sqlite3.Error as exc:
                raise BackendError(f"session store {self.path}: {exc}") from exc

    def turns(self, session_id: str, tenant: str) -> list[TurnRecord]:
        rows = self._run("SELECT session_id, turn_id, user_text, reply_text, refused, "
                         "interrupted, marks_ms, created_ms FROM turns WHERE tenant=? AND "
                         "session_id=? ORDER BY turn_id",
                         (check_id("tenant", tenant), check_id("session_id", session_id)))
        return [TurnRecord(s, i, u, r, bool(f), bool(x), json.loads(m), c)
                for s, i, u, r, f, x, m, c in rows]

    def active_sessions(self, tenant: str | None = None) -> list[SessionRecord]:
        sql = f"SELECT {_SESSION_COLS} FROM sessions WHERE state='active'"
        args: tuple[object, ...] = ()
        if tenant is not None:
            sql, args = sql + " AND tenant=?", (check_id("tenant", tenant),)
        return [SessionRecord(*row) for row in self._run(sql + " ORDER BY created_ms", args)]

    def count_active(self, tenant: str) -> int:
        rows = self._run("SELECT COUNT(*) FROM sessions WHERE state='active' AND tenant=?",
                         (check_id("tenant", tenant),))
        return int(rows[0][0])

    def heartbeat(self, renderer: str, now_ms: float | None = None) -> None:
        beat = self._clock() if now_ms is None else check_ms("now_ms", now_ms)
        self._run("INSERT INTO renderers (renderer, beat_ms) VALUES (?, ?) ON CONFLICT "
                  "(renderer) DO UPDATE SET beat_ms=excluded.beat_ms",
                  (check_heartbeat(renderer), beat))

    def reap_orphans(self, stale_after_ms: float,
                     now_ms: float | None = None) -> list[tuple[str, str]]:
        stale = check_ms("stale_after_ms", stale_after_ms, positive=True)
        now = self._clock() if now_ms is None else check_ms("now_ms", now_ms)
        cutoff = {"cutoff": now - stale}
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    rows = self._db.execute(_REAP, cutoff).fetchall()
                    self._db.execute("DELETE FROM renderers WHERE beat_ms < :cutoff", cutoff)
                    self._db.execute("COMMIT")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise BackendError(f"session store {self.path}: {exc}") from exc
        return sorted((str(tenant), str(sid)) for tenant, sid in rows)

    def close(self) -> None:
        with self._lock:
            self._db.close()


def open_session_store(cluster_config: ClusterConfig) -> SessionStore:
    """Redis when ``session_store_url`` is set, else SQLite at ``session_store_path``."""
    if cluster_config.session_store_url:
        from deployments.session_store_redis import RedisSessionStore

        return RedisSessionStore(cluster_config.session_store_url)
    return SQLiteSessionStore(cluster_config.session_store_path)
