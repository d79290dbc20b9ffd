"""Generative LLM backends without a model or a socket: prompts, SSE parsing, error mapping,
and the OpenAI client driven through an in-memory httpx transport."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import struct
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from configs.schema import LLMConfig
from models.errors import BackendError, BackendUnavailable, ConfigError, InputError
from models.frames import Passage
from models.llm import create_llm
from models.llm.base import ChatMessage, LLMRequest
from models.llm.llamacpp import (
    PLAIN_STOPS,
    LlamaCppLLM,
    chunk_text,
    gguf_chat_template,
    llama_error,
    plain_prompt,
    resolve_model_path,
)
from models.llm.openai import (
    OpenAICompatibleLLM,
    SSEDecoder,
    chat_messages,
    delta_text,
    http_error,
    request_body,
    transport_error,
)
from models.llm.vllm import VLLMEngine

pytestmark = pytest.mark.unit

URL = "http://llm.test/v1"
PASSAGE = Passage(text="Q: hours?", answer="We open 8am to 6pm.", score=0.9, source="faq.md",
                  kb="maple", tenant="maple")


def make_request(*messages: ChatMessage, question: str = "When do you open?",
                 passages: tuple[Passage, ...] = (), max_tokens: int = 160) -> LLMRequest:
    return LLMRequest(messages=messages, question=question, passages=passages,
                      max_tokens=max_tokens)


def openai_config(**kw: Any) -> LLMConfig:
    return LLMConfig(backend="openai", base_url=URL, model="m", **kw)


# --- messages and request body --------------------------------------------------------------


def test_first_system_message_is_grounded_in_passages_and_order_kept() -> None:
    req = make_request(ChatMessage("system", "You are Maple."), ChatMessage("user", "hi"),
                       ChatMessage("assistant", "Hello!"), ChatMessage("system", "Be brief."),
                       ChatMessage("user", "When do you open?"), passages=(PASSAGE,))
    msgs = chat_messages(req)
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "system", "user"]
    assert msgs[0]["content"].startswith("You are Maple.")
    assert "We open 8am to 6pm." in msgs[0]["content"]
    assert msgs[3]["content"] == "Be brief."
    assert msgs[-1]["content"] == "When do you open?"


def test_passages_without_system_message_get_one_and_question_is_appended() -> None:
    msgs = chat_messages(make_request(ChatMessage("assistant", "Welcome!"), passages=(PASSAGE,)))
    assert msgs[0]["role"] == "system" and "8am to 6pm" in msgs[0]["content"]
    assert not msgs[0]["content"].startswith("\n")
    assert msgs[-1] == {"role": "user", "content": "When do you open?"}


def test_request_without_user_turn_is_input_error() -> None:
    with pytest.raises(InputError):
        chat_messages(make_request(ChatMessage("system", "x"), question=""))


def test_request_body_caps_max_tokens_and_carries_settings() -> None:
    cfg = openai_config(max_tokens=50, temperature=0.7)
    body = request_body(make_request(ChatMessage("user", "hi"), max_tokens=400), cfg,
                        stop=["\n\n"])
    assert body["max_tokens"] == 50 and body["temperature"] == 0.7
    assert body["stream"] is True and body["model"] == "m" and body["stop"] == ["\n\n"]
    assert request_body(make_request(ChatMessage("user", "hi"), max_tokens=8), cfg)[
        "max_tokens"] == 8
    no_model = request_body(make_request(ChatMessage("user", "hi")),
                            LLMConfig(backend="openai", base_url=URL))
    assert "model" not in no_model and "stop" not in no_model


# --- SSE -------------------------------------------------------------------------------------


def test_sse_decoder_handles_split_chunks_comments_crlf_and_multiline_data() -> None:
    dec = SSEDecoder()
    assert dec.feed("data: {\"a\"") == []
    assert dec.feed(": 1}\n\n: keep-alive\n\nevent: x\r\ndata: one\r\ndata:two\r") == ["{\"a\": 1}"]
    assert dec.feed("\n\r\ndata: [DONE]\n\n") == ["one\ntwo", "[DONE]"]
    dec.feed("data: tail")
    assert dec.close() == ["tail"]


def test_sse_decoder_keeps_unicode_line_separators_inside_data() -> None:
    payload = json.dumps({"t": "a\u2028b\x85c"}, ensure_ascii=False)
    assert SSEDecoder().feed(f"data: {payload}\n\n") == [payload]


def test_delta_text_reads_content_and_raises_on_error_events() -> None:
    assert delta_text({"choices": [{"delta": {"role": "assistant", "content": None}}]}) == ""
    assert delta_text({"choices": [{"delta": {"content": "Hi"}}]}) == "Hi"
    assert delta_text({"choices": [], "usage": {}}) == ""
    with pytest.raises(BackendError) as err:
        delta_text({"error": {"code": 400, "message": "context too long"}})
    assert "context too long" in err.value.message and not err.value.retryable
    with pytest.raises(BackendError) as err:
        delta_text({"error": {"code": 503, "message": "busy"}})
    assert err.value.retryable


# --- error mapping ---------------------------------------------------------------------------


@pytest.mark.parametrize(("status", "retryable", "hint"), [
    (404, False, "base_url"), (400, False, "context"), (401, False, "api_key_env"),
    (429, True, "rate"), (500, True, "server"), (503, True, "server"),
])
def test_http_errors_say_what_to_check(status: int, retryable: bool, hint: str) -> None:
    err = http_error(status, '{"error": {"message": "nope"}}', URL, "m")
    assert err.retryable is retryable
    assert hint in err.message and "nope" in err.message and str(status) in err.message


def test_transport_errors_are_retryable_except_bad_urls() -> None:
    refused = transport_error(httpx.ConnectError("refused"), URL, 5)
    assert refused.retryable and "running" in refused.message
    timeout = transport_error(httpx.ReadTimeout("slow"), URL, 5)
    assert timeout.retryable and "timeout_s" in timeout.message
    assert not transport_error(httpx.UnsupportedProtocol("ftp"), URL, 5).retryable


# --- the OpenAI client over an in-memory transport ------------------------------------------


def sse(*texts: str) -> bytes:
    events = [{"choices": [{"index": 0, "delta": {"role": "assistant"}}]}]
    events += [{"choices": [{"index": 0, "delta": {"content": t}}]} for t in texts]
    return ("".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n").encode()


def client_for(handler: Callable[[httpx.Request], httpx.Response], **kw: Any
               ) -> OpenAICompatibleLLM:
    return OpenAICompatibleLLM(openai_config(**kw), transport=httpx.MockTransport(handler))


async def test_openai_streams_deltas_and_sends_the_body() -> None:
    seen: list[httpx.Request] = []

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(req)
        return httpx.Response(200, content=sse("Hel", "lo", "!"),
                              headers={"content-type": "text/event-stream"})

    llm = client_for(handler)
    deltas = [d async for d in llm.stream(make_request(ChatMessage("user", "hi")))]
    assert deltas == ["Hel", "lo", "!"]
    assert str(seen[0].url) == f"{URL}/chat/completions"
    assert json.loads(seen[0].content)["messages"][-1] == {"role": "user", "content": "hi"}
    assert "authorization" not in seen[0].headers
    await llm.aclose()


async def test_openai_sends_api_key_from_the_named_variable(monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    monkeypatch.setenv("TEST_LLM_KEY", "sk-test")
    seen: list[httpx.Request] = []

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(req)
        return httpx.Response(200, content=sse("ok"))

    llm = client_for(handler, api_key_env="TEST_LLM_KEY")
    assert await llm.complete(make_request(ChatMessage("user", "hi"))) == "ok"
    assert seen[0].headers["authorization"] == "Bearer sk-test"


def test_openai_config_errors_fail_at_construction(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MISSING_LLM_KEY", raising=False)
    with pytest.raises(ConfigError, match="MISSING_LLM_KEY"):
        OpenAICompatibleLLM(openai_config(api_key_env="MISSING_LLM_KEY"))
    with pytest.raises(ConfigError, match="base_url"):
        OpenAICompatibleLLM(LLMConfig(backend="openai"))
    assert isinstance(create_llm(openai_config()), OpenAICompatibleLLM)


async def test_openai_http_404_is_not_retryable_and_names_the_url() -> None:
    llm = client_for(lambda req: httpx.Response(404, json={"error": {"message": "Not Found"}}))
    with pytest.raises(BackendError) as err:
        await llm.complete(make_request(ChatMessage("user", "hi")))
    assert not err.value.retryable
    assert f"{URL}/chat/completions" in err.value.message and "base_url" in err.value.message


async def test_openai_connection_failure_is_retryable() -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused")

    with pytest.raises(BackendError) as err:
        await client_for(handler).complete(make_request(ChatMessage("user", "hi")))
    assert err.value.retryable and "connection refused" in err.value.message


async def test_openai_error_event_mid_stream_raises_after_earlier_deltas() -> None:
    body = sse("a")[: -len(b"data: [DONE]\n\n")] + b'data: {"error": {"message": "boom"}}\n\n'
    llm = client_for(lambda req: httpx.Response(200, content=body))
    got: list[str] = []
    with pytest.raises(BackendError, match="boom"):
        async for delta in llm.stream(make_request(ChatMessage("user", "hi"))):
            got.append(delta)
    assert got == ["a"]


class EndlessStream(httpx.AsyncByteStream):
    """Sends one delta, then waits forever; records whether the client closed it."""

    def __init__(self) -> None:
        self.closed = asyncio.Event()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield sse("first")[: -len(b"data: [DONE]\n\n")]
        await asyncio.Event().wait()

    async def aclose(self) -> None:
        self.closed.set()


@pytest.mark.parametrize("how", ["break", "cancel"])
async def test_openai_stopping_the_consumer_closes_the_response(how: str) -> None:
    body = EndlessStream()
    llm = client_for(lambda req: httpx.Response(200, stream=body))
    first = asyncio.Event()

    async def consume() -> None:
        gen = llm.stream(make_request(ChatMessage("user", "hi")))
        async for _ in gen:
            first.set()
            if how == "break":
                break
        await gen.aclose()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first.wait(), 2)
    if how == "cancel":
        task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await asyncio.wait_for(body.closed.wait(), 1)


# --- llamacpp pieces -------------------------------------------------------------------------


def test_plain_prompt_is_a_transcript_ending_with_the_assistant_cue() -> None:
    msgs = chat_messages(make_request(ChatMessage("system", "You are Maple. "),
                                      ChatMessage("user", "hi"), ChatMessage("assistant", "Hello"),
                                      ChatMessage("user", "When do you open?")))
    assert plain_prompt(msgs) == ("You are Maple.\n\nUser: hi\nAssistant: Hello\n"
                                  "User: When do you open?\nAssistant:")
    assert "\nUser:" in PLAIN_STOPS


def test_chunk_text_reads_both_endpoints_and_maps_errors() -> None:
    assert chunk_text({"choices": [{"text": " Yes"}]}, chat=False) == " Yes"
    assert chunk_text({"choices": [{"delta": {"content": "Hi"}}]}, chat=True) == "Hi"
    assert chunk_text({"choices": [{"text": "", "finish_reason": "stop"}]}, chat=False) == ""
    with pytest.raises(BackendError) as err:
        chunk_text({"error": {"code": 400, "type": "exceed_context_size_error",
                              "message": "request (602 tokens) exceeds 512"}}, chat=False)
    assert "context_tokens" in err.value.message and not err.value.retryable
    assert llama_error({"code": 503, "message": "loading"}).retryable


def write_gguf(path: Path, metadata: list[tuple[str, int, Any]]) -> Path:
    def string(s: str) -> bytes:
        raw = s.encode()
        return struct.pack("<Q", len(raw)) + raw

    out = b"GGUF" + struct.pack("<IQQ", 3, 0, len(metadata))
    for key, vtype, value in metadata:
        out += string(key) + struct.pack("<I", vtype)
        if vtype == 8:
            out += string(value)
        elif vtype == 4:
            out += struct.pack("<I", value)
        elif vtype == 9:
            etype, items = value
            out += struct.pack("<IQ", etype, len(items))
            out += b"".join(string(i) if etype == 8 else struct.pack("<f", i) for i in items)
    path.write_bytes(out)
    return path


def test_gguf_chat_template_is_read_past_arrays_and_absent_when_missing(tmp_path: Path) -> None:
    common = [("general.architecture", 8, "gemma3"), ("gemma3.block_count", 4, 18),
              ("tokenizer.ggml.tokens", 9, (8, ["<pad>", "<eos>", "hello"])),
              ("tokenizer.ggml.scores", 9, (6, [0.0, 1.0, 2.0]))]
    with_template = write_gguf(tmp_path / "a.gguf",
                               [*common, ("tokenizer.chat_template", 8, "{{ messages }}")])
    assert gguf_chat_template(with_template) == "{{ messages }}"
    assert gguf_chat_template(write_gguf(tmp_path / "b.gguf", common)) is None
    (tmp_path / "c.gguf").write_bytes(b"not a model")
    with pytest.raises(BackendUnavailable, match=r"models\.llm\.model"):
        gguf_chat_template(tmp_path / "c.gguf")


def test_missing_gguf_path_is_backend_unavailable(tmp_path: Path) -> None:
    with pytest.raises(BackendUnavailable, match="not found"):
        resolve_model_path(str(tmp_path / "nope.gguf"))


class FakeLlamaServer:
    """Stands in for ``xllamacpp.Server``: calls back with ``texts``, then (``endless``) keeps
    producing until the callback asks it to stop."""

    def __init__(self, *chunks: dict[str, Any], endless: bool = False,
                 fail: Exception | None = None) -> None:
        self.chunks, self.endless, self.fail = chunks, endless, fail
        self.bodies: list[tuple[str, dict[str, Any]]] = []
        self.after_stop: list[int] = []

    def _run(self, body: dict[str, Any], callback: Callable[[Any], bool]) -> None:
        if self.fail:
            raise self.fail
        for chunk in self.chunks:
            if callback(chunk):
                self.after_stop.append(0)
                return
        produced = 0
        while self.endless:
            time.sleep(0.002)
            produced += 1
            if callback({"choices": [{"text": " more"}]}):
                self.after_stop.append(produced)
                return

    def handle_completions(self, body: dict[str, Any], callback: Callable[[Any], bool]) -> None:
        self.bodies.append(("completions", body))
        self._run(body, callback)

    def handle_chat_completions(self, body: dict[str, Any],
                                callback: Callable[[Any], bool]) -> None:
        self.bodies.append(("chat", body))
        self._run(body, callback)


def text_chunk(text: str) -> dict[str, Any]:
    return {"choices": [{"text": text, "index": 0, "finish_reason": None}]}


def fake_llama(server: FakeLlamaServer, template: str | None = None, **kw: Any) -> LlamaCppLLM:
    return LlamaCppLLM(LLMConfig(backend="llamacpp", max_tokens=32, **kw), server=server,
                       chat_template=template)


async def test_llamacpp_plain_prompt_request_and_clean_reply_edges() -> None:
    server = FakeLlamaServer(*(text_chunk(t) for t in [" ", " Yes", ",", " we", " are", ".", "\n"]))
    llm = fake_llama(server, temperature=0.2)
    deltas = [d async for d in llm.stream(make_request(ChatMessage("user", "Open?"),
                                                       max_tokens=99), stop=["Bye"])]
    assert deltas == ["Yes", ",", " we", " are", "."]
    endpoint, body = server.bodies[0]
    assert endpoint == "completions" and body["prompt"].endswith("User: Open?\nAssistant:")
    assert body["stop"] == [*PLAIN_STOPS, "Bye"]
    assert body["max_tokens"] == 32 and body["temperature"] == 0.2 and body["stream"] is True


async def test_llamacpp_model_with_template_uses_the_chat_endpoint() -> None:
    server = FakeLlamaServer({"choices": [{"delta": {"content": "Hi"}}]})
    llm = fake_llama(server, template="{{ messages }}")
    assert await llm.complete(make_request(ChatMessage("user", "hello"))) == "Hi"
    endpoint, body = server.bodies[0]
    assert endpoint == "chat" and body["messages"][-1] == {"role": "user", "content": "hello"}
    assert "stop" not in body


@pytest.mark.parametrize("how", ["break", "cancel"])
async def test_llamacpp_stopping_the_consumer_stops_the_engine(how: str) -> None:
    server = FakeLlamaServer(text_chunk("Once"), endless=True)
    llm = fake_llama(server)
    first = asyncio.Event()

    async def consume() -> None:
        gen = llm.stream(make_request(ChatMessage("user", "story")))
        async for _ in gen:
            first.set()
            if how == "break":
                break
        await gen.aclose()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first.wait(), 2)
    if how == "cancel":
        task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    for _ in range(200):
        if llm.active_generations == 0:
            break
        await asyncio.sleep(0.005)
    assert llm.active_generations == 0 and len(server.after_stop) == 1
    await llm.aclose()
    with pytest.raises(BackendError, match="closed"):
        await llm.complete(make_request(ChatMessage("user", "again")))


async def test_llamacpp_engine_errors_become_backend_errors() -> None:
    overflow = {"error": {"code": 400, "type": "exceed_context_size_error", "message": "too long"}}
    with pytest.raises(BackendError, match="context_tokens") as err:
        await fake_llama(FakeLlamaServer(overflow)).complete(make_request())
    assert not err.value.retryable
    with pytest.raises(BackendError, match="bad params"):
        await fake_llama(FakeLlamaServer(fail=RuntimeError("bad params"))).complete(
            make_request())


# --- vllm ------------------------------------------------------------------------------------


def test_vllm_needs_a_model_name() -> None:
    with pytest.raises(ConfigError, match=r"models\.llm\.model"):
        VLLMEngine(LLMConfig(backend="vllm"))


def test_vllm_without_gpu_or_package_is_backend_unavailable() -> None:
    if importlib.util.find_spec("vllm") is not None:
        torch = pytest.importorskip("torch")
        if torch.cuda.is_available():
            pytest.skip("vllm and a GPU are present: the engine would really start")
    with pytest.raises(BackendUnavailable, match=r"vllm package|CUDA GPU"):
        VLLMEngine(LLMConfig(backend="vllm", model="some/model"))
