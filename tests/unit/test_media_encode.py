"""VP8 encoding in worker processes: sessions spread over processes, frames decode back to
the image, keyframes come when asked, and failures are clear errors."""

from __future__ import annotations

import asyncio
from fractions import Fraction

import av
import numpy as np
import pytest

from deployments.media.encode import VIDEO_CLOCK_HZ, EncoderPool
from deployments.media.peer import negotiated_codec
from models.errors import BackendError, ConfigError

pytestmark = pytest.mark.unit


def image(t: int, size: int = 128) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size]
    out = np.zeros((size, size, 3), np.uint8)
    out[..., 0] = (x * 2 + t * 4) % 256
    out[..., 1] = (y * 2) % 256
    out[..., 2] = 128
    return out


def is_keyframe(data: bytes) -> bool:
    return len(data) > 0 and data[0] & 1 == 0  # VP8 frame tag: bit 0 clear on keyframes


@pytest.fixture
async def pool():
    pool = EncoderPool(2, bitrate_kbps=800, keyframe_interval_s=2.0)
    await pool.start()
    yield pool
    await pool.shutdown()


async def test_sessions_spread_over_processes_and_decode_back(pool: EncoderPool) -> None:
    a, b = pool.open(), pool.open()
    assert {a.index, b.index} == {0, 1} and pool.sessions_per_process() == [1, 1]
    assert len(set(pool.pids)) == 2
    decoder = av.CodecContext.create("libvpx", "r")
    errors = []
    for t in range(10):
        pts = t * VIDEO_CLOCK_HZ // 25
        packet, _ = await asyncio.gather(a.encode(image(t), pts), b.encode(image(t), pts))
        assert packet.pts == pts and packet.time_base == Fraction(1, VIDEO_CLOCK_HZ)
        assert is_keyframe(bytes(packet)) == (t == 0)
        for frame in decoder.decode(packet):
            decoded = frame.to_ndarray(format="rgb24").astype(float)
            errors.append(np.abs(decoded - image(t)).mean())
    assert len(errors) == 10 and np.median(errors) < 12, errors
    a.close()
    b.close()
    assert pool.sessions_per_process() == [0, 0]


async def test_keyframes_on_request_and_at_the_interval(pool: EncoderPool) -> None:
    enc = pool.open()
    kinds = []
    for t in range(6):
        if t == 3:
            enc.request_keyframe()  # the browser reported a lost picture
        kinds.append(is_keyframe(bytes(await enc.encode(image(t), t * 3600))))
    assert kinds == [True, False, False, True, False, False]
    late = await enc.encode(image(7), 3 * VIDEO_CLOCK_HZ)  # 3 s later, past the 2 s interval
    assert is_keyframe(bytes(late)) and enc.keyframes == 3
    enc.close()
    with pytest.raises(BackendError, match="closed"):
        await enc.encode(image(0), 0)


async def test_a_killed_process_fails_its_sessions_and_the_others_go_on(
        pool: EncoderPool) -> None:
    a, b = pool.open(), pool.open()
    await a.encode(image(0), 0)
    pool._procs[a.index].proc.kill()
    with pytest.raises(BackendError, match="exited"):
        await a.encode(image(1), 3600)
    assert len(bytes(await b.encode(image(1), 3600))) > 0
    c = pool.open()  # new sessions go to the live process
    assert c.index == b.index


async def test_a_stopped_pool_gives_a_clear_error() -> None:
    pool = EncoderPool(1)
    await pool.start()
    enc = pool.open()
    await pool.shutdown()
    with pytest.raises(BackendError, match="encoder"):
        await enc.encode(image(0), 0)
    with pytest.raises(BackendError, match="not running"):
        pool.open()


def test_a_pool_needs_a_process() -> None:
    with pytest.raises(ConfigError, match="encoder_processes"):
        EncoderPool(0)


def test_the_negotiated_codec_is_the_first_payload_type_of_the_m_line() -> None:
    sdp = ("v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\n"
           "m=video 9 UDP/TLS/RTP/SAVPF 97 96\r\na=rtpmap:96 VP8/90000\r\n"
           "a=rtpmap:97 H264/90000\r\n")
    assert negotiated_codec(sdp, "video") == "H264"
    assert negotiated_codec(sdp, "audio") == "opus"
    assert negotiated_codec(sdp.replace("97 96", "96 97"), "video") == "VP8"
    assert negotiated_codec("v=0\r\n", "video") is None
