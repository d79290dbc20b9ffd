"""Fuzzing audio input: arrays of any dtype, shape and value, any sample rate and timestamp,
either pass validation and feed the streaming ASR or raise InputError with a message; the
session keeps working afterwards."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings

from configs.schema import ASRConfig, VADConfig
from models.asr.base import Transcriber, TranscriptResult
from models.asr.stream import StreamingASR
from models.asr.vad import EnergyVAD
from models.audio import validate_pcm
from models.clock import ManualClock
from models.errors import InputError
from models.frames import AudioChunk, SpeechStarted
from tests.fuzz.harness import Loop
from tests.fuzz.strategies import FUZZ, SAMPLE_RATES, TIMESTAMPS, audio_arrays

pytestmark = [pytest.mark.unit]

RATES = (8000, 16000, 24000, 32000, 44100, 48000)
MAX_MS = 1000


class SilentTranscriber(Transcriber):
    """Hears nothing: the fuzzing is about the input edge, not about the words."""

    name = "silent"

    def transcribe(self, audio: np.ndarray) -> TranscriptResult:
        return TranscriptResult("")


@pytest.fixture(scope="module")
def stream():
    loop = Loop()
    asr = StreamingASR(SilentTranscriber(), EnergyVAD, ASRConfig(vad=VADConfig()))

    async def open_session():
        return asr.open_session(ManualClock(), RATES, MAX_MS)

    session = loop.run(open_session())
    yield loop, session
    loop.run(session.aclose())
    loop.close()


@settings(FUZZ, max_examples=400)
@given(pcm=audio_arrays(), rate=SAMPLE_RATES)
def test_validate_pcm_accepts_only_int16_mono_at_an_allowed_rate_or_says_why(pcm, rate):
    try:
        validate_pcm(pcm, rate, RATES, MAX_MS)
    except InputError as exc:
        assert exc.message
        return
    assert isinstance(pcm, np.ndarray) and pcm.dtype == np.int16 and pcm.ndim == 1
    assert rate in RATES and 0 < pcm.size <= int(rate) * MAX_MS / 1000


@settings(FUZZ, max_examples=400)
@given(pcm=audio_arrays(), rate=SAMPLE_RATES, pts=TIMESTAMPS)
def test_feed_takes_good_chunks_and_refuses_the_rest_with_input_error(stream, pcm, rate, pts):
    loop, session = stream

    async def feed() -> None:
        session.feed(AudioChunk(pcm, rate, pts))  # type: ignore[arg-type]

    try:
        loop.run(feed())
    except InputError as exc:
        assert exc.message


def test_the_stream_still_hears_speech_after_the_fuzzing(stream):
    loop, session = stream
    t = np.arange(16000) / 16000
    tone = (0.5 * 32767 * np.sin(2 * np.pi * 220 * t)).astype(np.int16)

    async def speak_and_listen() -> object:
        events = session.events()
        for start in range(0, 16000, 1600):
            session.feed(AudioChunk(tone[start:start + 1600], 16000, 10_000.0 + start / 16))
        while True:
            event = await events.__anext__()
            if isinstance(event, SpeechStarted):
                return event

    event = loop.run(speak_and_listen())
    assert isinstance(event, SpeechStarted)


@pytest.mark.parametrize("pts", [10**400, -(10**400), 1e308, "0", None, [1.0], True])
def test_regression_a_timestamp_that_is_not_a_real_number_is_refused(stream, pts):
    loop, session = stream

    async def feed() -> None:
        session.feed(AudioChunk(np.zeros(160, np.int16), 16000, pts))  # type: ignore[arg-type]

    with pytest.raises(InputError, match="pts_ms"):
        loop.run(feed())


def test_regression_big_endian_int16_is_refused_with_a_message_that_names_the_byte_order():
    with pytest.raises(InputError, match="byte order") as refused:
        validate_pcm(np.zeros(160, ">i2"), 16000, RATES, MAX_MS)
    assert ">i2" in refused.value.message
