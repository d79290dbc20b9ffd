"""Hard session pinning on a real local Ray Serve: 3 renderer-like replicas, 2 processes
calling through their own handles, 0 misrouted calls, sessions spread, a full cluster refuses
and a session whose replica died fails loudly instead of moving."""

from __future__ import annotations

import os
import time

import pytest

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")

from ray.serve.config import RequestRouterConfig  # noqa: E402

from cluster.routing import ClusterFull, SessionOwnerLost, mint_session_id  # noqa: E402
from models.errors import InputError  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.slow]

APP = "pinning"
REPLICAS = 3
CAPACITY = 4


@serve.deployment(
    num_replicas=REPLICAS,
    ray_actor_options={"num_cpus": 0.1},
    max_ongoing_requests=32,
    request_router_config=RequestRouterConfig(
        request_router_class="cluster.routing.SessionPinningRouter",
        request_router_kwargs={"default_capacity": CAPACITY, "owner_wait_s": 1.0},
        request_routing_stats_period_s=0.5,
    ),
)
class Renderer:
    """Hosts sessions; refuses past capacity; reports its load to the router."""

    def __init__(self) -> None:
        self.uid = serve.get_replica_context().replica_id.unique_id
        self.sessions: dict[str, int] = {}

    def create_session(self) -> str:
        if len(self.sessions) >= CAPACITY:
            raise ClusterFull(f"replica {self.uid} hosts {CAPACITY} sessions")
        sid = mint_session_id()
        self.sessions[sid] = 0
        return sid

    def step(self, session_id: str) -> tuple[str, bool]:
        """Return (this replica, whether it owns the session)."""
        known = session_id in self.sessions
        if known:
            self.sessions[session_id] += 1
        return self.uid, known

    def any_session(self) -> str:
        return next(iter(self.sessions))

    def record_routing_stats(self) -> dict:
        return {"sessions": len(self.sessions), "capacity": CAPACITY, "recorded_at": time.time()}


@ray.remote(num_cpus=0)
class Client:
    """A second process with its own handle (and so its own router)."""

    def __init__(self) -> None:
        self.handle = serve.get_deployment_handle("Renderer", APP)

    async def create(self) -> str:
        return await self.handle.create_session.remote()

    async def step(self, session_id: str) -> tuple[str, bool]:
        return await self.handle.options(session_id=session_id).step.remote(session_id)


@pytest.fixture(scope="module")
def cluster():
    saved = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = "disabled"
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=128 * 1024 * 1024,
        log_to_driver=False,
    )
    try:
        handle = serve.run(Renderer.bind(), name=APP, route_prefix=None)
        yield handle, Client.remote()
    finally:
        serve.shutdown()
        ray.shutdown()
        if saved is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = saved


def test_sessions_are_pinned_and_spread(cluster):
    handle, client = cluster
    sids: list[str] = []
    for i in range(REPLICAS * CAPACITY):  # alternate the two processes
        sid = (
            handle.create_session.remote().result(timeout_s=30)
            if i % 2 == 0
            else ray.get(client.create.remote(), timeout=30)
        )
        sids.append(sid)

    owners: dict[str, set[str]] = {sid: set() for sid in sids}
    misrouted = 0
    for round_ in range(5):
        for j, sid in enumerate(sids):
            if (round_ + j) % 2 == 0:
                uid, known = handle.options(session_id=sid).step.remote(sid).result(timeout_s=30)
            else:
                uid, known = ray.get(client.step.remote(sid), timeout=30)
            owners[sid].add(uid)
            misrouted += 0 if known else 1
    assert misrouted == 0
    assert all(len(hit) == 1 for hit in owners.values())
    per_replica: dict[str, int] = {}
    for hit in owners.values():
        (uid,) = hit
        per_replica[uid] = per_replica.get(uid, 0) + 1
    assert len(per_replica) == REPLICAS
    assert max(per_replica.values()) - min(per_replica.values()) <= 1

    # Every replica is at capacity now: a new session is refused, nobody is overloaded.
    with pytest.raises(ClusterFull):
        handle.create_session.remote().result(timeout_s=30)


def test_unknown_session_id_is_rejected(cluster):
    handle, _ = cluster
    with pytest.raises(InputError, match="not one this cluster issued"):
        handle.options(session_id="bogus").step.remote("bogus").result(timeout_s=30)


def test_session_of_a_dead_replica_is_not_rerouted(cluster):
    handle, _ = cluster
    try:
        sid = handle.create_session.remote().result(timeout_s=30)
    except ClusterFull:  # the first test filled the cluster: take one of its sessions
        sid = handle.any_session.remote().result(timeout_s=30)
    owner, _ = handle.options(session_id=sid).step.remote(sid).result(timeout_s=30)
    actor = ray.get_actor(f"SERVE_REPLICA::{APP}#Renderer#{owner}", namespace="serve")
    ray.kill(actor, no_restart=True)
    start = time.monotonic()
    with pytest.raises(SessionOwnerLost):
        handle.options(session_id=sid).step.remote(sid).result(timeout_s=30)
    assert time.monotonic() - start < 15
