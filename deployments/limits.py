"""Request hygiene at the HTTP edge: body size limits per route and no compressed bodies.

:class:`BodyLimitMiddleware` is plain ASGI. It refuses a request whose ``Content-Length``
claims more than its route's limit at once (413, before a byte of the body is read), counts
the bytes of a streamed (chunked) body as they arrive and answers 413 as soon as they pass the
limit, and refuses a ``Content-Encoding`` other than ``identity`` (415): the API never inflates
a body, so a small compressed bomb cannot grow into gigabytes. Every refusal is JSON
``{"error": "..."}`` that names the limit.

:func:`install` adds it to an app, together with a handler that gives the framework's own
HTTP errors (unknown route, wrong method, unparsable body) the same ``{"error": ...}`` shape.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

KIB = 1024
JSON_LIMIT_BYTES = 64 * KIB
AUDIO_LIMIT_BYTES = 192 * KIB
OFFER_LIMIT_BYTES = 64 * KIB
INGEST_LIMIT_BYTES = 1024 * KIB

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


@dataclass(frozen=True)
class RouteLimit:
    """The largest body a route accepts; ``hint`` tells the client what to send instead."""

    pattern: str
    max_bytes: int
    hint: str = ""

    def matches(self, path: str) -> bool:
        return re.fullmatch(self.pattern, path) is not None


ROUTE_LIMITS: tuple[RouteLimit, ...] = (
    RouteLimit(r"/v1/sessions/[^/]+/audio", AUDIO_LIMIT_BYTES,
               "send at most 2 s of 48 kHz PCM16 per request"),
    RouteLimit(r"/v1/sessions/[^/]+/offer", OFFER_LIMIT_BYTES,
               "send the browser's offer SDP, not a whole recording"),
    RouteLimit(r"/v1/knowledge/[^/]+/documents", INGEST_LIMIT_BYTES,
               "send a knowledge base of at most 1 MiB of JSON, or ingest a folder with "
               "`avatarctl kb ingest`"),
)
"""Routes with their own limit; every other route is JSON and gets ``JSON_LIMIT_BYTES``."""


class _BodyTooLarge(Exception):
    """Raised into the app when a streamed body passes its limit (the 413 is already sent)."""


class BodyLimitMiddleware:
    """Refuse oversized (413) or compressed (415) request bodies before reading them whole."""

    def __init__(self, app: ASGIApp, routes: Sequence[RouteLimit] = ROUTE_LIMITS,
                 default_bytes: int = JSON_LIMIT_BYTES) -> None:
        self.app = app
        self.routes = tuple(routes)
        self.default = RouteLimit(r".*", default_bytes, "send a smaller JSON body")

    def limit_for(self, path: str) -> RouteLimit:
        """The limit that applies to ``path``."""
        for route in self.routes:
            if route.matches(path):
                return route
        return self.default

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(str(scope.get("path", "")))
        refusal = _check_headers(scope.get("headers") or [], limit)
        if refusal is not None:
            await _send_error(send, *refusal)
            return
        seen = 0
        refused = False
        started = False

        async def limited_receive() -> Message:
            nonlocal seen, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message.get("type") == "http.request":
                seen += len(message.get("body") or b"")
                if seen > limit.max_bytes:
                    refused = True
                    if not started:
                        await _send_error(send, 413, _too_large(limit))
                    raise _BodyTooLarge(_too_large(limit))
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if refused:  # the client has its 413; whatever the app says now is dropped
                return
            if message.get("type") == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not refused:
                raise
            # The 413 went out; the app's reaction to the cut-off body is of no interest.


def _check_headers(headers: Sequence[tuple[bytes, bytes]],
                   limit: RouteLimit) -> tuple[int, str] | None:
    """(status, message) for a request its headers already rule out, else None."""
    for raw_name, raw_value in headers:
        name = raw_name.decode("latin-1").lower()
        value = raw_value.decode("latin-1").strip()
        if name == "content-encoding":
            codings = [c.strip().lower() for c in value.split(",") if c.strip()]
            if any(c != "identity" for c in codings):
                return 415, (f"Content-Encoding {value[:40]!r} is not accepted; send the body "
                             "uncompressed (identity)")
        elif name == "content-length":
            if not value.isascii() or not value.isdigit():
                return 400, f"Content-Length {value[:40]!r} is not a number of bytes"
            if int(value) > limit.max_bytes:
                return 413, _too_large(limit, claimed=int(value))
    return None


def _too_large(limit: RouteLimit, claimed: int | None = None) -> str:
    size = f"is {claimed} bytes" if claimed is not None else "is larger"
    return (f"request body {size}; this route accepts at most {limit.max_bytes} bytes "
            f"({limit.max_bytes // KIB} KiB): {limit.hint}")


async def _send_error(send: Send, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


def http_error_message(status: int, detail: object, method: str, path: str) -> str:
    """A message that says what to change for one of the framework's own HTTP errors."""
    where = path[:80]
    if status == 404 and detail == "Not Found":
        return f"there is no route {where!r}; the API's routes are listed at /docs"
    if status == 405:
        return f"{method} is not allowed on {where!r}; the API's routes are listed at /docs"
    if status == 400 and detail == "There was an error parsing the body":
        return ("the request body could not be parsed; send a JSON object in UTF-8 "
                "(nested at most a few hundred levels)")
    return detail if isinstance(detail, str) else json.dumps(detail, default=str)


def install(app: Any) -> None:
    """Add :class:`BodyLimitMiddleware` to a FastAPI/Starlette ``app`` and answer the
    framework's own HTTP errors (404 unknown route, 405, 400 unparsable body) as
    ``{"error": ...}`` like every other refusal of the API."""
    from starlette.exceptions import HTTPException
    from starlette.requests import Request
    from starlette.responses import JSONResponse

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        return JSONResponse({"error": http_error_message(exc.status_code, exc.detail,
                                                         request.method, request.url.path)},
                            status_code=exc.status_code, headers=dict(exc.headers or {}))

    app.add_exception_handler(HTTPException, http_error)
    app.add_middleware(BodyLimitMiddleware)
