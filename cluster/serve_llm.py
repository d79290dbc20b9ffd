"""vLLM through Ray Serve LLM, for ``models.llm.backend: vllm`` (the ``gpu`` extra).

Instead of the project's own LLM deployment, the app then runs Ray Serve LLM's ``LLMServer``
(vLLM's async engine, continuous batching, its own autoscaling), still named ``LLM`` so
Serve config files address it the same way, and the renderers stream
chat completions from it over a Serve handle. Serve LLM batches streamed tokens every 50 ms
by default, which would hold back the first clause of every reply: ``stream_batching_interval_ms``
is set to 0 so each token is sent as soon as vLLM makes it.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from configs.schema import AppConfig, DeploymentConfig
from deployments.remote import stream_remote
from models.errors import BackendError, BackendUnavailable
from models.llm.base import LLM, LLMRequest
from models.llm.openai import SSEDecoder, request_body

MODEL_ID = "avatar-llm"
"""The name the LLMServer serves its model under (requests carry it)."""


def llm_config_kwargs(config: AppConfig) -> dict[str, Any]:
    """Keyword arguments of ``ray.serve.llm.LLMConfig`` for the configured model."""
    llm = config.models.llm
    if not llm.model:
        raise BackendUnavailable("models.llm.model must name a Hugging Face model (or a local "
                                 "folder) for the vllm backend")
    d: DeploymentConfig = config.deployments.llm
    if d.num_replicas == "auto":
        scaling: dict[str, Any] = {"autoscaling_config": {
            "min_replicas": d.min_replicas, "max_replicas": d.max_replicas,
            "target_ongoing_requests": d.target_ongoing_requests,
            "upscale_delay_s": d.upscale_delay_s, "downscale_delay_s": d.downscale_delay_s,
        }}
    else:
        scaling = {"num_replicas": d.num_replicas}
    return {
        "model_loading_config": {"model_id": MODEL_ID, "model_source": llm.model},
        "engine_kwargs": {"gpu_memory_utilization": llm.gpu_memory_utilization,
                          "max_model_len": llm.context_tokens},
        "experimental_configs": {"stream_batching_interval_ms": 0},
        "deployment_config": {**scaling, "max_ongoing_requests": d.max_ongoing_requests},
    }


def build_llm_server(config: AppConfig) -> Any:
    """The bound ``LLMServer`` deployment (needs ``ray[llm]`` and vLLM: the gpu extra)."""
    try:
        from ray.serve.llm import LLMConfig, build_llm_deployment
    except ImportError as exc:
        raise BackendUnavailable(f"the vllm backend needs Ray Serve LLM: pip install "
                                 f"'.[gpu]' ({exc})") from None
    return build_llm_deployment(LLMConfig(**llm_config_kwargs(config)),
                                override_serve_options={"name": "LLM"})


def _chat_request(body: dict[str, Any]) -> Any:
    from ray.serve.llm.openai_api_models import ChatCompletionRequest

    return ChatCompletionRequest(**body)


class ServeChatLLM(LLM):
    """The project's LLM interface over an ``LLMServer`` handle's streamed ``chat``."""

    def __init__(self, handle: Any, config: AppConfig,
                 make_request: Callable[[dict[str, Any]], Any] = _chat_request) -> None:
        self._handle = handle
        self._config = config.models.llm
        self._make_request = make_request

    async def stream(self, request: LLMRequest) -> AsyncIterator[str]:
        body = {**request_body(request, self._config), "model": MODEL_ID}
        decoder = SSEDecoder()
        async for batch in stream_remote(self._handle, "chat", "LLM",
                                         self._make_request(body)):
            for text in batch if isinstance(batch, list) else [batch]:
                if not isinstance(text, str):
                    raise BackendError(f"the LLM server answered {str(text)[:200]}")
                for data in decoder.feed(text):
                    delta = _delta(data)
                    if delta:
                        yield delta


def _delta(data: str) -> str:
    if data.strip() == "[DONE]":
        return ""
    try:
        event = json.loads(data)
    except json.JSONDecodeError:
        raise BackendError(f"the LLM server sent malformed JSON: {data[:120]!r}") from None
    if "error" in event:
        raise BackendError(f"the LLM server failed: {str(event['error'])[:200]}")
    choices = event.get("choices") or [{}]
    return (choices[0].get("delta") or {}).get("content") or ""
