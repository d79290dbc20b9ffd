"""VP8 encoding in worker processes, so one renderer's video sessions spread over its cores.

By default aiortc encodes each peer's frames in a thread of the renderer's process. libvpx
itself runs outside the GIL, but colour conversion, packet handling and the asyncio glue of
every peer share that one process, which tops out near five 512 px VP8 peers. With
``cluster.webrtc.encoder_processes`` > 0 the renderer starts an :class:`EncoderPool`: each video
session gets a :class:`VideoEncoder` bound to one worker process (VP8 is stateful, so a session
stays on its process), the video track awaits the encoded frame without blocking the event
loop, and hands aiortc a finished VP8 packet, which aiortc only splits into RTP packets.

Keyframes: the first frame, every ``keyframe_interval_s``, and whenever the browser asks with a
picture-loss indication (see :func:`forward_keyframe_requests`). The bitrate is fixed
(``cluster.webrtc.video_bitrate_kbps``, constant bitrate as aiortc's own encoder does).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import mmap
import os
import struct
import sys
import tempfile
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from models.errors import BackendError, ConfigError

VIDEO_CLOCK_HZ = 90000
log = logging.getLogger(__name__)

# Requests: op, session, pts, keyframe, height, width, payload bytes; then the payload.
# ATTACH's payload is the path of the session's frame file (the worker maps it; the renderer
# then unlinks it); ENCODE has none: the RGB image is in that shared mapping. Replies (to
# ATTACH and ENCODE, in request order): length, then the VP8 frame (empty for ATTACH);
# length FAILED and a UTF-8 message if it failed. RELEASE has no reply.
REQUEST = struct.Struct("<BIqBHHI")
REPLY = struct.Struct("<I")
ENCODE, RELEASE, ATTACH = 1, 2, 3
FAILED = 0xFFFFFFFF
SHM_DIR = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())
_ROOT = str(Path(__file__).resolve().parents[2])


class _Process:
    """One encoder process and the replies it still owes, in request order."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.pending: collections.deque[asyncio.Future[bytes]] = collections.deque()
        self.sessions = 0
        self.dead: str | None = None
        self.reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        stdout = self.proc.stdout
        assert stdout is not None
        try:
            while True:
                (length,) = REPLY.unpack(await stdout.readexactly(REPLY.size))
                if length == FAILED:
                    (n,) = REPLY.unpack(await stdout.readexactly(REPLY.size))
                    message = (await stdout.readexactly(n)).decode("utf-8", "replace")
                    self._resolve(exc=BackendError(f"VP8 encoding failed: {message}"))
                else:
                    self._resolve(data=await stdout.readexactly(length))
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            self.dead = f"video encoder process {self.proc.pid} exited ({exc})"
        except asyncio.CancelledError:
            self.dead = "the video encoder pool is stopped"
            raise
        finally:
            while self.pending:
                self._resolve(exc=BackendError(self.dead or "video encoder stopped"))

    def _resolve(self, data: bytes = b"", exc: BaseException | None = None) -> None:
        future = self.pending.popleft()
        if future.done():  # its caller gave up (cancelled); the reply is dropped
            return
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(data)

    def send(self, header: bytes, payload: bytes = b"", reply: bool = True
             ) -> asyncio.Future[bytes] | None:
        if self.dead is not None:
            raise BackendError(f"{self.dead}; reconnect to get a new encoder")
        stdin = self.proc.stdin
        assert stdin is not None
        stdin.write(header + payload)
        if not reply:
            return None
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.pending.append(future)
        return future


class EncoderPool:
    """``processes`` encoder processes shared by one renderer's video sessions."""

    def __init__(self, processes: int, *, bitrate_kbps: int = 600, fps: int = 25,
                 keyframe_interval_s: float = 4.0) -> None:
        if processes < 1:
            raise ConfigError(f"encoder_processes must be at least 1 for a pool, got "
                              f"{processes}; use 0 to encode in the renderer's own threads")
        self.processes = processes
        self.bitrate = bitrate_kbps * 1000
        self.fps = fps
        self.keyframe_interval_ms = keyframe_interval_s * 1000.0
        self._procs: list[_Process] = []
        self._ids = itertools.count(1)
        self._starting: asyncio.Future[None] | None = None

    @property
    def started(self) -> bool:
        return bool(self._procs)

    @property
    def pids(self) -> list[int]:
        return [p.proc.pid for p in self._procs]

    async def start(self) -> None:
        """Start the processes (``python -m deployments.media.encode_worker``, about 0.3 s)
        and wait until each has loaded libvpx. Safe to call again."""
        if self._procs:
            return
        if self._starting is None:
            self._starting = asyncio.ensure_future(self._spawn())
        await asyncio.shield(self._starting)

    async def _spawn(self) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_ROOT, env.get("PYTHONPATH")) if p)
        procs = []
        for _ in range(self.processes):
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "deployments.media.encode_worker", str(self.bitrate),
                str(self.fps), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                env=env)
            assert proc.stdout is not None
            try:
                ready = await asyncio.wait_for(proc.stdout.readexactly(REPLY.size), 60)
            except (asyncio.IncompleteReadError, TimeoutError):
                proc.kill()
                raise BackendError("a video encoder process did not start (is PyAV "
                                   "installed?)") from None
            assert REPLY.unpack(ready)[0] == 0
            procs.append(_Process(proc))
        self._procs = procs

    def open(self) -> VideoEncoder:
        """An encoder for one session, on the live process with the fewest sessions."""
        live = [i for i, p in enumerate(self._procs) if p.dead is None]
        if not live:
            raise BackendError("the video encoder pool is not running; start() it first")
        index = min(live, key=lambda i: self._procs[i].sessions)
        self._procs[index].sessions += 1
        return VideoEncoder(self, index, next(self._ids))

    def sessions_per_process(self) -> list[int]:
        return [p.sessions for p in self._procs]

    async def _call(self, index: int, op: int, key: int, pts: int = 0, keyframe: bool = False,
                    height: int = 0, width: int = 0, payload: bytes = b"") -> bytes:
        if index >= len(self._procs):
            raise BackendError("the video encoder pool is stopped; reconnect")
        header = REQUEST.pack(op, key, pts, keyframe, height, width, len(payload))
        future = self._procs[index].send(header, payload)
        assert future is not None
        return await future

    def _close(self, index: int, key: int) -> None:
        if index < len(self._procs):
            proc = self._procs[index]
            proc.sessions -= 1
            if proc.dead is None:
                proc.send(REQUEST.pack(RELEASE, key, 0, 0, 0, 0, 0), reply=False)

    async def shutdown(self) -> None:
        """Stop the processes; a session still open gets a BackendError on its next frame."""
        procs, self._procs, self._starting = self._procs, [], None
        for p in procs:
            p.reader.cancel()
            if p.proc.returncode is None:
                p.proc.kill()
        for p in procs:
            await p.proc.wait()


class VideoEncoder:
    """One session's VP8 encoder in an :class:`EncoderPool` process. Frames travel through a
    memory mapping the two processes share; only a small header crosses the pipe."""

    def __init__(self, pool: EncoderPool, index: int, key: int) -> None:
        self.pool = pool
        self.index = index
        self.key = key
        self.frames = 0
        self.keyframes = 0
        self._want_keyframe = True
        self._last_keyframe_ms = 0.0
        self._closed = False
        self._shared: mmap.mmap | None = None
        self._shape: tuple[int, ...] = ()

    def request_keyframe(self) -> None:
        """Make the next frame a keyframe (the browser lost a picture)."""
        self._want_keyframe = True

    async def _share(self, shape: tuple[int, ...]) -> mmap.mmap:
        """A mapping for frames of ``shape``, mapped by the worker too (new on a size change)."""
        if self._shared is not None and shape == self._shape:
            return self._shared
        size = int(np.prod(shape))
        fd, path = tempfile.mkstemp(prefix="avatar-frames-", dir=SHM_DIR)
        try:
            os.ftruncate(fd, size)
            shared = mmap.mmap(fd, size)
            await self.pool._call(self.index, ATTACH, self.key, payload=path.encode())
        finally:
            os.close(fd)
            os.unlink(path)  # both sides keep their mapping; nothing is left behind
        if self._shared is not None:
            self._shared.close()
        self._shared, self._shape = shared, shape
        return shared

    async def encode(self, image: np.ndarray, pts: int) -> Any:
        """``image`` (RGB uint8) at ``pts`` (90 kHz) as a VP8 :class:`av.Packet` for aiortc."""
        import av

        if self._closed:
            raise BackendError("this video encoder is closed")
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise BackendError(f"frames must be RGB uint8 (H, W, 3), got {image.dtype} "
                               f"{image.shape}", retryable=False)
        at_ms = pts * 1000.0 / VIDEO_CLOCK_HZ
        keyframe = self._want_keyframe or at_ms - self._last_keyframe_ms >= \
            self.pool.keyframe_interval_ms
        shared = await self._share(image.shape)
        np.frombuffer(shared, dtype=np.uint8).reshape(image.shape)[:] = image
        self._want_keyframe = False
        height, width = image.shape[:2]
        data = await self.pool._call(self.index, ENCODE, self.key, pts, keyframe, height, width)
        if keyframe:
            self.keyframes += 1
            self._last_keyframe_ms = at_ms
        self.frames += 1
        packet = av.Packet(data)
        packet.pts = pts
        packet.time_base = Fraction(1, VIDEO_CLOCK_HZ)
        return packet

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.pool._close(self.index, self.key)
            shared, self._shared = self._shared, None
            if shared is not None:
                with contextlib.suppress(BufferError):  # a view outlives us: GC unmaps it
                    shared.close()


def forward_keyframe_requests(pc: Any, encoder: VideoEncoder) -> bool:
    """Route the browser's picture-loss requests on ``pc``'s video sender to ``encoder``
    (aiortc only forwards them to encoders it runs itself). False if there is no video
    sender."""
    for sender in pc.getSenders():
        if sender.track is not None and sender.track.kind == "video":
            sender._send_keyframe = _chained(encoder.request_keyframe, sender._send_keyframe)
            return True
    return False


def _chained(first: Any, then: Any) -> Any:
    def call() -> None:
        first()
        then()

    return call
