"""The gateway's probe endpoint: a FastAPI router with the ``/v1/probe`` WebSocket that echoes
each ``{"seq", "t"}`` message with the server's receive time ``"ts"`` (ms), so a browser can
measure RTT and jitter to this region before it asks for a session."""

from __future__ import annotations

import time

from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from cluster.placement.probe import MAX_COUNT, Clock, serve_probe_websocket


def probe_router(*, clock: Clock = time.time, max_messages: int = MAX_COUNT,
                 idle_timeout_s: float = 10.0) -> APIRouter:
    """A router to mount on the gateway's app: ``app.include_router(probe_router())``."""
    router = APIRouter()

    @router.websocket("/v1/probe")
    async def probe(websocket: WebSocket) -> None:
        """Echo latency probes until the client closes, goes idle or sends too many."""
        try:
            await serve_probe_websocket(websocket, clock=clock, max_messages=max_messages,
                                        idle_timeout_s=idle_timeout_s)
        except WebSocketDisconnect:
            pass

    return router
