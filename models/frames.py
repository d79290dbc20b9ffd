"""Typed messages that flow between the stages of a conversation.

All are small frozen dataclasses with ``pts_ms``: a timestamp on the session's media clock
(:mod:`models.clock`). Control messages (:class:`Interrupt`, :class:`TurnEnd`) are distinct types
so a queue consumer can let them overtake data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

AvatarState = Literal["idle", "listening", "thinking", "speaking"]


@dataclass(frozen=True, slots=True)
class AudioChunk:
    """Mono PCM audio. ``pcm`` is int16; ``pts_ms`` is the time of its first sample."""

    pcm: np.ndarray
    sample_rate_hz: int
    pts_ms: float

    @property
    def duration_ms(self) -> float:
        return 1000.0 * len(self.pcm) / self.sample_rate_hz


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    """Voice activity began (the user is talking): triggers barge-in while the avatar speaks."""

    pts_ms: float


@dataclass(frozen=True, slots=True)
class SpeechEnded:
    """The last voiced audio of an utterance; ``pts_ms`` is its end on the media clock."""

    pts_ms: float


@dataclass(frozen=True, slots=True)
class Transcript:
    """Recognised text of a user utterance. ``is_final`` marks the end of the user's turn."""

    text: str
    is_final: bool
    pts_ms: float
    speech_end_ms: float | None = None
    """End of the speech this transcript covers (for latency marks), when known."""
    confidence: float | None = None


@dataclass(frozen=True, slots=True)
class TextDelta:
    """A piece of the avatar's reply text as the LLM streams it."""

    text: str
    pts_ms: float


@dataclass(frozen=True, slots=True)
class Clause:
    """A speakable piece of the reply, cut at a clause boundary."""

    text: str
    index: int
    pts_ms: float


@dataclass(frozen=True, slots=True)
class PhonemeTiming:
    """One phoneme (IPA) and where it sits on the audio, in ms from the start of its chunk's
    utterance (TTS backends) or on the session's media clock (conductor output)."""

    phoneme: str
    start_ms: float
    duration_ms: float


@dataclass(frozen=True, slots=True)
class TTSChunk:
    """What a TTS backend yields: audio and the phonemes inside it.

    ``offset_ms`` is where the chunk starts within the synthesised text; phoneme ``start_ms``
    values are on that same per-utterance timeline.
    """

    pcm: np.ndarray
    sample_rate_hz: int
    offset_ms: float
    phonemes: tuple[PhonemeTiming, ...] = ()

    @property
    def duration_ms(self) -> float:
        return 1000.0 * len(self.pcm) / self.sample_rate_hz


@dataclass(frozen=True, slots=True)
class SpeechAudio:
    """The avatar's reply audio placed on the session's media clock, with its phonemes
    (absolute ``start_ms`` on the same clock) for the animator."""

    pcm: np.ndarray
    sample_rate_hz: int
    pts_ms: float
    turn_id: int
    clause_index: int
    phonemes: tuple[PhonemeTiming, ...] = ()

    @property
    def duration_ms(self) -> float:
        return 1000.0 * len(self.pcm) / self.sample_rate_hz


@dataclass(frozen=True, slots=True)
class Passage:
    """A knowledge-base passage returned by retrieval."""

    text: str
    score: float
    source: str
    kb: str
    tenant: str
    answer: str | None = None
    """For Q&A entries: the curated answer to the matched question."""


@dataclass(frozen=True, slots=True)
class StateChange:
    state: AvatarState
    pts_ms: float


@dataclass(frozen=True, slots=True)
class Interrupt:
    """Barge-in: everything the avatar has queued for this turn is dropped."""

    pts_ms: float
    turn_id: int
    reason: str = "barge-in"


@dataclass(frozen=True, slots=True)
class TurnEnd:
    """The avatar finished (or abandoned) a reply."""

    pts_ms: float
    turn_id: int
    text: str
    refused: bool = False
    interrupted: bool = False
    marks: dict[str, float] = field(default_factory=dict)
    user_text: str = ""
    """What the user said or typed for this turn."""
    continued: bool = False
    """The user went on talking: this turn's words are asked again, whole, in the next turn."""


@dataclass(frozen=True, slots=True)
class ErrorEvent:
    """A recoverable problem reported to the client; the session goes on."""

    message: str
    pts_ms: float
