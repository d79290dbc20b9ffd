"""Fakes for unit tests of orchestration only. Each subclasses the real base class and
exposes failure knobs; none stands in for a component the product claims to have."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterable, Iterator

import numpy as np

from models.asr.base import ASREvent, ASRSession
from models.errors import BackendError
from models.frames import AudioChunk, Passage, PhonemeTiming, TTSChunk
from models.knowledge.base import Document, KnowledgeStore
from models.llm.base import LLM, LLMRequest
from models.tts.base import TTS


class FakeTTS(TTS):
    """10 ms of tone per character, in 100 ms chunks, one phoneme per chunk."""

    name = "fake"
    sample_rate_hz = 16000

    def __init__(self, chunk_delay_s: float = 0.0) -> None:
        super().__init__()
        self.chunk_delay_s = chunk_delay_s
        self.spoken: list[str] = []
        self.stopped_early = 0

    def synthesize(self, text: str, stop: threading.Event | None = None) -> Iterator[TTSChunk]:
        self.spoken.append(text)
        total = max(1, len(text)) * 160
        step = 1600
        for i, start in enumerate(range(0, total, step)):
            if stop is not None and stop.is_set():
                self.stopped_early += 1
                return
            if self.chunk_delay_s:
                time.sleep(self.chunk_delay_s)
            n = min(step, total - start)
            pcm = (np.sin(np.arange(n) / 5.0) * 8000).astype(np.int16)
            yield TTSChunk(pcm, self.sample_rate_hz, start / 16.0,
                           (PhonemeTiming("a", start / 16.0 + i * 0.0, n / 16.0),))


class FakeLLM(LLM):
    """Streams ``reply`` word by word; can wait between words or fail after N words."""

    name = "fake"

    def __init__(self, reply: str = "Our clinic opens at eight, and closes at six. Thanks!",
                 delay_s: float = 0.0, fail_after: int | None = None) -> None:
        self.reply = reply
        self.delay_s = delay_s
        self.fail_after = fail_after
        self.requests: list[LLMRequest] = []
        self.cancelled = 0

    async def stream(self, request: LLMRequest) -> AsyncIterator[str]:
        self.requests.append(request)
        try:
            for i, word in enumerate(self.reply.split(" ")):
                if self.fail_after is not None and i >= self.fail_after:
                    raise BackendError("fake failure")
                if self.delay_s:
                    await asyncio.sleep(self.delay_s)
                yield word if i == 0 else " " + word
        except asyncio.CancelledError:
            self.cancelled += 1
            raise


class FakeStore(KnowledgeStore):
    def __init__(self, passages: Iterable[Passage] = ()) -> None:
        self.passages = list(passages)
        self.queries: list[tuple[str, str, str]] = []

    def ingest(self, tenant: str, kb: str, documents: Iterable[Document]) -> int:
        return len(list(documents))

    def search(self, tenant: str, kb: str, query: str, top_k: int = 4) -> list[Passage]:
        self.queries.append((tenant, kb, query))
        return [p for p in self.passages if p.tenant == tenant][:top_k]

    def count(self, tenant: str, kb: str) -> int:
        return len(self.passages)


class ScriptedASRSession(ASRSession):
    """Emits the events a test pushes with :meth:`emit`; counts fed audio."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[ASREvent] = asyncio.Queue()
        self.fed_ms = 0.0
        self.closed = False

    def feed(self, chunk: AudioChunk) -> None:
        self.fed_ms += chunk.duration_ms

    def emit(self, event: ASREvent) -> None:
        self.queue.put_nowait(event)

    async def events(self) -> AsyncIterator[ASREvent]:
        while True:
            yield await self.queue.get()

    async def aclose(self) -> None:
        self.closed = True
