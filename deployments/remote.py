"""The model interfaces over Ray Serve handles, for the renderer's conductors.

A renderer replica hosts the sessions but not the shared models: its conductors call the ASR,
LLM, TTS and Knowledge deployments through these adapters, which implement the same
interfaces as the in-process backends (:class:`~models.asr.base.Transcriber`,
:class:`~models.llm.base.LLM`, :class:`~models.tts.base.TTS`,
:class:`~models.knowledge.base.KnowledgeStore`). The conductor cannot tell the difference.

Errors cross back as the project's taxonomy: a replica's own :class:`AvatarError` keeps its
type and message; a dead or unreachable replica (:func:`transport_errors`) becomes a retryable
:class:`BackendError`. A call whose replica died before it answered is retried once, after a
short jittered pause, on another replica (an ASR call always: it is idempotent; a stream only
if nothing reached the caller yet); after that the conductor's spoken apology takes
over. Cancelling the consumer (barge-in) cancels the remote stream.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import threading
import time
from collections.abc import AsyncIterator, Iterable
from typing import Any

import numpy as np

from models.asr.base import Transcriber, TranscriptResult
from models.errors import AvatarError, BackendError
from models.frames import Passage, TTSChunk
from models.knowledge.base import Document, KnowledgeStore
from models.llm.base import LLM, LLMRequest
from models.tts.base import TTS

CALL_TIMEOUT_S = 30.0
STREAM_IDLE_TIMEOUT_S = 30.0
"""A stream that sends nothing for this long fails (and the conductor apologises)."""
RETRY_BACKOFF_S = 0.1
"""Mean pause before the one retry (jittered 50-150 %, so the sessions of a replica that died
do not all hit the survivors at the same instant)."""
log = logging.getLogger(__name__)


def unwrap_error(exc: BaseException, what: str) -> AvatarError:
    """The project error behind a Serve call failure (``what`` names the deployment)."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, AvatarError):
        return cause
    if isinstance(exc, AvatarError):
        return exc
    name = type(exc).__name__
    log.warning("call to the %s deployment failed: %s: %.300s", what, name, exc)
    return BackendError(f"the {what} deployment failed ({name}); retrying may help")


@functools.cache
def transport_errors() -> tuple[type[BaseException], ...]:
    """Ray's and Serve's exceptions for a replica that died or could not be reached (the call
    may go to another replica): actor death or unavailability, a crashed worker or node, a
    result lost with its owner, a replica the router had picked that is gone."""
    try:
        from ray import exceptions as rx
        from ray.serve.exceptions import ReplicaUnavailableError
    except ImportError:  # pragma: no cover - ray is a core dependency
        return ()
    return (rx.RayActorError, rx.WorkerCrashedError, rx.NodeDiedError, rx.LocalRayletDiedError,
            rx.ObjectLostError, ReplicaUnavailableError)


def is_transport(exc: BaseException) -> bool:
    """The replica died or was unreachable, as opposed to an error the model raised (which
    arrives with its ``cause``), a timeout or a cancellation: only this is retried."""
    return getattr(exc, "cause", None) is None and isinstance(exc, transport_errors())


def retry_pause_s() -> float:
    """How long to wait before the retry: :data:`RETRY_BACKOFF_S`, jittered."""
    return RETRY_BACKOFF_S * random.uniform(0.5, 1.5)


def _retrying(what: str, exc: BaseException) -> None:
    log.warning("a %s replica failed (%s: %.200s); retrying once on another replica",
                what, type(exc).__name__, exc)


async def stream_remote(handle: Any, method: str, what: str, *args: Any,
                        idle_timeout_s: float | None = None) -> AsyncIterator[Any]:
    """Items of a streaming deployment method. A replica that dies before the first item is
    replaced once (Serve's router picks a live one); a failure after an item, a second
    failure, a model error or ``idle_timeout_s`` (default :data:`STREAM_IDLE_TIMEOUT_S`)
    without an item raise the project's error. Stopping the iteration cancels the stream on
    the replica."""
    if idle_timeout_s is None:
        idle_timeout_s = STREAM_IDLE_TIMEOUT_S
    for attempt in (1, 2):
        gen = None
        started = False
        try:
            gen = getattr(handle.options(stream=True), method).remote(*args)
            items = gen.__aiter__()
            while True:
                try:
                    async with asyncio.timeout(idle_timeout_s):
                        item = await items.__anext__()
                except StopAsyncIteration:
                    return
                except TimeoutError:
                    raise BackendError(f"the {what} deployment sent nothing for "
                                       f"{idle_timeout_s:g} s") from None
                started = True
                yield item
        except Exception as exc:
            if started or attempt == 2 or not is_transport(exc):
                raise unwrap_error(exc, what) from None
            _retrying(what, exc)
        finally:
            if gen is not None:
                gen.cancel()
        await asyncio.sleep(retry_pause_s())


class RemoteTranscriber(Transcriber):
    """Utterances to the ASR deployment; called from StreamingASR's worker threads."""

    name = "remote-asr"
    concurrent = True

    def __init__(self, handle: Any, sample_rate_hz: int = 16000) -> None:
        self._handle = handle
        self.sample_rate_hz = sample_rate_hz
        self._loop: asyncio.AbstractEventLoop | None = None

    def bind_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Make the calls on ``loop`` (the replica's): with Serve's routers on the main loop
        (``cluster.serve_same_loop``) a handle cannot be called from a worker thread."""
        self._loop = loop

    async def _call(self, audio: np.ndarray) -> TranscriptResult:
        response = self._handle.transcribe.remote(audio)
        try:
            return await response
        except asyncio.CancelledError:
            response.cancel()  # a dropped speculation must not hold the ASR replica's queue
            raise

    async def transcribe_async(self, audio: np.ndarray) -> TranscriptResult:
        """:meth:`transcribe` on the caller's loop; cancelling it cancels the remote call,
        so a speculative transcription dropped because the user went on never runs."""
        for attempt in (1, 2):
            try:
                return await asyncio.wait_for(self._call(audio), CALL_TIMEOUT_S)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if attempt == 2 or not is_transport(exc):
                    raise unwrap_error(exc, "ASR") from None
                _retrying("ASR", exc)
            await asyncio.sleep(retry_pause_s())
        raise AssertionError("unreachable")

    def transcribe(self, audio: np.ndarray) -> TranscriptResult:
        """Blocking (a worker thread's): a replica that died is replaced once; transcription
        is idempotent, so the utterance is simply sent again."""
        for attempt in (1, 2):
            try:
                if self._loop is not None and self._loop.is_running():
                    future = asyncio.run_coroutine_threadsafe(self._call(audio), self._loop)
                    try:
                        return future.result(timeout=CALL_TIMEOUT_S)
                    except TimeoutError:
                        future.cancel()  # the call must not go on holding the replica
                        raise
                return self._handle.transcribe.remote(audio).result(timeout_s=CALL_TIMEOUT_S)
            except Exception as exc:
                if attempt == 2 or not is_transport(exc):
                    raise unwrap_error(exc, "ASR") from None
                _retrying("ASR", exc)
            time.sleep(retry_pause_s())  # this worker thread only; the loop runs on
        raise AssertionError("unreachable")

    def warmup(self) -> None:
        """The ASR replicas warm themselves up."""


class RemoteLLM(LLM):
    """Reply text streamed from the LLM deployment."""

    def __init__(self, handle: Any) -> None:
        self._handle = handle

    async def stream(self, request: LLMRequest) -> AsyncIterator[str]:
        async for delta in stream_remote(self._handle, "stream", "LLM", request):
            yield delta


class RemoteTTS(TTS):
    """Speech streamed from the TTS deployment (chunks carry their phoneme timings)."""

    name = "remote-tts"
    reentrant = True

    def __init__(self, handle: Any, sample_rate_hz: int = 22050) -> None:
        super().__init__()
        self._handle = handle
        self.sample_rate_hz = sample_rate_hz

    def synthesize(self, text: str, stop: threading.Event | None = None) -> Iterable[TTSChunk]:
        raise BackendError("the remote TTS streams only; use stream()", retryable=False)

    async def stream(self, text: str) -> AsyncIterator[TTSChunk]:
        async for chunk in stream_remote(self._handle, "stream", "TTS", text):
            yield chunk

    def warmup(self) -> None:
        """The TTS replicas warm themselves up."""


class RemoteKnowledge(KnowledgeStore):
    """Tenant-filtered search in the Knowledge deployment (blocking: run it in a thread)."""

    def __init__(self, handle: Any) -> None:
        self._handle = handle

    def _call(self, method: str, *args: Any) -> Any:
        try:
            return getattr(self._handle, method).remote(*args).result(timeout_s=CALL_TIMEOUT_S)
        except Exception as exc:
            raise unwrap_error(exc, "Knowledge") from None

    def search(self, tenant: str, kb: str, query: str, top_k: int = 4) -> list[Passage]:
        return self._call("search", tenant, kb, query, top_k)

    async def asearch(self, tenant: str, kb: str, query: str, top_k: int = 4) -> list[Passage]:
        """:meth:`search` awaited on the caller's event loop (no worker thread)."""
        try:
            return await self._handle.search.remote(tenant, kb, query, top_k)
        except Exception as exc:
            raise unwrap_error(exc, "Knowledge") from None

    def count(self, tenant: str, kb: str) -> int:
        return self._call("count", tenant, kb)

    def ingest(self, tenant: str, kb: str, documents: Iterable[Document]) -> int:
        raise BackendError("ingest through `avatarctl kb ingest`, not through a renderer",
                           retryable=False)
