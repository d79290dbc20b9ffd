"""Voice-activity detectors on synthetic speech, silence and noise."""

from __future__ import annotations

import numpy as np
import pytest

from configs.schema import VADConfig
from models.asr import VADS, create_vad
from models.asr.base import VoiceActivityDetector
from models.asr.vad import EnergyVAD, PocketsphinxVAD, SileroVAD
from models.audio import to_float32
from models.errors import InputError
from tests.speech import speak

pytestmark = [pytest.mark.unit, pytest.mark.slow]

FRAME = 512


def frames(audio: np.ndarray) -> list[np.ndarray]:
    return [audio[i : i + FRAME] for i in range(0, len(audio) - FRAME + 1, FRAME)]


def voiced_share(vad: VoiceActivityDetector, audio: np.ndarray, threshold: float = 0.5) -> float:
    vad.reset()
    probs = [vad.speech_probability(f) for f in frames(audio)]
    assert all(0.0 <= p <= 1.0 for p in probs)
    return float(np.mean([p >= threshold for p in probs]))


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    return to_float32(speak("Do you take walk-in patients or do I need an appointment?"))


@pytest.mark.parametrize("cls", [SileroVAD, PocketsphinxVAD, EnergyVAD])
def test_speech_is_voiced_and_silence_is_not(cls: type, speech: np.ndarray) -> None:
    vad = cls(VADConfig())
    assert voiced_share(vad, speech) > 0.6
    assert voiced_share(vad, np.zeros(16000, np.float32)) == 0.0


def test_silero_rejects_white_noise_and_hum(speech: np.ndarray) -> None:
    rng = np.random.default_rng(3)
    vad = SileroVAD(VADConfig())
    noise = (rng.standard_normal(32000) * 0.1).astype(np.float32)
    hum = (0.3 * np.sin(2 * np.pi * 50 * np.arange(32000) / 16000)).astype(np.float32)
    assert voiced_share(vad, noise) < 0.1
    assert voiced_share(vad, hum) < 0.1
    # Its recurrent state and 64-sample context carry over between frames (the hum run above
    # changes the answers), and reset() clears them.
    carried = [vad.speech_probability(f) for f in frames(speech)[:20]]
    vad.reset()
    first = [vad.speech_probability(f) for f in frames(speech)[:20]]
    assert not np.allclose(carried, first, rtol=1e-3)
    vad.reset()
    again = [vad.speech_probability(f) for f in frames(speech)[:20]]
    np.testing.assert_allclose(first, again, rtol=1e-5)


@pytest.mark.parametrize("cls", [SileroVAD, PocketsphinxVAD, EnergyVAD])
def test_wrong_frame_size_is_an_input_error(cls: type) -> None:
    with pytest.raises(InputError, match="512 samples"):
        cls(VADConfig()).speech_probability(np.zeros(480, np.float32))


@pytest.mark.parametrize("name", sorted(VADS))
def test_registry_builds_every_vad(name: str) -> None:
    vad = create_vad(VADConfig(backend=name))  # type: ignore[arg-type]
    assert isinstance(vad, VoiceActivityDetector)
    assert vad.frame_samples == FRAME
