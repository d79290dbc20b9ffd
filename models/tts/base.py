"""TTS: streaming audio chunks plus phoneme timings in ms on the audio clock.

A backend implements one blocking generator, :meth:`TTS.synthesize`. The base class owns the
async streaming, serialisation of non-reentrant engines, and cancellation.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Iterator

from models.frames import TTSChunk
from models.streaming import iterate_in_thread


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
