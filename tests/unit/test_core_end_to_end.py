"""The whole conversation core on the real embedded models: speech in, grounded speech out,
and bad input that leaves the session working."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from configs import load_config
from deployments.conductor import Conductor
from deployments.services import ConversationServices, build_services
from deployments.session import open_conductor
from models.errors import InputError
from models.frames import AudioChunk, SpeechAudio, Transcript, TurnEnd
from tests.speech import chunks, silence, speak

pytestmark = [pytest.mark.unit, pytest.mark.slow]


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> ConversationServices:
    qdrant = tmp_path_factory.mktemp("qdrant")
    cfg = load_config("local", env={"AVATAR_MODELS__KNOWLEDGE__QDRANT_PATH": str(qdrant)})
    built = build_services(cfg)
    yield built
    asyncio.run(built.aclose())


async def feed(c: Conductor, pcm: np.ndarray, start_ms: float) -> float:
    """Feed faster than real time (the ASR works on sample positions, not wall time)."""
    for chunk in chunks(pcm, 16000, 20.0, start_ms):
        c.feed_audio(chunk)
        await asyncio.sleep(0)
    return start_ms + 1000.0 * len(pcm) / 16000


async def next_turn(c: Conductor, timeout_s: float = 30.0) -> tuple[list, TurnEnd]:
    events: list = []
    async def run() -> TurnEnd:
        async for ev in c.events():
            events.append(ev)
            if isinstance(ev, TurnEnd) and not ev.interrupted:
                return ev
        raise AssertionError("events ended")
    end = await asyncio.wait_for(run(), timeout_s)
    return events, end


async def test_a_spoken_question_gets_a_grounded_spoken_answer(services) -> None:
    c = await open_conductor(services)
    question = np.concatenate([silence(300), speak("Can I split my bill into monthly payments?"),
                               silence(800)])
    await feed(c, question, 0.0)
    events, end = await next_turn(c)
    transcript = next(e for e in events if isinstance(e, Transcript) and e.text)
    assert "monthly payments" in transcript.text.lower()
    assert "6 months" in end.text and not end.refused
    audio = [e for e in events if isinstance(e, SpeechAudio) and e.turn_id == end.turn_id]
    assert sum(a.duration_ms for a in audio) > 1000
    assert any(a.phonemes for a in audio), "reply audio carries phoneme timings"
    for mark in ("speech_end", "endpoint", "asr_final", "retrieval_done", "llm_first_token",
                 "first_clause", "tts_first_audio"):
        assert mark in end.marks, mark
    order = ["endpoint", "asr_final", "retrieval_done", "llm_first_token", "tts_first_audio"]
    assert [end.marks[m] for m in order] == sorted(end.marks[m] for m in order)
    await c.aclose()


async def test_bad_audio_is_refused_and_the_session_goes_on(services) -> None:
    c = await open_conductor(services)
    bad = [
        AudioChunk(np.zeros(160, np.int16), 11025, 0.0),  # unsupported rate
        AudioChunk(np.zeros(160, np.float64), 16000, 0.0),  # wrong sample format
        AudioChunk(np.zeros((2, 160), np.int16), 16000, 0.0),  # stereo
        AudioChunk(np.zeros(0, np.int16), 16000, 0.0),  # empty
        AudioChunk(np.zeros(16000 * 5, np.int16), 16000, 0.0),  # one 5 s chunk
    ]
    for chunk in bad:
        with pytest.raises(InputError) as err:
            c.feed_audio(chunk)
        assert err.value.message
    t = await feed(c, silence(3000), 0.0)  # long silence: no turn
    rng = np.random.default_rng(7)
    noise = (rng.standard_normal(16000) * 300).astype(np.int16)  # quiet hiss: no words
    t = await feed(c, noise, t)
    await asyncio.sleep(0.5)
    assert c.timings == [] or all("asr_final" not in t.marks for t in c.timings)
    question = np.concatenate([speak("Is parking free?"), silence(800)])
    await feed(c, question, t)
    _, end = await next_turn(c)
    assert "free" in end.text.lower()
    await c.aclose()


async def test_typed_turns_keep_history_and_refuse_bad_text(services) -> None:
    c = await open_conductor(services, with_asr=False)
    await c.send_text("Do you take Medicaid?")
    _, first = await next_turn(c)
    assert "Medicaid" in first.text
    with pytest.raises(InputError):
        await c.send_text("x" * 10_000_000)
    with pytest.raises(InputError):
        await c.send_text(b"\xc3\x28 invalid utf-8")
    await c.send_text("How do I cancel an appointment?")
    _, second = await next_turn(c)
    assert "24 hours" in second.text
    assert [m.role for m in c.history] == ["user", "assistant"] * 2
    await c.aclose()

