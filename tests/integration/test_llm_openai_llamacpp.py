"""Real generation with the bundled gemma3 270M GGUF: in process through xllamacpp, and over
HTTP through llama.cpp's OpenAI-compatible server with the OpenAI client backend."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from configs.schema import LLMConfig
from models.errors import BackendError
from models.llm.base import ChatMessage, LLMRequest
from models.llm.llamacpp import LlamaCppLLM, start_openai_server
from models.llm.openai import OpenAICompatibleLLM

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CONFIG = LLMConfig(backend="llamacpp", temperature=0.0, max_tokens=256, context_tokens=512,
                   timeout_s=120)
LONG = "Count from one to fifty."  # the base model repeats itself until max_tokens
LONG_TOKENS = 256  # many seconds of work even on a fast CPU: a missed cancel shows
STOP_WITHIN_S = 2.0


def ask(question: str, max_tokens: int = 16) -> LLMRequest:
    system = ChatMessage("system", "You are the receptionist of Maple Clinic. Answer briefly.")
    return LLMRequest(messages=(system, ChatMessage("user", question)), question=question,
                      max_tokens=max_tokens)


async def wait_until(predicate, timeout_s: float) -> float:  # type: ignore[no-untyped-def]
    start = time.monotonic()
    while not await predicate():
        if time.monotonic() - start > timeout_s:
            raise AssertionError(f"not reached within {timeout_s} s")
        await asyncio.sleep(0.01)
    return time.monotonic() - start


@pytest.fixture(scope="module")
def llama() -> Iterator[LlamaCppLLM]:
    llm = LlamaCppLLM(CONFIG)
    yield llm
    asyncio.run(llm.aclose())


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    base_url, stop = start_openai_server(CONFIG)
    yield base_url
    stop()


def client(base_url: str) -> OpenAICompatibleLLM:
    return OpenAICompatibleLLM(LLMConfig(backend="openai", base_url=base_url, temperature=0.0,
                                         max_tokens=LONG_TOKENS, timeout_s=120))


# --- in process -----------------------------------------------------------------------------


async def test_llamacpp_streams_a_reply_in_several_deltas(llama: LlamaCppLLM) -> None:
    assert llama.chat_template is None  # gemma3 270M is a base model: plain transcript prompt
    deltas = [d async for d in llama.stream(ask("Are you open on Saturdays?"))]
    text = "".join(deltas)
    assert len(deltas) >= 2 and text.strip()
    assert text == text.strip() and "User:" not in text


async def test_llamacpp_respects_max_tokens(llama: LlamaCppLLM) -> None:
    short = [d async for d in llama.stream(ask(LONG, max_tokens=5))]
    longer = [d async for d in llama.stream(ask(LONG, max_tokens=12))]
    assert 1 <= len(short) <= 5 < len(longer) <= 12


async def test_llamacpp_stop_sequence_cuts_the_reply(llama: LlamaCppLLM) -> None:
    request = ask("Tell me a long story about a dragon.")
    full = await llama.complete(request)
    word = full.split()[2]
    cut = "".join([d async for d in llama.stream(request, stop=[word])])
    assert word not in cut
    assert cut.rstrip() == full[: full.index(word)].rstrip()


@pytest.mark.parametrize("how", ["break", "cancel"])
async def test_llamacpp_cancel_stops_generation_and_engine_stays_usable(
    llama: LlamaCppLLM, how: str
) -> None:
    first = asyncio.Event()

    async def consume() -> None:
        gen = llama.stream(ask(LONG, max_tokens=LONG_TOKENS))
        async for _ in gen:
            first.set()
            if how == "break":
                break
        await gen.aclose()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first.wait(), 60)
    if how == "cancel":
        task.cancel()
    await asyncio.gather(task, return_exceptions=True)

    async def idle() -> bool:
        return llama.active_generations == 0

    await wait_until(idle, STOP_WITHIN_S)
    assert (await llama.complete(ask("Are you open on Saturdays?"))).strip()


# --- over HTTP ------------------------------------------------------------------------------


async def test_openai_client_streams_from_the_llama_server(server: str) -> None:
    llm = client(server)
    deltas = [d async for d in llm.stream(ask("Are you open on Saturdays?"))]
    assert len(deltas) >= 2 and "".join(deltas).strip()
    await llm.aclose()


async def test_openai_client_cancel_closes_the_stream_and_the_server_stops(server: str) -> None:
    llm = client(server)
    gen = llm.stream(ask(LONG, max_tokens=LONG_TOKENS))
    async for _ in gen:
        break
    await gen.aclose()

    async with httpx.AsyncClient(base_url=server.removesuffix("/v1")) as http:

        async def idle() -> bool:
            slots = (await http.get("/slots")).json()
            return not any(slot["is_processing"] for slot in slots)

        await wait_until(idle, STOP_WITHIN_S)
    assert (await llm.complete(ask("Are you open on Saturdays?"))).strip()
    await llm.aclose()


async def test_openai_client_wrong_url_is_a_helpful_non_retryable_error(server: str) -> None:
    llm = client(server.removesuffix("/v1") + "/wrong")
    with pytest.raises(BackendError) as err:
        await llm.complete(ask("hi"))
    assert not err.value.retryable
    assert "404" in err.value.message and "models.llm.base_url" in err.value.message


async def test_openai_client_oversized_request_is_not_retryable(server: str) -> None:
    with pytest.raises(BackendError) as err:
        await client(server).complete(ask("hello " * 700))
    assert not err.value.retryable and "context" in err.value.message


async def test_openai_client_connection_refused_is_retryable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(BackendError) as err:
        await client(f"http://127.0.0.1:{port}/v1").complete(ask("hi"))
    assert err.value.retryable and "models.llm.base_url" in err.value.message
