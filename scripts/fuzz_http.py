"""The ``signalling`` fuzz target: arbitrary JSON and bytes to the Gateway's HTTP API.

Every input becomes one request to the real FastAPI app (``create_api``) over a real gateway
and in-process renderer on the real models: POST /v1/sessions, and /text, /offer, /interrupt,
/audio on a victim session (or on made-up ids). The contract: a 2xx, or a 4xx/503 whose body
is JSON ``{"error": message}``; never a 500, never a hang. A survivor session opened before
the fuzzing must answer a typed question afterwards.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import httpx
from fuzz_targets import (
    SESSION_INPUTS,
    ContractBroken,
    Stack,
    Survivor,
    Target,
    fdp_seed,
    real_offer,
)

ROUTES = ("sessions", "text", "offer", "interrupt", "audio", "info")
CONTENT_TYPES = (None, "application/json", "text/plain", "application/json; charset=latin-1",
                 "application/x-www-form-urlencoded", "application/vnd.x+json",
                 "multipart/form-data")
ENCODINGS = (None, None, None, "identity", "gzip", "br, gzip", "identity, deflate")
REPEATS = (1, 1, 1, 1, 2, 16, 1024, 70_000)
MAX_BODY_BYTES = 400_000
"""Bodies are cut here: twice the largest route limit is enough to see the 413s."""


class Signalling(Target):
    """One HTTP request per input through ``httpx.ASGITransport`` (no sockets)."""

    name = "signalling"
    description = "the Gateway's HTTP API: arbitrary JSON/bytes to sessions, text, offer, " \
                  "interrupt, audio"
    max_len = 8192
    timeout_s = 10.0

    def setup(self) -> None:
        self.stack = Stack()
        self.http = httpx.AsyncClient(transport=httpx.ASGITransport(app=self.stack.app),
                                      base_url="http://gateway.test")
        survivor, token = self._create()
        self.survivor = Survivor(self.stack, self.loop, survivor,
                                 ask=lambda text: self._ask(survivor, token, text))
        self.victim, self.token = self._create()
        self.created = self.inputs = 0
        self.victims = 1

    def _create(self) -> tuple[str, str | None]:
        reply = self.call(self.http.post("/v1/sessions", json={"video": False}))
        assert reply.status_code == 201, reply.text
        info = reply.json()
        return str(info["session_id"]), info.get("token")

    async def _ask(self, sid: str, token: str | None, text: str) -> int:
        reply = await self.http.post(f"/v1/sessions/{sid}/text", json={"text": text},
                                     headers=_auth(token))
        assert reply.status_code == 202, reply.text
        return int(reply.json()["turn_id"])

    def seeds(self) -> list[bytes]:
        offer = json.dumps({"sdp": real_offer(self.loop), "type": "offer"}).encode()
        # Choices in the order run() reads them: route, who, content type, encoding, repeat,
        # rate (fdp_seed puts them where FuzzedDataProvider reads integers: at the end).
        return [fdp_seed(b'{"video": false}', 0, 0, 1, 0, 0, 0),
                fdp_seed(b'{"text": "When do you open?"}', 1, 0, 1, 0, 0, 0),
                fdp_seed(offer, 2, 0, 1, 0, 0, 0),
                fdp_seed(b"", 3, 0, 0, 0, 0, 0),
                fdp_seed(b"\x00\x01" * 160, 4, 0, 0, 0, 0, 0),
                fdp_seed(b"", 5, 0, 0, 0, 0, 0)]

    def run(self, data: bytes) -> str | None:
        import atheris

        self.inputs += 1
        if self.inputs % SESSION_INPUTS == 0:  # a fresh victim now and then (fuzz_targets)
            self.call(self.stack.gateway.delete(self.victim))
            self._revive()
        fdp = atheris.FuzzedDataProvider(data)
        route = ROUTES[fdp.ConsumeIntInRange(0, len(ROUTES) - 1)]
        who = fdp.ConsumeIntInRange(0, 3)
        content_type = fdp.PickValueInList(list(CONTENT_TYPES))
        encoding = fdp.PickValueInList(list(ENCODINGS))
        repeat = fdp.PickValueInList(list(REPEATS))
        rate = fdp.PickValueInList(["16000", "48000", "0", "-1", "12345", "1e3", "x",
                                    str(1 << 70), "", "16000&sample_rate_hz=8000"])
        body = (fdp.ConsumeBytes(fdp.remaining_bytes()) * repeat)[:MAX_BODY_BYTES]
        sid = self.victim if who < 2 else quote(body[:12].decode("utf-8", "replace"), safe="")
        headers = _auth(self.token if who != 1 else "not-a-token")
        if content_type:
            headers["content-type"] = content_type
        if encoding:
            headers["content-encoding"] = encoding
        path = "/v1/sessions" if route == "sessions" else f"/v1/sessions/{sid}"
        if route not in ("sessions", "info"):
            path += f"/{route}"
        if route == "audio":
            path += f"?sample_rate_hz={rate}"
        method = "GET" if route == "info" else "POST"
        reply = self.call(self.http.request(method, path, content=body, headers=headers))
        return self.check(reply)

    def check(self, reply: httpx.Response) -> str | None:
        status = reply.status_code
        if status in (307, 308) and reply.headers.get("location"):
            return None  # a trailing slash: the framework redirects to the route without it
        if status < 300:
            if status == 201:  # a session the fuzzer opened: close it so capacity stays
                self.created += 1
                self.call(self.stack.gateway.delete(reply.json()["session_id"]))
            self._revive()
            return None
        if status >= 500 and status != 503:
            raise ContractBroken(f"HTTP {status}: {reply.text[:200]}")
        try:
            body: Any = reply.json()
        except ValueError:
            raise ContractBroken(f"HTTP {status} without a JSON body: {reply.text[:200]}") from None
        if not isinstance(body, dict) or not isinstance(body.get("error"), str):
            raise ContractBroken(f"HTTP {status} body is not {{'error': ...}}: {reply.text[:200]}")
        self._revive()
        return f"HTTP {status}: {body['error']}"

    def _revive(self) -> None:
        """A victim the fuzzer closed is replaced (the survivor must never need this)."""
        if self.victim not in self.stack.renderer.sessions:
            self.victim, self.token = self._create()
            self.victims += 1

    def finish(self) -> dict[str, Any]:
        result = {"sessions_opened_by_fuzzer": self.created, "victims": self.victims}
        result.update(self.survivor.check())
        self.call(self.http.aclose())
        return result


def _auth(token: str | None) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"} if token else {}
