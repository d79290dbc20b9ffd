"""One live session on a renderer replica: its conductor, animator, media clock and listeners.

The session's pump reads the conductor's output in order, feeds the animator (so the face
follows the reply's phonemes), reports each finished turn (store, metrics) and fans the wire
form of every event out to the session's subscribers (an SSE stream, a data channel). While
nobody listens, a bounded backlog keeps the newest events for the next subscriber.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from configs.schema import KnowledgeBaseConfig, PersonaConfig
from deployments.conductor import Conductor
from deployments.events import to_wire
from models.animate.animator import Animator
from models.clock import MediaClock
from models.errors import InputError
from models.frames import AudioChunk, ErrorEvent, TurnEnd
from models.guardrails.rails import Rails

WireEvent = tuple[str, dict[str, object]]
log = logging.getLogger(__name__)
BACKLOG_EVENTS = 256
SUBSCRIBER_QUEUE = 1024
_CLOSED: WireEvent = ("closed", {})
MAX_AUDIO_LEAD_MS = 40.0
"""How far client audio may run ahead of the media clock (network jitter) before its
timeline is re-anchored to the clock."""


@dataclass
class PersonaKit:
    """What sessions of one persona share on a replica."""

    persona: PersonaConfig
    knowledge_base: KnowledgeBaseConfig
    rails: Rails
    avatar_slot: int | None = None


@dataclass(eq=False)
class LiveSession:
    session_id: str
    kit: PersonaKit
    conductor: Conductor
    animator: Animator
    clock: MediaClock
    video: bool
    on_turn_end: Callable[[LiveSession, TurnEnd, bool], Awaitable[None]]
    created_ms: float = field(default_factory=lambda: time.time() * 1000.0)
    last_active_s: float = field(default_factory=time.monotonic)
    frame: np.ndarray | None = None
    frame_pts_ms: float = 0.0
    turns: int = 0
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    _subscribers: set[asyncio.Queue[WireEvent]] = field(default_factory=set)
    _backlog: deque[WireEvent] = field(default_factory=lambda: deque(maxlen=BACKLOG_EVENTS))
    _pump: asyncio.Task[None] | None = None
    _listeners: list[Callable[[object, WireEvent | None], None]] = field(default_factory=list)
    _frames: deque[tuple[float, np.ndarray]] = field(default_factory=lambda: deque(maxlen=4))
    peer: Any = None
    """The session's WebRTC peer, when a client connected one (deployments/media/peer.py)."""
    _next_audio_pts_ms: float = 0.0
    _turn_error: bool = False

    @property
    def tenant(self) -> str:
        return self.kit.persona.tenant

    def add_frame(self, frame: np.ndarray, pts_ms: float) -> None:
        """A rendered frame for media time ``pts_ms`` (the latest few are kept)."""
        self.frame = frame
        self.frame_pts_ms = pts_ms
        self._frames.append((pts_ms, frame))

    def frame_near(self, t_ms: float) -> np.ndarray | None:
        """The kept frame whose time is nearest ``t_ms`` (None before the first)."""
        if not self._frames:
            return None
        return min(self._frames, key=lambda item: abs(item[0] - t_ms))[1]

    def start(self) -> None:
        self._pump = asyncio.create_task(self._run_pump(), name=f"pump-{self.session_id}")

    # --- input ------------------------------------------------------------------------------

    def feed_pcm16(self, pcm: bytes, sample_rate_hz: int) -> int:
        """Little-endian mono PCM16 from the client; returns the samples taken."""
        if not isinstance(pcm, bytes | bytearray | memoryview):
            raise InputError("audio must be raw PCM16 bytes")
        if len(pcm) % 2:
            raise InputError(f"audio is {len(pcm)} bytes, not whole 16-bit samples; send "
                             "little-endian mono PCM16")
        samples = np.frombuffer(bytes(pcm), dtype="<i2").astype(np.int16)
        if not len(samples):
            raise InputError("audio is empty; send at least one sample")
        duration_ms = 1000.0 * len(samples) / max(1, int(sample_rate_hz))
        # Audio ended when it arrived, at the latest. Keep the timeline contiguous through
        # small jitter; after a burst, re-anchor to now rather than run ahead of the clock.
        now = self.clock.now_ms()
        pts = max(self._next_audio_pts_ms, now - duration_ms)
        if pts + duration_ms > now + MAX_AUDIO_LEAD_MS:
            pts = now - duration_ms
        self.conductor.feed_audio(AudioChunk(samples, int(sample_rate_hz), pts))
        self._next_audio_pts_ms = pts + duration_ms
        self.touch()
        return len(samples)

    def touch(self) -> None:
        self.last_active_s = time.monotonic()

    def idle_s(self) -> float:
        connected = self.peer is not None and not self.peer.closed.is_set()
        return 0.0 if self._subscribers or connected else time.monotonic() - self.last_active_s

    # --- output -----------------------------------------------------------------------------

    async def _run_pump(self) -> None:
        async for event in self.conductor.events():
            self.animator.on_event(event)
            if isinstance(event, ErrorEvent):
                self._turn_error = True
            if isinstance(event, TurnEnd):
                error, self._turn_error = self._turn_error, False
                if not event.continued:
                    self.turns += 1
                await self.on_turn_end(self, event, error)
            wire = to_wire(event)
            for listener in list(self._listeners):
                try:
                    listener(event, wire)
                except Exception:  # a broken media peer must not stop the session
                    log.exception("session %s: event listener failed", self.session_id)
            if wire is not None:
                self.publish(wire)

    def add_listener(self, listener: Callable[[object, WireEvent | None], None]) -> None:
        """Call ``listener(event, wire_or_None)`` for every conductor event from now on."""
        self._listeners.append(listener)

    def remove_listener(self, listener: Callable[[object, WireEvent | None], None]) -> None:
        with contextlib.suppress(ValueError):
            self._listeners.remove(listener)

    def publish(self, wire: WireEvent) -> None:
        if not self._subscribers:
            self._backlog.append(wire)
            return
        for queue in list(self._subscribers):
            try:
                queue.put_nowait(wire)
            except asyncio.QueueFull:  # a stalled client: cut it off, not the session
                self._subscribers.discard(queue)
                queue.get_nowait()
                queue.put_nowait(("error", {"message": "events were not read fast enough; "
                                            "reconnect to the events stream",
                                            "pts_ms": round(self.clock.now_ms(), 1)}))

    async def subscribe(self) -> AsyncIterator[WireEvent]:
        """The backlog, the current state, then every event until the session closes."""
        queue: asyncio.Queue[WireEvent] = asyncio.Queue(SUBSCRIBER_QUEUE)
        while self._backlog:
            queue.put_nowait(self._backlog.popleft())
        # Then the state right now, so a new listener is never left waiting for news.
        queue.put_nowait(("state", {"state": self.conductor.state,
                                    "pts_ms": round(self.clock.now_ms(), 1)}))
        if self.closed.is_set():
            queue.put_nowait(_CLOSED)
        self._subscribers.add(queue)
        try:
            while True:
                item = await queue.get()
                yield item
                if item[0] in ("closed", "error") and queue not in self._subscribers:
                    return
                if item is _CLOSED:
                    return
        finally:
            self._subscribers.discard(queue)
            self.touch()

    async def aclose(self) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        if self.peer is not None:
            await self.peer.close()
        await self.conductor.aclose()
        if self._pump is not None:
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump
        for queue in list(self._subscribers):
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(_CLOSED)

    def info(self) -> dict[str, object]:
        return {
            "session_id": self.session_id, "persona": self.kit.persona.name,
            "tenant": self.tenant, "state": self.conductor.state, "turns": self.turns,
            "video": self.video, "created_ms": round(self.created_ms, 1),
            "media": None if self.peer is None else self.peer.stats(),
        }
