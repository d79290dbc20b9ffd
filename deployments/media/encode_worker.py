"""One VP8 encoder process of an :class:`~deployments.media.encode.EncoderPool`.

``python -m deployments.media.encode_worker BITRATE FPS`` reads requests on stdin and writes
replies on stdout (the binary protocol of :mod:`deployments.media.encode`), holding one libvpx
encoder per session. It exits when stdin closes.
"""

from __future__ import annotations

import mmap
import os
import sys
from fractions import Fraction
from typing import Any, BinaryIO

import av
import numpy as np

from deployments.media.encode import (
    ATTACH,
    ENCODE,
    FAILED,
    RELEASE,
    REPLY,
    REQUEST,
    VIDEO_CLOCK_HZ,
)


def new_codec(width: int, height: int, bitrate: int, fps: int) -> Any:
    """A libvpx encoder with aiortc's real-time settings (see aiortc.codecs.vpx)."""
    codec = av.CodecContext.create("libvpx", "w")
    codec.width, codec.height = width, height
    codec.bit_rate = bitrate
    codec.pix_fmt = "yuv420p"
    codec.framerate = Fraction(fps, 1)
    codec.time_base = Fraction(1, VIDEO_CLOCK_HZ)
    codec.gop_size = 3000
    codec.qmin, codec.qmax = 2, 56
    codec.options = {
        "bufsize": str(bitrate), "cpu-used": "-6", "deadline": "realtime", "lag-in-frames": "0",
        "minrate": str(bitrate), "maxrate": str(bitrate), "noise-sensitivity": "4",
        "overshoot-pct": "15", "partitions": "0", "static-thresh": "1", "undershoot-pct": "100",
    }
    codec.thread_count = 1
    return codec


class Encoders:
    """The sessions' encoders of this process."""

    def __init__(self, bitrate: int, fps: int) -> None:
        self.bitrate, self.fps = bitrate, fps
        self.codecs: dict[int, Any] = {}
        self.frames: dict[int, mmap.mmap] = {}

    def attach(self, key: int, path: str) -> None:
        """Map the session's frame file (the renderer unlinks it once this has replied)."""
        fd = os.open(path, os.O_RDWR)
        try:
            self.frames[key] = mmap.mmap(fd, os.fstat(fd).st_size)
        finally:
            os.close(fd)

    def release(self, key: int) -> None:
        self.codecs.pop(key, None)
        shared = self.frames.pop(key, None)
        if shared is not None:
            shared.close()

    def encode_shared(self, key: int, pts: int, keyframe: bool, height: int,
                      width: int) -> bytes:
        """Encode the image the renderer left in session ``key``'s mapping (the view of the
        mapping ends with this call, so :meth:`release` can unmap it)."""
        shared = self.frames.get(key)
        if shared is None or len(shared) < height * width * 3:
            raise ValueError(f"session {key} has no frame mapping for {width}x{height}")
        image = np.frombuffer(shared, dtype=np.uint8, count=height * width * 3).reshape(
            height, width, 3)
        return self.encode(key, image, pts, keyframe)

    def encode(self, key: int, image: np.ndarray, pts: int, keyframe: bool) -> bytes:
        height, width = image.shape[:2]
        codec = self.codecs.get(key)
        if codec is None or (codec.width, codec.height) != (width, height):
            codec = self.codecs[key] = new_codec(width, height, self.bitrate, self.fps)
            keyframe = True
        frame = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format="yuv420p")
        frame.pts, frame.time_base = pts, Fraction(1, VIDEO_CLOCK_HZ)
        if keyframe:
            frame.pict_type = av.video.frame.PictureType.I
        return b"".join(bytes(packet) for packet in codec.encode(frame))


def _read(stream: BinaryIO, n: int) -> bytes | None:
    data = stream.read(n)
    return data if data is not None and len(data) == n else None


def serve(stdin: BinaryIO, stdout: BinaryIO, bitrate: int, fps: int) -> None:
    """Answer requests until stdin closes."""
    encoders = Encoders(bitrate, fps)
    stdout.write(REPLY.pack(0))  # ready: libvpx is loaded
    stdout.flush()
    while (header := _read(stdin, REQUEST.size)) is not None:
        op, key, pts, keyframe, height, width, size = REQUEST.unpack(header)
        payload = _read(stdin, size) if size else b""
        if payload is None:
            return
        if op == RELEASE:
            try:
                encoders.release(key)
            except BufferError:  # still viewed: the mapping goes when the view does
                pass
            continue
        try:
            if op == ATTACH:
                encoders.attach(key, payload.decode())
                data = b""
            elif op == ENCODE:
                data = encoders.encode_shared(key, pts, bool(keyframe), height, width)
            else:
                raise ValueError(f"unknown request {op}")
            stdout.write(REPLY.pack(len(data)) + data)
        except Exception as exc:  # one bad frame must not end the other sessions' video
            message = f"{type(exc).__name__}: {exc}".encode()[:2000]
            stdout.write(REPLY.pack(FAILED) + REPLY.pack(len(message)) + message)
        stdout.flush()


def main() -> None:
    bitrate, fps = int(sys.argv[1]), int(sys.argv[2])
    serve(sys.stdin.buffer, sys.stdout.buffer, bitrate, fps)


if __name__ == "__main__":
    main()
