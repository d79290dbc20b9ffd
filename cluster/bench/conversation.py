"""A session through the Gateway's HTTP API as a client sees it: the SSE event stream on a
tape, typed turns, WebRTC media from the aiortc client with video, and resuming an earlier
session (``{"resume": <id>}`` with its token) after its renderer died.

Used by ``avatarctl bench failover``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

from cluster.bench.serve import SSEParser
from models.errors import BackendError

TURN_TIMEOUT_S = 60.0
RESUME_WINDOW_S = 20.0
"""A resume that meets 410/502/503 (a renderer still listed after its death) is retried for
this long."""


def now() -> float:
    return time.perf_counter()


class Tape:
    """Every event of one session's SSE stream, with its arrival time; ``ended`` once the
    stream stopped."""

    def __init__(self) -> None:
        self.items: list[tuple[float, str, dict[str, Any]]] = []
        self.changed = asyncio.Event()
        self.ended: float | None = None

    def add(self, kind: str, data: dict[str, Any]) -> None:
        self.items.append((now(), kind, data))
        self.changed.set()

    def end(self) -> None:
        self.ended = now()
        self.changed.set()

    async def wait(self, match: Callable[[str, dict[str, Any]], bool], start: int,
                   deadline: float) -> tuple[float, str, dict[str, Any]] | None:
        """The first event from index ``start`` on that ``match``es, or None by ``deadline``
        or when the stream ended without one."""
        i = start
        while True:
            for item in self.items[i:]:
                if match(item[1], item[2]):
                    return item
            i = len(self.items)
            if self.ended is not None or now() >= deadline:
                return None
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), max(0.0, deadline - now()))


class Conversation:
    """One session through the Gateway: SSE events, typed turns, WebRTC media with video."""

    def __init__(self, http: Any, video: bool) -> None:
        self.http, self.video = http, video
        self.sid, self.token, self.info = "", "", {}
        self.created_at: float | None = None
        self.tape = Tape()
        self.media: Any = None
        self._reader: asyncio.Task[None] | None = None

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    async def open(self, resume: Conversation | None = None) -> int:
        """Create the session (continuing ``resume``'s), open its events and media; returns
        the number of create attempts (a resume may first meet a renderer still listed after
        its death: 410/503 are retried for :data:`RESUME_WINDOW_S`)."""
        body: dict[str, Any] = {"video": self.video}
        headers: dict[str, str] = {}
        if resume is not None:
            body["resume"], headers = resume.sid, resume.headers
        deadline, attempts = now() + RESUME_WINDOW_S, 0
        while True:
            attempts += 1
            resp = await self.http.post("/v1/sessions", json=body, headers=headers)
            if resp.status_code == 201:
                break
            if resume is None or resp.status_code not in (410, 502, 503) or now() > deadline:
                raise BackendError(f"POST /v1/sessions answered {resp.status_code}: "
                                   f"{resp.text[:200]}")
            await asyncio.sleep(0.1)
        self.created_at = now()
        self.info = resp.json()
        self.sid, self.token = str(self.info["session_id"]), str(self.info["token"])
        self._reader = asyncio.create_task(self._read())
        if await self.tape.wait(lambda _k, _d: True, 0, now() + TURN_TIMEOUT_S) is None:
            raise BackendError("the session's event stream gave no first event")
        if self.video:
            from cluster.bench.client import Client, SessionHTTP

            self.media = Client()
            await self.media.negotiate(SessionHTTP(self.http, self.sid, self.token), self.sid,
                                       now())
        return attempts

    async def _read(self) -> None:
        parser = SSEParser()
        try:
            async with self.http.stream("GET", f"/v1/sessions/{self.sid}/events",
                                        headers=self.headers, timeout=None) as resp:
                if resp.status_code != 200:
                    self.tape.add("error", {"status": resp.status_code})
                    return
                async for line in resp.aiter_lines():
                    if (event := parser.feed(line)) is not None:
                        self.tape.add(*event)
        except Exception as exc:  # the connection broke: the client knows as much
            self.tape.add("error", {"message": str(exc), "status": None})
        finally:
            self.tape.end()

    async def send(self, text: str) -> tuple[int, int]:
        """POST a typed turn; ``(turn_id, tape index before it)``."""
        start = len(self.tape.items)
        resp = await self.http.post(f"/v1/sessions/{self.sid}/text", json={"text": text},
                                    headers=self.headers)
        if resp.status_code != 202:
            raise BackendError(f"POST text answered {resp.status_code}: {resp.text[:200]}")
        return int(resp.json()["turn_id"]), start

    async def answer(self, turn_id: int, start: int, sent: float
                     ) -> tuple[float | None, dict[str, Any] | None]:
        """``(ms from sent to the first clause, the turn_end data)`` of ``turn_id``."""
        deadline = sent + TURN_TIMEOUT_S
        first = await self.tape.wait(lambda k, _d: k == "clause", start, deadline)
        end = await self.tape.wait(
            lambda k, d: k == "turn_end" and d.get("turn_id") == turn_id, start, deadline)
        return ((first[0] - sent) * 1000.0 if first else None), (end[2] if end else None)

    async def close(self, remote: bool = True) -> None:
        if remote and self.sid:
            with contextlib.suppress(Exception):
                await self.http.delete(f"/v1/sessions/{self.sid}", headers=self.headers)
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        if self.media is not None:
            await self.media.close()
