"""The whole app on a real 3-node Ray cluster with fake GPUs, over real HTTP on 127.0.0.1.

One renderer replica per GPU; 20 sessions spread over them and every call pinned (0
misrouted); the shared LLM and TTS scale up under conversation load and back down while every
session lives on; a full cluster answers 503 with Retry-After.
"""

from __future__ import annotations

import asyncio
import json
import os
import time

import numpy as np
import pytest

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")
httpx = pytest.importorskip("httpx")

from ray.cluster_utils import Cluster  # noqa: E402

from cluster.app import APP_NAME, build_application  # noqa: E402
from configs import load_config  # noqa: E402
from tests.speech import silence, speak  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PORT = 8047
METRICS_PORT = 8093
GPUS = 3
CAPACITY = 7
SESSIONS = 20
QUESTIONS = [
    "What time do you open on Saturday?",
    "Do you offer telehealth visits?",
    "Can I split my bill into monthly payments?",
    "How do I request a prescription refill?",
    "Where can I park?",
]
SCALED = {"num_replicas": "auto", "min_replicas": 1, "max_replicas": 2, "num_cpus": 0.05,
          "target_ongoing_requests": 1, "max_ongoing_requests": 16, "upscale_delay_s": 0.5,
          "downscale_delay_s": 4, "look_back_period_s": 2}


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory):
    data = tmp_path_factory.mktemp("cluster")
    saved = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = "disabled"
    nodes = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 2, "num_gpus": 1, "include_dashboard": False,
        "object_store_memory": 96 * 1024 * 1024, "metrics_export_port": METRICS_PORT})
    for _ in range(GPUS - 1):
        nodes.add_node(num_cpus=1, num_gpus=1, object_store_memory=80 * 1024 * 1024)
    ray.init(address=nodes.address, log_to_driver=False)
    config = load_config("local", overrides={
        # Dozens of sessions from one address within seconds: lift the per-address limit.
        "cluster": {"session_store_path": str(data / "sessions.sqlite3"),
                    "metrics_port": METRICS_PORT,
                    "admission": {"sessions_per_minute_per_ip": 6000, "burst": 100}},
        "models": {"knowledge": {"qdrant_path": str(data / "qdrant")}},
        "deployments": {
            "gateway": {"num_cpus": 0.05},
            "renderer": {"num_replicas": GPUS, "num_gpus": 1, "num_cpus": 0.05,
                         "sessions_per_replica": CAPACITY, "max_ongoing_requests": 64,
                         "graceful_shutdown_timeout_s": 5},
            "asr": {"num_replicas": 1, "num_cpus": 0.05},
            "knowledge": {"num_replicas": 1, "num_cpus": 0.05},
            "llm": SCALED, "tts": SCALED,
        },
    })
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": PORT})
        serve.run(build_application(config), name=APP_NAME, route_prefix="/")
        yield f"http://127.0.0.1:{PORT}"
    finally:
        serve.shutdown()
        ray.shutdown()
        nodes.shutdown()
        if saved is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = saved


def running(deployment: str) -> int:
    status = serve.status().applications[APP_NAME].deployments[deployment]
    return status.replica_states.get("RUNNING", 0)


async def turn(client: httpx.AsyncClient, sid: str, text: str) -> dict:
    """One typed turn over HTTP: POST the text, read the SSE stream to its turn_end."""
    async with client.stream("GET", f"/v1/sessions/{sid}/events") as events:
        assert events.status_code == 200
        reply = await client.post(f"/v1/sessions/{sid}/text", json={"text": text})
        assert reply.status_code == 202, reply.text
        kind = ""
        async for line in events.aiter_lines():
            if line.startswith("event: "):
                kind = line.removeprefix("event: ")
            elif line.startswith("data: ") and kind == "turn_end":
                return json.loads(line.removeprefix("data: "))
            elif line.startswith("data: ") and kind == "error":
                raise AssertionError(f"session {sid}: {line}")
    raise AssertionError("the event stream ended before the turn did")


def test_renderers_pin_sessions_autoscale_shared_models_and_refuse_when_full(app):
    asyncio.run(_scenario(app))


TOKENS: dict[str, str] = {}
"""Session id -> its token (from POST /v1/sessions), sent with every call on the session."""


async def _remember_and_send_tokens(request: httpx.Request) -> None:
    parts = request.url.path.split("/")
    if len(parts) > 3 and parts[1:3] == ["v1", "sessions"] and parts[3] in TOKENS:
        request.headers["Authorization"] = f"Bearer {TOKENS[parts[3]]}"


async def _keep_token(response: httpx.Response) -> None:
    if response.request.url.path == "/v1/sessions" and response.status_code == 201:
        await response.aread()
        TOKENS[response.json()["session_id"]] = response.json()["token"]


async def _scenario(url: str) -> None:
    limits = httpx.Limits(max_connections=100)
    hooks = {"request": [_remember_and_send_tokens], "response": [_keep_token]}
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits,
                                 event_hooks=hooks) as client:
        # One renderer per GPU, each on its own node with its own GPU.
        assert running("Renderer") == GPUS
        created = []
        for _ in range(SESSIONS):
            reply = await client.post("/v1/sessions", json={"video": False})
            assert reply.status_code == 201, reply.text
            created.append(reply.json())
        sids = [c["session_id"] for c in created]
        per_renderer: dict[str, int] = {}
        for c in created:
            assert c["session_id"].startswith(c["renderer"] + ".")
            per_renderer[c["renderer"]] = per_renderer.get(c["renderer"], 0) + 1
        assert len(per_renderer) == GPUS
        assert max(per_renderer.values()) - min(per_renderer.values()) <= 1

        handle = serve.get_deployment_handle("Renderer", APP_NAME)
        placements = set()
        for c in created:
            if c["renderer"] not in {p[0] for p in placements}:
                stats = await handle.options(session_id=c["session_id"]).stats.remote()
                assert stats["replica"] == c["renderer"] and len(stats["gpu_ids"]) == 1
                placements.add((stats["replica"], stats["node_id"], stats["gpu_ids"][0]))
        assert len({p[1] for p in placements}) == GPUS  # one renderer per node (and GPU)

        # Conversation load from every session: the LLM and TTS scale up.
        assert running("LLM") == 1 and running("TTS") == 1
        misrouted = 0
        scaled_up = False
        deadline = time.monotonic() + 90
        rounds = 0
        while time.monotonic() < deadline and (not scaled_up or rounds < 2):
            ends = await asyncio.gather(*(turn(client, sid, QUESTIONS[(i + rounds) % 5])
                                          for i, sid in enumerate(sids)))
            assert all(e["reply"] and not e["interrupted"] for e in ends)
            rounds += 1
            scaled_up = scaled_up or (running("LLM") == 2 or running("TTS") == 2)
            for sid in sids:
                info = await client.get(f"/v1/sessions/{sid}")
                misrouted += info.status_code != 200
        assert scaled_up, "neither LLM nor TTS scaled up under 20 concurrent conversations"
        assert misrouted == 0

        # Load stops: they scale back down; the sessions never noticed.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (running("LLM") > 1 or running("TTS") > 1):
            await asyncio.sleep(1)
        assert running("LLM") == 1 and running("TTS") == 1
        for sid in sids:
            info = await client.get(f"/v1/sessions/{sid}")
            assert info.status_code == 200 and info.json()["turns"] == rounds
        end = await turn(client, sids[0], "Do you offer telehealth visits?")
        assert "telehealth" in end["reply"].lower() or end["reply"]

        # Fill the last slot, then a new session is refused with 503 + Retry-After.
        extra = []
        while True:
            reply = await client.post("/v1/sessions", json={"video": False})
            if reply.status_code != 201:
                break
            extra.append(reply.json()["session_id"])
            assert len(extra) <= GPUS * CAPACITY - SESSIONS, "a renderer went over capacity"
        assert len(extra) == GPUS * CAPACITY - SESSIONS
        assert reply.status_code == 503 and int(reply.headers["Retry-After"]) > 0
        assert "busy" in reply.json()["error"]

        # Ending a session frees its slot for the next one (once the router's load report,
        # refreshed every second, shows it).
        assert (await client.delete(f"/v1/sessions/{sids[0]}")).status_code == 204
        for _ in range(20):
            reply = await client.post("/v1/sessions", json={"video": False})
            if reply.status_code == 201:
                break
            await asyncio.sleep(0.5)
        assert reply.status_code == 201, reply.text

        # The region probe a client runs before asking for a session: a WebSocket echo
        # through Serve's proxy to the Gateway.
        from cluster.placement.probe import probe_ws

        probe = await probe_ws(f"ws://127.0.0.1:{PORT}/v1/probe", count=10, interval_ms=10)
        assert probe.received == 10 and probe.rtt_ms is not None and probe.rtt_ms.p50 < 200

        # Prometheus: stage latencies, sessions per renderer, refusals, turns. Each node's
        # metrics agent serves its own replicas (the Gateway's /metrics shows its node), and
        # exports every few seconds.
        assert "ray_serve" in (await client.get("/metrics")).text
        ports = [n["MetricsExportPort"] for n in ray.nodes() if n["Alive"]]
        wanted = ["ray_avatar_stage_latency_ms_bucket", 'stage="text_to_first_audio"',
                  "ray_avatar_sessions{", 'reason="full"', 'outcome="answered"']
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            text = "".join([(await client.get(f"http://127.0.0.1:{port}/metrics")).text
                            for port in ports])
            if all(w in text for w in wanted):
                break
            await asyncio.sleep(2)
        assert [w for w in wanted if w not in text] == []

        # A spoken question through the cluster: audio in over HTTP, VAD and endpointing on
        # the renderer, the utterance transcribed by the shared ASR deployment.
        sid = reply.json()["session_id"]
        question = np.concatenate([silence(300), speak("Where can I park?"), silence(900)])
        async with client.stream("GET", f"/v1/sessions/{sid}/events") as events:
            for start in range(0, len(question), 1600):  # 100 ms chunks at real time
                chunk = question[start:start + 1600].astype("<i2").tobytes()
                posted = await client.post(f"/v1/sessions/{sid}/audio?sample_rate_hz=16000",
                                           content=chunk)
                assert posted.status_code == 202, posted.text
                await asyncio.sleep(0.1)
            kind, heard = "", ""
            async for line in events.aiter_lines():
                if line.startswith("event: "):
                    kind = line.removeprefix("event: ")
                elif line.startswith("data: ") and kind in ("transcript", "turn_end", "error"):
                    data = json.loads(line.removeprefix("data: "))
                    assert kind != "error", data
                    if kind == "transcript" and data["text"]:
                        heard = data["text"]
                    if kind == "turn_end":
                        break
        assert "park" in heard.lower() and "park" in data["reply"].lower()
