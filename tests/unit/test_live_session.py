"""A live session's event fan-out, backlog, stalled listeners, audio input and turn reports."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest

from configs.schema import KnowledgeBaseConfig, PersonaConfig
from deployments.live_session import (
    BACKLOG_EVENTS,
    SUBSCRIBER_QUEUE,
    LiveSession,
    PersonaKit,
    WireEvent,
)
from models.animate.animator import Animator
from models.clock import ManualClock
from models.errors import InputError
from models.frames import (
    AudioChunk,
    Clause,
    ErrorEvent,
    PhonemeTiming,
    SpeechAudio,
    SpeechStarted,
    StateChange,
    TextDelta,
    Transcript,
    TurnEnd,
)
from models.guardrails.rails import Rails

pytestmark = pytest.mark.unit

PERSONA = PersonaConfig(name="desk", display_name="Desk", tenant="t1", knowledge_base="kb1",
                        greeting="Hi", system_prompt="You are a front desk.")
KB = KnowledgeBaseConfig(name="kb1", tenant="t1", path="unused")
RATE = 16000


class FakeConductor:
    """What a LiveSession uses of a Conductor: ``events()``, ``state``, ``feed_audio``,
    ``aclose``. Push output events with :meth:`emit`."""

    def __init__(self) -> None:
        self.out: asyncio.Queue[object] = asyncio.Queue()
        self.state = "listening"
        self.fed: list[AudioChunk] = []
        self.closed = False

    def emit(self, *events: object) -> None:
        for event in events:
            self.out.put_nowait(event)

    async def events(self) -> AsyncIterator[object]:
        while True:
            yield await self.out.get()

    def feed_audio(self, chunk: AudioChunk) -> None:
        self.fed.append(chunk)

    async def aclose(self) -> None:
        self.closed = True


class TurnLog:
    """The session's ``on_turn_end`` hook: records (turn id, continued, error flag)."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, bool, bool]] = []

    async def __call__(self, session: LiveSession, event: TurnEnd, error: bool) -> None:
        self.calls.append((event.turn_id, event.continued, error))


def make_session(clock: ManualClock | None = None, on_turn_end: TurnLog | None = None
                 ) -> tuple[LiveSession, FakeConductor]:
    conductor = FakeConductor()
    session = LiveSession("s1", PersonaKit(PERSONA, KB, Rails(PERSONA)), conductor,  # type: ignore[arg-type]
                          Animator(fps=25), clock or ManualClock(1000.0), True,
                          on_turn_end or TurnLog())
    return session, conductor


async def settle(conductor: FakeConductor) -> None:
    """Let the pump drain what the conductor emitted."""
    for _ in range(1000):
        if conductor.out.empty():
            break
        await asyncio.sleep(0)
    for _ in range(5):
        await asyncio.sleep(0)


async def drain(subscription: AsyncIterator[WireEvent], into: list[WireEvent]) -> None:
    async for item in subscription:
        into.append(item)


async def wait_for(predicate: Any) -> None:
    for _ in range(10_000):
        if predicate():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never became true")


@pytest.fixture
async def live() -> AsyncIterator[tuple[LiveSession, FakeConductor]]:
    session, conductor = make_session()
    session.start()
    yield session, conductor
    await session.aclose()


def kinds(events: list[WireEvent]) -> list[str]:
    return [kind for kind, _ in events]


# --- fan-out and backlog -----------------------------------------------------------------------


async def test_every_subscriber_gets_every_event_in_order(live: Any) -> None:
    session, conductor = live
    first, second = session.subscribe(), session.subscribe()
    for sub in (first, second):
        assert (await anext(sub))[0] == "state"
    got1: list[WireEvent] = []
    got2: list[WireEvent] = []
    tasks = [asyncio.create_task(drain(first, got1)), asyncio.create_task(drain(second, got2))]
    speech = SpeechAudio(np.ones(160, np.int16), RATE, 1200.0, 1, 0,
                         (PhonemeTiming("a", 1200.0, 10.0),))
    conductor.emit(Transcript("hello", True, 1100.0), SpeechStarted(1150.0),
                   StateChange("thinking", 1100.0), TextDelta("Hi ", 1150.0),
                   Clause("Hi there.", 0, 1160.0), speech,
                   TurnEnd(1300.0, 1, "Hi there.", user_text="hello"))
    await wait_for(lambda: len(got1) == 6 and len(got2) == 6)
    assert kinds(got1) == ["transcript", "state", "text_delta", "clause", "audio", "turn_end"]
    assert got1 == got2
    assert got1[2][1]["text"] == "Hi " and got1[5][1]["reply"] == "Hi there."
    for task in tasks:
        task.cancel()


async def test_the_pump_drives_the_face(live: Any) -> None:
    session, conductor = live
    conductor.emit(StateChange("speaking", 1500.0))
    await settle(conductor)
    assert session.animator.state_at(1500.0) == "speaking"
    assert session.animator.state_at(1499.0) == "idle"


async def test_a_new_subscriber_gets_the_backlog_then_the_current_state(live: Any) -> None:
    session, conductor = live
    conductor.emit(Transcript("hi", True, 1000.0), TextDelta("Hello", 1010.0))
    await settle(conductor)
    conductor.state = "speaking"
    sub = session.subscribe()
    got = [await anext(sub) for _ in range(3)]
    assert kinds(got) == ["transcript", "text_delta", "state"]
    assert got[2][1]["state"] == "speaking"
    await sub.aclose()


async def test_the_backlog_keeps_only_the_newest_events(live: Any) -> None:
    session, conductor = live
    extra = 10
    conductor.emit(*(TextDelta(str(i), 1000.0) for i in range(BACKLOG_EVENTS + extra)))
    await settle(conductor)
    sub = session.subscribe()
    got = [await anext(sub) for _ in range(BACKLOG_EVENTS + 1)]
    assert [d["text"] for _, d in got[:-1]] == [str(i) for i in range(extra,
                                                                      BACKLOG_EVENTS + extra)]
    assert got[-1][0] == "state"
    await sub.aclose()


async def test_events_are_kept_again_after_the_last_subscriber_leaves(live: Any) -> None:
    session, conductor = live
    sub = session.subscribe()
    await anext(sub)
    await sub.aclose()
    assert session.idle_s() >= 0.0
    conductor.emit(TextDelta("while away", 1000.0))
    await settle(conductor)
    again = session.subscribe()
    assert await anext(again) == ("text_delta", {"text": "while away", "pts_ms": 1000.0})
    assert (await anext(again))[0] == "state"
    assert session.idle_s() == 0.0
    await again.aclose()


async def test_a_session_error_does_not_end_the_subscription(live: Any) -> None:
    session, conductor = live
    sub = session.subscribe()
    await anext(sub)
    conductor.emit(ErrorEvent("the answer failed; ask again", 1000.0), TextDelta("ok", 1001.0))
    assert await anext(sub) == ("error", {"message": "the answer failed; ask again",
                                          "pts_ms": 1000.0})
    assert await anext(sub) == ("text_delta", {"text": "ok", "pts_ms": 1001.0})
    await sub.aclose()


# --- stalled subscribers and closing -----------------------------------------------------------


async def test_a_stalled_subscriber_is_cut_off_and_the_rest_go_on(live: Any) -> None:
    session, conductor = live
    stalled, healthy = session.subscribe(), session.subscribe()
    assert (await anext(stalled))[0] == "state"
    got: list[WireEvent] = []
    task = asyncio.create_task(drain(healthy, got))
    total = SUBSCRIBER_QUEUE + 50
    for start in range(0, total, 50):  # the healthy one keeps up, the stalled one never reads
        end = min(start + 50, total)
        conductor.emit(*(TextDelta(str(i), 1000.0) for i in range(start, end)))
        await wait_for(lambda n=end + 1: len(got) == n)
    assert [d["text"] for _, d in got[1:]] == [str(i) for i in range(total)]

    rest = [item async for item in stalled]  # what it had queued, then the error, then the end
    assert rest[-1][0] == "error" and "reconnect" in rest[-1][1]["message"]
    assert len(rest) == SUBSCRIBER_QUEUE
    assert not session.closed.is_set() and not conductor.closed

    conductor.emit(TextDelta("still talking", 1000.0))
    await wait_for(lambda: got[-1][1]["text"] == "still talking")
    task.cancel()


async def test_aclose_ends_every_subscriber_with_closed() -> None:
    session, conductor = make_session()
    session.start()
    subs = [session.subscribe() for _ in range(2)]
    logs: list[list[WireEvent]] = [[], []]
    tasks = [asyncio.create_task(drain(s, log)) for s, log in zip(subs, logs, strict=True)]
    await wait_for(lambda: all(log for log in logs))  # both listening
    conductor.emit(TextDelta("bye", 1000.0))
    await wait_for(lambda: all(len(log) == 2 for log in logs))
    await session.aclose()
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=5)
    for log in logs:
        assert kinds(log) == ["state", "text_delta", "closed"]
    assert session.closed.is_set() and conductor.closed
    assert session._pump is not None and session._pump.done()

    late = [item async for item in session.subscribe()]
    assert kinds(late) == ["state", "closed"]
    await session.aclose()  # twice is fine


async def test_aclose_reaches_a_subscriber_whose_queue_is_full() -> None:
    session, conductor = make_session()
    session.start()
    sub = session.subscribe()
    await anext(sub)
    conductor.emit(*(TextDelta(str(i), 1000.0) for i in range(SUBSCRIBER_QUEUE)))
    await settle(conductor)
    await session.aclose()
    rest = [item async for item in sub]
    assert rest[-1] == ("closed", {})
    assert all(kind == "text_delta" for kind, _ in rest[:-1])


# --- audio input -------------------------------------------------------------------------------


def pcm(ms: float, value: int = 0) -> bytes:
    return np.full(int(RATE * ms / 1000), value, dtype="<i2").tobytes()


@pytest.mark.parametrize(("data", "hint"), [(b"\x01\x02\x03", "16-bit"), (b"", "empty"),
                                            ("0102", "PCM16")])
async def test_bad_audio_is_rejected_with_what_to_send(data: Any, hint: str) -> None:
    session, conductor = make_session()
    with pytest.raises(InputError, match=hint):
        session.feed_pcm16(data, RATE)
    assert conductor.fed == []


async def test_audio_bytes_become_little_endian_samples() -> None:
    session, conductor = make_session()
    samples = np.array([0, 1, -1, 32767, -32768, 258], dtype=np.int16)
    assert session.feed_pcm16(samples.astype("<i2").tobytes(), 8000) == 6
    [chunk] = conductor.fed
    np.testing.assert_array_equal(chunk.pcm, samples)
    assert chunk.sample_rate_hz == 8000 and chunk.pcm.dtype == np.int16


async def test_real_time_audio_is_contiguous_and_ends_at_the_clock() -> None:
    clock = ManualClock(1000.0)
    session, conductor = make_session(clock)
    for _ in range(5):
        clock.advance(20.0)
        session.feed_pcm16(pcm(20.0), RATE)
    pts = [c.pts_ms for c in conductor.fed]
    assert pts == [1000.0, 1020.0, 1040.0, 1060.0, 1080.0]
    assert conductor.fed[-1].pts_ms + conductor.fed[-1].duration_ms == clock.now_ms()


async def test_jitter_stays_contiguous_a_burst_and_a_pause_resync_to_the_clock() -> None:
    clock = ManualClock(1000.0)
    session, conductor = make_session(clock)
    session.feed_pcm16(pcm(100.0), RATE)
    clock.advance(70.0)  # the next chunk arrives 30 ms early: kept contiguous
    session.feed_pcm16(pcm(100.0), RATE)
    assert [c.pts_ms for c in conductor.fed] == [900.0, 1000.0]
    for _ in range(3):  # a burst: audio cannot have ended after it arrived
        session.feed_pcm16(pcm(100.0), RATE)
    assert all(c.pts_ms + c.duration_ms <= clock.now_ms() + 40.0 for c in conductor.fed)
    clock.advance(2000.0)  # the user paused; the timeline does not stay in the past
    session.feed_pcm16(pcm(100.0), RATE)
    assert conductor.fed[-1].pts_ms == clock.now_ms() - 100.0


async def test_audio_after_a_burst_is_not_left_ahead_of_the_clock() -> None:
    clock = ManualClock(1000.0)
    session, conductor = make_session(clock)
    for _ in range(5):  # a network hiccup delivers 500 ms at once
        session.feed_pcm16(pcm(100.0), RATE)
    for _ in range(20):  # then two seconds of steady, real-time audio
        clock.advance(100.0)
        session.feed_pcm16(pcm(100.0), RATE)
    last = conductor.fed[-1]
    assert last.pts_ms + last.duration_ms <= clock.now_ms()


# --- turn reports ------------------------------------------------------------------------------


async def test_turn_ends_report_errors_and_count_only_finished_turns() -> None:
    log = TurnLog()
    session, conductor = make_session(on_turn_end=log)
    session.start()
    conductor.emit(
        TurnEnd(1100.0, 1, "We open at nine."),
        ErrorEvent("the answer failed; ask again", 1200.0),
        TurnEnd(1300.0, 2, "Sorry, I had a problem."),
        TurnEnd(1400.0, 3, "Anything else?"),
        TurnEnd(1500.0, 4, "", interrupted=True, continued=True),
        TurnEnd(1600.0, 5, "Sure.", refused=True),
    )
    await settle(conductor)
    assert log.calls == [(1, False, False), (2, False, True), (3, False, False),
                         (4, True, False), (5, False, False)]
    assert session.turns == 4 and session.info()["turns"] == 4
    await session.aclose()
