"""Real Whisper tiny.en and Silero VAD on piper-synthesised questions."""

from __future__ import annotations

import asyncio
import os
import statistics
import time

import numpy as np
import pytest

from configs.schema import ASRConfig, VADConfig
from models.asr.metrics import wer
from models.asr.stream import StreamingASR
from models.asr.vad import SileroVAD
from models.asr.whisper import WhisperTranscriber
from models.audio import resample, to_float32
from models.clock import MediaClock
from models.frames import SpeechEnded, SpeechStarted, Transcript
from tests.speech import chunks, silence, speak

pytestmark = [pytest.mark.unit, pytest.mark.slow]

os.environ.setdefault("HF_HUB_OFFLINE", "1")

QUESTIONS = [
    "What time does the clinic open on Saturday?",
    "Can I book a flu shot for my daughter next Tuesday afternoon?",
    "How much does a consultation cost?",
    "I'd like to cancel my appointment.",
    "Where can I park my car?",
]


@pytest.fixture(scope="module")
def whisper() -> WhisperTranscriber:
    transcriber = WhisperTranscriber(ASRConfig())
    transcriber.warmup()
    return transcriber


@pytest.mark.parametrize("question", QUESTIONS)
def test_questions_are_transcribed_accurately(whisper: WhisperTranscriber, question: str) -> None:
    audio = np.concatenate([silence(200), speak(question), silence(200)])
    result = whisper.transcribe(to_float32(audio))
    assert wer(question, result.text) <= 0.15, result.text
    assert result.confidence is not None and 0.0 < result.confidence <= 1.0


def test_silence_and_noise_give_no_text(whisper: WhisperTranscriber) -> None:
    rng = np.random.default_rng(5)
    t = np.arange(32000) / 16000
    inputs = {
        "silence": np.zeros(32000, np.float32),
        "faint noise": (rng.standard_normal(32000) * 1e-4).astype(np.float32),
        "loud noise": (rng.standard_normal(32000) * 0.3).astype(np.float32),
        "clipped square": np.sign(np.sin(2 * np.pi * 200 * t)).astype(np.float32),
        "mains hum": (0.1 * np.sin(2 * np.pi * 50 * t)).astype(np.float32),
    }
    texts = {name: whisper.transcribe(audio).text for name, audio in inputs.items()}
    assert texts == dict.fromkeys(inputs, "")


def test_short_window_is_faster_than_the_full_window(whisper: WhisperTranscriber) -> None:
    audio = to_float32(speak(QUESTIONS[0]))
    full = WhisperTranscriber(ASRConfig(), window_s=30.0)

    def median_s(transcriber: WhisperTranscriber) -> float:
        times = []
        for _ in range(3):
            start = time.perf_counter()
            assert wer(QUESTIONS[0], transcriber.transcribe(audio).text) <= 0.15
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    assert median_s(whisper) < 0.75 * median_s(full)


async def feed_in_real_time(
    session, pcm: np.ndarray, rate: int, clock: MediaClock, start_ms: float
) -> None:
    """Send 20 ms chunks paced by the wall clock, each stamped with its capture time."""
    for chunk in chunks(pcm, rate, 20.0, start_ms=start_ms):
        delay_s = (chunk.pts_ms + chunk.duration_ms - clock.now_ms()) / 1000
        if delay_s > 0:
            await asyncio.sleep(delay_s)
        session.feed(chunk)


async def collect(session, transcripts: int, timeout_s: float) -> list[object]:
    events: list[object] = []

    async def read() -> None:
        async for event in session.events():
            events.append(event)
            if sum(isinstance(e, Transcript) for e in events) == transcripts:
                return

    await asyncio.wait_for(read(), timeout_s)
    return events


async def test_real_time_session_transcribes_soon_after_speech_ends(
    whisper: WhisperTranscriber,
) -> None:
    config = ASRConfig(vad=VADConfig())
    asr = StreamingASR(whisper, lambda: SileroVAD(config.vad), config)
    question = QUESTIONS[0]
    speech = speak(question, 48000)
    pcm = np.concatenate([silence(500, 48000), speech, silence(1000, 48000)])
    clock = MediaClock()
    session = asr.open_session(clock)
    reader = asyncio.ensure_future(collect(session, 1, 15.0))
    start_ms = clock.now_ms()
    await feed_in_real_time(session, pcm, 48000, clock, start_ms)
    events = await reader
    await session.aclose()

    assert [type(e) for e in events] == [SpeechStarted, SpeechEnded, Transcript]
    started, ended, final = events
    assert 400 <= started.pts_ms - start_ms <= 700
    speech_ms = 1000 * len(speech) / 48000
    assert ended.pts_ms - start_ms == pytest.approx(500 + speech_ms, abs=250)
    assert wer(question, final.text) <= 0.15, final.text
    latency_ms = final.pts_ms - final.speech_end_ms
    endpoint_ms = config.vad.endpoint_silence_ms
    print(f"\nend of speech -> final transcript: {latency_ms:.0f} ms "
          f"(endpoint wait {endpoint_ms} ms)")
    assert endpoint_ms - 50 <= latency_ms <= endpoint_ms + 1500


async def test_fast_fed_questions_come_out_in_order(whisper: WhisperTranscriber) -> None:
    config = ASRConfig()
    asr = StreamingASR(whisper, lambda: SileroVAD(config.vad), config)
    session = asr.open_session(MediaClock())
    parts = [silence(300)]
    for question in QUESTIONS[:3]:
        parts += [speak(question), silence(700)]
    pcm = resample(np.concatenate(parts), 16000, 44100)
    reader = asyncio.ensure_future(collect(session, 3, 30.0))
    for chunk in chunks(pcm, 44100, 20.0):
        session.feed(chunk)
        await asyncio.sleep(0)
    events = await reader
    await session.aclose()
    texts = [e.text for e in events if isinstance(e, Transcript)]
    assert len(texts) == 3
    for question, text in zip(QUESTIONS[:3], texts, strict=True):
        assert wer(question, text) <= 0.2, text


async def test_noise_through_silero_and_whisper_yields_no_words(
    whisper: WhisperTranscriber,
) -> None:
    config = ASRConfig()
    asr = StreamingASR(whisper, lambda: SileroVAD(config.vad), config)
    session = asr.open_session(MediaClock())
    rng = np.random.default_rng(11)
    t = np.arange(16000) / 16000
    noise = rng.integers(-20000, 20000, 16000, dtype=np.int16)
    square = np.where(np.sin(2 * np.pi * 150 * t) >= 0, 32767, -32768).astype(np.int16)
    pcm = np.concatenate([noise, silence(500), square, silence(500)])
    events: list[object] = []

    async def read() -> None:
        async for event in session.events():
            events.append(event)

    reader = asyncio.ensure_future(read())
    for chunk in chunks(pcm, 16000, 20.0):
        session.feed(chunk)
        await asyncio.sleep(0)
    for _ in range(100):  # every utterance gets its transcript
        ended = sum(isinstance(e, SpeechEnded) for e in events)
        if ended == sum(isinstance(e, Transcript) for e in events):
            break
        await asyncio.sleep(0.1)
    await session.aclose()
    await reader
    texts = [e.text for e in events if isinstance(e, Transcript)]
    assert all(text == "" for text in texts), texts
