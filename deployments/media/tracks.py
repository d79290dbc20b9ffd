"""Outgoing WebRTC tracks of the avatar, paced by the session's media clock.

Each track hands out frames on a fixed grid of media time (20 ms audio, ``1000 / fps`` ms
video) and stamps each with its media time, so the RTP timestamps of voice and face follow one
clock and the browser can keep them in sync. A frame is never returned before its time; a
consumer that falls more than :data:`MAX_LATE_MS` behind jumps to the present instead of
building up latency.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import deque
from collections.abc import Awaitable, Callable
from fractions import Fraction

import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import AudioFrame, Packet, VideoFrame

from deployments.media.encode import VideoEncoder
from deployments.media.timeline import AudioTimeline
from models.clock import Clock
from models.errors import BackendError, ConfigError

log = logging.getLogger(__name__)
LATE_WINDOW = 1500
"""Frames whose send lateness is kept (a minute of video at 25 fps)."""
MAX_LATE_MS = 200.0
"""A frame later than this is skipped: the track jumps to the current grid slot."""
VIDEO_CLOCK_HZ = 90000
BLACK_SIZE_PX = 256

Sleep = Callable[[float], Awaitable[object]]
FrameSource = Callable[[float], np.ndarray | None]


class _Pacer:
    """Slots of ``period_ms`` on the media clock: slot ``n`` starts at ``n * period_ms``.
    ``late_ms`` keeps how late the recent frames left (slot start to hand-off to aiortc)."""

    def __init__(self, clock: Clock, period_ms: float, sleep: Sleep) -> None:
        self.clock = clock
        self.period_ms = period_ms
        self.sleep = sleep
        self.next_slot: int | None = None
        self.skipped = 0
        self.late_ms: deque[float] = deque(maxlen=LATE_WINDOW)

    def handed_off(self, start_ms: float) -> None:
        self.late_ms.append(self.clock.now_ms() - start_ms)

    def _slot_at(self, ms: float) -> int:
        return math.floor(ms / self.period_ms + 1e-9)

    async def wait_next(self, live: Callable[[], bool]) -> float:
        """Wait for the next slot's start, then return it (ms); skip ahead when far behind."""
        now = self.clock.now_ms()
        slot = self._slot_at(now) if self.next_slot is None else self.next_slot
        start = slot * self.period_ms
        if now - start > MAX_LATE_MS:
            current = self._slot_at(now)
            self.skipped += current - slot
            slot, start = current, current * self.period_ms
        while (now := self.clock.now_ms()) < start:
            # at least 1 µs, so a virtual clock always moves past float rounding
            await self.sleep(max((start - now) / 1000.0, 1e-6))
            if not live():
                raise MediaStreamError
        self.next_slot = slot + 1
        return start


class AvatarAudioTrack(MediaStreamTrack):
    """The avatar's voice: consecutive s16 mono frames read from an :class:`AudioTimeline`.

    Frame ``k`` covers media time ``t0 + k * frame_ms`` (``t0``: the clock at the first
    :meth:`recv`, rounded down to the frame grid); its ``pts`` is that time in samples, with
    ``time_base = 1 / sample_rate``. With the timeline's defaults these are 20 ms frames at
    48 kHz. ``sleep`` is injectable so tests can run in virtual time.
    """

    kind = "audio"

    def __init__(
        self, timeline: AudioTimeline, clock: Clock, *, sleep: Sleep = asyncio.sleep
    ) -> None:
        super().__init__()
        self.timeline = timeline
        self.clock = clock
        self._pacer = _Pacer(clock, float(timeline.frame_ms), sleep)
        self._time_base = Fraction(1, timeline.sample_rate_hz)
        self.frames_sent = 0

    @property
    def skipped_frames(self) -> int:
        """Frames jumped over because the consumer fell more than 200 ms behind."""
        return self._pacer.skipped

    @property
    def late_ms(self) -> list[float]:
        """How late each recent frame was handed to aiortc after its slot began (ms); for
        video with encoder processes, after its VP8 packet came back."""
        return list(self._pacer.late_ms)

    async def recv(self) -> AudioFrame:
        """The next frame of the avatar's voice, at (never before) its media time."""
        if self.readyState != "live":
            raise MediaStreamError
        start_ms = await self._pacer.wait_next(lambda: self.readyState == "live")
        pcm = self.timeline.frame(start_ms)
        frame = AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = self.timeline.sample_rate_hz
        frame.pts = round(start_ms * self.timeline.sample_rate_hz / 1000.0)
        frame.time_base = self._time_base
        self.frames_sent += 1
        self._pacer.handed_off(start_ms)
        return frame


class AvatarVideoTrack(MediaStreamTrack):
    """The avatar's face: one RGB image per ``1000 / fps`` ms slot of media time.

    ``frame_at(t_ms)`` gives the uint8 ``(H, W, 3)`` image to show at media time ``t_ms``, or
    ``None`` to repeat the last one (a black 256x256 image until there is one). ``pts`` is the
    slot's media time on the 90 kHz video clock.
    """

    kind = "video"

    def __init__(
        self, frame_at: FrameSource, clock: Clock, fps: int = 25, *, sleep: Sleep = asyncio.sleep
    ) -> None:
        super().__init__()
        if isinstance(fps, bool) or not isinstance(fps, int) or not 1 <= fps <= 120:
            raise ConfigError(f"video fps must be an integer from 1 to 120, got {fps!r}")
        self.frame_at = frame_at
        self.clock = clock
        self.fps = fps
        self._pacer = _Pacer(clock, 1000.0 / fps, sleep)
        self._last: np.ndarray | None = None
        self.frames_sent = 0
        self.encoder: VideoEncoder | None = None
        """Set (before the first frame) to send VP8 packets encoded in a worker process."""

    @property
    def skipped_frames(self) -> int:
        """Frames jumped over because the consumer fell more than 200 ms behind."""
        return self._pacer.skipped

    @property
    def late_ms(self) -> list[float]:
        """How late each recent frame was handed to aiortc after its slot began (ms); for
        video with encoder processes, after its VP8 packet came back."""
        return list(self._pacer.late_ms)

    async def recv(self) -> VideoFrame | Packet:
        """The next image of the avatar, at (never before) its media time: a frame for
        aiortc to encode, or the VP8 packet of it from :attr:`encoder`."""
        if self.readyState != "live":
            raise MediaStreamError
        start_ms = await self._pacer.wait_next(lambda: self.readyState == "live")
        image = self.frame_at(start_ms)
        if image is not None:
            self._last = _checked_image(image)
        elif self._last is None:
            self._last = np.zeros((BLACK_SIZE_PX, BLACK_SIZE_PX, 3), dtype=np.uint8)
        pts = round(start_ms * VIDEO_CLOCK_HZ / 1000.0)
        self.frames_sent += 1
        if self.encoder is not None:
            try:
                packet = await self.encoder.encode(self._last, pts)
                self._pacer.handed_off(start_ms)
                return packet
            except BackendError as exc:  # the stream goes on with aiortc's own encoder
                log.warning("video encoder process lost, encoding in-process: %s", exc)
                self.encoder.close()
                self.encoder = None
        frame = VideoFrame.from_ndarray(self._last, format="rgb24")
        frame.pts = pts
        frame.time_base = Fraction(1, VIDEO_CLOCK_HZ)
        self._pacer.handed_off(start_ms)
        return frame


def _checked_image(image: object) -> np.ndarray:
    if (
        not isinstance(image, np.ndarray)
        or image.dtype != np.uint8
        or image.ndim != 3
        or image.shape[2] != 3
        or image.shape[0] < 2
        or image.shape[1] < 2
    ):
        desc = (
            f"{image.dtype} array of shape {image.shape}"
            if isinstance(image, np.ndarray)
            else type(image).__name__
        )
        raise BackendError(
            f"the avatar's frame source must return RGB uint8 images of shape (H, W, 3), "
            f"got {desc}",
            retryable=False,
        )
    return np.ascontiguousarray(image)
