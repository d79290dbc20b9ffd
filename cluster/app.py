"""Builds the Ray Serve application from configuration: the only place that applies Ray.

::

    Gateway (FastAPI ingress, "/") ──pinned handle──▶ Renderer × N (one per GPU; the sessions)
                                                        ├─▶ ASR        (autoscaled)
                                                        ├─▶ LLM        (autoscaled)
                                                        ├─▶ TTS        (autoscaled)
                                                        └─▶ Knowledge  (autoscaled with a
                                                                        Qdrant server)

* Renderer replicas are a fixed count (``deployments.renderer.num_replicas``, one per GPU
  with ``num_gpus: 1``): sessions are not request load, so Serve's request autoscaler never
  picks a renderer to stop. Each live session holds one open ``hold`` request, and
  ``graceful_shutdown_timeout_s`` lets a replica that is being replaced finish its sessions.
  Every call of a session reaches its owner through :class:`cluster.routing.SessionPinningRouter`.
* ASR, LLM, TTS and Knowledge are shared and autoscale on ongoing requests when their
  ``num_replicas`` is ``auto``. A streaming request counts for as long as it streams, so
  ``target_ongoing_requests`` is the number of concurrent streams a replica serves well.

``import_path: cluster.app:build_app`` in a Serve config file (``configs/serve/``) builds it
with ``args: {profile: local}``; :func:`build_application` takes a loaded config.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from cluster.serve_llm import ServeChatLLM, build_llm_server
from configs.loader import load_config
from configs.schema import AppConfig, DeploymentConfig
from deployments.api import create_api
from deployments.auth import signing_key
from deployments.gateway import Gateway
from deployments.remote import (
    RemoteKnowledge,
    RemoteLLM,
    RemoteTranscriber,
    RemoteTTS,
    is_transport,
    retry_pause_s,
)
from deployments.renderer import Renderer, resolve_device
from deployments.workers import ASRWorker, KnowledgeWorker, LLMWorker, TTSWorker
from models.errors import ConfigError, SessionOwnerLost

DEPLOYMENT_NAMES = ("Gateway", "Renderer", "ASR", "LLM", "TTS", "Knowledge")
APP_NAME = "avatar"
ROUTING_STATS_PERIOD_S = 1.0
CREATE_ATTEMPTS = 3
"""A new session whose chosen renderer turns out dead is tried on another this often."""
SAME_LOOP_ENV = {
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
    "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0",
}
"""Serve runs user code and each handle's router on threads of their own by default; every
call then crosses threads twice more. Replicas here never block their event loop (blocking
work goes to worker threads), so ``cluster.serve_same_loop`` puts them on the main loop."""


def nest_dotted(dotted: dict[str, Any]) -> dict[str, Any]:
    """``{"a.b": 1}`` -> ``{"a": {"b": 1}}``: dotted override keys in the shape
    :func:`configs.loader.load_config` merges."""
    out: dict[str, Any] = {}
    for key, value in dotted.items():
        node = out
        *parents, leaf = str(key).split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def build_app(args: dict[str, Any] | None = None) -> Any:
    """Serve application builder: ``args`` = ``{"profile": NAME, "overrides": {dotted: v}}``."""
    args = dict(args or {})
    profile = args.pop("profile", "local")
    overrides = args.pop("overrides", {}) or {}
    if args:
        raise ConfigError(f"unknown application args {sorted(args)}; use profile and overrides")
    return build_application(load_config(profile, overrides=nest_dotted(overrides)))


def absolute_paths(config: AppConfig, root: Path | None = None) -> AppConfig:
    """Relative data paths resolved against ``root`` (default: the working directory), so
    replicas on this machine agree wherever Ray starts them."""
    root = root or Path.cwd()
    knowledge = config.models.knowledge
    cluster = config.cluster
    updates_k = {}
    if knowledge.qdrant_path and not Path(knowledge.qdrant_path).is_absolute():
        updates_k["qdrant_path"] = str(root / knowledge.qdrant_path)
    updates_c = {}
    if not Path(cluster.session_store_path).is_absolute():
        updates_c["session_store_path"] = str(root / cluster.session_store_path)
    models = config.models.model_copy(update={"knowledge": knowledge.model_copy(
        update=updates_k)})
    return config.model_copy(update={"models": models,
                                     "cluster": cluster.model_copy(update=updates_c)})


def check_deployable(config: AppConfig) -> None:
    """Refuse configurations that Serve would accept but that cannot work."""
    d = config.deployments
    if d.renderer.num_replicas == "auto":
        raise ConfigError("deployments.renderer.num_replicas is auto, but renderer replicas "
                          "host live sessions and must not autoscale on requests: set a count "
                          "(one per GPU)")
    knowledge = config.models.knowledge
    several = (d.knowledge.num_replicas == "auto" and d.knowledge.max_replicas > 1) or \
        (isinstance(d.knowledge.num_replicas, int) and d.knowledge.num_replicas > 1)
    if several and not knowledge.qdrant_url:
        raise ConfigError("more than one Knowledge replica needs a Qdrant server: set "
                          "models.knowledge.qdrant_url (local mode locks its directory to one "
                          "process), or keep deployments.knowledge at one replica")
    if d.renderer.colocate or d.gateway.colocate:
        raise ConfigError("colocate applies to asr, llm, tts and knowledge only")
    renderers = d.renderer.num_replicas
    if d.knowledge.colocate and not knowledge.qdrant_url and renderers != 1:
        raise ConfigError("deployments.knowledge.colocate with several renderer replicas "
                          "needs models.knowledge.qdrant_url (local Qdrant locks its folder "
                          "to one process)")
    if d.llm.colocate and config.models.llm.backend == "vllm":
        raise ConfigError("the vllm backend runs as Ray Serve LLM's own deployment: set "
                          "deployments.llm.colocate to false")
    sessions = d.renderer.sessions_per_replica or 8
    if d.renderer.max_ongoing_requests < 4 * sessions:
        raise ConfigError(f"deployments.renderer.max_ongoing_requests is "
                          f"{d.renderer.max_ongoing_requests}; each of its {sessions} sessions "
                          f"holds an open request and streams events, so allow at least "
                          f"{4 * sessions}")


def deployment_options(name: str, cfg: DeploymentConfig, *,
                       same_loop: bool = False) -> dict[str, Any]:
    """``serve.deployment`` options from one deployment's config; ``same_loop`` runs the
    replica's code and its handles' routers on the replica's main event loop."""
    actor: dict[str, Any] = {"num_cpus": cfg.num_cpus, "num_gpus": cfg.num_gpus}
    if same_loop:
        actor["runtime_env"] = {"env_vars": dict(SAME_LOOP_ENV)}
    options: dict[str, Any] = {
        "name": name,
        "ray_actor_options": actor,
        "max_ongoing_requests": cfg.max_ongoing_requests,
        "graceful_shutdown_timeout_s": cfg.graceful_shutdown_timeout_s,
    }
    if cfg.num_replicas == "auto":
        options["autoscaling_config"] = {
            "min_replicas": cfg.min_replicas,
            "initial_replicas": max(cfg.min_replicas, 1),
            "max_replicas": cfg.max_replicas,
            "target_ongoing_requests": cfg.target_ongoing_requests,
            "upscale_delay_s": cfg.upscale_delay_s,
            "downscale_delay_s": cfg.downscale_delay_s,
            "look_back_period_s": cfg.look_back_period_s,
            "metrics_interval_s": min(cfg.look_back_period_s / 2, 2.0),
        }
    else:
        options["num_replicas"] = cfg.num_replicas
    return options


class RendererReplica(Renderer):
    """The Renderer deployment: remote models, the session store, Prometheus metrics."""

    def __init__(self, config: AppConfig, asr: Any, llm: Any, tts: Any,
                 knowledge: Any) -> None:
        from ray import serve

        from cluster.metrics import RayMetrics
        from cluster.routing import mint_session_id
        from deployments.session_store import open_session_store
        from models.asr import create_vad
        from models.asr.stream import StreamingASR
        from models.knowledge import create_embedder

        uid = serve.get_replica_context().replica_id.unique_id
        asr_cfg = config.models.asr
        render = config.models.render

        def face() -> Any:
            from models.render.offline import create_renderer

            return create_renderer(render.size_px, resolve_device(render.device))

        # A None handle means the model is colocated: load it here.
        local = {"asr": asr is None, "llm": llm is None, "tts": tts is None,
                 "knowledge": knowledge is None}
        embedder = create_embedder(config.models.knowledge)  # the rails' topic matching
        if local["knowledge"]:
            knowledge = KnowledgeWorker(config, embedder=embedder)
        super().__init__(
            config, replica_id=uid,
            asr=StreamingASR(ASRWorker(config).transcriber if local["asr"]
                             else RemoteTranscriber(asr),
                             lambda: create_vad(asr_cfg.vad), asr_cfg),
            llm=LLMWorker(config).llm if local["llm"]
            else ServeChatLLM(llm, config) if config.models.llm.backend == "vllm"
            else RemoteLLM(llm),
            tts=TTSWorker(config).tts if local["tts"] else RemoteTTS(tts),
            knowledge=knowledge.store if local["knowledge"] else RemoteKnowledge(knowledge),
            embedder=embedder,
            session_store=open_session_store(config.cluster), face=face,
            metrics=RayMetrics(replica=uid), mint=lambda: mint_session_id(uid),
        )
        self.warm_face()  # a replica starts ready to draw: the first session does not wait
        self._report()

    def stats(self) -> dict[str, object]:
        """Load and where this replica runs (its node and the GPUs Ray gave it)."""
        import ray

        context = ray.get_runtime_context()
        return {**super().stats(), "node_id": context.get_node_id(),
                "gpu_ids": [str(g) for g in ray.get_gpu_ids()]}

    async def check_health(self) -> None:
        """Serve's periodic health check: the event loop answers. The first one also starts
        the replica's heartbeat in the session store (constructors run off the loop)."""
        self.start_heartbeat()


class RendererHandleClient:
    """:class:`deployments.gateway.RendererClient` over the pinned Renderer handle.

    A renderer that died (its process killed, its node lost) shows up as Ray's transport
    errors: on a session's own calls they become :class:`SessionOwnerLost` (HTTP 410, the
    client resumes elsewhere); a new session whose chosen renderer died is tried again, and
    Serve's router no longer picks the dead one."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle

    async def create_session(self, **kwargs: Any) -> dict[str, Any]:
        for attempt in range(CREATE_ATTEMPTS):
            try:
                return await self.handle.create_session.remote(**kwargs)
            except Exception as exc:
                if attempt == CREATE_ATTEMPTS - 1 or not is_transport(exc):
                    raise
                await asyncio.sleep(retry_pause_s())
        raise AssertionError("unreachable")

    async def call(self, session_id: str, method: str, *args: Any) -> Any:
        pinned = self.handle.options(session_id=session_id)
        try:
            return await getattr(pinned, method).remote(session_id, *args)
        except Exception as exc:
            raise _owner_lost(session_id, exc) from exc

    async def stream(self, session_id: str, method: str, *args: Any) -> Any:
        pinned = self.handle.options(session_id=session_id, stream=True)
        gen = getattr(pinned, method).remote(session_id, *args)
        try:
            async for item in gen:
                yield item
        except Exception as exc:
            raise _owner_lost(session_id, exc) from exc
        finally:
            gen.cancel()

    async def stats(self) -> dict[str, Any]:
        return await self.handle.stats.remote()


def _owner_lost(session_id: str, exc: Exception) -> Exception:
    """``exc``, or :class:`SessionOwnerLost` when it says the session's renderer died."""
    if is_transport(exc):
        return SessionOwnerLost(f"the renderer of session {session_id} stopped "
                                f"({type(exc).__name__})")
    return exc


class GatewayReplica:
    """The Gateway deployment: the FastAPI app over a pinned renderer handle."""

    def __init__(self, config: AppConfig, renderer: Any, signing_key: bytes | None = None,
                 knowledge: Any = None) -> None:
        from cluster.metrics import RayMetrics
        from deployments.knowledge_api import KnowledgeHandleClient

        self.config = config
        # The knowledge API reaches the Knowledge deployment (none when it is colocated).
        self.gateway = Gateway(config, RendererHandleClient(renderer), RayMetrics(),
                               signing_key=signing_key,
                               knowledge=None if knowledge is None
                               else KnowledgeHandleClient(knowledge))

    def __serve_build_asgi_app__(self) -> Any:
        port = self.config.cluster.metrics_port
        url = f"http://127.0.0.1:{port}/metrics" if port else None
        return create_api(self.gateway, metrics_url=url)


def build_application(config: AppConfig) -> Any:
    """The bound Serve application (Gateway at the root) for ``config``."""
    from ray import serve
    from ray.serve.config import RequestRouterConfig

    config = absolute_paths(config)
    check_deployable(config)
    d = config.deployments
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    def make(cls: type, name: str, cfg: DeploymentConfig, **extra: Any) -> Any:
        options = deployment_options(name, cfg, same_loop=config.cluster.serve_same_loop)
        return serve.deployment(**options, **extra)(cls)

    asr = None if d.asr.colocate else make(ASRWorker, "ASR", d.asr).bind(config)
    if d.llm.colocate:
        llm = None
    elif config.models.llm.backend == "vllm":  # Ray Serve LLM's vLLM server instead
        llm = build_llm_server(config)
    else:
        llm = make(LLMWorker, "LLM", d.llm).bind(config)
    tts = None if d.tts.colocate else make(TTSWorker, "TTS", d.tts).bind(config)
    knowledge = None if d.knowledge.colocate else \
        make(KnowledgeWorker, "Knowledge", d.knowledge).bind(config)
    router = RequestRouterConfig(
        request_router_class="cluster.routing.SessionPinningRouter",
        request_router_kwargs={"default_capacity": d.renderer.sessions_per_replica or 8},
        request_routing_stats_period_s=ROUTING_STATS_PERIOD_S,
    )
    renderer = make(RendererReplica, "Renderer", d.renderer,
                    request_router_config=router).bind(config, asr, llm, tts, knowledge)
    gateway_cls = serve.ingress()(GatewayReplica)
    # One token key for every Gateway replica: from the environment, else made here.
    key = signing_key(config.cluster.auth)
    return make(gateway_cls, "Gateway", d.gateway).bind(config, renderer, key, knowledge)
