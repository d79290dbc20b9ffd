"""ASR layer: transcribers, voice-activity detectors and the streaming session."""

from __future__ import annotations

from typing import TYPE_CHECKING

from models.asr.base import (
    ASREvent,
    ASRSession,
    Transcriber,
    TranscriptResult,
    VoiceActivityDetector,
)
from models.registry import load_backend

if TYPE_CHECKING:
    from configs.schema import ASRConfig, VADConfig
    from models.asr.stream import StreamingASR

__all__ = [
    "TRANSCRIBERS",
    "VADS",
    "ASREvent",
    "ASRSession",
    "Transcriber",
    "TranscriptResult",
    "VoiceActivityDetector",
    "create_streaming_asr",
    "create_transcriber",
    "create_vad",
]

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
    """Construct the transcriber named by ``config.backend`` (imports only that backend)."""
    return load_backend("asr", config.backend, TRANSCRIBERS)(config)


def create_vad(config: VADConfig) -> VoiceActivityDetector:
    """Construct the voice-activity detector named by ``config.backend``."""
    return load_backend("asr.vad", config.backend, VADS)(config)


def create_streaming_asr(config: ASRConfig, transcriber: Transcriber | None = None) -> StreamingASR:
    """A :class:`~models.asr.stream.StreamingASR` for ``config``: its transcriber (built here
    unless given) and a factory making one VAD per session."""
    from models.asr.stream import StreamingASR

    vad_class = load_backend("asr.vad", config.vad.backend, VADS)
    return StreamingASR(
        transcriber or create_transcriber(config), lambda: vad_class(config.vad), config
    )
