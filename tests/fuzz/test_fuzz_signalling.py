"""Fuzzing the Gateway's HTTP API on the real models: arbitrary JSON and bytes to /v1/sessions,
/text, /offer, /interrupt and /audio get a 2xx or a 4xx/503 with a JSON {"error": ...} body
(or the framework's redirect from a trailing slash), never a 500 or a hang, and a session
opened before the fuzzing still answers afterwards."""

from __future__ import annotations

import asyncio
import time
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st

from configs import load_config
from deployments.api import create_api
from deployments.gateway import Gateway, LocalRendererClient
from deployments.renderer import renderer_from_services
from deployments.services import build_services
from deployments.session_store import SQLiteSessionStore
from tests.fuzz.harness import real_offer
from tests.fuzz.strategies import FUZZ, json_documents, mutated_offers

pytestmark = [pytest.mark.unit, pytest.mark.slow]

QUESTION = "Can I split my bill into monthly payments?"
KEYS = {"sessions": ("persona", "video", "resume"), "text": ("text",), "offer": ("sdp", "type"),
        "interrupt": (), "audio": (), "info": ()}
CONTENT_TYPES = st.sampled_from([None, "application/json", "text/plain", "application/x+json",
                                 "application/json; charset=latin-1", "multipart/form-data"])
ENCODINGS = st.sampled_from([None, None, None, "identity", "gzip", "br, gzip", "x"])
RATES = st.sampled_from(["16000", "48000", "0", "-1", "12345", "1e3", "x", str(2**70), ""])


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("fuzz-signalling")
    config = load_config("local", overrides={
        "models": {"knowledge": {"qdrant_path": str(tmp / "qdrant")}},
        "deployments": {"renderer": {"sessions_per_replica": 4}},
    })
    services = build_services(config)
    store = SQLiteSessionStore(tmp / "sessions.sqlite3")
    renderer = renderer_from_services(services, store, replica_id="fz", video=False)
    gateway = Gateway(renderer.config, LocalRendererClient(renderer))
    with TestClient(create_api(gateway)) as client:
        yield client, renderer, store
    store.close()
    asyncio.run(services.aclose())


def auth(token: str | None) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"} if token else {}


def create(client: TestClient) -> tuple[str, str | None]:
    reply = client.post("/v1/sessions", json={"video": False})
    assert reply.status_code == 201, reply.text
    return reply.json()["session_id"], reply.json().get("token")


def check(client: TestClient, reply) -> None:
    """The API's contract for any request."""
    status = reply.status_code
    assert status < 500 or status == 503, (status, reply.text[:300])
    if status in (307, 308):  # a trailing slash: redirected to the route without it
        assert reply.headers["location"]
        return
    assert status < 300 or status >= 400, status
    if status == 201 and reply.request.url.path == "/v1/sessions":
        info = reply.json()
        client.delete(f"/v1/sessions/{info['session_id']}", headers=auth(info.get("token")))
    if status >= 400:
        body = reply.json()
        assert isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"]


@st.composite
def bodies(draw: st.DrawFn, route: str, offer: str) -> bytes:
    """A route's body: JSON of any shape, a (mutated) offer, odd-length PCM, or oversized."""
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return b"\x00" * draw(st.sampled_from([65_537, 196_609, 300_000]))
    if route == "offer" and kind <= 3:
        import json

        return json.dumps({"sdp": draw(mutated_offers(offer)), "type": "offer"}).encode()
    if route == "audio" and kind <= 5:
        return draw(st.binary(max_size=4000))
    return draw(json_documents(KEYS[route]))


def test_any_request_gets_a_2xx_or_a_json_error_and_other_sessions_go_on(api):
    client, renderer, store = api
    offer = real_offer()
    survivor, survivor_token = create(client)
    victim, victim_token = create(client)

    @settings(FUZZ, max_examples=300)
    @given(data=st.data(), route=st.sampled_from(sorted(KEYS)), who=st.integers(0, 3),
           content_type=CONTENT_TYPES, encoding=ENCODINGS, rate=RATES)
    def one(data, route, who, content_type, encoding, rate):
        body = data.draw(bodies(route, offer))
        sid = victim if who < 2 else quote(data.draw(st.text(max_size=12)), safe="")
        headers = auth(victim_token if who != 1 else "not-a-token")
        if content_type:
            headers["content-type"] = content_type
        if encoding:
            headers["content-encoding"] = encoding
        path = "/v1/sessions" if route == "sessions" else f"/v1/sessions/{sid}"
        path += "" if route in ("sessions", "info") else f"/{route}"
        path += f"?sample_rate_hz={rate}" if route == "audio" else ""
        start = time.perf_counter()
        reply = client.request("GET" if route == "info" else "POST", path, content=body,
                               headers=headers)
        assert time.perf_counter() - start < 10.0, "the API took over 10 s to answer"
        check(client, reply)

    one()
    assert survivor in renderer.sessions
    reply = client.post(f"/v1/sessions/{survivor}/text", json={"text": QUESTION},
                        headers=auth(survivor_token))
    assert reply.status_code == 202, reply.text
    for _ in range(600):
        turns = [t for t in store.turns(survivor, "maple") if t.user_text == QUESTION]
        if turns:
            break
        time.sleep(0.05)
    assert turns and "6 months" in turns[0].reply_text


def test_regression_invalid_utf8_and_too_deep_json_bodies_get_a_json_error(api):
    client, _, _ = api
    sid, token = create(client)
    for body in (b'{"text": "\xff\xfe"}', b"[" * 5000 + b"]" * 5000,
                 b'{"text": ' + b"7" * 5000 + b"}"):
        reply = client.post(f"/v1/sessions/{sid}/text", content=body,
                            headers={**auth(token), "content-type": "application/json"})
        assert 400 <= reply.status_code < 500, reply.text
        assert "error" in reply.json() and "detail" not in reply.json()


def test_regression_a_route_that_does_not_exist_gets_a_json_error(api):
    client, _, _ = api
    reply = client.post("/v1/sessions/a%2Fb/text", json={"text": "hi"})
    assert reply.status_code == 404 and "/docs" in reply.json()["error"]
