"""TTS: streaming audio chunks plus phoneme timings in ms on the audio clock.

A backend implements one blocking generator, :meth:`TTS.synthesize`. The base class owns the
async streaming, serialisation of non-reentrant engines, and cancellation.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING

import numpy as np

from models.frames import PhonemeTiming, TTSChunk
from models.streaming import iterate_in_thread

if TYPE_CHECKING:
    from configs.schema import TTSConfig


class TTS(ABC):
    name: str = "tts"
    sample_rate_hz: int = 22050
    reentrant: bool = False
    """False when one engine instance cannot synthesise two texts at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    @abstractmethod
    def synthesize(self, text: str, stop: threading.Event | None = None) -> Iterator[TTSChunk]:
        """Yield int16 mono chunks as soon as they exist. ``offset_ms`` and phoneme
        ``start_ms`` are on a timeline starting at 0 for this text. Stop early when ``stop``
        is set."""

    async def stream(self, text: str) -> AsyncIterator[TTSChunk]:
        """Async, cancellable view of :meth:`synthesize` run in a worker thread."""
        lock = None if self.reentrant else self._lock
        async for chunk in iterate_in_thread(lambda stop: self.synthesize(text, stop), lock=lock):
            yield chunk

    def warmup(self) -> None:
        for _ in self.synthesize("Hello."):
            pass


class SentenceTTS(TTS):
    """A backend that synthesises whole sentences: the base streams them, each cut into
    ``chunk_ms`` chunks as soon as it exists, and stops between sentences and chunks."""

    def __init__(self, config: TTSConfig) -> None:
        super().__init__()
        self.config = config
        self.chunk_ms = config.chunk_ms

    @abstractmethod
    def _sentence(
        self, sentence: str, offset_samples: int
    ) -> tuple[np.ndarray, list[PhonemeTiming]]:
        """One sentence's int16 audio and its phoneme timings, placed after
        ``offset_samples`` on the text's timeline."""

    def synthesize(self, text: str, stop: threading.Event | None = None) -> Iterator[TTSChunk]:
        from models.tts.phonemes import chunk_audio, normalize_text, samples_to_ms, split_sentences

        text = normalize_text(text)
        rate = self.sample_rate_hz
        offset_samples = 0
        for sentence in split_sentences(text):
            if stop is not None and stop.is_set():
                return
            pcm, timings = self._sentence(sentence, offset_samples)
            offset_ms = samples_to_ms(offset_samples, rate)
            for chunk in chunk_audio(pcm, rate, offset_ms, timings, self.chunk_ms):
                if stop is not None and stop.is_set():
                    return
                yield chunk
            offset_samples += len(pcm)
