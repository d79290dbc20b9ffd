"""In-process vLLM engine on a CUDA GPU (the ``gpu`` extra).

vLLM is imported in the constructor, so this module imports anywhere; without vLLM or CUDA the
constructor raises :class:`~models.errors.BackendUnavailable`. Each request streams deltas from
``AsyncLLMEngine.generate`` under a unique request id and is aborted in the engine when the
consumer stops. Cluster deployments serve vLLM through Ray Serve LLM instead; this is the engine
for one process.
"""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

from models.errors import BackendError, BackendUnavailable, ConfigError
from models.llm.base import LLM, LLMRequest
from models.llm.llamacpp import PLAIN_STOPS, plain_prompt
from models.llm.openai import chat_messages

if TYPE_CHECKING:
    from configs.schema import LLMConfig


def _require_cuda_and_vllm() -> None:
    if importlib.util.find_spec("vllm") is None:
        raise BackendUnavailable("The vllm backend needs the vllm package (install it with "
                                 "`pip install '.[gpu]'`), or use the llamacpp or openai backend")
    import torch

    if not torch.cuda.is_available():
        raise BackendUnavailable("The vllm backend needs a CUDA GPU and none is visible here; "
                                 "use the llamacpp or openai backend on this machine")


class VLLMEngine(LLM):
    """Streams replies from a vLLM ``AsyncLLMEngine`` in this process.

    ``config.model`` is a Hugging Face model name or a local model directory (offline hosts need
    a local directory or a populated cache); ``config.gpu_memory_utilization`` and
    ``config.context_tokens`` size the engine. The tokenizer's chat template builds the prompt;
    a model without one gets the plain transcript prompt of the llamacpp backend. Use one
    instance from one event loop: vLLM's output handler runs on the loop that first streams.
    """

    name = "vllm"

    def __init__(self, config: LLMConfig) -> None:
        if not config.model:
            raise ConfigError("models.llm.model must name a model (Hugging Face name or local "
                              "directory) for the vllm backend")
        _require_cuda_and_vllm()
        import vllm
        from vllm.sampling_params import RequestOutputKind

        self._config = config
        self._sampling_params = vllm.SamplingParams
        self._delta_kind = RequestOutputKind.DELTA
        args = vllm.AsyncEngineArgs(
            model=config.model,
            gpu_memory_utilization=config.gpu_memory_utilization,
            max_model_len=config.context_tokens,
            disable_log_stats=True,
        )
        try:
            self._engine: Any = vllm.AsyncLLMEngine.from_engine_args(args)
        except Exception as exc:
            raise BackendUnavailable(f"vLLM could not start {config.model!r}: {exc}; check the "
                                     "model name or path and models.llm.gpu_memory_utilization"
                                     ) from exc
        self._tokenizer: Any = None

    async def _prompt(self, request: LLMRequest) -> tuple[str, list[str]]:
        if self._tokenizer is None:
            tokenizer = self._engine.get_tokenizer()
            self._tokenizer = await tokenizer if inspect.isawaitable(tokenizer) else tokenizer
        messages = chat_messages(request)
        if getattr(self._tokenizer, "chat_template", None):
            prompt = self._tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
            return prompt, []
        return plain_prompt(messages), list(PLAIN_STOPS)

    async def stream(self, request: LLMRequest, *, stop: Sequence[str] = ()) -> AsyncIterator[str]:
        """Yield reply deltas; ``stop`` adds stop sequences for this call."""
        if self._engine is None:
            raise BackendError("The vLLM engine is closed.", retryable=False)
        prompt, stops = await self._prompt(request)
        params = self._sampling_params(
            max_tokens=min(request.max_tokens, self._config.max_tokens),
            temperature=self._config.temperature,
            stop=[*stops, *stop] or None,
            output_kind=self._delta_kind,
        )
        request_id = f"avatar-{uuid.uuid4().hex}"
        finished = False
        try:
            generator = self._engine.generate(prompt, params, request_id)
            async with contextlib.aclosing(generator):
                async for output in generator:
                    text = output.outputs[0].text if output.outputs else ""
                    finished = bool(output.finished)
                    if text:
                        yield text
        except (ValueError, TypeError) as exc:  # vLLM's request validation errors
            raise BackendError(f"vLLM rejected the request: {exc}; keep fewer history turns or "
                               "raise models.llm.context_tokens", retryable=False) from exc
        except Exception as exc:
            raise BackendError(f"vLLM generation failed: {type(exc).__name__}: {exc}",
                               retryable=True) from exc
        finally:
            if not finished:
                with contextlib.suppress(Exception):  # a dead engine has nothing to abort
                    await self._engine.abort(request_id)

    async def aclose(self) -> None:
        """Shut the engine down and free the GPU."""
        engine, self._engine = self._engine, None
        if engine is not None:
            engine.shutdown()
