"""The shared model deployments as plain classes: ASR, LLM, TTS and Knowledge.

Each one loads its model from configuration once and serves many sessions from many renderer
replicas. They are ordinary classes: construct one in a test or a script and call it; the
cluster builder (:mod:`cluster.app`) turns them into autoscaled Ray Serve deployments.

Streaming methods are async generators, so a Serve handle streams them with
``handle.options(stream=True)``; a caller that stops iterating (barge-in) cancels the
generator on the replica, which stops the model where it is.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import numpy as np

from configs.schema import AppConfig
from models.asr.base import TranscriptResult
from models.errors import InputError
from models.frames import Passage, TTSChunk
from models.knowledge.base import Document, Embedder
from models.llm.base import LLMRequest

MAX_UTTERANCE_S = 30.0
"""Longest utterance the ASR deployment accepts in one call."""


class ASRWorker:
    """Transcribes whole utterances; the renderer keeps VAD and endpointing per session."""

    def __init__(self, config: AppConfig, *, warmup: bool = True) -> None:
        from models.asr import create_transcriber

        self.transcriber = create_transcriber(config.models.asr)
        self.sample_rate_hz = self.transcriber.sample_rate_hz
        # One utterance at a time (the model runs one anyway): calls wait here, where a
        # caller's cancellation (a speculation the user talked over) removes them unrun.
        self._turns = asyncio.Semaphore(1)
        if warmup:
            self.transcriber.warmup()

    async def transcribe(self, audio: np.ndarray) -> TranscriptResult:
        """Float32 mono audio at :attr:`sample_rate_hz` to text (runs in a worker thread)."""
        audio = np.asarray(audio, dtype=np.float32)
        if audio.ndim != 1:
            raise InputError(f"audio must be mono (1-D), got shape {audio.shape}")
        if len(audio) > MAX_UTTERANCE_S * self.sample_rate_hz:
            raise InputError(f"utterance is {len(audio) / self.sample_rate_hz:.1f} s; the ASR "
                             f"deployment takes at most {MAX_UTTERANCE_S:.0f} s per call")
        async with self._turns:
            return await asyncio.to_thread(self.transcriber.transcribe, audio)

    def info(self) -> dict[str, object]:
        return {"backend": self.transcriber.name, "sample_rate_hz": self.sample_rate_hz}


class LLMWorker:
    """Streams reply text for a grounded request."""

    def __init__(self, config: AppConfig) -> None:
        from models.llm import create_llm

        self.llm = create_llm(config.models.llm)

    async def stream(self, request: LLMRequest) -> AsyncIterator[str]:
        async for delta in self.llm.stream(request):
            yield delta

    async def aclose(self) -> None:
        await self.llm.aclose()


class TTSWorker:
    """Streams speech (with phoneme timings) for one clause at a time."""

    def __init__(self, config: AppConfig, *, warmup: bool = True) -> None:
        from configs.loader import load_persona
        from models.tts import create_tts

        tts_config = config.models.tts
        persona = load_persona(config.persona)
        if persona.voice and tts_config.voice is None:
            tts_config = tts_config.model_copy(update={"voice": persona.voice})
        self.tts = create_tts(tts_config)
        self.sample_rate_hz = self.tts.sample_rate_hz
        if warmup:
            self.tts.warmup()

    async def stream(self, text: str) -> AsyncIterator[TTSChunk]:
        if not isinstance(text, str) or not text.strip():
            raise InputError("TTS needs non-empty text")
        async for chunk in self.tts.stream(text):
            yield chunk


class KnowledgeWorker:
    """Tenant-filtered retrieval (and embeddings) over the configured knowledge bases.

    Qdrant's local mode locks its directory to one process, so more than one Knowledge replica
    needs ``models.knowledge.qdrant_url`` (a Qdrant server); :mod:`cluster.app` checks that.
    """

    def __init__(self, config: AppConfig, *, embedder: Embedder | None = None) -> None:
        from models.knowledge import create_embedder, create_store
        from models.knowledge.ingest import ensure_ingested

        self.embedder = embedder or create_embedder(config.models.knowledge)
        self.store = create_store(config.models.knowledge, self.embedder)
        for kb in config.knowledge_bases:
            ensure_ingested(self.store, config, kb.name)
        self.embedder.embed(["warm up"])

    async def search(self, tenant: str, kb: str, query: str, top_k: int = 4) -> list[Passage]:
        return await asyncio.to_thread(self.store.search, tenant, kb, query, top_k)

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        return await asyncio.to_thread(self.embedder.embed, list(texts))

    async def count(self, tenant: str, kb: str) -> int:
        return await asyncio.to_thread(self.store.count, tenant, kb)

    async def ingest(self, tenant: str, kb: str, documents: Sequence[Document]) -> int:
        """Replace the tenant's ``kb`` with ``documents`` (the Gateway's knowledge API; the
        Gateway takes the tenant from the caller's API key)."""
        return await asyncio.to_thread(self.store.ingest, tenant, kb, list(documents))

    def close(self) -> None:
        self.store.close()
