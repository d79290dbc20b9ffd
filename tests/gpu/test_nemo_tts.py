"""NeMo FastPitch + HiFi-GAN on a real GPU: audio, phoneme timings, cancellation."""

from __future__ import annotations

import importlib.util
import threading

import numpy as np
import pytest

from configs.schema import TTSConfig
from models.errors import InputError
from models.tts.base import TTS
from models.tts.phonemes import SILENCE

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.slow,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.skipif(
        importlib.util.find_spec("nemo") is None, reason="needs nemo_toolkit[tts] (gpu extra)"
    ),
]

TEXT = "Hello there. The clinic opens at nine, and closes at five on weekdays."


@pytest.fixture(scope="module")
def nemo() -> TTS:
    from models.tts.nemo import NemoTTS

    tts = NemoTTS(TTSConfig(backend="nemo", device="cuda", chunk_ms=200))
    tts.warmup()
    return tts


def test_speech_with_phoneme_timings(nemo: TTS) -> None:
    chunks = list(nemo.synthesize(TEXT))
    audio = np.concatenate([c.pcm for c in chunks]).astype(np.float64)
    total_ms = sum(c.duration_ms for c in chunks)
    assert all(c.pcm.dtype == np.int16 and c.duration_ms <= 200.0 + 1e-6 for c in chunks)
    assert 2000 < total_ms < 8000
    assert np.sqrt(np.mean(audio**2)) > 300
    phonemes = [p for c in chunks for p in c.phonemes]
    starts = [p.start_ms for p in phonemes]
    assert starts == sorted(starts)
    assert phonemes[-1].start_ms + phonemes[-1].duration_ms == pytest.approx(total_ms, abs=50)
    speech = [p.phoneme for p in phonemes if p.phoneme != SILENCE]
    assert len(speech) > 30
    assert not any(ch.isupper() or ch.isdigit() for name in speech for ch in name)


def test_stop_and_bad_input(nemo: TTS) -> None:
    stop = threading.Event()
    got = []
    for chunk in nemo.synthesize(TEXT + " " + TEXT, stop):
        got.append(chunk)
        stop.set()
    assert len(got) == 1
    with pytest.raises(InputError):
        list(nemo.synthesize("?!"))
