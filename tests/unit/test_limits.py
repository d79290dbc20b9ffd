"""Body limits at the HTTP edge: oversized, endless and compressed bodies are refused before
they are read whole, with a JSON error that names the limit; the routes behind never see them."""

from __future__ import annotations

import asyncio
import gzip
import json
import time
from typing import Any

import pytest
from fastapi.testclient import TestClient

from configs import load_config
from deployments.api import create_api
from deployments.gateway import Gateway
from deployments.limits import (
    AUDIO_LIMIT_BYTES,
    JSON_LIMIT_BYTES,
    BodyLimitMiddleware,
)

pytestmark = pytest.mark.unit

CHUNK = 16 * 1024


class BodyReader:
    """An ASGI app that reads the whole body, then answers 200 with its size."""

    def __init__(self) -> None:
        self.called = False
        self.bytes_read = 0

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        self.called = True
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            self.bytes_read += len(message.get("body", b""))
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": str(self.bytes_read).encode()})


class Client:
    """Drives one request through an ASGI app with a body source, recording what was pulled."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.pulled = 0
        self.sent: list[dict] = []

    async def request(self, path: str, headers: dict[str, str], chunks: Any) -> tuple[int, dict]:
        async def receive() -> dict:
            try:
                body = next(chunks)
            except StopIteration:
                return {"type": "http.request", "body": b"", "more_body": False}
            self.pulled += len(body)
            return {"type": "http.request", "body": body, "more_body": True}

        async def send(message: dict) -> None:
            self.sent.append(message)

        scope = {"type": "http", "method": "POST", "path": path, "raw_path": path.encode(),
                 "query_string": b"", "root_path": "", "scheme": "http", "http_version": "1.1",
                 "server": ("127.0.0.1", 8000), "client": ("127.0.0.1", 50000),
                 "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]}
        await asyncio.wait_for(self.app(scope, receive, send), 5.0)
        starts = [m for m in self.sent if m["type"] == "http.response.start"]
        assert len(starts) == 1, self.sent
        body = b"".join(m.get("body", b"") for m in self.sent if m["type"] ==
                        "http.response.body")
        return starts[0]["status"], json.loads(body) if starts[0]["status"] != 200 else {}


def endless(size: int = CHUNK):
    while True:
        yield b"\x00" * size


def never():
    raise AssertionError("the body was read")
    yield b""  # pragma: no cover


async def test_a_1_gb_content_length_claim_is_refused_at_once_without_reading_the_body():
    inner = BodyReader()
    client = Client(BodyLimitMiddleware(inner))
    start = time.perf_counter()
    status, body = await client.request("/v1/sessions/s1/text",
                                        {"content-length": str(1 << 30)}, never())
    assert time.perf_counter() - start < 0.5
    assert status == 413 and not inner.called and client.pulled == 0
    assert f"{JSON_LIMIT_BYTES} bytes" in body["error"] and "1073741824" in body["error"]


async def test_a_chunked_body_that_grows_past_the_limit_is_cut_off_with_413():
    inner = BodyReader()
    client = Client(BodyLimitMiddleware(inner))
    status, body = await client.request("/v1/sessions/s1/audio", {}, endless())
    assert status == 413
    assert AUDIO_LIMIT_BYTES < client.pulled <= AUDIO_LIMIT_BYTES + CHUNK  # stopped at once
    assert "2 s" in body["error"] and str(AUDIO_LIMIT_BYTES) in body["error"]
    assert [m["status"] for m in client.sent if m["type"] == "http.response.start"] == [413]


async def test_a_gzip_bomb_is_refused_with_415_and_never_inflated():
    bomb = gzip.compress(b"\x00" * (64 << 20))  # 64 MiB of zeros in ~64 KiB
    assert len(bomb) < JSON_LIMIT_BYTES
    inner = BodyReader()
    client = Client(BodyLimitMiddleware(inner))
    status, body = await client.request(
        "/v1/sessions/s1/text",
        {"content-encoding": "gzip", "content-length": str(len(bomb))}, iter([bomb]))
    assert status == 415 and not inner.called and client.pulled == 0
    assert "gzip" in body["error"] and "uncompressed" in body["error"]


async def test_identity_encoding_and_bodies_within_each_routes_limit_pass_through():
    for path, size in [("/v1/sessions/s1/audio", AUDIO_LIMIT_BYTES),
                       ("/v1/sessions/s1/text", JSON_LIMIT_BYTES),
                       ("/v1/sessions/s1/offer", 60 * 1024)]:
        inner = BodyReader()
        chunks = iter([b"\x01" * CHUNK] * (size // CHUNK) + [b"\x01" * (size % CHUNK)])
        status, _ = await Client(BodyLimitMiddleware(inner)).request(
            path, {"content-encoding": "identity"}, chunks)
        assert status == 200 and inner.bytes_read == size


async def test_a_json_route_refuses_what_the_audio_route_accepts():
    inner = BodyReader()
    status, body = await Client(BodyLimitMiddleware(inner)).request(
        "/v1/sessions", {"content-length": str(100 * 1024)}, never())
    assert status == 413 and "65536" in body["error"]


async def test_a_content_length_that_is_not_a_number_is_refused():
    status, body = await Client(BodyLimitMiddleware(BodyReader())).request(
        "/v1/sessions", {"content-length": "-5"}, never())
    assert status == 400 and "Content-Length" in body["error"]


class NoRenderer:
    """A renderer client that must never be reached by a refused request."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def create_session(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append("create_session")
        raise AssertionError("reached the renderer")

    async def call(self, session_id: str, method: str, *args: Any) -> Any:
        self.calls.append(method)
        raise AssertionError("reached the renderer")

    async def stats(self) -> dict[str, Any]:
        return {}


@pytest.fixture(scope="module")
def api_client() -> TestClient:
    renderer = NoRenderer()
    app = create_api(Gateway(load_config("local"), renderer))  # type: ignore[arg-type]
    with TestClient(app) as client:
        client.renderer = renderer  # type: ignore[attr-defined]
        yield client


def test_the_gateway_api_refuses_oversized_and_compressed_bodies_before_its_routes(api_client):
    big = api_client.post("/v1/sessions/s1/text", content=b'{"text": "' + b"a" * 70_000 + b'"}',
                          headers={"content-type": "application/json"})
    assert big.status_code == 413 and "65536" in big.json()["error"]
    audio = api_client.post("/v1/sessions/s1/audio", content=b"\x00" * (AUDIO_LIMIT_BYTES + 2))
    assert audio.status_code == 413 and "2 s" in audio.json()["error"]
    zipped = api_client.post("/v1/sessions", content=gzip.compress(b"{}"),
                             headers={"content-encoding": "gzip",
                                      "content-type": "application/json"})
    assert zipped.status_code == 415 and "identity" in zipped.json()["error"]
    assert api_client.renderer.calls == []


def test_framework_errors_come_back_as_json_errors_that_say_what_to_change(api_client):
    missing = api_client.post("/v1/sessions/a/b/text", json={"text": "hi"})
    assert missing.status_code == 404 and "/docs" in missing.json()["error"]
    method = api_client.put("/v1/sessions", json={})
    assert method.status_code == 405 and "PUT" in method.json()["error"]
    bad_utf8 = api_client.post("/v1/sessions", content=b'{"persona": "\xff"}',
                               headers={"content-type": "application/json"})
    assert bad_utf8.status_code in (400, 422) and "UTF-8" in bad_utf8.json()["error"]
    assert api_client.renderer.calls == []
