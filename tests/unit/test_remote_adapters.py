"""The Serve-handle adapters: retry rules, cancellation and error types, over a fake handle."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayTaskError
from ray.serve.exceptions import ReplicaUnavailableError, RequestCancelledError

from deployments import remote
from deployments.remote import (
    CALL_TIMEOUT_S,
    RemoteKnowledge,
    RemoteLLM,
    RemoteTranscriber,
    RemoteTTS,
    stream_remote,
    unwrap_error,
)
from models.asr.base import TranscriptResult
from models.errors import AvatarError, BackendError, InputError
from models.frames import Passage, PhonemeTiming, TTSChunk
from models.knowledge.base import Document
from models.llm.base import ChatMessage, LLMRequest

pytestmark = pytest.mark.unit


# --- fakes: the shapes of Ray Serve's handles and errors ---------------------------------------


class ReplicaDied(ActorDiedError):
    """Ray's own error for a replica whose actor died mid-call (it has no ``cause``)."""

    def __init__(self, message: str) -> None:
        super().__init__()
        self.error_msg = message


class TaskError(Exception):
    """The model raised inside the replica (like Ray's RayTaskError): the original is ``cause``."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(f"replica raised {cause!r}")
        self.cause = cause


def dual_task_error(cause: BaseException) -> Exception:
    """Like RayTaskError.as_instanceof_cause(): an instance of both the wrapper and the cause's
    own class, whose message is the wrapper's, not the model's."""
    cls = type(f"TaskError({type(cause).__name__})", (TaskError, type(cause)), {})
    exc = cls.__new__(cls)
    Exception.__init__(exc, f"replica raised {cause!r}")
    exc.cause = cause
    exc.message = "wrapper text, not the model's"
    return exc


@dataclass
class Reply:
    """What one replica does with one call: yield ``items`` (or return ``value``), then raise
    ``error`` if set; ``hang`` makes a stream wait forever before its first item."""

    items: Sequence[Any] = ()
    value: Any = None
    error: BaseException | None = None
    hang: bool = False


@dataclass
class FakeStream:
    """A streaming response: async-iterable, with ``cancel()``."""

    reply: Reply
    cancelled: int = 0
    yielded: int = 0

    def __aiter__(self) -> FakeStream:
        return self

    async def __anext__(self) -> Any:
        await asyncio.sleep(0)
        if self.reply.hang:
            await asyncio.Event().wait()
        if self.yielded < len(self.reply.items):
            self.yielded += 1
            return self.reply.items[self.yielded - 1]
        if self.reply.error is not None:
            raise self.reply.error
        raise StopAsyncIteration

    def cancel(self) -> None:
        self.cancelled += 1


@dataclass
class FakeResponse:
    """A unary response: ``.result(timeout_s=...)`` blocking, or awaited."""

    reply: Reply
    timeouts: list[float | None] = field(default_factory=list)
    awaited: bool = False
    cancelled: int = 0

    def result(self, timeout_s: float | None = None) -> Any:
        self.timeouts.append(timeout_s)
        if self.reply.error is not None:
            raise self.reply.error
        return self.reply.value

    def __await__(self) -> Any:
        return self._wait().__await__()

    async def _wait(self) -> Any:
        self.awaited = True
        await asyncio.sleep(0)
        if self.reply.hang:
            await asyncio.Event().wait()
        if self.reply.error is not None:
            raise self.reply.error
        return self.reply.value

    def cancel(self) -> None:
        self.cancelled += 1


@dataclass
class Call:
    method: str
    args: tuple[Any, ...]
    stream: bool
    response: FakeStream | FakeResponse


class FakeHandle:
    """``handle.options(stream=True).method.remote(*args)`` and ``handle.method.remote(*args)``;
    each call takes the next :class:`Reply` of the script (one per replica tried)."""

    def __init__(self, *replies: Reply) -> None:
        self.script = list(replies)
        self.calls: list[Call] = []

    def options(self, *, stream: bool = False) -> _Options:
        return _Options(self, stream)

    def __getattr__(self, method: str) -> _Method:
        if method.startswith("_"):
            raise AttributeError(method)
        return _Method(self, method, False)


class _Options:
    """``handle.options(stream=...)``: the same methods, streaming or not."""

    def __init__(self, handle: FakeHandle, stream: bool) -> None:
        self._handle, self._stream = handle, stream

    def __getattr__(self, method: str) -> _Method:
        if method.startswith("_"):
            raise AttributeError(method)
        return _Method(self._handle, method, self._stream)


class _Method:
    def __init__(self, handle: FakeHandle, method: str, stream: bool) -> None:
        self._handle, self._method, self._stream = handle, method, stream

    def remote(self, *args: Any) -> FakeStream | FakeResponse:
        if not self._handle.script:
            raise AssertionError(f"unexpected extra call to {self._method}")
        reply = self._handle.script.pop(0)
        response = FakeStream(reply) if self._stream else FakeResponse(reply)
        self._handle.calls.append(Call(self._method, args, self._stream, response))
        return response


async def collect(stream: Any, into: list[Any]) -> None:
    async for item in stream:
        into.append(item)


def streams(handle: FakeHandle) -> list[FakeStream]:
    return [c.response for c in handle.calls if isinstance(c.response, FakeStream)]


# --- unwrap_error ------------------------------------------------------------------------------


def test_unwrap_keeps_the_models_own_error() -> None:
    cause = InputError("say it in English, please")
    for wrapped in (TaskError(cause), dual_task_error(cause), cause):
        err = unwrap_error(wrapped, "LLM")
        assert err is cause
        assert type(err) is InputError and err.message == "say it in English, please"


def test_unwrap_turns_anything_else_into_a_retryable_backend_error() -> None:
    for exc in (ReplicaDied("gone"), TaskError(ValueError("bad tensor")), TimeoutError()):
        err = unwrap_error(exc, "TTS")
        assert type(err) is BackendError
        assert err.retryable
        assert "TTS" in err.message and type(exc).__name__ in err.message


# --- stream_remote -----------------------------------------------------------------------------


async def test_stream_yields_every_item_in_order_and_cancels_when_done() -> None:
    handle = FakeHandle(Reply(items=["a", "b", "c"]))
    got = [x async for x in stream_remote(handle, "stream", "LLM", "q", 3)]
    assert got == ["a", "b", "c"]
    [call] = handle.calls
    assert (call.method, call.args, call.stream) == ("stream", ("q", 3), True)
    assert call.response.cancelled == 1


async def test_transport_failure_before_the_first_item_is_retried_once() -> None:
    handle = FakeHandle(Reply(error=ReplicaDied("node lost")), Reply(items=["x", "y"]))
    got = [x async for x in stream_remote(handle, "stream", "LLM", "q")]
    assert got == ["x", "y"]
    assert [c.args for c in handle.calls] == [("q",), ("q",)]
    assert [s.cancelled for s in streams(handle)] == [1, 1]


async def test_two_transport_failures_give_a_retryable_backend_error() -> None:
    handle = FakeHandle(Reply(error=ReplicaDied("a")), Reply(error=ReplicaDied("b")))
    with pytest.raises(BackendError) as info:
        [x async for x in stream_remote(handle, "stream", "TTS", "hi")]
    assert type(info.value) is BackendError and info.value.retryable
    assert "TTS" in info.value.message
    assert len(handle.calls) == 2
    assert all(s.cancelled == 1 for s in streams(handle))


async def test_failure_after_an_item_is_not_retried() -> None:
    handle = FakeHandle(Reply(items=["first"], error=ReplicaDied("mid-stream")),
                        Reply(items=["should never be asked"]))
    got: list[str] = []
    with pytest.raises(BackendError):
        await collect(stream_remote(handle, "stream", "LLM", "q"), got)
    assert got == ["first"]
    assert len(handle.calls) == 1 and handle.calls[0].response.cancelled == 1


@pytest.mark.parametrize("raised", [TaskError(InputError("too long; shorten the text")),
                                    dual_task_error(InputError("too long; shorten the text")),
                                    InputError("too long; shorten the text")],
                         ids=["wrapped", "dual", "bare"])
async def test_a_model_error_is_not_retried_and_keeps_its_type(raised: Exception) -> None:
    handle = FakeHandle(Reply(error=raised), Reply(items=["should never be asked"]))
    with pytest.raises(AvatarError) as info:
        [x async for x in stream_remote(handle, "stream", "TTS", "hi")]
    assert type(info.value) is InputError
    assert info.value.message == "too long; shorten the text"
    assert len(handle.calls) == 1 and handle.calls[0].response.cancelled == 1


async def test_a_non_project_model_error_is_not_retried() -> None:
    handle = FakeHandle(Reply(error=TaskError(ValueError("nan in logits"))), Reply(items=["x"]))
    with pytest.raises(BackendError):
        [x async for x in stream_remote(handle, "stream", "LLM", "q")]
    assert len(handle.calls) == 1


async def test_consumer_stopping_early_cancels_the_remote_stream() -> None:
    handle = FakeHandle(Reply(items=["a", "b", "c", "d"]))
    async with contextlib.aclosing(stream_remote(handle, "stream", "LLM", "q")) as gen:
        async for item in gen:
            assert item == "a"
            break
    [call] = handle.calls
    assert call.response.cancelled == 1 and call.response.yielded == 1


async def test_cancelling_the_consumer_cancels_the_remote_stream_without_retry() -> None:
    handle = FakeHandle(Reply(hang=True), Reply(items=["should never be asked"]))
    task = asyncio.create_task(collect(stream_remote(handle, "stream", "LLM", "q"), []))
    while not handle.calls:
        await asyncio.sleep(0)
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(handle.calls) == 1 and handle.calls[0].response.cancelled == 1


# --- RemoteTranscriber -------------------------------------------------------------------------


def test_transcriber_returns_the_replicas_result_with_a_timeout() -> None:
    result = TranscriptResult("book a cleaning", 0.9)
    handle = FakeHandle(Reply(value=result))
    asr = RemoteTranscriber(handle, sample_rate_hz=16000)
    audio = np.zeros(1600, dtype=np.float32)
    assert asr.transcribe(audio) == result
    [call] = handle.calls
    assert call.method == "transcribe" and call.args[0] is audio and not call.stream
    assert call.response.timeouts == [CALL_TIMEOUT_S]
    assert asr.concurrent and asr.sample_rate_hz == 16000


def test_transcriber_retries_a_transport_failure_once() -> None:
    handle = FakeHandle(Reply(error=ReplicaDied("gone")), Reply(value=TranscriptResult("hi")))
    assert RemoteTranscriber(handle).transcribe(np.zeros(10, np.float32)).text == "hi"
    assert len(handle.calls) == 2


def test_transcriber_gives_up_after_two_transport_failures() -> None:
    handle = FakeHandle(Reply(error=ReplicaUnavailableError("asr#1")),
                        Reply(error=ReplicaDied("gone")))
    with pytest.raises(BackendError) as info:
        RemoteTranscriber(handle).transcribe(np.zeros(10, np.float32))
    assert info.value.retryable and "ASR" in info.value.message
    assert len(handle.calls) == 2


def test_transcriber_does_not_retry_a_model_error() -> None:
    handle = FakeHandle(Reply(error=TaskError(InputError("audio too long; send under 30 s"))),
                        Reply(value=TranscriptResult("never")))
    with pytest.raises(InputError, match="send under 30 s"):
        RemoteTranscriber(handle).transcribe(np.zeros(10, np.float32))
    assert len(handle.calls) == 1


def test_transcriber_warmup_makes_no_call() -> None:
    handle = FakeHandle()
    RemoteTranscriber(handle).warmup()
    assert handle.calls == []


# --- RemoteLLM, RemoteTTS ----------------------------------------------------------------------


REQUEST = LLMRequest(messages=(ChatMessage("user", "When are you open?"),),
                     question="When are you open?")


async def test_llm_streams_the_deltas_of_its_request() -> None:
    handle = FakeHandle(Reply(items=["We open ", "at nine."]))
    assert await RemoteLLM(handle).complete(REQUEST) == "We open at nine."
    [call] = handle.calls
    assert call.args == (REQUEST,) and call.stream and call.response.cancelled == 1


async def test_llm_error_keeps_its_type_and_message() -> None:
    handle = FakeHandle(Reply(error=TaskError(BackendError("model busy", retryable=False))))
    with pytest.raises(BackendError, match="model busy") as info:
        await RemoteLLM(handle).complete(REQUEST)
    assert info.value.retryable is False


async def test_breaking_out_of_an_llm_stream_cancels_it_on_the_replica() -> None:
    handle = FakeHandle(Reply(items=["a", "b", "c"]))
    async for _delta in RemoteLLM(handle).stream(REQUEST):
        break
    for _ in range(20):  # the dropped generators are closed by the event loop's finalizer
        if handle.calls[0].response.cancelled:
            break
        await asyncio.sleep(0)
    assert handle.calls[0].response.cancelled == 1
    assert handle.calls[0].response.yielded == 1


async def test_cancelling_an_llm_consumer_cancels_the_replica_stream() -> None:
    handle = FakeHandle(Reply(hang=True))
    task = asyncio.create_task(collect(RemoteLLM(handle).stream(REQUEST), []))
    while not handle.calls:
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert handle.calls[0].response.cancelled == 1


CHUNK = TTSChunk(np.arange(-5, 5, dtype=np.int16), 22050, 0.0,
                 (PhonemeTiming("h", 0.0, 0.2), PhonemeTiming("a", 0.2, 0.25)))


async def test_tts_streams_chunks_with_their_phonemes() -> None:
    handle = FakeHandle(Reply(error=ReplicaDied("cold replica")), Reply(items=[CHUNK, CHUNK]))
    tts = RemoteTTS(handle)
    got = [c async for c in tts.stream("Hello.")]
    assert got == [CHUNK, CHUNK] and got[0].phonemes == CHUNK.phonemes
    assert [c.args for c in handle.calls] == [("Hello.",), ("Hello.",)]
    assert tts.reentrant and tts.sample_rate_hz == 22050


def test_tts_has_no_blocking_path() -> None:
    tts = RemoteTTS(FakeHandle())
    with pytest.raises(BackendError, match="stream") as info:
        list(tts.synthesize("Hello."))
    assert info.value.retryable is False
    tts.warmup()  # no call: the replicas warm themselves up


# --- RemoteKnowledge ---------------------------------------------------------------------------


PASSAGES = [Passage("Open 9 to 5.", 0.8, "hours.md", "kb1", "t1")]


def test_knowledge_search_is_a_blocking_call_with_the_tenant() -> None:
    handle = FakeHandle(Reply(value=PASSAGES), Reply(value=3))
    kb = RemoteKnowledge(handle)
    assert kb.search("t1", "kb1", "hours?", top_k=2) == PASSAGES
    assert kb.count("t1", "kb1") == 3
    search, count = handle.calls
    assert (search.method, search.args) == ("search", ("t1", "kb1", "hours?", 2))
    assert search.response.timeouts == [CALL_TIMEOUT_S]
    assert (count.method, count.args) == ("count", ("t1", "kb1"))


async def test_knowledge_asearch_awaits_on_the_loop() -> None:
    handle = FakeHandle(Reply(value=PASSAGES))
    assert await RemoteKnowledge(handle).asearch("t1", "kb1", "hours?") == PASSAGES
    [call] = handle.calls
    assert call.args == ("t1", "kb1", "hours?", 4)
    assert call.response.awaited and call.response.timeouts == []


async def test_knowledge_errors_keep_their_type_or_become_backend_errors() -> None:
    kb = RemoteKnowledge(FakeHandle(Reply(error=TaskError(InputError("unknown kb 'kb9'"))),
                                    Reply(error=TaskError(InputError("unknown kb 'kb9'"))),
                                    Reply(error=ReplicaDied("gone")),
                                    Reply(error=ReplicaDied("gone"))))
    with pytest.raises(InputError, match="unknown kb 'kb9'"):
        kb.search("t1", "kb9", "q")
    with pytest.raises(InputError, match="unknown kb 'kb9'"):
        await kb.asearch("t1", "kb9", "q")
    for call in (lambda: kb.search("t1", "kb1", "q"), lambda: kb.count("t1", "kb1")):
        with pytest.raises(BackendError, match="Knowledge") as info:
            call()
        assert type(info.value) is BackendError and info.value.retryable


def test_knowledge_refuses_ingest_through_a_renderer() -> None:
    handle = FakeHandle()
    with pytest.raises(BackendError, match="avatarctl kb ingest") as info:
        RemoteKnowledge(handle).ingest("t1", "kb1", [Document("x", "x.md")])
    assert info.value.retryable is False and handle.calls == []



async def test_async_transcription_returns_the_replicas_result() -> None:
    handle = FakeHandle(Reply(value=TranscriptResult("hello", confidence=0.8)))
    result = await RemoteTranscriber(handle).transcribe_async(np.zeros(10, np.float32))
    assert result.text == "hello" and handle.calls[0].response.awaited


async def test_cancelling_an_async_transcription_cancels_the_call_on_the_replica() -> None:
    handle = FakeHandle(Reply(hang=True))
    task = asyncio.ensure_future(
        RemoteTranscriber(handle).transcribe_async(np.zeros(10, np.float32)))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    response = handle.calls[0].response
    assert isinstance(response, FakeResponse) and response.cancelled == 1


async def test_async_transcription_retries_on_a_second_replica() -> None:
    handle = FakeHandle(Reply(error=ActorUnavailableError("connection reset", None)),
                        Reply(value=TranscriptResult("hi")))
    assert (await RemoteTranscriber(handle).transcribe_async(np.zeros(10))).text == "hi"
    assert len(handle.calls) == 2


# --- what counts as a dead replica -------------------------------------------------------------


@pytest.mark.parametrize("error", [ActorDiedError(), ActorUnavailableError("gone", None),
                                   ReplicaUnavailableError("llm#3")],
                         ids=["died", "unavailable", "serve-replica"])
async def test_each_kind_of_dead_replica_is_retried(error: Exception) -> None:
    handle = FakeHandle(Reply(error=error), Reply(items=["ok"]))
    assert [x async for x in stream_remote(handle, "stream", "LLM", "q")] == ["ok"]


@pytest.mark.parametrize("error", [TimeoutError(), RequestCancelledError("r1"),
                                   RuntimeError("serializer bug"),
                                   RayTaskError("stream", "tb", InputError("empty text")),
                                   RayTaskError("stream", "tb", ValueError("nan"))],
                         ids=["timeout", "cancelled", "bug", "model-input", "model-bug"])
def test_anything_but_a_dead_replica_is_not_retried(error: Exception) -> None:
    handle = FakeHandle(Reply(error=error), Reply(value=TranscriptResult("never")))
    with pytest.raises(AvatarError):
        RemoteTranscriber(handle).transcribe(np.zeros(10, np.float32))
    assert len(handle.calls) == 1


async def test_the_retry_waits_a_short_jittered_pause() -> None:
    pauses = [remote.retry_pause_s() for _ in range(200)]
    assert 0.05 <= min(pauses) < max(pauses) <= 0.15
    handle = FakeHandle(Reply(error=ReplicaDied("a")), Reply(items=["x"]))
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    assert [x async for x in stream_remote(handle, "stream", "TTS", "hi")] == ["x"]
    assert 0.04 <= loop.time() - t0 < 1.0


async def test_a_silent_stream_fails_after_its_idle_timeout_without_retry() -> None:
    handle = FakeHandle(Reply(hang=True), Reply(items=["should never be asked"]))
    with pytest.raises(BackendError, match="sent nothing") as info:
        [x async for x in stream_remote(handle, "stream", "LLM", "q", idle_timeout_s=0.05)]
    assert info.value.retryable
    assert len(handle.calls) == 1 and handle.calls[0].response.cancelled == 1
