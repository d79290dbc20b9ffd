"""The models one process shares among its sessions, built from configuration."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from configs.loader import load_persona
from configs.schema import AppConfig, KnowledgeBaseConfig, PersonaConfig
from models.errors import ConfigError

if TYPE_CHECKING:
    from models.asr.stream import StreamingASR
    from models.guardrails.rails import Rails
    from models.knowledge.base import Embedder, KnowledgeStore
    from models.llm.base import LLM
    from models.tts.base import TTS

Progress = Callable[[str], None]


@dataclass
class ConversationServices:
    """Shared, thread-safe models: one set per process, many sessions on top."""

    config: AppConfig
    persona: PersonaConfig
    knowledge_base: KnowledgeBaseConfig
    asr: StreamingASR
    llm: LLM
    tts: TTS
    embedder: Embedder
    store: KnowledgeStore
    rails: Rails

    async def aclose(self) -> None:
        await self.llm.aclose()
        await asyncio.to_thread(self.store.close)


def knowledge_base_for(config: AppConfig, persona: PersonaConfig) -> KnowledgeBaseConfig:
    for kb in config.knowledge_bases:
        if kb.name == persona.knowledge_base:
            if kb.tenant != persona.tenant:
                raise ConfigError(
                    f"persona {persona.name!r} (tenant {persona.tenant!r}) uses knowledge base "
                    f"{kb.name!r} of tenant {kb.tenant!r}: a persona may only use its own "
                    "tenant's knowledge bases"
                )
            return kb
    raise ConfigError(f"persona {persona.name!r} uses knowledge base {persona.knowledge_base!r}, "
                      f"which is not under knowledge_bases in the profile")


def build_services(
    config: AppConfig,
    persona_name: str | None = None,
    *,
    progress: Progress | None = None,
    warmup: bool = True,
) -> ConversationServices:
    """Load every model the conversation core needs (seconds), ingest the persona's knowledge
    base when the store has none of it, and warm the models up."""
    from models.asr import create_transcriber, create_vad
    from models.asr.stream import StreamingASR
    from models.guardrails.rails import Rails
    from models.knowledge import create_embedder, create_store
    from models.knowledge.ingest import ensure_ingested
    from models.llm import create_llm
    from models.tts import create_tts

    say = progress or (lambda _msg: None)
    persona = load_persona(persona_name or config.persona)
    kb = knowledge_base_for(config, persona)
    models = config.models
    say("speech recognition")
    transcriber = create_transcriber(models.asr)
    asr = StreamingASR(transcriber, lambda: create_vad(models.asr.vad), models.asr)
    say("speech synthesis")
    tts_config = models.tts
    if persona.voice and tts_config.voice is None:
        tts_config = tts_config.model_copy(update={"voice": persona.voice})
    tts = create_tts(tts_config)
    say("knowledge base")
    embedder = create_embedder(models.knowledge)
    store = create_store(models.knowledge, embedder)
    ensure_ingested(store, config, kb.name)
    say("language model")
    llm = create_llm(models.llm)
    rails = Rails(persona, embedder)
    if warmup:
        say("warming up")
        transcriber.warmup()
        tts.warmup()
        embedder.embed(["warm up"])
    return ConversationServices(config, persona, kb, asr, llm, tts, embedder, store, rails)
