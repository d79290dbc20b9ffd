"""ASR: streaming speech recognition with voice activity and endpointing.

A backend implements :class:`Transcriber` (one blocking ``transcribe`` of an utterance) and may
offer a :class:`VoiceActivityDetector`. :class:`StreamingASR` owns the cross-cutting work for a
session: resampling to 16 kHz, VAD framing, endpointing (the end of the user's turn), early
(speculative) transcription during the endpoint wait, cancellation and timing.

Events a session emits, in order for each utterance::

    SpeechStarted(pts_ms)          voiced audio began (barge-in trigger)
    SpeechEnded(pts_ms)            endpoint: the user's turn is over; pts_ms = end of speech
    Transcript(text, is_final=True, speech_end_ms=...)   the recognised words ('' = nothing)
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass

import numpy as np

from models.frames import AudioChunk, SpeechEnded, SpeechStarted, Transcript

ASREvent = SpeechStarted | SpeechEnded | Transcript


@dataclass(frozen=True, slots=True)
class TranscriptResult:
    text: str
    confidence: float | None = None


class Transcriber(ABC):
    """Turns one utterance (float32 mono at ``sample_rate_hz``, -1..1) into text. Blocking."""

    name: str = "transcriber"
    sample_rate_hz: int = 16000
    concurrent: bool = False
    """True when ``transcribe`` may run for several utterances at once (a remote deployment);
    False serialises the calls of one :class:`StreamingASR`."""

    @abstractmethod
    def transcribe(self, audio: np.ndarray) -> TranscriptResult: ...

    def warmup(self) -> None:
        """Run once on silence so the first real request is not slow."""
        self.transcribe(np.zeros(self.sample_rate_hz // 2, dtype=np.float32))


class VoiceActivityDetector(ABC):
    """Speech probability for fixed-size frames of float32 16 kHz audio. Stateful per stream."""

    frame_samples: int = 512

    @abstractmethod
    def speech_probability(self, frame: np.ndarray) -> float: ...

    @abstractmethod
    def reset(self) -> None: ...


class ASRSession(ABC):
    """One user's audio stream. ``feed`` never blocks; events arrive on ``events()``."""

    @abstractmethod
    def feed(self, chunk: AudioChunk) -> None:
        """Queue audio (int16 mono, any supported rate). Raises InputError on bad audio."""

    @abstractmethod
    def events(self) -> AsyncIterator[ASREvent]: ...

    @abstractmethod
    async def aclose(self) -> None: ...
