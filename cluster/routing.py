"""Hard session pinning for renderer replicas: a custom Ray Serve ``RequestRouter``.

How a session finds its replica, from any handle in any process:

* The session id *is* the binding. The renderer replica that accepts a new session mints its
  id with :func:`mint_session_id`, which embeds the replica's Serve ``unique_id``
  (``"<replica unique_id>.<random hex>"``, a valid SessionStore id). Every router, in every
  handle's process, reads the owner back with :func:`owner_of`; nothing is shared, nothing
  can disagree, a restarted router needs no warm-up, and a replica that disappears can never
  be "re-assigned" a session by accident: its ``unique_id`` is never reused.
* Callers pass the id with ``handle.options(session_id=sid)``; Serve copies it into
  ``PendingRequest.metadata.session_id`` (the HTTP proxy fills the same field from the
  ``x-session-id`` header). Multiplexed model ids were not used: Serve's multiplex matching is
  soft and falls back to any replica.
* A request with a session id goes to the owner only. If the owner is not among the replicas
  this router knows, it waits up to ``owner_wait_s`` (a replica list broadcast may lag behind a
  just-started replica), then fails the request with :class:`SessionOwnerLost`, raised from the
  ``handle.remote(...)`` result. It never falls back to another replica. A busy owner (at
  ``max_ongoing_requests``) is retried with Serve's backoff, again never elsewhere.
* A request without a session id (``create_session`` and session-less calls) goes to the
  replica with the most free session slots, ties broken by replica id; the other replicas
  follow as lower ranks so a replica at ``max_ongoing_requests`` does not stall placement.
  Free slots come from each replica's ``record_routing_stats()`` report
  ``{"sessions": n, "capacity": c, "recorded_at": unix_s}`` (``capacity`` falls back to the
  router kwarg ``default_capacity``). Reports are periodic (``request_routing_stats_period_s``),
  so the router adds its own creations that the latest report cannot include yet: those in
  flight and those finished after ``recorded_at``. A replica must implement
  ``record_routing_stats``: without reports the router only ever counts its own placements.
* Capacity is enforced by the replica, not by the router: stats are stale and several handles
  place sessions independently, so only the replica knows for sure. A full replica refuses
  ``create_session`` (raise :class:`ClusterFull`, which the gateway turns into 503 with
  Retry-After); nothing ever pushes a renderer over its capacity.

Configure it with::

    RequestRouterConfig(
        request_router_class="cluster.routing.SessionPinningRouter",
        request_router_kwargs={"default_capacity": 4, "create_method": "create_session"},
        request_routing_stats_period_s=1.0,
    )
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ray.serve.request_router import PendingRequest, ReplicaID, RequestRouter, RunningReplica

from models.errors import ClusterFull, InputError, SessionNotFound, SessionOwnerLost

__all__ = ["ClusterFull", "SessionOwnerLost", "SessionPinningRouter", "mint_session_id",
           "owner_of"]

SEPARATOR = "."


def mint_session_id(replica_unique_id: str | None = None) -> str:
    """Return a new session id owned by ``replica_unique_id`` (default: the calling replica).

    Call it inside the replica that accepts the session; outside a replica pass the id.
    """
    if replica_unique_id is None:
        from ray import serve

        replica_unique_id = serve.get_replica_context().replica_id.unique_id
    if not replica_unique_id or SEPARATOR in replica_unique_id:
        raise ValueError(f"replica id {replica_unique_id!r} cannot own sessions")
    return f"{replica_unique_id}{SEPARATOR}{uuid.uuid4().hex}"


def owner_of(session_id: str) -> str:
    """Return the ``unique_id`` of the replica that owns ``session_id``.

    Raises InputError when the id was not minted by :func:`mint_session_id`.
    """
    owner, sep, rest = session_id.partition(SEPARATOR)
    if not owner or not sep or not rest:
        raise SessionNotFound(
            f"session id {session_id!r} is not one this cluster issued; "
            "create a session first and use the id it returns"
        )
    return owner


@dataclass(frozen=True)
class ReplicaLoad:
    """One replica's session load as the router sees it."""

    replica_id: str
    sessions: int
    capacity: int

    @property
    def free(self) -> int:
        """Free session slots (negative when over-committed by stale placements)."""
        return self.capacity - self.sessions


def rank_for_new_session(loads: list[ReplicaLoad]) -> list[str]:
    """Replica ids best first: most free slots, then lowest replica id."""
    return [load.replica_id for load in sorted(loads, key=lambda x: (-x.free, x.replica_id))]


class SessionPinningRouter(RequestRouter):
    """Routes each session's calls to the replica that owns it; places new sessions by free
    capacity. Kwargs (``request_router_kwargs``): ``default_capacity`` (sessions per replica
    when its stats report none), ``create_method`` (the method that creates sessions) and
    ``owner_wait_s`` (how long a missing owner may take to appear before the call fails).
    """

    def initialize_state(
        self,
        default_capacity: int = 1,
        create_method: str = "create_session",
        owner_wait_s: float = 2.0,
        **kwargs: Any,
    ) -> None:
        """Read the router kwargs; unknown keys fail loudly."""
        if kwargs:
            raise ValueError(f"unknown SessionPinningRouter kwargs: {sorted(kwargs)}")
        if default_capacity < 1:
            raise ValueError(f"default_capacity must be >= 1, got {default_capacity}")
        self._default_capacity = int(default_capacity)
        self._create_method = create_method
        self._owner_wait_s = float(owner_wait_s)
        # Creations this router sent that the replica's latest report may not include yet.
        self._creates_in_flight: dict[str, str] = {}  # internal_request_id -> replica uid
        self._creates_done: dict[str, list[float]] = {}  # replica uid -> finish times
        self._stats_seen: dict[str, Mapping[str, Any]] = {}

    # -- load bookkeeping -------------------------------------------------------------------

    def _load(self, replica: RunningReplica) -> ReplicaLoad:
        uid = replica.replica_id.unique_id
        stats = replica.routing_stats or {}
        recorded_at = stats.get("recorded_at")
        done = self._creates_done.get(uid, [])
        if stats != self._stats_seen.get(uid):
            self._stats_seen[uid] = stats
            # Creations finished before the report was recorded are in it already.
            done = [t for t in done if recorded_at is not None and t > recorded_at]
            self._creates_done[uid] = done
        in_flight = sum(1 for owner in self._creates_in_flight.values() if owner == uid)
        return ReplicaLoad(
            replica_id=uid,
            sessions=int(stats.get("sessions", 0)) + in_flight + len(done),
            capacity=int(stats.get("capacity", self._default_capacity)),
        )

    def update_replicas(self, replicas: list[RunningReplica]) -> None:
        """Track the replica set and forget the bookkeeping of replicas that left."""
        super().update_replicas(replicas)
        alive = {r.replica_id.unique_id for r in replicas}
        for table in (self._creates_done, self._stats_seen):
            for uid in [uid for uid in table if uid not in alive]:
                del table[uid]

    def on_request_routed(
        self, pending_request: PendingRequest, replica_id: ReplicaID, result: Any
    ) -> None:
        """Count a session creation against the replica that accepted it."""
        if pending_request.metadata.call_method == self._create_method:
            request_id = pending_request.metadata.internal_request_id
            self._creates_in_flight[request_id] = replica_id.unique_id

    def on_request_completed(self, replica_id: ReplicaID, internal_request_id: str) -> None:
        """Move a finished creation to the list awaiting the replica's next report."""
        owner = self._creates_in_flight.pop(internal_request_id, None)
        if owner is not None:
            self._creates_done.setdefault(owner, []).append(time.time())

    # -- routing ----------------------------------------------------------------------------

    async def choose_replicas(
        self,
        candidate_replicas: list[RunningReplica],
        pending_request: PendingRequest | None = None,
    ) -> list[list[RunningReplica]]:
        """Rank candidates: the owner alone for a session call, else by free capacity."""
        if pending_request is None or not candidate_replicas:
            return [candidate_replicas] if candidate_replicas else []
        # Back off between tries instead of spinning when the chosen replica is busy.
        pending_request.routing_context.should_backoff = True
        session_id = pending_request.metadata.session_id
        if not session_id:
            by_uid = {r.replica_id.unique_id: r for r in candidate_replicas}
            ranked = rank_for_new_session([self._load(r) for r in candidate_replicas])
            return [[by_uid[uid]] for uid in ranked]
        try:
            owner = owner_of(session_id)
        except InputError as exc:
            return self._fail(pending_request, exc, candidate_replicas)
        for replica in candidate_replicas:
            if replica.replica_id.unique_id == owner:
                return [[replica]]
        if time.time() - pending_request.created_at < self._owner_wait_s:
            return []  # the replica list may lag behind; retry after a backoff
        return self._fail(
            pending_request,
            SessionOwnerLost(
                f"session {session_id} lived on replica {owner}, which is gone; "
                "create a new session"
            ),
            candidate_replicas,
        )

    @staticmethod
    def _fail(
        pending_request: PendingRequest,
        exc: Exception,
        candidate_replicas: list[RunningReplica],
    ) -> list[list[RunningReplica]]:
        """Fail the request so the caller's ``await response`` raises ``exc``.

        Returning no candidates would make Serve retry forever, so the future is completed
        with the error and one candidate is returned: Serve's routing loop checks the
        finished future before it sends anything and drops the request.
        """
        if not pending_request.future.done():
            pending_request.future.set_exception(exc)
        return [candidate_replicas[:1]]
