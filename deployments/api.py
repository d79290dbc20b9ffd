"""The Gateway's HTTP routes (FastAPI; OpenAPI at ``/docs``)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field

from deployments.gateway import MAX_AUDIO_BYTES, WEB_DIR, ApiError, Gateway
from deployments.knowledge_api import mount_knowledge_api
from deployments.limits import install as install_limits

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class SessionRequest(BaseModel):
    """A new session."""

    model_config = ConfigDict(extra="forbid")
    persona: str | None = Field(None, max_length=64, description="Persona name; None = the "
                                "cluster's default persona.")
    video: bool = Field(True, description="Render the avatar's face for this session.")
    resume: str | None = Field(None, max_length=128, description="Id of an earlier session "
                               "of the same tenant whose conversation this one continues.")
    measurements: dict[str, ProbeResult] | None = Field(
        None, max_length=64, description="The client's probes per region (the global entry "
        "places by them); this region's is returned as client_network.")


class ProbeResult(BaseModel):
    """What the client measured to one region's gateway (``/v1/probe``)."""

    model_config = ConfigDict(extra="forbid")
    rtt_ms: float = Field(ge=0, le=10_000)
    jitter_ms: float = Field(ge=0, le=10_000)
    loss: float = Field(0.0, ge=0, le=1)
    measured_at_s: float = Field(ge=0, description="UNIX seconds when the probe ran.")


class TextRequest(BaseModel):
    """A typed user turn."""

    model_config = ConfigDict(extra="forbid")
    text: str = Field(description="What the user typed (interrupts a reply in progress).")


class OfferRequest(BaseModel):
    """A WebRTC offer (``RTCPeerConnection.createOffer()`` after ICE gathering)."""

    model_config = ConfigDict(extra="forbid")
    sdp: str = Field(max_length=32_000, description="The offer's SDP.")
    type: str = Field("offer", description="Always 'offer'.")


def session_token(request: Request) -> str | None:
    """The session token: ``Authorization: Bearer <token>``, or ``?token=`` for the browser's
    EventSource and <img> requests, which cannot set headers."""
    header = request.headers.get("authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip()
    return request.query_params.get("token")


async def _authorized(session_id: str, request: Request) -> str:
    await request.app.state.gateway.authorize(session_id, session_token(request))
    return session_id


Session = Annotated[str, Depends(_authorized)]
"""A session id path parameter whose request carries that session's token."""


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def create_api(gateway: Gateway, *, metrics_url: str | None = None) -> FastAPI:
    """The routes over ``gateway``; ``metrics_url`` is this node's Prometheus export."""
    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        from deployments.region_report import report_loop

        reporter = asyncio.create_task(report_loop(gateway.config))  # to the global entry
        try:
            yield
        finally:
            reporter.cancel()

    app = FastAPI(
        lifespan=lifespan,
        title="avatar-cluster",
        description="Real-time conversational avatars: sessions, turns, events, frames.",
        version="0.4.0",
    )
    install_limits(app)  # 413 over a route's body limit, 415 for compressed bodies

    app.state.gateway = gateway

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return _error(exc.status, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def bad_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        gateway.metrics.rejection("bad_request")
        parts = []
        for err in exc.errors()[:5]:
            where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
            parts.append(f"{where or 'body'}: {err.get('msg', 'invalid')}")
        return _error(422, "invalid request: " + "; ".join(parts))

    @app.post("/v1/sessions", status_code=201, summary="Start a session")
    async def create_session(request: Request, body: SessionRequest | None = None
                             ) -> dict[str, Any]:
        """Returns the session, its ``token`` (send it on every call on the session) and its
        URLs. ``resume`` needs the earlier session's token as ``Authorization: Bearer``."""
        body = body or SessionRequest()
        client = request.client.host if request.client else "unknown"
        created = await gateway.create_session(
            body.persona, body.video, body.resume, client_ip=client,
            api_key=request.headers.get("x-api-key"), token=session_token(request))
        mine = (body.measurements or {}).get(gateway.config.cluster.region)
        return {**created, "client_network": None if mine is None else mine.model_dump()}

    @app.get("/v1/sessions/{session_id}", summary="A live session's state")
    async def session_info(session_id: Session) -> dict[str, Any]:
        return await gateway.call(session_id, "session_info")

    @app.get("/v1/sessions/{session_id}/transcript", summary="The session's committed turns")
    async def transcript(session_id: Session) -> dict[str, Any]:
        return {"session_id": session_id,
                "turns": await gateway.call(session_id, "transcript")}

    @app.post("/v1/sessions/{session_id}/text", status_code=202, summary="Send typed text")
    async def send_text(session_id: Session, body: TextRequest) -> dict[str, int]:
        return {"turn_id": await gateway.call(session_id, "send_text", body.text)}

    @app.post("/v1/sessions/{session_id}/audio", status_code=202,
              summary="Send microphone audio (raw little-endian mono PCM16)")
    async def send_audio(
        session_id: Session, request: Request,
        sample_rate_hz: int = Query(16000, description="Sample rate of the PCM16 body."),
    ) -> dict[str, int]:
        pcm = bytearray()
        async for chunk in request.stream():
            pcm += chunk
            if len(pcm) > MAX_AUDIO_BYTES:
                raise ApiError(413, f"audio body is over {MAX_AUDIO_BYTES} bytes; send at "
                               "most 2 s per request")
        return {"samples": await gateway.call(session_id, "feed_audio", bytes(pcm),
                                              sample_rate_hz)}

    @app.post("/v1/sessions/{session_id}/offer", summary="WebRTC: answer the client's offer")
    async def offer(session_id: Session, body: OfferRequest) -> dict[str, Any]:
        return await gateway.call(session_id, "connect", body.sdp, body.type)

    @app.post("/v1/sessions/{session_id}/interrupt", status_code=202,
              summary="Stop the avatar (barge-in)")
    async def interrupt(session_id: Session) -> dict[str, bool]:
        await gateway.call(session_id, "interrupt")
        return {"interrupted": True}

    @app.get("/v1/sessions/{session_id}/events", summary="The session's events (SSE)")
    async def events(session_id: Session) -> StreamingResponse:
        stream = await gateway.events(session_id)
        return StreamingResponse(stream, media_type="text/event-stream", headers=SSE_HEADERS)

    @app.get("/v1/sessions/{session_id}/frame.jpg", summary="The avatar's latest frame")
    async def frame(session_id: Session) -> Response:
        jpeg = await gateway.call(session_id, "frame_jpeg")
        return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "no-store"})

    @app.delete("/v1/sessions/{session_id}", status_code=204, summary="End a session")
    async def delete(session_id: Session) -> Response:
        await gateway.delete(session_id)
        return Response(status_code=204)

    @app.get("/healthz", summary="Liveness")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="Readiness: a renderer answers")
    async def readyz() -> dict[str, Any]:
        return await gateway.ready()

    @app.get("/metrics", summary="Prometheus metrics of this node")
    async def metrics() -> Response:
        if metrics_url is None:
            raise ApiError(404, "metrics export is off (cluster.metrics_port is null)")
        import httpx

        try:
            async with httpx.AsyncClient(timeout=5.0) as client:
                reply = await client.get(metrics_url)
        except httpx.HTTPError as exc:
            raise ApiError(503, f"the node's metrics agent at {metrics_url} did not answer "
                           f"({type(exc).__name__})") from None
        return Response(reply.content, media_type=reply.headers.get("content-type",
                                                                    "text/plain"))

    @app.get("/", include_in_schema=False)
    async def index() -> Response:
        page = WEB_DIR / "index.html"
        if not page.exists():
            return _error(404, "the web client is not installed")
        return FileResponse(page, media_type="text/html")

    from cluster.placement.probe_api import probe_router

    app.include_router(probe_router())  # /v1/probe: clients measure RTT and jitter to us
    mount_knowledge_api(app, gateway)  # /v1/knowledge: a tenant's KBs, by ingest API key

    if WEB_DIR.is_dir():
        app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")
    return app
