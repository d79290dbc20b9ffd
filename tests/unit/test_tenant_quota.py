"""Tenant quotas on new sessions (``cluster.admission.max_sessions_per_tenant``): a tenant at its
quota gets 429 with Retry-After, other tenants and closed sessions free it as a user expects,
a resume does not count twice, gateways sharing the session store agree, and the per-address
and per-tenant rate limits still hold. A real Renderer and SQLite store; fake models."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from configs import load_config
from configs.schema import AppConfig
from deployments.api import create_api
from deployments.auth import TenantQuota, over_quota
from deployments.gateway import ApiError, Gateway, LocalRendererClient
from deployments.renderer import Renderer
from deployments.session_store import SQLiteSessionStore
from models.errors import RateLimited
from tests.fakes import FakeLLM, FakeStore, FakeTTS, ScriptedASRSession

pytestmark = pytest.mark.unit

ANNEX = "maple-annex"
KNOWLEDGE = "personas/maple-clinic/knowledge"


class FakeASR:
    """``StreamingASR.open_session`` for sessions that only get typed turns."""

    def open_session(self, clock: Any, **_: Any) -> ScriptedASRSession:
        return ScriptedASRSession()


def make_config(tmp_path: Path, quota: int | None = 2, **admission: Any) -> AppConfig:
    return load_config("local", env={}, overrides={
        "personas": ["maple-clinic", ANNEX],
        "knowledge_bases": [
            {"name": "maple-clinic", "tenant": "maple", "path": KNOWLEDGE},
            {"name": ANNEX, "tenant": ANNEX, "path": KNOWLEDGE},
        ],
        "cluster": {"session_store_path": str(tmp_path / "sessions.sqlite3"),
                    "admission": {"max_sessions_per_tenant": quota, **admission}},
        "deployments": {"renderer": {"sessions_per_replica": 16}},
    })


def make_renderer(config: AppConfig, name: str = "r1") -> Renderer:
    store = SQLiteSessionStore(config.cluster.session_store_path)
    return Renderer(config, replica_id=name, asr=FakeASR(), llm=FakeLLM(), tts=FakeTTS(),
                    knowledge=FakeStore(), embedder=None, session_store=store)


@pytest.fixture
def config(tmp_path: Path) -> AppConfig:
    return make_config(tmp_path)


@pytest.fixture
async def renderer(config: AppConfig) -> Renderer:
    r = make_renderer(config)
    yield r
    await r.aclose()
    r.session_store.close()


@pytest.fixture
def gateway(config: AppConfig, renderer: Renderer) -> Gateway:
    g = Gateway(config, LocalRendererClient(renderer))
    yield g
    g.quota.close()


async def create(gateway: Gateway, persona: str | None = None, **kwargs: Any) -> str:
    return str((await gateway.create_session(persona, video=False, **kwargs))["session_id"])


async def test_a_tenant_at_its_quota_is_refused_with_429_naming_the_quota(gateway):
    await create(gateway)
    await create(gateway)
    with pytest.raises(ApiError) as refused:
        await create(gateway)
    assert refused.value.status == 429
    assert refused.value.headers["Retry-After"] == "5"  # cluster.retry_after_s
    assert "quota of 2 concurrent sessions" in refused.value.message
    assert "'maple'" in refused.value.message
    assert gateway.metrics.counters["rejected_tenant_quota"] == 1
    assert gateway.metrics.counters["rejected_rate_limited"] == 0


def test_the_http_answer_is_429_with_retry_after(config, renderer):
    gateway = Gateway(config, LocalRendererClient(renderer))
    with TestClient(create_api(gateway)) as client:
        for _ in range(2):
            assert client.post("/v1/sessions", json={"video": False}).status_code == 201
        reply = client.post("/v1/sessions", json={"video": False})
    gateway.quota.close()
    assert reply.status_code == 429
    assert reply.headers["retry-after"] == "5"
    assert "quota of 2" in reply.text


async def test_other_tenants_are_not_held_back(gateway):
    await create(gateway)
    await create(gateway)
    with pytest.raises(ApiError):
        await create(gateway)
    assert (await gateway.create_session(ANNEX, video=False))["tenant"] == ANNEX
    await create(gateway, ANNEX)
    with pytest.raises(ApiError) as refused:
        await create(gateway, ANNEX)
    assert f"'{ANNEX}'" in refused.value.message


async def test_closing_a_session_frees_its_slot(gateway, renderer):
    first = await create(gateway)
    await create(gateway)
    with pytest.raises(ApiError):
        await create(gateway)
    await gateway.delete(first)
    await create(gateway)
    assert renderer.session_store.count_active("maple") == 2


async def test_resuming_an_own_session_does_not_count_twice(gateway, renderer):
    first = await create(gateway)
    await create(gateway)
    token = gateway.tokens.issue(first, "maple")
    resumed = await gateway.create_session(video=False, resume=first, token=token)
    assert resumed["resumed_from"] == first
    assert renderer.session_store.count_active("maple") == 2
    # a session whose renderer died stays active in the store: resuming it replaces it too
    renderer.session_store.create_session("gone.1", "maple", "maple-clinic", "gone")
    with pytest.raises(ApiError):
        await create(gateway)
    await gateway.delete(resumed["session_id"])
    lost = await gateway.create_session(video=False, resume="gone.1",
                                        token=gateway.tokens.issue("gone.1", "maple"))
    assert lost["resumed_from"] == "gone.1"
    assert renderer.session_store.count_active("maple") == 2


async def test_resuming_a_closed_session_needs_a_free_slot(gateway):
    first = await create(gateway)
    await gateway.delete(first)
    await create(gateway)
    await create(gateway)
    with pytest.raises(ApiError) as refused:
        await gateway.create_session(video=False, resume=first,
                                     token=gateway.tokens.issue(first, "maple"))
    assert refused.value.status == 429


async def test_a_burst_through_one_gateway_does_not_overshoot(gateway, renderer):
    results = await asyncio.gather(*(create(gateway) for _ in range(8)),
                                   return_exceptions=True)
    admitted = [r for r in results if isinstance(r, str)]
    assert len(admitted) == 2
    assert all(isinstance(r, ApiError) and r.status == 429 for r in results
               if not isinstance(r, str))
    assert renderer.session_store.count_active("maple") == 2
    assert gateway.quota._in_flight == {}


async def test_gateways_sharing_the_session_store_agree(config, gateway):
    other_renderer = make_renderer(config, "r2")
    other = Gateway(config, LocalRendererClient(other_renderer))
    try:
        await create(gateway)
        await create(other)
        for g in (gateway, other):
            with pytest.raises(ApiError) as refused:
                await create(g)
            assert refused.value.status == 429
    finally:
        await other_renderer.aclose()
        other_renderer.session_store.close()
        other.quota.close()


async def test_rate_limits_per_address_and_per_tenant_still_apply(tmp_path):
    config = make_config(tmp_path, quota=10, sessions_per_minute_per_ip=6,
                         sessions_per_minute_per_tenant=6, burst=2)
    renderer = make_renderer(config)
    gateway = Gateway(config, LocalRendererClient(renderer))
    try:
        await create(gateway, client_ip="10.0.0.1")
        await create(gateway, client_ip="10.0.0.1")
        with pytest.raises(ApiError) as by_address:
            await create(gateway, client_ip="10.0.0.1")
        assert by_address.value.status == 429
        assert "from 10.0.0.1" in by_address.value.message
        with pytest.raises(ApiError) as by_tenant:
            await create(gateway, client_ip="10.0.0.2")
        assert "faster than its limit" in by_tenant.value.message
        await create(gateway, ANNEX, client_ip="10.0.0.3")  # another tenant goes on
        assert gateway.metrics.counters["rejected_rate_limited"] == 2
        assert gateway.metrics.counters["rejected_tenant_quota"] == 0
    finally:
        await renderer.aclose()
        renderer.session_store.close()
        gateway.quota.close()


def test_without_a_quota_nothing_is_counted_or_opened(tmp_path):
    quota = TenantQuota.from_config(make_config(tmp_path, quota=None).cluster)
    assert quota.limit is None and quota.store is None
    assert not (tmp_path / "sessions.sqlite3").exists()
    slot = asyncio.run(quota.reserve("maple"))
    with slot:
        pass


@pytest.mark.parametrize(("active", "in_flight", "replaces", "refused"), [
    (0, 0, False, False), (1, 0, False, False), (2, 0, False, True), (1, 1, False, True),
    (2, 0, True, False), (2, 1, True, True), (3, 0, True, True),
])
def test_over_quota(active, in_flight, replaces, refused):
    assert over_quota(active, in_flight, 2, replaces) is refused


async def test_a_quota_refusal_is_a_rate_limit_with_its_wait(tmp_path):
    store = SQLiteSessionStore(tmp_path / "s.sqlite3")
    store.create_session("a.1", "maple", "maple-clinic")
    quota = TenantQuota(1, store, region="eu-west", retry_after_s=7.5)
    with pytest.raises(RateLimited) as refused:
        await quota.reserve("maple")
    assert refused.value.retry_after_s == 7.5
    assert "region 'eu-west'" in refused.value.message and "retry in 8 s" in refused.value.message
    store.close_session("a.1", "maple")
    with await quota.reserve("maple"):
        assert quota._in_flight == {"maple": 1}
    assert quota._in_flight == {}
    store.close()
