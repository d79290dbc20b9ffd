"""A shared LLM or TTS replica dying mid-turn: the conductor over the Serve-handle adapters
ends every turn with an answer (after one retry) or a short apology, never in silence."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayTaskError

from configs.schema import ConversationConfig, KnowledgeBaseConfig, PersonaConfig
from deployments import remote
from deployments.apology import ApologyClips
from deployments.conductor import Conductor
from deployments.remote import RemoteLLM, RemoteTTS
from models.clock import MediaClock
from models.errors import InputError
from models.frames import Clause, ErrorEvent, SpeechAudio, TextDelta, TurnEnd
from models.guardrails.base import Verdict
from tests.fakes import FakeLLM, FakeStore, FakeTTS

pytestmark = pytest.mark.unit

PERSONA = PersonaConfig(name="test", display_name="Test", tenant="t1", knowledge_base="kb1",
                        greeting="Hi", system_prompt="You are the front desk of a test clinic.")
KB = KnowledgeBaseConfig(name="kb1", tenant="t1", path="unused")

ANSWER = ["Our clinic opens ", "at eight, ", "and closes ", "at six."]
SPEECH = FakeTTS()  # makes the chunks a TTS replica streams back


@dataclass
class Attempt:
    """What one replica does with one streamed call: yield ``items``, then raise ``error``;
    ``hang`` waits forever before the first item."""

    items: Sequence[Any] = ()
    error: BaseException | None = None
    hang: bool = False


class _Stream:
    def __init__(self, attempt: Attempt) -> None:
        self.attempt, self.sent, self.cancelled = attempt, 0, False

    def __aiter__(self) -> _Stream:
        return self

    async def __anext__(self) -> Any:
        await asyncio.sleep(0)
        if self.attempt.hang:
            await asyncio.Event().wait()
        if self.sent < len(self.attempt.items):
            self.sent += 1
            return self.attempt.items[self.sent - 1]
        if self.attempt.error is not None:
            raise self.attempt.error
        raise StopAsyncIteration

    def cancel(self) -> None:
        self.cancelled = True


class Replicas:
    """A Serve handle whose streamed calls go to replicas that may die: each call takes the
    next :class:`Attempt` of the script, then asks ``then(*args)``."""

    def __init__(self, *script: Attempt, then: Callable[..., Attempt] | None = None) -> None:
        self.script, self.then = list(script), then
        self.calls: list[tuple[Any, ...]] = []

    def options(self, *, stream: bool = False) -> Replicas:
        assert stream
        return self

    @property
    def stream(self) -> Replicas:
        return self

    def remote(self, *args: Any) -> _Stream:
        self.calls.append(args)
        if self.script:
            return _Stream(self.script.pop(0))
        assert self.then is not None, f"unexpected extra call {args!r}"
        return _Stream(self.then(*args))


def speak(text: str) -> Attempt:
    return Attempt(items=list(SPEECH.synthesize(text)))


class AllowAll:
    """Rails that let everything through (the rails are not under test here)."""

    def check_input(self, text: str) -> Verdict:
        return Verdict(True, text)

    def check_output(self, text: str, user_text: str = "") -> Verdict:
        return Verdict(True, text)


def make(llm: Any = None, tts: Any = None) -> Conductor:
    return Conductor(asr=None, llm=llm or FakeLLM(), tts=tts or FakeTTS(), store=FakeStore(),
                     rails=AllowAll(), persona=PERSONA, knowledge_base=KB,
                     config=ConversationConfig(), clock=MediaClock(),
                     apology_clips=ApologyClips())


async def collect_turn(c: Conductor, timeout_s: float = 5.0) -> list:
    """The session's output up to the end of the current turn."""
    events: list = []

    async def run() -> None:
        async for ev in c.events():
            events.append(ev)
            if isinstance(ev, TurnEnd):
                return

    await asyncio.wait_for(run(), timeout_s)
    return events


def said(events: list) -> list[str]:
    """The clauses whose audio reached the session's output, in order."""
    voiced = {(a.turn_id, a.clause_index) for a in events if isinstance(a, SpeechAudio)}
    turn = next((e.turn_id for e in events if isinstance(e, TurnEnd)), None)
    return [e.text for e in events if isinstance(e, Clause) and (turn, e.index) in voiced]


def errors(events: list) -> list[str]:
    return [e.message for e in events if isinstance(e, ErrorEvent)]


async def test_llm_dying_before_the_first_token_is_retried_and_the_user_hears_the_answer():
    handle = Replicas(Attempt(error=ActorDiedError()), Attempt(items=ANSWER))
    c = make(llm=RemoteLLM(handle))
    await c.start()
    await c.send_text("When do you open?")
    events = await collect_turn(c)
    assert len(handle.calls) == 2
    assert events[-1].text == "Our clinic opens at eight, and closes at six."
    assert said(events) == ["Our clinic opens at eight,", "and closes at six."]
    assert errors(events) == [] and c.stage_failures == {}


async def test_llm_dying_mid_reply_ends_the_turn_with_the_apology_and_commits_it():
    handle = Replicas(Attempt(items=ANSWER[:2], error=ActorDiedError()),
                      then=lambda request: Attempt(items=ANSWER))
    c = make(llm=RemoteLLM(handle))
    await c.start()
    await c.send_text("When do you open?")
    events = await collect_turn(c)
    assert len(handle.calls) == 1, "words already went out: no retry"
    assert said(events) == ["Our clinic opens at eight,", PERSONA.apology]
    assert "LLM" in errors(events)[0]
    reply = f"Our clinic opens at eight, {PERSONA.apology}"
    assert events[-1].text == reply and not events[-1].interrupted
    assert [m.content for m in c.history] == ["When do you open?", reply]
    assert c.stage_failures == {"llm": 1}
    await c.send_text("And on Sunday?")  # the conversation goes on, apology in the history
    events = await collect_turn(c)
    assert events[-1].text == "Our clinic opens at eight, and closes at six."
    request = handle.calls[-1][0]
    assert [m.content for m in request.messages[1:]] == ["When do you open?", reply,
                                                         "And on Sunday?"]


async def test_a_second_consecutive_failure_apologises_instead_of_looping():
    handle = Replicas(Attempt(error=ActorDiedError()),
                      Attempt(error=ActorUnavailableError("node lost", None)),
                      Attempt(items=["should never be asked"]))
    c = make(llm=RemoteLLM(handle))
    await c.start()
    await c.send_text("When do you open?")
    events = await collect_turn(c)
    assert len(handle.calls) == 2
    assert said(events) == [PERSONA.apology]
    assert c.stage_failures == {"llm": 1}


async def test_a_model_input_error_is_not_retried_and_is_shown_to_the_user():
    error = RayTaskError("stream", "traceback", InputError("the question is empty; ask again"))
    handle = Replicas(Attempt(error=error), Attempt(items=["should never be asked"]))
    c = make(llm=RemoteLLM(handle))
    await c.start()
    await c.send_text("When do you open?")
    events = await collect_turn(c)
    assert len(handle.calls) == 1
    assert errors(events) == ["the question is empty; ask again"]
    assert said(events) == [PERSONA.apology]
    assert c.stage_failures == {}


async def test_tts_dying_plays_the_kept_apology_clip_never_silence():
    up = True

    def tts_replica(text: str) -> Attempt:
        return speak(text) if up else Attempt(error=ActorDiedError())

    handle = Replicas(then=tts_replica)
    tts = RemoteTTS(handle, sample_rate_hz=SPEECH.sample_rate_hz)
    c = make(tts=tts)
    await c.start()  # the apology clip is synthesised while the TTS is healthy
    for _ in range(200):
        if c.apology_clips.get(tts, PERSONA.apology):
            break
        await asyncio.sleep(0.005)
    assert handle.calls == [(PERSONA.apology,)]
    up = False  # every TTS replica dies
    await c.send_text("When do you open?")
    events = await collect_turn(c)
    assert handle.calls[1:] == [("Our clinic opens at eight,",)] * 2, "one retry, no loop"
    assert said(events) == [PERSONA.apology]
    apology = next(e for e in events if isinstance(e, Clause) and e.text == PERSONA.apology)
    audio = [a for a in events if isinstance(a, SpeechAudio) and a.clause_index == apology.index]
    clip_ms = sum(chunk.duration_ms for chunk in speak(PERSONA.apology).items)
    assert sum(a.duration_ms for a in audio) == pytest.approx(clip_ms)
    assert events[-1].text == PERSONA.apology
    assert c.stage_failures == {"tts": 1} and "TTS" in errors(events)[0]


async def test_without_any_tts_the_apology_is_sent_as_text():
    handle = Replicas(then=lambda text: Attempt(error=ActorDiedError()))
    c = make(tts=RemoteTTS(handle))
    await c.start()
    await c.send_text("When do you open?")
    events = await collect_turn(c)
    assert not any(isinstance(e, SpeechAudio) for e in events)
    assert PERSONA.apology in [e.text for e in events if isinstance(e, TextDelta)]
    assert PERSONA.apology in [e.text for e in events if isinstance(e, Clause)]
    end = events[-1]
    assert isinstance(end, TurnEnd) and end.text.endswith(PERSONA.apology)
    assert [m.content for m in c.history] == ["When do you open?", end.text]


async def test_a_hung_replica_times_out_into_the_apology_without_blocking_other_sessions(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(remote, "STREAM_IDLE_TIMEOUT_S", 0.3)
    hung = make(llm=RemoteLLM(Replicas(Attempt(hang=True))))
    other = make(llm=RemoteLLM(Replicas(Attempt(items=ANSWER))))
    for c in (hung, other):
        await c.start()
        await c.send_text("When do you open?")
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    answered = await collect_turn(other)
    assert loop.time() - t0 < 0.3, "the other session is answered while one replica hangs"
    assert answered[-1].text.startswith("Our clinic opens")
    events = await collect_turn(hung)
    assert said(events) == [PERSONA.apology]
    assert hung.stage_failures == {"llm": 1}


async def test_sessions_share_one_apology_synthesis_and_a_failed_one_is_tried_again():
    outcomes = [Attempt(error=ActorDiedError()), Attempt(error=ActorDiedError())]
    handle = Replicas(*outcomes, then=speak)  # the first synthesis fails (both replicas)
    tts, clips = RemoteTTS(handle, sample_rate_hz=SPEECH.sample_rate_hz), ApologyClips()
    assert await clips.ensure(tts, PERSONA.apology) is None
    assert clips.get(tts, PERSONA.apology) is None, "a failure is not kept"
    first, second = await asyncio.gather(clips.ensure(tts, PERSONA.apology),
                                         clips.ensure(tts, PERSONA.apology))
    assert first is second and first and len(handle.calls) == 3, "one shared synthesis"
    assert await clips.wait_pending(tts, "never synthesised", 0.01) is None
    assert len(handle.calls) == 3, "waiting starts no synthesis"
