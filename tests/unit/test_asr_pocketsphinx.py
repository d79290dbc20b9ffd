"""pocketsphinx light mode on piper-synthesised speech, alone and behind its own VAD."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from configs.schema import ASRConfig, VADConfig
from models.asr.metrics import normalize_words, wer
from models.asr.pocketsphinx import PocketsphinxTranscriber
from models.asr.stream import StreamingASR
from models.asr.vad import PocketsphinxVAD
from models.audio import to_float32
from models.clock import ManualClock
from models.errors import InputError
from models.frames import Transcript
from tests.speech import chunks, silence, speak

pytestmark = [pytest.mark.unit, pytest.mark.slow]

QUESTION = "I'd like to cancel my appointment."


@pytest.fixture(scope="module")
def sphinx() -> PocketsphinxTranscriber:
    return PocketsphinxTranscriber(ASRConfig(backend="pocketsphinx"))


def test_recognises_most_words(sphinx: PocketsphinxTranscriber) -> None:
    text = sphinx.transcribe(to_float32(speak(QUESTION))).text
    assert wer(QUESTION, text) <= 0.5, text
    assert {"cancel", "like"} <= set(normalize_words(text))


def test_silence_gives_no_words(sphinx: PocketsphinxTranscriber) -> None:
    assert sphinx.transcribe(np.zeros(16000, np.float32)).text == ""
    assert sphinx.transcribe(np.zeros(100, np.float32)).text == ""


def test_stereo_is_rejected(sphinx: PocketsphinxTranscriber) -> None:
    with pytest.raises(InputError, match="mono"):
        sphinx.transcribe(np.zeros((1600, 2), np.float32))


async def test_streaming_with_the_pocketsphinx_vad(sphinx: PocketsphinxTranscriber) -> None:
    config = ASRConfig(backend="pocketsphinx", vad=VADConfig(backend="pocketsphinx"))
    asr = StreamingASR(sphinx, lambda: PocketsphinxVAD(config.vad), config)
    session = asr.open_session(ManualClock())
    pcm = np.concatenate([silence(400), speak(QUESTION), silence(800)])
    for chunk in chunks(pcm, 16000, 20.0):
        session.feed(chunk)
    transcripts: list[Transcript] = []

    async def read() -> None:
        async for event in session.events():
            if isinstance(event, Transcript):
                transcripts.append(event)
                return

    await asyncio.wait_for(read(), 20.0)
    await session.aclose()
    assert "cancel" in normalize_words(transcripts[0].text)
