"""The session store on a Redis server, for clusters where renderers run on several nodes.

Keys carry the tenant: ``avatar:{tenant}:session:{id}`` (a hash), ``avatar:{tenant}:turns:{id}``
(a sorted set of turn JSON scored by turn id), ``avatar:{tenant}:active`` (a set of active
session ids), ``avatar:tenants`` (tenant names, to list every tenant's sessions) and
``avatar:renderers`` (a sorted set of renderer names scored by their last heartbeat, epoch ms).
Creation, appends and reaping are Lua scripts, so they are atomic and an append is idempotent
per turn id. A reap reads the active sessions first, then re-checks and closes each orphan in
one script, so a session resumed or re-homed in between is left alone.

Durability comes from the server: run it with ``appendonly yes`` and ``appendfsync always``;
then a reply (and so a returned :meth:`RedisSessionStore.append_turn`) means the write is in
the fsynced append-only file.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import redis

from deployments.session_store import (
    SessionRecord,
    SessionStore,
    TurnRecord,
    check_heartbeat,
    check_id,
    check_ms,
    check_renderer,
    check_turn,
    wall_ms,
)
from models.errors import BackendError, BackendUnavailable, InputError

_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'persona', ARGV[1], 'created_ms', ARGV[2], 'state', 'active',
           'renderer', ARGV[3])
redis.call('SADD', KEYS[2], ARGV[4])
redis.call('SADD', KEYS[3], ARGV[5])
return 1
"""
_APPEND = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
if redis.call('ZCOUNT', KEYS[2], ARGV[1], ARGV[1]) > 0 then return 0 end
redis.call('ZADD', KEYS[2], ARGV[1], ARGV[2])
return 1
"""
_UPDATE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if ARGV[1] == 'state' then redis.call('SREM', KEYS[2], ARGV[3]) end
return 1
"""
_REAP = """
local h = redis.call('HMGET', KEYS[1], 'state', 'renderer', 'created_ms')
if h[1] ~= 'active' or not h[2] or h[2] == '' then return 0 end
local cutoff = tonumber(ARGV[2])
local beat = redis.call('ZSCORE', KEYS[3], h[2])
if beat then
  if tonumber(beat) >= cutoff then return 0 end
elseif tonumber(h[3]) >= cutoff then return 0 end
redis.call('HSET', KEYS[1], 'state', 'lost')
redis.call('SREM', KEYS[2], ARGV[1])
return 1
"""
_PREFIX = "avatar"
_RENDERERS = f"{_PREFIX}:renderers"


def _session_key(tenant: str, session_id: str) -> str:
    return f"{_PREFIX}:{tenant}:session:{session_id}"


def _turns_key(tenant: str, session_id: str) -> str:
    return f"{_PREFIX}:{tenant}:turns:{session_id}"


def _active_key(tenant: str) -> str:
    return f"{_PREFIX}:{tenant}:active"


class RedisSessionStore(SessionStore):
    """Sessions and turns on a Redis server (``redis://host:port/db``). Thread-safe: the
    client's connection pool hands each call its own connection."""

    def __init__(self, url: str, *, clock: Callable[[], float] = wall_ms,
                 socket_timeout_s: float = 5.0) -> None:
        self.url = url
        self._clock = clock
        try:
            self._r = redis.Redis.from_url(url, decode_responses=True,
                                           socket_timeout=socket_timeout_s,
                                           socket_connect_timeout=socket_timeout_s)
            self._r.ping()
        except ValueError as exc:
            raise InputError(f"session_store_url {url!r} is not a Redis URL "
                             f"(redis://host:port/db): {exc}") from exc
        except redis.RedisError as exc:
            raise BackendUnavailable(f"cannot reach the session store at {url}: {exc}; start "
                                     f"redis-server or fix session_store_url") from exc
        self._create = self._r.register_script(_CREATE)
        self._append = self._r.register_script(_APPEND)
        self._set = self._r.register_script(_UPDATE)
        self._reap = self._r.register_script(_REAP)

    def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except redis.ConnectionError as exc:
            raise BackendError(f"session store {self.url} is unreachable: {exc}",
                               retryable=True) from exc
        except redis.RedisError as exc:
            raise BackendError(f"session store {self.url}: {exc}") from exc

    def create_session(self, session_id: str, tenant: str, persona: str,
                       renderer: str | None = None) -> SessionRecord:
        rec = SessionRecord(check_id("session_id", session_id), check_id("tenant", tenant),
                            check_id("persona", persona), self._clock(), "active",
                            check_renderer(renderer))
        keys = [_session_key(tenant, session_id), _active_key(tenant), f"{_PREFIX}:tenants"]
        args = [persona, repr(rec.created_ms), renderer or "", session_id, tenant]
        if not self._call(self._create, keys=keys, args=args):
            raise InputError(f"tenant {tenant!r} already has a session {session_id!r}; "
                             f"pick a new session id")
        return rec

    def get_session(self, session_id: str, tenant: str) -> SessionRecord | None:
        check_id("tenant", tenant)
        check_id("session_id", session_id)
        h = self._call(self._r.hgetall, _session_key(tenant, session_id))
        if not h:
            return None
        return SessionRecord(session_id, tenant, h["persona"], float(h["created_ms"]),
                             h["state"], h["renderer"] or None)

    def _update(self, session_id: str, tenant: str, field: str, value: str) -> None:
        check_id("tenant", tenant)
        check_id("session_id", session_id)
        keys = [_session_key(tenant, session_id), _active_key(tenant)]
        if not self._call(self._set, keys=keys, args=[field, value, session_id]):
            raise self._missing(session_id, tenant)

    def set_renderer(self, session_id: str, tenant: str, renderer: str | None) -> None:
        self._update(session_id, tenant, "renderer", check_renderer(renderer) or "")

    def close_session(self, session_id: str, tenant: str) -> None:
        self._update(session_id, tenant, "state", "closed")

    def append_turn(self, turn: TurnRecord, tenant: str) -> None:
        t = check_turn(turn)
        check_id("tenant", tenant)
        if not t.created_ms:
            t = TurnRecord(t.session_id, t.turn_id, t.user_text, t.reply_text, t.refused,
                           t.interrupted, t.marks_ms, self._clock())
        keys = [_session_key(tenant, t.session_id), _turns_key(tenant, t.session_id)]
        if self._call(self._append, keys=keys, args=[t.turn_id, t.to_json()]) == -1:
            raise self._missing(t.session_id, tenant)

    def turns(self, session_id: str, tenant: str) -> list[TurnRecord]:
        check_id("tenant", tenant)
        check_id("session_id", session_id)
        raw = self._call(self._r.zrange, _turns_key(tenant, session_id), 0, -1)
        return [TurnRecord.from_json(item) for item in raw]

    def active_sessions(self, tenant: str | None = None) -> list[SessionRecord]:
        tenants = ([check_id("tenant", tenant)] if tenant is not None
                   else sorted(self._call(self._r.smembers, f"{_PREFIX}:tenants")))
        out: list[SessionRecord] = []
        for name in tenants:
            for sid in self._call(self._r.smembers, _active_key(name)):
                rec = self.get_session(sid, name)
                if rec is not None and rec.state == "active":
                    out.append(rec)
        return sorted(out, key=lambda r: r.created_ms)

    def count_active(self, tenant: str) -> int:
        return int(self._call(self._r.scard, _active_key(check_id("tenant", tenant))))

    def heartbeat(self, renderer: str, now_ms: float | None = None) -> None:
        beat = self._clock() if now_ms is None else check_ms("now_ms", now_ms)
        self._call(self._r.zadd, _RENDERERS, {check_heartbeat(renderer): beat})

    def reap_orphans(self, stale_after_ms: float,
                     now_ms: float | None = None) -> list[tuple[str, str]]:
        stale = check_ms("stale_after_ms", stale_after_ms, positive=True)
        now = self._clock() if now_ms is None else check_ms("now_ms", now_ms)
        cutoff = now - stale
        reaped = [(tenant, sid) for tenant, sid in self._orphan_candidates(cutoff)
                  if self._call(self._reap, keys=[_session_key(tenant, sid), _active_key(tenant),
                                                  _RENDERERS], args=[sid, repr(cutoff)])]
        self._call(self._r.zremrangebyscore, _RENDERERS, "-inf", f"({cutoff!r}")
        return sorted(reaped)

    def _orphan_candidates(self, cutoff: float) -> list[tuple[str, str]]:
        """Active sessions that look orphaned now (two pipelined round trips); the reap
        script decides each one atomically."""
        beats = dict(self._call(self._r.zrange, _RENDERERS, 0, -1, withscores=True))
        tenants = sorted(self._call(self._r.smembers, f"{_PREFIX}:tenants"))
        pipe = self._r.pipeline(transaction=False)
        for name in tenants:
            pipe.smembers(_active_key(name))
        active = [(name, sid) for name, ids in zip(tenants, self._call(pipe.execute),
                                                   strict=True) for sid in sorted(ids)]
        pipe = self._r.pipeline(transaction=False)
        for name, sid in active:
            pipe.hmget(_session_key(name, sid), "renderer", "created_ms")
        out: list[tuple[str, str]] = []
        for key, (renderer, created) in zip(active, self._call(pipe.execute), strict=True):
            if not renderer or created is None:
                continue
            beat = beats.get(renderer)
            if (beat if beat is not None else float(created)) < cutoff:
                out.append(key)
        return out

    def close(self) -> None:
        self._r.close()
