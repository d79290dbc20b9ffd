"""vLLM engine on a CUDA GPU: streaming, max_tokens and abort on cancellation.

Skipped without CUDA or vllm. The model comes from ``AVATAR_VLLM_TEST_MODEL`` (a local model
directory, or a name already in the Hugging Face cache: nothing is downloaded).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator

import pytest

from configs.schema import LLMConfig
from models.llm.base import ChatMessage, LLMRequest

# One event loop for the module: the engine's output handler lives on the loop that first used it.
pytestmark = [pytest.mark.gpu, pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU", allow_module_level=True)
pytest.importorskip("vllm")
MODEL = os.environ.get("AVATAR_VLLM_TEST_MODEL")
if not MODEL:
    pytest.skip("set AVATAR_VLLM_TEST_MODEL to a local model directory", allow_module_level=True)

from models.llm.vllm import VLLMEngine  # noqa: E402


def ask(question: str, max_tokens: int = 32) -> LLMRequest:
    system = ChatMessage("system", "You are the receptionist of Maple Clinic. Answer briefly.")
    return LLMRequest(messages=(system, ChatMessage("user", question)), question=question,
                      max_tokens=max_tokens)


@pytest.fixture(scope="module")
def engine() -> Iterator[VLLMEngine]:
    llm = VLLMEngine(LLMConfig(backend="vllm", model=MODEL, temperature=0.0, max_tokens=64,
                               gpu_memory_utilization=0.3, context_tokens=2048))
    yield llm
    asyncio.run(llm.aclose())


async def test_vllm_streams_several_deltas(engine: VLLMEngine) -> None:
    deltas = [d async for d in engine.stream(ask("Are you open on Saturdays?"))]
    assert len(deltas) >= 2 and "".join(deltas).strip()


async def test_vllm_respects_max_tokens(engine: VLLMEngine) -> None:
    deltas = [d async for d in engine.stream(ask("Tell me a long story.", max_tokens=4))]
    assert 1 <= len(deltas) <= 4


async def test_vllm_cancel_aborts_and_engine_stays_usable(engine: VLLMEngine) -> None:
    gen = engine.stream(ask("Tell me a long story.", max_tokens=64))
    async for _ in gen:
        break
    await gen.aclose()
    processor = engine._engine.output_processor  # vLLM v1 internals: the request must be gone
    assert processor.get_num_unfinished_requests() == 0
    assert (await engine.complete(ask("Are you open on Saturdays?"))).strip()
