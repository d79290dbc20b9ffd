"""The tenant quota over a Redis session store (a real redis-server on 127.0.0.1): two
gateways' quotas on one server count the same sessions, closed ones free their slot."""

from __future__ import annotations

import shutil

import pytest

from configs.schema import AdmissionConfig, ClusterConfig
from deployments.auth import TenantQuota
from deployments.session_store import open_session_store
from models.errors import RateLimited
from tests.integration.test_session_store_redis import server  # noqa: F401  (fixture)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("redis-server") is None,
                       reason="redis-server is not on PATH; `make install` installs it"),
]


async def test_quotas_of_two_gateways_agree_over_redis(server) -> None:  # noqa: F811
    cluster = ClusterConfig(session_store_url=server.url,
                            admission=AdmissionConfig(max_sessions_per_tenant=2))
    renderer_store = open_session_store(cluster)
    gateways = [TenantQuota.from_config(cluster), TenantQuota.from_config(cluster)]
    try:
        renderer_store.create_session("r1.a", "acme", "maple-clinic", "r1")
        renderer_store.create_session("r2.b", "acme", "maple-clinic", "r2")
        renderer_store.create_session("r2.c", "other", "maple-clinic", "r2")
        assert renderer_store.count_active("acme") == 2
        for quota in gateways:
            with pytest.raises(RateLimited, match="quota of 2"):
                await quota.reserve("acme")
            with await quota.reserve("acme", resume="r1.a"):  # replaces its own session
                pass
            with await quota.reserve("other"):
                pass
        renderer_store.close_session("r2.b", "acme")
        assert renderer_store.count_active("acme") == 1
        with await gateways[1].reserve("acme"):
            pass
    finally:
        for quota in gateways:
            quota.close()
        renderer_store.close()
