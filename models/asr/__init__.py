"""ASR layer: transcribers, voice-activity detectors and the streaming session."""

from __future__ import annotations

from typing import TYPE_CHECKING

from models.registry import load_backend

if TYPE_CHECKING:
    from configs.schema import ASRConfig, VADConfig
    from models.asr.base import Transcriber, VoiceActivityDetector

TRANSCRIBERS = {
    "whisper": "models.asr.whisper:WhisperTranscriber",
    "pocketsphinx": "models.asr.pocketsphinx:PocketsphinxTranscriber",
    "nemo": "models.asr.nemo:NemoTranscriber",
}
VADS = {
    "silero": "models.asr.vad:SileroVAD",
    "pocketsphinx": "models.asr.vad:PocketsphinxVAD",
    "energy": "models.asr.vad:EnergyVAD",
}


def create_transcriber(config: ASRConfig) -> Transcriber:
    return load_backend("asr", config.backend, TRANSCRIBERS)(config)


def create_vad(config: VADConfig) -> VoiceActivityDetector:
    return load_backend("asr.vad", config.backend, VADS)(config)
