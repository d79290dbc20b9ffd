"""The Gateway's HTTP API over an in-process renderer on the real embedded models: sessions,
turns, events, frames, admission, bad input that loses nothing, resume from the store."""

from __future__ import annotations

import asyncio
import base64
import json

import numpy as np
import pytest
from fastapi.testclient import TestClient

from configs import load_config
from deployments.api import create_api
from deployments.gateway import ApiError, Gateway, LocalRendererClient
from deployments.renderer import Renderer, renderer_from_services
from deployments.services import ConversationServices, build_services
from deployments.session_store import SQLiteSessionStore

pytestmark = [pytest.mark.unit, pytest.mark.slow]


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> ConversationServices:
    qdrant = tmp_path_factory.mktemp("qdrant")
    cfg = load_config("local", overrides={
        "models": {"knowledge": {"qdrant_path": str(qdrant)}, "render": {"size_px": 256}},
        "deployments": {"renderer": {"sessions_per_replica": 2}},
    })
    built = build_services(cfg)
    yield built
    asyncio.run(built.aclose())


@pytest.fixture
def store(tmp_path) -> SQLiteSessionStore:
    s = SQLiteSessionStore(tmp_path / "sessions.sqlite3")
    yield s
    s.close()


@pytest.fixture
def renderer(services, store) -> Renderer:
    return renderer_from_services(services, store, replica_id="r1")


TOKENS: dict[str, str] = {}
"""Session id -> token, as a client keeps them; :func:`client` sends each with its calls."""


def _with_token(request) -> None:
    parts = request.url.path.split("/")
    if len(parts) > 3 and parts[1:3] == ["v1", "sessions"] and parts[3] in TOKENS \
            and "authorization" not in request.headers:
        request.headers["Authorization"] = f"Bearer {TOKENS[parts[3]]}"


@pytest.fixture
def client(renderer) -> TestClient:
    gateway = Gateway(renderer.config, LocalRendererClient(renderer))
    with TestClient(create_api(gateway)) as c:
        c.event_hooks["request"].append(_with_token)
        yield c


def new_session(client: TestClient, **body) -> str:
    reply = client.post("/v1/sessions", json={"video": False, **body})
    assert reply.status_code == 201, reply.text
    TOKENS[reply.json()["session_id"]] = reply.json()["token"]
    return reply.json()["session_id"]


async def read_turn(gateway: Gateway, sid: str, timeout_s: float = 30.0) -> list[tuple[str, dict]]:
    """SSE events as (type, data) until the first finished turn."""
    events: list[tuple[str, dict]] = []

    async def run() -> None:
        async for block in await gateway.events(sid):
            if block.startswith(b":"):
                continue
            head, data = block.decode().strip().split("\n")
            events.append((head.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
            if events[-1][0] == "turn_end" and not events[-1][1]["interrupted"]:
                return

    await asyncio.wait_for(run(), timeout_s)
    return events


async def test_a_typed_question_streams_a_grounded_spoken_answer_and_is_stored(renderer, store):
    gateway = Gateway(renderer.config, LocalRendererClient(renderer))
    info = await gateway.create_session(video=False)
    sid = info["session_id"]
    assert sid.startswith("r1.") and info["events_url"] == \
        f"/v1/sessions/{sid}/events?token={info['token']}"
    await gateway.call(sid, "send_text", "Can I split my bill into monthly payments?")
    events = await read_turn(gateway, sid)
    kinds = [k for k, _ in events]
    assert kinds.index("transcript") < kinds.index("audio") < kinds.index("turn_end")
    end = events[-1][1]
    assert "6 months" in end["reply"] and not end["refused"]
    audio = [d for k, d in events if k == "audio"]
    pts = [a["pts_ms"] for a in audio]
    assert pts == sorted(pts) and all(a["sample_rate_hz"] > 0 for a in audio)
    pcm = np.frombuffer(base64.b64decode(audio[0]["pcm16_b64"]), dtype="<i2")
    assert len(pcm) == round(audio[0]["duration_ms"] * audio[0]["sample_rate_hz"] / 1000)
    assert end["marks_ms"]["tts_first_audio"] >= end["marks_ms"]["asr_final"]
    turns = store.turns(sid, "maple")
    assert [t.user_text for t in turns] == ["Can I split my bill into monthly payments?"]
    assert turns[0].reply_text == end["reply"]
    assert renderer.metrics.counters["turns_answered"] == 1
    assert "first_audio" in renderer.metrics.latencies
    await gateway.delete(sid)
    await renderer.aclose()


async def test_interrupt_stops_the_reply(renderer):
    gateway = Gateway(renderer.config, LocalRendererClient(renderer))
    sid = (await gateway.create_session(video=False))["session_id"]
    await gateway.call(sid, "send_text", "What should I bring to my first appointment and "
                       "how early should I arrive?")
    stream = await gateway.events(sid)
    seen: list[str] = []
    async for block in stream:
        kind = block.decode().split("\n")[0].removeprefix("event: ")
        seen.append(kind)
        if kind == "audio" and "interrupt" not in seen:
            await gateway.call(sid, "interrupt")
        if kind == "turn_end":
            break
    assert "interrupt" in seen
    assert '"interrupted":true' in block.decode()
    await renderer.aclose()


def test_a_full_renderer_answers_503_with_retry_after_and_frees_slots(client):
    first, second = new_session(client), new_session(client)
    full = client.post("/v1/sessions", json={"video": False})
    assert full.status_code == 503
    assert full.headers["Retry-After"] == "5"
    assert "busy" in full.json()["error"]
    assert client.delete(f"/v1/sessions/{first}").status_code == 204
    assert client.get(f"/v1/sessions/{first}").status_code == 404
    third = new_session(client)
    assert client.get(f"/v1/sessions/{second}").json()["state"] == "listening"
    assert client.get(f"/v1/sessions/{third}").status_code == 200


def test_bad_input_gets_a_specific_error_and_the_session_goes_on(client):
    sid = new_session(client)
    cases = [
        (client.post("/v1/sessions", json={"personna": "x"}), 422, "personna"),
        (client.post("/v1/sessions", json={"persona": "nobody"}), 400, "unknown persona"),
        (client.post(f"/v1/sessions/{sid}/text", json={"text": "   "}), 400, "empty"),
        (client.post(f"/v1/sessions/{sid}/text", json={"text": "x" * 5000}), 400, "limit"),
        (client.post(f"/v1/sessions/{sid}/text", content=b"{not json"), 422, "invalid"),
        (client.post(f"/v1/sessions/{sid}/audio", content=b"\x01\x02\x03"), 400, "16-bit"),
        (client.post(f"/v1/sessions/{sid}/audio?sample_rate_hz=12345",
                     content=b"\x00\x00" * 160), 400, "12345"),
        (client.post(f"/v1/sessions/{sid}/audio", content=b"\x00" * 400_000), 413, "2 s"),
        (client.get("/v1/sessions/r1.0000/frame.jpg"), 401, "token"),
        (client.post(f"/v1/sessions/{sid}/offer", json={"sdp": "hello"}), 400, "v=0"),
        (client.post(f"/v1/sessions/{sid}/offer", json={"sdp": "v=0", "type": "answer"}),
         400, "'offer'"),
        (client.post(f"/v1/sessions/{sid}/offer", json={"sdp": "x" * 40_000}), 422, "sdp"),
    ]
    for reply, status, words in cases:
        assert reply.status_code == status, reply.text
        assert words in reply.json()["error"]
    ok = client.post(f"/v1/sessions/{sid}/audio?sample_rate_hz=16000", content=b"\x00\x00" * 1600)
    assert ok.status_code == 202 and ok.json() == {"samples": 1600}
    assert client.post(f"/v1/sessions/{sid}/text", json={"text": "Hello"}).json()["turn_id"] >= 1


def test_a_session_resumes_with_its_committed_history(client, renderer, store):
    sid = new_session(client)
    client.post(f"/v1/sessions/{sid}/text", json={"text": "Do you offer telehealth visits?"})
    for _ in range(300):
        if store.turns(sid, "maple"):
            break
        import time

        time.sleep(0.05)
    assert store.turns(sid, "maple")
    anyone = client.post("/v1/sessions", json={"video": False, "resume": sid})
    assert anyone.status_code == 401  # resuming needs the earlier session's token
    reply = client.post("/v1/sessions", json={"video": False, "resume": sid},
                        headers={"Authorization": f"Bearer {TOKENS[sid]}"})
    assert reply.status_code == 201, reply.text
    resumed = reply.json()
    assert resumed["resumed_from"] == sid and resumed["history_turns"] == 1
    history = renderer.sessions[resumed["session_id"]].conductor.history
    assert history[0].content == "Do you offer telehealth visits?"
    assert store.get_session(sid, "maple").state == "closed"
    other = client.post("/v1/sessions", json={"video": False, "resume": "r9.nothing"},
                        headers={"Authorization": f"Bearer {TOKENS[sid]}"})
    assert other.status_code == 403 and "another session" in other.json()["error"]


def test_video_sessions_are_rendered_in_batches_and_snapshot_as_jpeg(client, renderer):
    sid = new_session(client, video=True)
    other = new_session(client, video=True)
    import time

    time.sleep(1.0)
    stats = renderer.stats()
    assert stats["video_sessions"] == 2 and stats["frames_rendered"] >= 10
    jpeg = client.get(f"/v1/sessions/{sid}/frame.jpg")
    assert jpeg.status_code == 200 and jpeg.headers["content-type"] == "image/jpeg"
    assert jpeg.content[:2] == b"\xff\xd8"
    assert renderer.sessions[other].frame.shape == (256, 256, 3)


def test_web_client_and_docs_are_served(client):
    page = client.get("/")
    assert page.status_code == 200 and "app.js" in page.text
    assert client.get("/static/app.js").status_code == 200
    assert "/v1/sessions" in client.get("/openapi.json").json()["paths"]
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json()["capacity"] == 2


def test_api_error_maps_project_errors_to_statuses(renderer):
    from models.errors import BackendError, ClusterFull, SessionNotFound, SessionOwnerLost

    gateway = Gateway(renderer.config, LocalRendererClient(renderer))
    statuses = {ClusterFull("x"): 503, SessionNotFound("x"): 404, SessionOwnerLost("x"): 410,
                BackendError("x"): 502, RuntimeError("replica died"): 502}
    for exc, status in statuses.items():
        error = gateway._translate(exc)
        assert isinstance(error, ApiError) and error.status == status


def test_a_draining_renderer_refuses_new_sessions_and_keeps_live_ones(client, renderer):
    sid = new_session(client)
    import asyncio as _asyncio

    _asyncio.run(renderer.drain())
    assert renderer.record_routing_stats()["capacity"] == 0
    refused = client.post("/v1/sessions", json={"video": False})
    assert refused.status_code == 503 and refused.headers["Retry-After"]
    assert renderer.metrics.counters["rejected_draining"] == 1
    assert client.post(f"/v1/sessions/{sid}/text", json={"text": "Hello"}).status_code == 202


def test_the_gateway_echoes_latency_probes_for_region_placement(client: TestClient) -> None:
    with client.websocket_connect("/v1/probe") as ws:
        for seq in range(3):
            ws.send_text(json.dumps({"seq": seq, "t": 1000.0 + seq}))
            echo = json.loads(ws.receive_text())
            assert echo["seq"] == seq and echo["t"] == 1000.0 + seq and echo["ts"] > 0
        ws.send_text("not json")
        assert "error" in json.loads(ws.receive_text())


def test_session_routes_refuse_other_tokens_and_the_session_goes_on(client: TestClient) -> None:
    from tests.unit.test_auth import bad_tokens

    sid, other = new_session(client), new_session(client)
    gateway = client.app.state.gateway
    wrong_tenant = gateway.tokens.issue(sid, "acme")  # signed by us, but not maple's
    routes = [("get", ""), ("post", "/interrupt"), ("get", "/transcript"),
              ("get", "/frame.jpg"), ("delete", "")]
    cases = [("other session's", TOKENS[other]), ("wrong tenant", wrong_tenant)]
    cases += [(kind, token.replace(" ", "")) for kind, token in bad_tokens(100)]
    for i, (kind, token) in enumerate(cases):
        method, suffix = routes[i % len(routes)]
        reply = getattr(client, method)(f"/v1/sessions/{sid}{suffix}",
                                        headers={"Authorization": f"Bearer {token}"})
        assert reply.status_code in (401, 403), (kind, reply.status_code, reply.text)
        assert reply.json()["error"]
    assert client.get(f"/v1/sessions/{sid}/events?token=nope",
                      headers={"Authorization": ""}).status_code == 401
    # The session is untouched and its own token still works, in a header or the query.
    assert client.get(f"/v1/sessions/{sid}").json()["state"] == "listening"
    assert client.get(f"/v1/sessions/{sid}/transcript?token={TOKENS[sid]}",
                      headers={"Authorization": ""}).json() == {"session_id": sid, "turns": []}


def test_the_clients_probe_of_this_region_comes_back_with_the_session(client) -> None:
    probe = {"rtt_ms": 12.5, "jitter_ms": 1.5, "loss": 0.0, "measured_at_s": 1.8e9}
    reply = client.post("/v1/sessions", json={"video": False, "measurements": {
        "local": probe, "far-away": {**probe, "rtt_ms": 250.0}}})
    assert reply.status_code == 201 and reply.json()["client_network"] == probe
    assert client.get("/readyz").json()["region"] == "local"
    bad = client.post("/v1/sessions", json={"measurements": {"local": {**probe, "rtt_ms": -1}}})
    assert bad.status_code == 422 and "rtt_ms" in bad.json()["error"]
