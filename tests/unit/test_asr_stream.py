"""The streaming ASR state machine, driven by a fake VAD and a fake transcriber."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from configs.schema import ASRConfig, VADConfig
from models.asr.base import Transcriber, TranscriptResult, VoiceActivityDetector
from models.asr.stream import StreamingASR, StreamingASRSession
from models.asr.vad import EnergyVAD
from models.clock import ManualClock
from models.errors import BackendError, InputError
from models.frames import AudioChunk, SpeechEnded, SpeechStarted, Transcript

pytestmark = pytest.mark.unit

RATE = 16000


class FakeVAD(VoiceActivityDetector):
    """Voiced when the frame's peak exceeds ``level``; counts frames seen."""

    def __init__(self, level: float = 0.1) -> None:
        self.level = level
        self.frames = 0

    def speech_probability(self, frame: np.ndarray) -> float:
        assert frame.dtype == np.float32 and len(frame) == self.frame_samples
        self.frames += 1
        return 1.0 if float(np.max(np.abs(frame))) > self.level else 0.0

    def reset(self) -> None:
        self.frames = 0


class FakeTranscriber(Transcriber):
    """Returns the utterance length ("audio 832 ms"); knobs: latency, gate, failures, text."""

    name = "fake"

    def __init__(
        self, *, latency_s: float = 0.0, fail_calls: set[int] | None = None,
        text: str | None = None,
    ) -> None:
        self.latency_s = latency_s
        self.fail_calls = fail_calls or set()
        self.text = text
        self.gate = threading.Event()
        self.gate.set()
        self.calls: list[float] = []  # audio ms per call

    def transcribe(self, audio: np.ndarray) -> TranscriptResult:
        assert audio.dtype == np.float32 and audio.ndim == 1
        self.gate.wait(5.0)
        time.sleep(self.latency_s)
        self.calls.append(1000.0 * len(audio) / self.sample_rate_hz)
        if len(self.calls) in self.fail_calls:
            raise BackendError("fake transcriber failed")
        text = self.text if self.text is not None else f"audio {round(self.calls[-1])} ms"
        return TranscriptResult(text, confidence=0.9)


def config(**vad: object) -> ASRConfig:
    return ASRConfig(vad=VADConfig(**vad))  # type: ignore[arg-type]


def voiced(ms: float, rate: int = RATE) -> np.ndarray:
    t = np.arange(int(rate * ms / 1000)) / rate
    return (0.5 * 32767 * np.sin(2 * np.pi * 220 * t)).astype(np.int16)


def quiet(ms: float, rate: int = RATE) -> np.ndarray:
    return np.zeros(int(rate * ms / 1000), np.int16)


class Harness:
    """Feeds audio in chunks and records each event with the media time fed so far."""

    def __init__(self, transcriber: Transcriber | None = None, cfg: ASRConfig | None = None,
                 vad: type[VoiceActivityDetector] = FakeVAD) -> None:
        self.transcriber = transcriber or FakeTranscriber()
        self.clock = ManualClock()
        self.asr = StreamingASR(self.transcriber, vad, cfg or config())
        self.session: StreamingASRSession = self.asr.open_session(self.clock)
        self.fed_ms = 0.0
        self.events: list[tuple[object, float]] = []
        self.errors: list[BaseException] = []
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        while True:
            try:
                async for event in self.session.events():
                    self.events.append((event, self.fed_ms))
                return
            except BackendError as exc:  # the session goes on after a failed transcription
                self.errors.append(exc)

    async def feed(self, pcm: np.ndarray, rate: int = RATE, chunk_ms: float = 20.0) -> None:
        step = int(rate * chunk_ms / 1000)
        for i in range(0, len(pcm), step):
            piece = pcm[i : i + step]
            self.session.feed(AudioChunk(piece, rate, self.fed_ms))
            self.fed_ms += 1000.0 * len(piece) / rate
            self.clock.advance(1000.0 * len(piece) / rate)
            await asyncio.sleep(0)

    async def settle(self, transcripts: int, timeout_s: float = 5.0) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.of(Transcript)) < transcripts and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.02)

    def of(self, kind: type) -> list:
        return [e for e, _ in self.events if isinstance(e, kind)]

    def kinds(self) -> list[str]:
        return [type(e).__name__ for e, _ in self.events]

    async def close(self) -> None:
        await self.session.aclose()
        await asyncio.wait_for(self._reader, 2.0)


async def test_utterance_gives_start_end_and_final_transcript() -> None:
    h = Harness()
    await h.feed(np.concatenate([quiet(300), voiced(600), quiet(500)]))
    await h.settle(1)
    assert h.kinds() == ["SpeechStarted", "SpeechEnded", "Transcript"]
    (started,), (ended,), (final,) = h.of(SpeechStarted), h.of(SpeechEnded), h.of(Transcript)
    assert started.pts_ms == pytest.approx(300, abs=32)
    assert ended.pts_ms == pytest.approx(900, abs=32)
    assert final.is_final and final.speech_end_ms == ended.pts_ms
    assert final.confidence == 0.9
    # The one speculative transcription was reused; it holds pre-roll + speech + a short tail.
    assert len(h.transcriber.calls) == 1
    assert 600 + 150 <= h.transcriber.calls[0] <= 600 + 224 + 96 + 64
    await h.close()


async def test_speech_started_fires_after_min_speech_like_a_barge_in() -> None:
    h = Harness(cfg=config(min_speech_ms=90))
    await h.feed(np.concatenate([quiet(1000), voiced(400)]))
    ((started, fed_at),) = [(e, t) for e, t in h.events if isinstance(e, SpeechStarted)]
    assert started.pts_ms == pytest.approx(1000, abs=32)
    # Emitted as soon as 3 voiced frames (96 ms) were seen, not at the end of the speech.
    assert 1000 + 90 <= fed_at <= 1000 + 96 + 32 + 20
    await h.close()


async def test_timestamps_follow_the_chunk_timeline_not_the_clock() -> None:
    h = Harness()
    h.fed_ms = 10_000.0  # the stream started 10 s into the session
    await h.feed(np.concatenate([quiet(200), voiced(500), quiet(400)]))
    await h.settle(1)
    assert h.of(SpeechStarted)[0].pts_ms == pytest.approx(10_200, abs=32)
    assert h.of(SpeechEnded)[0].pts_ms == pytest.approx(10_700, abs=32)
    # Transcript pts is when the text was ready, on the session clock (which began at 0).
    assert 700 + 240 - 32 <= h.of(Transcript)[0].pts_ms <= h.clock.now_ms()
    await h.close()


async def test_speculation_is_discarded_when_speech_resumes() -> None:
    fake = FakeTranscriber(latency_s=0.05)
    h = Harness(fake)
    # 150 ms pause: past speculative_after_ms (90), short of the endpoint (240).
    await h.feed(np.concatenate([quiet(200), voiced(500), quiet(150), voiced(400), quiet(500)]))
    await h.settle(1)
    assert h.kinds() == ["SpeechStarted", "SpeechEnded", "Transcript"]
    assert len(fake.calls) == 2  # speculation, then the whole utterance again
    final = h.of(Transcript)[0]
    assert final.text == f"audio {round(fake.calls[-1])} ms"
    assert fake.calls[-1] >= 500 + 150 + 400
    await h.close()


async def test_stale_speculation_queued_behind_the_lock_is_skipped() -> None:
    fake = FakeTranscriber()
    fake.gate.clear()  # every transcription blocks until released
    h = Harness(fake)
    await h.feed(np.concatenate([quiet(200), voiced(300), quiet(130), voiced(300), quiet(130)]))
    await h.feed(np.concatenate([voiced(300), quiet(400)]))
    fake.gate.set()
    await h.settle(1)
    # Only the first speculation was already running; later stale ones never ran.
    assert len(fake.calls) == 2
    assert h.of(Transcript)[0].text == f"audio {round(fake.calls[-1])} ms"
    await h.close()


async def test_short_blips_and_long_silence_produce_nothing() -> None:
    h = Harness(cfg=config(min_speech_ms=96))  # a blip may touch two frames: need three
    blips = np.concatenate([quiet(500), voiced(40), quiet(300), voiced(30), quiet(3000)])
    await h.feed(blips)
    await h.settle(0)
    assert h.events == []
    assert h.transcriber.calls == []
    await h.close()


async def test_long_speech_is_cut_at_max_utterance() -> None:
    h = Harness(cfg=config(max_utterance_s=1.0))
    await h.feed(np.concatenate([quiet(100), voiced(2600), quiet(500)]))
    await h.settle(3)
    assert h.kinds().count("SpeechEnded") == 3
    assert len(h.of(Transcript)) == 3
    assert all(ms <= 1000 + 32 for ms in h.transcriber.calls)
    boundaries = [k for k in h.kinds() if k != "Transcript"]
    assert boundaries == ["SpeechStarted", "SpeechEnded"] * 3
    await h.close()


async def test_empty_transcript_is_still_reported() -> None:
    h = Harness(FakeTranscriber(text="  "))
    await h.feed(np.concatenate([voiced(300), quiet(400)]))
    await h.settle(1)
    assert [t.text for t in h.of(Transcript)] == [""]
    await h.close()


async def test_transcripts_keep_utterance_order() -> None:
    fake = FakeTranscriber(latency_s=0.1)
    h = Harness(fake)
    await h.feed(np.concatenate([voiced(300), quiet(400), voiced(700), quiet(400)]))
    await h.settle(2)
    texts = [t.text for t in h.of(Transcript)]
    assert texts == [f"audio {round(ms)} ms" for ms in fake.calls]
    assert fake.calls[0] < fake.calls[1]
    await h.close()


@pytest.mark.parametrize("rate", [8000, 44100, 48000])
async def test_other_input_rates_are_resampled(rate: int) -> None:
    h = Harness()
    await h.feed(np.concatenate([quiet(300, rate), voiced(500, rate), quiet(400, rate)]), rate)
    await h.settle(1)
    assert h.of(SpeechStarted)[0].pts_ms == pytest.approx(300, abs=32)
    assert h.of(SpeechEnded)[0].pts_ms == pytest.approx(800, abs=32)
    assert 500 <= h.transcriber.calls[0] <= 500 + 224 + 96 + 64
    await h.close()


async def test_rate_change_mid_stream_keeps_the_timeline() -> None:
    h = Harness()
    await h.feed(quiet(500, 48000), 48000)
    await h.feed(np.concatenate([voiced(400, 8000), quiet(400, 8000)]), 8000)
    await h.settle(1)
    assert h.of(SpeechStarted)[0].pts_ms == pytest.approx(500, abs=32)
    assert h.of(SpeechEnded)[0].pts_ms == pytest.approx(900, abs=32)
    await h.close()


@pytest.mark.parametrize(
    ("chunk", "message"),
    [
        (AudioChunk(np.zeros(320, np.float32), RATE, 0.0), "int16"),
        (AudioChunk(np.zeros((320, 2), np.int16), RATE, 0.0), "mono"),
        (AudioChunk(np.zeros(320, np.int16), 11025, 0.0), "11025"),
        (AudioChunk(np.zeros(32000, np.int16), RATE, 0.0), "at most 1000 ms"),
        (AudioChunk(np.zeros(0, np.int16), RATE, 0.0), "empty"),
        (AudioChunk(np.zeros(320, np.int16), RATE, float("nan")), "pts_ms"),
    ],
)
async def test_bad_audio_is_rejected_and_the_session_goes_on(
    chunk: AudioChunk, message: str
) -> None:
    h = Harness()
    await h.feed(np.concatenate([quiet(100), voiced(200)]))
    with pytest.raises(InputError, match=message):
        h.session.feed(chunk)
    await h.feed(np.concatenate([voiced(200), quiet(400)]))
    await h.settle(1)
    assert h.kinds() == ["SpeechStarted", "SpeechEnded", "Transcript"]
    assert h.transcriber.calls[0] >= 400
    await h.close()


@pytest.mark.parametrize("rate", [16000, 44100])
async def test_garbage_audio_does_not_crash(rate: int) -> None:
    rng = np.random.default_rng(7)
    noise = rng.integers(-32768, 32767, rate, dtype=np.int16)
    square = np.where(np.sin(np.arange(rate) * 0.3) >= 0, 32767, -32768).astype(np.int16)
    extremes = np.tile(np.array([-32768, 32767], np.int16), rate // 2)
    h = Harness(vad=EnergyVAD)
    for pcm, chunk_ms in ((noise, 7.0), (quiet(300, rate), 20.0), (square, 33.0),
                          (extremes, 1.0), (quiet(500, rate), 20.0)):
        await h.feed(pcm, rate, chunk_ms)
    await h.settle(2)
    kinds = h.kinds()
    assert kinds.count("SpeechStarted") == kinds.count("SpeechEnded") >= 1
    boundaries = [k for k in kinds if k != "Transcript"]
    assert boundaries == ["SpeechStarted", "SpeechEnded"] * (len(boundaries) // 2)
    await h.close()


async def test_failed_transcription_is_raised_and_the_session_goes_on() -> None:
    fake = FakeTranscriber(fail_calls={1})
    h = Harness(fake)
    await h.feed(np.concatenate([voiced(300), quiet(400)]))
    await h.settle(0)
    await asyncio.sleep(0.1)
    assert len(h.errors) == 1 and h.errors[0].retryable
    await h.feed(np.concatenate([voiced(300), quiet(400)]))
    await h.settle(1)
    assert len(h.of(Transcript)) == 1
    await h.close()


async def test_aclose_cancels_pending_work_and_ends_events() -> None:
    fake = FakeTranscriber()
    fake.gate.clear()
    h = Harness(fake)
    await h.feed(np.concatenate([voiced(300), quiet(400)]))
    assert h.kinds() == ["SpeechStarted", "SpeechEnded"]
    await h.close()  # returns although the transcription is still blocked
    fake.gate.set()
    await asyncio.sleep(0.05)
    assert h.kinds() == ["SpeechStarted", "SpeechEnded"]
    with pytest.raises(InputError, match="closed"):
        h.session.feed(AudioChunk(quiet(20), RATE, 0.0))


class AsyncTranscriber(FakeTranscriber):
    """A transcriber with ``transcribe_async`` (as the ASR deployment's adapter): each call
    waits on ``release``; records calls started and calls cancelled."""

    concurrent = True

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()
        self.started: list[float] = []
        self.cancelled = 0

    async def transcribe_async(self, audio: np.ndarray) -> TranscriptResult:
        self.started.append(1000.0 * len(audio) / self.sample_rate_hz)
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return TranscriptResult(f"audio {round(self.started[-1])} ms", confidence=0.9)


async def test_a_dropped_speculation_cancels_the_remote_call() -> None:
    fake = AsyncTranscriber()
    h = Harness(fake)
    # Two pauses past speculative_after_ms but short of the endpoint, then the real end.
    await h.feed(np.concatenate([quiet(200), voiced(300), quiet(130), voiced(300), quiet(130),
                                 voiced(300), quiet(400)]))
    fake.release.set()
    await h.settle(1)
    # Both speculations were cancelled while they waited; the final call answered.
    assert fake.cancelled == 2 and len(fake.started) == 3
    assert h.of(Transcript)[0].text == f"audio {round(fake.started[-1])} ms"
    assert fake.calls == []  # the blocking path was never used
    await h.close()
