"""What the fuzz tests drive: a live session on the real conductor (with the fakes of
``tests/fakes.py`` behind it, so a fuzzed text turn costs microseconds), an event loop the
tests own, and a data channel that records what a peer sends."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from configs import load_config
from configs.loader import load_persona
from deployments.conductor import Conductor
from deployments.live_session import LiveSession, PersonaKit
from deployments.services import knowledge_base_for
from models.animate.animator import Animator
from models.clock import MediaClock
from models.frames import TurnEnd
from models.guardrails.rails import Rails
from tests.fakes import FakeLLM, FakeStore, FakeTTS

T = TypeVar("T")
CALL_TIMEOUT_S = 10.0
"""Every fuzzed call must answer within this; a slower one fails the test as a hang."""


class Loop:
    """An event loop owned by a test module: hypothesis calls plain functions, which run each
    fuzzed coroutine here, bounded by :data:`CALL_TIMEOUT_S`."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()

    def run(self, coro: Coroutine[Any, Any, T], timeout_s: float = CALL_TIMEOUT_S) -> T:
        return self.loop.run_until_complete(asyncio.wait_for(coro, timeout_s))

    def close(self) -> None:
        for task in asyncio.all_tasks(self.loop):
            task.cancel()
        self.loop.run_until_complete(asyncio.sleep(0.05))
        self.loop.close()


async def _turn_ended(session: LiveSession, event: TurnEnd, error: bool) -> None:
    """A live session's turn hook (the renderer stores the turn; here nothing to do)."""


async def light_session(session_id: str = "fuzz") -> LiveSession:
    """A started live session of the default persona: the real conductor, chunker, rails and
    animator over a fake LLM, TTS and store; no speech input."""
    config = load_config("local")
    persona = load_persona(config.persona)
    kit = PersonaKit(persona, knowledge_base_for(config, persona), Rails(persona))
    clock = MediaClock()
    conductor = Conductor(asr=None, llm=FakeLLM(), tts=FakeTTS(), store=FakeStore(),
                          rails=kit.rails, persona=persona, knowledge_base=kit.knowledge_base,
                          config=config.conversation, clock=clock)
    await conductor.start()
    session = LiveSession(session_id, kit, conductor, Animator(fps=25), clock, False,
                          _turn_ended)
    session.start()
    return session


class RecordingChannel:
    """An open data channel that keeps what the peer sends (as decoded JSON)."""

    readyState = "open"

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def send(self, message: str) -> None:
        self.sent.append(json.loads(message))

    def kinds(self) -> list[str]:
        return [m.get("type") for m in self.sent]


def real_offer() -> str:
    """A real offer from aiortc's createOffer (audio sendrecv, video recvonly, a data channel,
    host candidates), made on a thread of its own so any test can call it."""
    from scripts.fuzz_targets import make_offer

    result: list[str] = []
    thread = threading.Thread(target=lambda: result.append(asyncio.run(make_offer())))
    thread.start()
    thread.join(30.0)
    return result[0]
