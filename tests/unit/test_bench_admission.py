"""The admission benchmark's pure parts (plan, figures, verdict, the cluster's configuration)
and its clients against the Gateway's HTTP API in-process (no sockets, fake models)."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import httpx
import pytest

from cluster.bench.admission import Flood, attempt
from cluster.bench.admission_figures import (
    TARGETS,
    TENANT_A,
    arm_order,
    bench_config,
    build_report,
    increase_pct,
    latency_summary,
    plan_for,
    ratio,
    slo_bound_ms,
)
from configs import load_config
from deployments.api import create_api
from deployments.gateway import Gateway, LocalRendererClient
from models.errors import InputError
from tests.unit.test_tenant_quota import make_config, make_renderer

pytestmark = pytest.mark.unit


def test_plan_keeps_the_overload_below_the_quota_and_leaves_room_for_b():
    for capacity in range(4, 17):
        plan = plan_for(capacity)
        assert math.ceil(capacity / 2) < plan.quota <= capacity - 1  # excess meets a full one
        assert plan.b_sessions == capacity - plan.quota >= 1
        assert plan.capacity + plan.excess >= 1.5 * capacity
        assert plan.flood == 10 * plan.quota
    assert plan_for(4).quota == 3
    for bad in (3, 17):
        with pytest.raises(InputError, match="--sessions"):
            plan_for(bad)


def test_latency_summary_skips_missing_and_reports_the_max():
    s = latency_summary([10.0, None, 30.0, 20.0, float("nan")])
    assert s == {"p50": 20.0, "p95": 29.0, "max": 30.0, "n": 3}
    assert latency_summary([]) == {"p50": None, "p95": None, "max": None, "n": 0}


def test_ratio_and_increase():
    assert ratio(110.0, 100.0) == 1.1
    assert increase_pct(110.0, 100.0) == 10.0
    assert increase_pct(90.0, 100.0) == -10.0
    assert ratio(None, 100.0) is None and ratio(1.0, 0.0) is None
    assert increase_pct(5.0, None) is None


def test_arm_order_rotates_so_each_arm_goes_first_in_turn():
    arms = ("a", "b", "c")
    firsts = [arm_order(i, arms)[0] for i in range(6)]
    assert firsts == ["a", "b", "c", "a", "b", "c"]
    assert all(sorted(arm_order(i, arms)) == list(arms) for i in range(6))


def raw_run(flood_ms: float, refusal_ms: float, burst_admitted: int = 3) -> dict:
    def rounds(arms: dict[str, float]) -> list[dict]:
        return [{"round": r, "arm": arm, "first_audio_ms": [ms + r, ms + r + 1],
                 "server_first_audio_ms": [ms / 2, None]}
                for r in range(4) for arm, ms in arms.items()]

    refusal = {"status": 503, "ms": refusal_ms, "retry_after_s": 5.0}
    quota_refusal = {"status": 429, "ms": refusal_ms / 2, "retry_after_s": 5.0}
    admitted = {"status": 201, "ms": 80.0, "retry_after_s": None}
    return {
        "overload": {"rounds": rounds({"quiet": 200.0, "excess": 210.0}),
                     "attempts": [refusal] * 9 + [admitted]},
        "fairness": {"rounds": rounds({"a_idle": 150.0, "a_at_quota": 200.0,
                                       "a_flood": flood_ms}),
                     "burst": [admitted] * burst_admitted + [quota_refusal] * 27,
                     "attempts": [quota_refusal] * 50,
                     "a_turns": {"a_at_quota": 12, "a_flood": 11}},
        "startup_s": 31.25,
    }


def test_report_figures_and_verdict():
    report = build_report(raw_run(flood_ms=210.0, refusal_ms=40.0), plan_for(4),
                          {"profile": "local"}, 1000.0)
    over, fair = report["overload"], report["fairness"]
    assert over["offered_sessions"] == 6 and over["capacity_sessions"] == 4
    assert over["refusal_ms"]["n"] == 9 and over["refusal_ms"]["max"] == 40.0
    assert over["refusal_status"] == {"503": 9} and over["refusals_with_retry_after"] == 9
    assert over["admitted_while_full"] == 1
    assert over["admitted_text_to_first_audio_ms"]["quiet"]["n"] == 8
    assert over["admitted_text_to_first_audio_ms"]["quiet"]["p95"] == 203.7  # 200..204
    assert over["admitted_p95_ratio"] == ratio(213.65, 203.65) == 1.049
    assert fair["burst_admitted"] == 3 and fair["burst_refusal_ms"]["n"] == 27
    assert fair["refusal_status"] == {"429": 50}
    assert fair["b_p95_increase_pct"] == 4.9  # flood 213.65 over at quota 203.65
    assert fair["b_p95_increase_vs_idle_pct"] == increase_pct(213.65, 153.65) == 39.0
    assert report["met"] == {"overload_refusal_p95_ms": True, "quota_refusal_p95_ms": True,
                             "admitted_keep_slo": True, "burst_admits_quota": True,
                             "fairness_increase_pct": True}
    assert report["setup"]["plan"]["quota"] == 3
    assert len(report["round_log"]) == 4 * 2 + 4 * 3


def test_verdict_fails_slow_refusals_unfairness_and_overshoot():
    report = build_report(raw_run(flood_ms=260.0, refusal_ms=150.0, burst_admitted=4),
                          plan_for(4), {}, 150.0)
    assert report["met"] == {"overload_refusal_p95_ms": False, "quota_refusal_p95_ms": True,
                             "admitted_keep_slo": False, "burst_admits_quota": False,
                             "fairness_increase_pct": False}
    assert report["fairness"]["b_p95_increase_pct"] > TARGETS["fairness_increase_pct"]
    unmeasured = raw_run(210.0, 40.0)
    unmeasured["fairness"]["rounds"] = []
    assert not build_report(unmeasured, plan_for(4), {}, None)["met"]["fairness_increase_pct"]


def test_bench_config_serves_two_tenants_with_the_quota():
    config = bench_config(load_config("local", env={}), plan_for(6))
    assert config.personas == ("maple-clinic", TENANT_A)
    kbs = {kb.name: kb for kb in config.knowledge_bases}
    assert kbs[TENANT_A].tenant == TENANT_A
    assert kbs[TENANT_A].path == kbs["maple-clinic"].path
    renderer = config.deployments.renderer
    assert renderer.sessions_per_replica == 6 and renderer.num_replicas == 1
    assert renderer.max_ongoing_requests >= 4 * 6
    assert config.cluster.admission.max_sessions_per_tenant == 4
    assert config.cluster.admission.sessions_per_minute_per_ip >= 1e5


def test_the_slo_bound_comes_from_the_default_slo():
    assert slo_bound_ms() == 1000.0


async def test_attempt_and_flood_against_the_gateway(tmp_path: Path):
    config = make_config(tmp_path, quota=2)
    renderer = make_renderer(config)
    gateway = Gateway(config, LocalRendererClient(renderer))
    transport = httpx.ASGITransport(app=create_api(gateway))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            records = [await attempt(client, TENANT_A) for _ in range(3)]
            assert [r["status"] for r, _ in records] == [201, 201, 429]
            assert records[2][0]["retry_after_s"] == 5.0 and records[2][1] is None
            assert records[0][1]["tenant"] == TENANT_A
            first = records[0][1]
            await client.delete(f"/v1/sessions/{first['session_id']}",
                                headers={"Authorization": f"Bearer {first['token']}"})
            flood = Flood(client, [TENANT_A] * 3, retry_s=0.05)
            flood.start()
            await asyncio.sleep(0.3)
            seen = await flood.stop()
            polite = Flood(client, [TENANT_A] * 2, None)  # waits for Retry-After (5 s)
            polite.start()
            await asyncio.sleep(0.3)
            assert len(await polite.stop()) == 2  # one attempt each, then they wait
        statuses = [r["status"] for r in seen]
        assert statuses.count(201) >= 1 and statuses.count(429) >= 3  # a freed slot, then full
        assert renderer.session_store.count_active(TENANT_A) == 1  # the flood closed its own
        assert gateway.quota._in_flight == {}
    finally:
        await renderer.aclose()
        renderer.session_store.close()
        gateway.quota.close()
