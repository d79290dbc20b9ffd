"""The ASR deployment's class: one utterance at a time, and a cancelled call never runs."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from configs.schema import AppConfig
from deployments.workers import ASRWorker
from models.asr.base import Transcriber, TranscriptResult
from models.errors import InputError

pytestmark = pytest.mark.unit


class GatedTranscriber(Transcriber):
    name = "gated"

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.calls = 0

    def transcribe(self, audio: np.ndarray) -> TranscriptResult:
        self.calls += 1
        self.gate.wait(5.0)
        return TranscriptResult(f"call {self.calls}")


@pytest.fixture
def worker() -> ASRWorker:
    config = AppConfig.model_validate({"models": {"asr": {"backend": "pocketsphinx"}}})
    w = ASRWorker(config, warmup=False)
    w.transcriber = GatedTranscriber()
    return w


async def test_a_call_cancelled_while_queued_never_runs(worker: ASRWorker) -> None:
    fake = worker.transcriber
    assert isinstance(fake, GatedTranscriber)
    first = asyncio.ensure_future(worker.transcribe(np.zeros(1600, np.float32)))
    await asyncio.sleep(0.05)
    queued = asyncio.ensure_future(worker.transcribe(np.zeros(1600, np.float32)))
    await asyncio.sleep(0.05)
    queued.cancel()  # a speculation the user talked over
    fake.gate.set()
    assert (await first).text == "call 1"
    with pytest.raises(asyncio.CancelledError):
        await queued
    third = await worker.transcribe(np.zeros(1600, np.float32))
    assert third.text == "call 2" and fake.calls == 2


async def test_bad_audio_is_refused_with_what_to_change(worker: ASRWorker) -> None:
    with pytest.raises(InputError, match="mono"):
        await worker.transcribe(np.zeros((2, 100), np.float32))
