"""How a failed turn ends: the stage that failed, and the persona's apology kept as audio so
the avatar can still say it when the TTS fails.

A turn that cannot finish (a shared ASR, LLM or TTS replica died and the one retry failed too)
ends with the persona's short apology instead of silence. When the TTS itself is what failed,
the apology cannot be synthesised then: :class:`ApologyClips` synthesises it once per TTS and
apology text while the TTS is healthy (at session start, or when first needed) and keeps the
audio for every session of the process.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import AsyncIterator, Iterable
from typing import TypeVar

from models.errors import AvatarError
from models.frames import TTSChunk
from models.tts.base import TTS

SYNTH_TIMEOUT_S = 5.0
"""Longest wait for the apology's synthesis; after it the apology goes out as text only."""
log = logging.getLogger(__name__)

Clip = tuple[TTSChunk, ...]
Stage = str
"""Where a turn failed: ``asr``, ``knowledge``, ``llm`` or ``tts``."""
T = TypeVar("T")


class StageFailed(Exception):
    """A backend ``stage`` of a turn failed with ``error`` (after the adapter's own retry)."""

    def __init__(self, stage: Stage, error: AvatarError) -> None:
        super().__init__(f"{stage}: {error.message}")
        self.stage = stage
        self.error = error


async def staged(stage: Stage, items: AsyncIterator[T]) -> AsyncIterator[T]:
    """``items``, with a project error raised by them tagged with the stage that failed."""
    try:
        async for item in items:
            yield item
    except AvatarError as exc:
        raise StageFailed(stage, exc) from exc
    finally:
        aclose = getattr(items, "aclose", None)
        if aclose is not None:
            await aclose()


async def clip(chunks: Iterable[TTSChunk]) -> AsyncIterator[TTSChunk]:
    """A kept clip as a TTS stream."""
    for chunk in chunks:
        yield chunk


class ApologyClips:
    """Synthesised apology audio per TTS instance and text, shared by the sessions of a process.

    Concurrent requests for the same clip share one synthesis; a failed synthesis is not kept,
    so the next request while the TTS is healthy tries again.
    """

    def __init__(self, timeout_s: float = SYNTH_TIMEOUT_S) -> None:
        self.timeout_s = timeout_s
        self._clips: weakref.WeakKeyDictionary[TTS, dict[str, Clip]] = \
            weakref.WeakKeyDictionary()
        self._pending: dict[tuple[int, str], asyncio.Task[Clip | None]] = {}

    def get(self, tts: TTS, text: str) -> Clip | None:
        """The clip if it was synthesised already (never synthesises)."""
        return self._clips.get(tts, {}).get(text)

    async def ensure(self, tts: TTS, text: str) -> Clip | None:
        """The clip, synthesised now if needed; None when the TTS fails or is too slow."""
        clip = self.get(tts, text)
        if clip is not None:
            return clip
        task = self._task(tts, text, start=True)
        assert task is not None
        return await asyncio.shield(task)

    async def wait_pending(self, tts: TTS, text: str, timeout_s: float) -> Clip | None:
        """The clip if it exists or a synthesis already under way ends within ``timeout_s``;
        starts none (for when the TTS has just failed)."""
        clip = self.get(tts, text)
        task = None if clip is not None else self._task(tts, text, start=False)
        if task is None:
            return clip
        try:
            async with asyncio.timeout(timeout_s):
                return await asyncio.shield(task)
        except TimeoutError:
            return None

    def _task(self, tts: TTS, text: str, *, start: bool) -> asyncio.Task[Clip | None] | None:
        key = (id(tts), text)
        task = self._pending.get(key)
        loop = asyncio.get_running_loop()
        if task is not None and not task.done() and task.get_loop() is loop:
            return task
        if not start:
            return None
        task = loop.create_task(self._synthesize(tts, text), name="apology-clip")
        self._pending[key] = task
        task.add_done_callback(lambda done: self._forget(key, done))
        return task

    def _forget(self, key: tuple[int, str], task: asyncio.Task[Clip | None]) -> None:
        if self._pending.get(key) is task:
            del self._pending[key]

    async def _synthesize(self, tts: TTS, text: str) -> Clip | None:
        try:
            async with asyncio.timeout(self.timeout_s):
                clip = tuple([chunk async for chunk in tts.stream(text)])
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # best effort: the apology then goes out as text
            log.warning("could not synthesise the apology with the %s TTS: %s: %.200s",
                        tts.name, type(exc).__name__, exc)
            return None
        if not clip:
            return None
        self._clips.setdefault(tts, {})[text] = clip
        return clip


APOLOGY_CLIPS = ApologyClips()
"""The process-wide cache the conductors use unless given another."""
