"""Open a conversation session on top of a process's shared services."""

from __future__ import annotations

from deployments.conductor import Conductor
from deployments.services import ConversationServices
from models.clock import Clock, MediaClock


async def open_conductor(
    services: ConversationServices,
    *,
    with_asr: bool = True,
    clock: Clock | None = None,
) -> Conductor:
    """A started :class:`Conductor` for the services' persona, on its own media clock."""
    clock = clock or MediaClock()
    cfg = services.config
    asr = None
    if with_asr:
        asr = services.asr.open_session(
            clock,
            allowed_rates=cfg.conversation.input_sample_rates_hz,
            max_chunk_ms=cfg.conversation.max_audio_chunk_ms,
        )
    conductor = Conductor(
        asr=asr,
        llm=services.llm,
        tts=services.tts,
        store=services.store,
        rails=services.rails,
        persona=services.persona,
        knowledge_base=services.knowledge_base,
        config=cfg.conversation,
        clock=clock,
        top_k=cfg.models.knowledge.top_k,
    )
    await conductor.start()
    return conductor
