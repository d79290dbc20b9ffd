"""The global entry over HTTP: region reports in, a placed session out, refusals retried
elsewhere, stale regions drained, bad input refused. The regions' gateways are simulated with
httpx's MockTransport (no sockets)."""

from __future__ import annotations

import time

import httpx
import pytest
from fastapi.testclient import TestClient

from cluster.placement.entry import PlacementService, entry_app
from cluster.placement.regions import parse_regions

pytestmark = pytest.mark.unit

REGIONS = {
    "gpus": {"L4": {"on_demand_per_hour_usd": 0.8, "memory_gb": 24},
             "H100": {"on_demand_per_hour_usd": 3.0, "memory_gb": 80}},
    "regions": [
        {"name": "cheap", "gateway_url": "http://cheap.test", "gpu_type": "L4",
         "price_per_gpu_hour_usd": 0.7, "renderer_capacity_sessions": 100,
         "sessions_per_gpu": 24, "latitude_deg": 40, "longitude_deg": -75},
        {"name": "pricey", "gateway_url": "http://pricey.test", "gpu_type": "H100",
         "price_per_gpu_hour_usd": 3.0, "renderer_capacity_sessions": 100,
         "sessions_per_gpu": 24, "latitude_deg": 41, "longitude_deg": -74},
    ],
}


class Gateways:
    """Two regions' gateways: each creates sessions unless told to refuse."""

    def __init__(self) -> None:
        self.refuse: set[str] = set()
        self.created: list[tuple[str, dict]] = []

    def handle(self, request: httpx.Request) -> httpx.Response:
        region = request.url.host.split(".")[0]
        if region in self.refuse:
            return httpx.Response(503, json={"error": "every avatar is busy"},
                                  headers={"Retry-After": "5"})
        sid = f"{region}-r1.{len(self.created)}"
        self.created.append((region, dict(request.headers)))
        return httpx.Response(201, json={
            "session_id": sid, "token": f"tok-{sid}", "persona": "maple-clinic",
            "events_url": f"/v1/sessions/{sid}/events?token=tok-{sid}",
            "frame_url": f"/v1/sessions/{sid}/frame.jpg?token=tok-{sid}"})


@pytest.fixture
def gateways() -> Gateways:
    return Gateways()


@pytest.fixture
def entry(gateways: Gateways) -> TestClient:
    service = PlacementService(parse_regions(REGIONS, "test regions"))
    http = httpx.AsyncClient(transport=httpx.MockTransport(gateways.handle))
    with TestClient(entry_app(service, report_key="secret", http=http)) as client:
        yield client


def report(entry: TestClient, region: str, active: int = 0, **extra: object) -> int:
    return entry.post(f"/v1/regions/{region}/report", json={"active_sessions": active, **extra},
                      headers={"X-Region-Key": "secret"}).status_code


def probes(**rtt_jitter: tuple[float, float]) -> dict:
    return {name: {"rtt_ms": r, "jitter_ms": j, "loss": 0.0, "measured_at_s": time.time()}
            for name, (r, j) in rtt_jitter.items()}


def test_nothing_is_placed_before_regions_report(entry: TestClient) -> None:
    reply = entry.post("/v1/sessions", json={"measurements": probes(cheap=(20, 2))})
    assert reply.status_code == 503 and "drained" in reply.json()["error"]


def test_the_cheapest_region_meeting_the_slo_gets_the_session(entry, gateways) -> None:
    assert report(entry, "cheap") == report(entry, "pricey") == 204
    reply = entry.post("/v1/sessions", json={"measurements": probes(cheap=(40, 3),
                                                                    pricey=(10, 1))},
                       headers={"X-API-Key": "k1"})
    assert reply.status_code == 201, reply.text
    body = reply.json()
    assert body["region"] == "cheap" and body["session_id"].startswith("cheap-")
    assert body["offer_url"] == f"http://cheap.test/v1/sessions/{body['session_id']}/offer"
    assert body["token"] == f"tok-{body['session_id']}"
    assert body["events_url"].startswith("http://cheap.test/v1/sessions/")
    assert "cheap" in body["placement"]["explanation"]
    assert gateways.created[0][1]["x-api-key"] == "k1"  # the client's key goes along
    # A jittery path rules the cheap region out: the SLO comes before the price.
    jittery = entry.post("/v1/sessions", json={"measurements": probes(cheap=(40, 80),
                                                                      pricey=(10, 1))})
    assert jittery.json()["region"] == "pricey"
    assert "jitter" in str(jittery.json()["placement"]["candidates"])


def test_a_region_that_refuses_is_skipped_and_named(entry, gateways) -> None:
    report(entry, "cheap")
    report(entry, "pricey")
    gateways.refuse.add("cheap")
    reply = entry.post("/v1/sessions", json={"measurements": probes(cheap=(20, 2),
                                                                    pricey=(20, 2))})
    assert reply.status_code == 201 and reply.json()["region"] == "pricey"
    assert reply.json()["refused_by"] == ["cheap answered 503"]
    gateways.refuse.add("pricey")
    none = entry.post("/v1/sessions", json={"measurements": probes(cheap=(20, 2),
                                                                   pricey=(20, 2))})
    assert none.status_code == 503 and none.headers["Retry-After"] == "5"


def test_a_full_region_is_not_chosen(entry) -> None:
    report(entry, "cheap", active=100)
    report(entry, "pricey", active=3)
    reply = entry.post("/v1/sessions", json={"measurements": probes(cheap=(20, 2),
                                                                    pricey=(20, 2))})
    assert reply.json()["region"] == "pricey"
    status = {r["region"]: r for r in entry.get("/v1/regions").json()}
    assert status["pricey"]["placed_since_report"] == 1 and status["cheap"]["active_sessions"] \
        == 100


def test_bad_measurements_and_reports_are_refused_with_what_to_change(entry) -> None:
    report(entry, "cheap")
    negative = entry.post("/v1/sessions", json={"measurements": probes(cheap=(-1, 2))})
    assert negative.status_code == 422 and "rtt_ms" in negative.json()["error"]
    future = probes(cheap=(20, 2))
    future["cheap"]["measured_at_s"] = time.time() + 3600
    ahead = entry.post("/v1/sessions", json={"measurements": future})
    assert ahead.status_code == 400 and "future" in ahead.json()["error"]
    assert entry.post("/v1/regions/cheap/report", json={"active_sessions": 1}).status_code == 401
    assert report(entry, "atlantis") == 404
    assert report(entry, "cheap", active=-4) == 422


async def test_a_region_reports_its_load_to_the_entry(tmp_path) -> None:
    import asyncio

    from configs import load_config
    from deployments.region_report import report_loop
    from deployments.session_store import SQLiteSessionStore

    service = PlacementService(parse_regions(REGIONS, "test regions"))
    entry = httpx.AsyncClient(transport=httpx.ASGITransport(app=entry_app(service)),
                              base_url="http://entry.test")
    store = SQLiteSessionStore(tmp_path / "sessions.sqlite3")
    for i in range(3):
        store.create_session(f"r1.{i}", "maple", "maple-clinic")
    store.close_session("r1.0", "maple")
    config = load_config("local", overrides={"cluster": {
        "region": "cheap", "placement_entry_url": "http://entry.test",
        "placement_report_interval_s": 0.05}})
    task = asyncio.create_task(report_loop(config, http=entry, store=store))
    await asyncio.sleep(0.3)
    task.cancel()
    status = {r["region"]: r for r in service.status()}
    assert status["cheap"]["active_sessions"] == 2
    assert status["cheap"]["capacity_sessions"] == 8  # 1 renderer x 8 sessions (local)
    assert status["cheap"]["report_age_s"] < 1 and status["pricey"]["report_age_s"] is None
    store.close()
