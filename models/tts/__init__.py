"""TTS layer: streaming synthesis with phoneme timings."""

from __future__ import annotations

from typing import TYPE_CHECKING

from models.registry import load_backend

if TYPE_CHECKING:
    from configs.schema import TTSConfig
    from models.tts.base import TTS

BACKENDS = {
    "espeak": "models.tts.espeak:EspeakTTS",
    "piper": "models.tts.piper:PiperTTS",
    "nemo": "models.tts.nemo:NemoTTS",
}


def create_tts(config: TTSConfig) -> TTS:
    return load_backend("tts", config.backend, BACKENDS)(config)
