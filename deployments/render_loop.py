"""The renderer replica's frame clock: one batched render step for every video session.

Each tick samples every video session's animator at that session's media-clock time, renders
all of them in ONE call to the face renderer (off the event loop), and hands each session its
frame. A step that overruns the frame interval drops the ticks it missed (counted per
session) instead of drifting: the stream stays on time and never freezes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

import numpy as np

from deployments.live_session import LiveSession
from deployments.metrics import MetricsSink
from models.render.base import FaceRenderer

FrameSink = Callable[[LiveSession, np.ndarray, float], None]
log = logging.getLogger(__name__)


class RenderLoop:
    """Call :meth:`run` as a task; it renders while any session wants video.

    ``lead_ms`` renders each frame for that much later than now (one frame interval in the
    renderer), so a video track sending on its own frame grid finds a frame within half an
    interval of its time instead of up to a whole interval old."""

    def __init__(
        self,
        face: Callable[[], FaceRenderer],
        fps: int,
        sessions: Callable[[], Sequence[LiveSession]],
        metrics: MetricsSink,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        lead_ms: float = 0.0,
    ) -> None:
        self._face_factory = face
        self.lead_ms = lead_ms
        self._face: FaceRenderer | None = None
        self.interval_s = 1.0 / fps
        self._sessions = sessions
        self._metrics = metrics
        self._now = monotonic
        self.frames_rendered = 0
        self.frames_dropped = 0

    def face(self) -> FaceRenderer:
        if self._face is None:
            self._face = self._face_factory()
        return self._face

    async def render_once(self, batch: Sequence[LiveSession]) -> float:
        """Render one frame for each session of ``batch``; returns the step's milliseconds."""
        face = self.face()
        slots = [s.kit.avatar_slot for s in batch]
        pts = [s.clock.now_ms() + self.lead_ms for s in batch]
        params = np.stack([s.animator.sample(np.array([t]))[0] for s, t in zip(batch, pts,
                                                                                strict=True)])
        start = self._now()
        frames = await asyncio.to_thread(face.render, slots, params)
        step_ms = 1000.0 * (self._now() - start)
        for session, frame, t in zip(batch, frames, pts, strict=True):
            session.add_frame(frame, t)
        self.frames_rendered += len(batch)
        self._metrics.render_batch(step_ms)
        return step_ms

    async def run(self) -> None:
        next_tick = self._now()
        while True:
            batch = [s for s in self._sessions() if s.video and not s.closed.is_set()]
            if not batch:
                await asyncio.sleep(self.interval_s)
                next_tick = self._now()
                continue
            try:
                await self.render_once(batch)
            except Exception:  # one bad step must not stop video for every session
                log.exception("render step failed for %d sessions", len(batch))
            next_tick += self.interval_s
            late = self._now() - next_tick
            dropped = 0
            if late > 0:  # skip the ticks that already passed instead of bursting
                missed = int(late // self.interval_s) + 1
                dropped = missed * len(batch)
                next_tick += missed * self.interval_s
            self.frames_dropped += dropped
            self._metrics.frames(len(batch), dropped)
            await asyncio.sleep(max(0.0, next_tick - self._now()))
