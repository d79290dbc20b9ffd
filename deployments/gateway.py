"""The Gateway: the cluster's HTTP front door (FastAPI), as a plain class plus its routes.

It admits sessions (a full cluster answers 503 with Retry-After), forwards each session's
calls to the renderer replica that owns it, streams the session's events as Server-Sent
Events and serves the web client. It holds one open ``hold`` request per live session, so
Serve never stops a renderer replica that still hosts sessions before its
``graceful_shutdown_timeout_s``.

:class:`RendererClient` is how it reaches renderers: over pinned Serve handles in the cluster
(:mod:`cluster.app`), or straight to an in-process :class:`~deployments.renderer.Renderer`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections import OrderedDict
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from configs.schema import AppConfig
from deployments.auth import Admission, ApiKeys, QuotaExceeded, SessionTokens, TenantQuota
from deployments.auth import signing_key as auth_signing_key
from deployments.events import sse
from deployments.metrics import MetricsSink
from deployments.remote import unwrap_error
from models.errors import (
    AuthError,
    AvatarError,
    ClusterFull,
    ConfigError,
    InputError,
    RateLimited,
    SessionNotFound,
    SessionOwnerLost,
)

if TYPE_CHECKING:
    from deployments.knowledge_api import KnowledgeClient

log = logging.getLogger(__name__)
WEB_DIR = Path(__file__).parent / "web"
MAX_AUDIO_BYTES = 2 * 48000 * 2  # two seconds of 48 kHz PCM16 per request
KEEPALIVE_S = 15.0
TENANT_CACHE = 100_000


class RendererClient(Protocol):
    """Calls into renderer replicas: new sessions by free capacity, the rest pinned."""

    async def create_session(self, **kwargs: Any) -> dict[str, Any]:
        """``Renderer.create_session`` on the replica with the most free capacity."""

    async def call(self, session_id: str, method: str, *args: Any) -> Any:
        """``Renderer.<method>(session_id, *args)`` on the replica that owns the session."""

    def stream(self, session_id: str, method: str, *args: Any) -> AsyncIterator[Any]:
        """The same for an async-generator method."""

    async def stats(self) -> dict[str, Any]:
        """``Renderer.stats()`` of one replica."""


class LocalRendererClient:
    """A :class:`RendererClient` for one in-process renderer (tests, single-process runs)."""

    def __init__(self, renderer: Any) -> None:
        self.renderer = renderer

    async def create_session(self, **kwargs: Any) -> dict[str, Any]:
        return await self.renderer.create_session(**kwargs)

    async def call(self, session_id: str, method: str, *args: Any) -> Any:
        return await getattr(self.renderer, method)(session_id, *args)

    async def stream(self, session_id: str, method: str, *args: Any) -> AsyncIterator[Any]:
        async for item in getattr(self.renderer, method)(session_id, *args):
            yield item

    async def stats(self) -> dict[str, Any]:
        return self.renderer.stats()


class ApiError(Exception):
    """An error with its HTTP status, message and headers."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


class Gateway:
    """Admission and forwarding; every method raises :class:`ApiError` for the client.

    ``signing_key``: the session-token key every gateway of the region shares (default: from
    ``cluster.auth.signing_key_env``, else random for this process). ``knowledge``: what the
    ``/v1/knowledge`` routes reach (:mod:`deployments.knowledge_api`; None: they answer 503)."""

    def __init__(self, config: AppConfig, renderers: RendererClient,
                 metrics: MetricsSink | None = None, *, signing_key: bytes | None = None,
                 knowledge: KnowledgeClient | None = None) -> None:
        self.config = config
        self.renderers = renderers
        self.knowledge = knowledge
        self.metrics = metrics or MetricsSink()
        self._holds: dict[str, asyncio.Task[None]] = {}
        self._tenants: OrderedDict[str, str] = OrderedDict()
        auth = config.cluster.auth  # a bad key or keys file stops start-up (ConfigError)
        self.tokens = SessionTokens(signing_key or auth_signing_key(auth),
                                    config.cluster.region, auth.token_ttl_s)
        self.api_keys = ApiKeys.load(auth.api_keys_file)
        self.admission = Admission(config.cluster.admission)
        self.quota = TenantQuota.from_config(config.cluster)  # opens the store when set
        self._persona_tenants: dict[str, str] = {}  # a persona's YAML parse takes ~80 ms

    async def authorize(self, session_id: str, token: str | None) -> None:
        """401/403 unless ``token`` is this session's, of its tenant (when tokens are
        required)."""
        if not self.config.cluster.auth.require_session_token:
            return
        try:
            claims = self.tokens.verify(token, session_id)
            if claims.tenant != await self._session_tenant(session_id):
                raise AuthError("this token belongs to another tenant", status=403)
        except AuthError as exc:
            self.metrics.rejection("unauthorized")
            raise self._translate(exc) from None

    async def _session_tenant(self, session_id: str) -> str | None:
        """The session's tenant: remembered from its creation here, else asked once."""
        tenant = self._tenants.get(session_id)
        if tenant is None:
            try:
                info = await self.renderers.call(session_id, "session_info")
            except Exception as exc:
                raise self._translate(exc) from None
            tenant = str(info.get("tenant"))
            self._remember(session_id, tenant)
        return tenant

    def _remember(self, session_id: str, tenant: str) -> None:
        self._tenants[session_id] = tenant
        while len(self._tenants) > TENANT_CACHE:
            self._tenants.popitem(last=False)

    def _tenant_of(self, persona: str | None) -> str:
        from configs.loader import load_persona

        name = persona or self.config.persona
        if name not in self.config.personas:
            raise ApiError(400, f"unknown persona {name!r}; this cluster serves "
                           f"{', '.join(self.config.personas)}")
        try:
            return load_persona(name).tenant
        except AvatarError as exc:
            raise self._translate(exc) from None

    def _translate(self, exc: BaseException) -> ApiError:
        if isinstance(exc, AuthError):
            headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
            return ApiError(exc.status, exc.message, headers)
        if isinstance(exc, RateLimited):
            return ApiError(429, exc.message,
                            {"Retry-After": str(max(1, math.ceil(exc.retry_after_s)))})
        error = unwrap_error(exc, "renderer")
        if isinstance(error, ClusterFull):  # the renderer that refused counted it
            retry = str(self.config.cluster.retry_after_s)
            return ApiError(503, "every avatar is busy; retry in a few seconds",
                            {"Retry-After": retry})
        if isinstance(error, SessionNotFound):
            return ApiError(404, error.message)
        if isinstance(error, SessionOwnerLost):
            return ApiError(410, f"{error.message} (POST /v1/sessions with "
                            "{\"resume\": <this id>} continues the conversation)")
        if isinstance(error, InputError | ConfigError):
            return ApiError(400, error.message)
        if isinstance(error, AvatarError):
            return ApiError(502, error.message)
        log.exception("unexpected gateway error", exc_info=exc)
        return ApiError(500, "internal error; the session is unaffected, try again")

    async def create_session(self, persona: str | None = None, video: bool = True,
                             resume: str | None = None, *, client_ip: str = "unknown",
                             api_key: str | None = None, token: str | None = None
                             ) -> dict[str, Any]:
        """A new session and its token. ``resume`` continues an earlier session of the same
        tenant: ``token`` must then be that session's (it may have expired)."""
        auth = self.config.cluster.auth
        name = persona or self.config.persona
        tenant = self._persona_tenants.get(name)
        if tenant is None:  # the personas served are fixed at start-up, as in the renderers
            tenant = self._persona_tenants[name] = self._tenant_of(persona)
        try:
            if auth.require_api_key:
                self.api_keys.check(api_key, "client", tenant)
            if resume is not None and auth.require_session_token:
                self.tokens.verify_resume(token, resume)
            self.admission.admit(client_ip, tenant)
            slot = await self.quota.reserve(tenant, resume)
        except (AuthError, RateLimited) as exc:
            self.metrics.rejection("tenant_quota" if isinstance(exc, QuotaExceeded)
                                   else "rate_limited" if isinstance(exc, RateLimited)
                                   else "unauthorized")
            raise self._translate(exc) from None
        except AvatarError as exc:  # the session store did not answer the quota's count
            raise self._translate(exc) from None
        try:
            with slot:
                info = await self.renderers.create_session(persona=persona, video=video,
                                                           resume=resume)
        except Exception as exc:
            raise self._translate(exc) from None
        sid = str(info["session_id"])
        self._holds[sid] = asyncio.create_task(self._hold(sid), name=f"hold-{sid}")
        token = self.tokens.issue(sid, tenant)
        self._remember(sid, tenant)
        base = f"/v1/sessions/{sid}"
        query = f"?token={token}" if auth.require_session_token else ""
        return {**info, "token": token, "region": self.config.cluster.region,
                "events_url": f"{base}/events{query}", "frame_url": f"{base}/frame.jpg{query}"}

    async def _hold(self, session_id: str) -> None:
        with contextlib.suppress(Exception):
            async for _ in self.renderers.stream(session_id, "hold"):
                pass
        self._holds.pop(session_id, None)

    async def call(self, session_id: str, method: str, *args: Any) -> Any:
        try:
            return await self.renderers.call(session_id, method, *args)
        except Exception as exc:
            raise self._translate(exc) from None

    async def events(self, session_id: str) -> AsyncIterator[bytes]:
        """The session's events as SSE bytes; 404/410 surface before the first byte."""
        iterator = self.renderers.stream(session_id, "events").__aiter__()
        try:
            first = await iterator.__anext__()
        except StopAsyncIteration:
            first = ("closed", {})
        except Exception as exc:
            raise self._translate(exc) from None
        return self._sse(first, iterator)

    async def _sse(self, first: tuple[str, dict[str, Any]],
                   iterator: AsyncIterator[tuple[str, dict[str, Any]]]) -> AsyncIterator[bytes]:
        yield sse(*first)
        if first[0] == "closed":
            return
        pending: asyncio.Task[Any] | None = None
        try:
            while True:
                pending = pending or asyncio.ensure_future(iterator.__anext__())
                done, _ = await asyncio.wait({pending}, timeout=KEEPALIVE_S)
                if not done:
                    yield b": keep-alive\n\n"
                    continue
                try:
                    kind, data = pending.result()
                except StopAsyncIteration:
                    return
                except Exception as exc:
                    error = self._translate(exc)  # 410: the renderer died; resume
                    yield sse("error", {"message": error.message, "status": error.status})
                    return
                finally:
                    if pending.done():
                        pending = None
                yield sse(kind, data)
                if kind == "closed":
                    return
        finally:
            if pending is not None:
                pending.cancel()
            with contextlib.suppress(Exception):
                await iterator.aclose()  # type: ignore[attr-defined]

    async def delete(self, session_id: str) -> None:
        await self.call(session_id, "close_session")
        hold = self._holds.pop(session_id, None)
        if hold is not None:
            hold.cancel()

    async def ready(self) -> dict[str, Any]:
        try:
            stats = await self.renderers.stats()
        except Exception as exc:
            raise self._translate(exc) from None
        return {"status": "ready", "region": self.config.cluster.region, **stats}

    async def aclose(self) -> None:
        for task in self._holds.values():
            task.cancel()

