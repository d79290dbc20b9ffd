"""The avatar's outgoing tracks in virtual time: pacing, pts on the media clock, skips, stop."""

from __future__ import annotations

import asyncio
from fractions import Fraction

import numpy as np
import pytest
from aiortc.codecs import CODECS, get_encoder
from aiortc.mediastreams import MediaStreamError

from deployments.media.timeline import AudioTimeline
from deployments.media.tracks import AvatarAudioTrack, AvatarVideoTrack
from models.clock import ManualClock, MediaClock
from models.errors import BackendError
from models.frames import SpeechAudio

pytestmark = pytest.mark.unit


class VirtualSleep:
    """An ``asyncio.sleep`` stand-in that moves a :class:`ManualClock` instead of waiting."""

    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)
        self.clock.advance(max(seconds, 0.0) * 1000.0)


def audio_track(start_ms: float = 1005.0) -> tuple[AvatarAudioTrack, ManualClock, VirtualSleep]:
    clock = ManualClock(start_ms)
    sleep = VirtualSleep(clock)
    return AvatarAudioTrack(AudioTimeline(), clock, sleep=sleep), clock, sleep


def image(value: int, size: int = 16) -> np.ndarray:
    return np.full((size, size, 3), value, dtype=np.uint8)


async def test_audio_frames_follow_the_media_clock_and_are_never_early() -> None:
    track, clock, _ = audio_track(1005.0)
    for k in range(10):
        frame = await track.recv()
        t_k = 1000.0 + 20.0 * k  # the first recv at 1005 ms rounds down to the 1000 ms slot
        assert frame.pts == round(t_k * 48)
        assert frame.time_base == Fraction(1, 48000)
        assert clock.now_ms() >= t_k
        assert frame.samples == 960 and frame.sample_rate == 48000
        assert frame.format.name == "s16" and frame.layout.name == "mono"
    assert clock.now_ms() == pytest.approx(1180.0)  # it waited for each slot, no longer
    assert track.skipped_frames == 0 and track.frames_sent == 10


async def test_audio_frames_carry_the_scheduled_audio_in_the_right_frame() -> None:
    track, _, _ = audio_track(1005.0)
    click = np.zeros(48, dtype=np.int16)
    click[0] = 12345
    track.timeline.add(SpeechAudio(click, 48000, 1110.0, turn_id=1, clause_index=0))
    hits = []
    for _ in range(10):
        frame = await track.recv()
        pcm = frame.to_ndarray().reshape(-1)
        hits += [(frame.pts, int(i), int(pcm[i])) for i in np.flatnonzero(pcm)]
    assert hits == [(1100 * 48, 480, 12345)]


async def test_a_late_consumer_catches_up_without_skipping() -> None:
    track, clock, sleep = audio_track(1000.0)
    await track.recv()
    clock.advance(150.0)  # 150 ms late: under the limit
    sleep.calls.clear()
    pts = [(await track.recv()).pts for _ in range(8)]
    assert pts == [round((1020.0 + 20.0 * k) * 48) for k in range(8)]
    assert len(sleep.calls) == 1  # the first seven were due already; only the last waits
    assert track.skipped_frames == 0


async def test_a_stall_over_200_ms_skips_to_the_present_and_counts() -> None:
    track, clock, sleep = audio_track(1000.0)
    for _ in range(3):
        await track.recv()  # slots 1000, 1020, 1040; clock at 1040
    clock.advance(505.0)  # a stall: now 1545, the next slot (1060) is 485 ms late
    sleep.calls.clear()
    frame = await track.recv()
    assert frame.pts == 1540 * 48  # the current slot, served at once
    assert sleep.calls == []
    assert track.skipped_frames == (1540 - 1060) // 20
    assert (await track.recv()).pts == 1560 * 48
    assert clock.now_ms() >= 1560.0


async def test_video_frames_follow_the_media_clock_on_a_40_ms_grid() -> None:
    clock = ManualClock(1010.0)
    asked: list[float] = []

    def frame_at(t_ms: float) -> np.ndarray:
        asked.append(t_ms)
        return image(int(t_ms // 40) % 256)

    track = AvatarVideoTrack(frame_at, clock, fps=25, sleep=VirtualSleep(clock))
    for k in range(6):
        frame = await track.recv()
        t_k = 1000.0 + 40.0 * k
        assert frame.pts == round(t_k * 90)
        assert frame.time_base == Fraction(1, 90000)
        assert clock.now_ms() >= t_k
        assert frame.to_ndarray(format="rgb24")[0, 0, 0] == int(t_k // 40) % 256
    assert asked == [1000.0 + 40.0 * k for k in range(6)]
    assert track.frames_sent == 6 and track.skipped_frames == 0


async def test_video_repeats_the_last_image_and_starts_black() -> None:
    clock = ManualClock(0.0)
    images = iter([None, None, image(200), None, None])
    track = AvatarVideoTrack(lambda _t: next(images), clock, sleep=VirtualSleep(clock))
    shown = [(await track.recv()).to_ndarray(format="rgb24") for _ in range(5)]
    assert shown[0].shape == (256, 256, 3) and not shown[0].any()
    assert not shown[1].any()
    assert shown[2].shape == (16, 16, 3) and (shown[2] == 200).all()
    assert all((s == 200).all() and s.shape == (16, 16, 3) for s in shown[3:])


async def test_video_stall_skips_ahead() -> None:
    clock = ManualClock(0.0)
    track = AvatarVideoTrack(lambda _t: None, clock, fps=25, sleep=VirtualSleep(clock))
    await track.recv()
    clock.advance(1000.0)
    frame = await track.recv()
    assert frame.pts == 1000 * 90
    assert track.skipped_frames == 24  # slots 40..960 ms


async def test_a_bad_image_is_a_backend_error() -> None:
    clock = ManualClock(0.0)
    track = AvatarVideoTrack(lambda _t: np.zeros((8, 8), np.float32), clock,
                             sleep=VirtualSleep(clock))
    with pytest.raises(BackendError, match=r"\(H, W, 3\)"):
        await track.recv()


async def test_stop_ends_recv_even_while_waiting() -> None:
    track, clock, _ = audio_track(1000.0)
    await track.recv()
    track.stop()
    with pytest.raises(MediaStreamError):
        await track.recv()

    video = AvatarVideoTrack(lambda _t: None, clock, sleep=VirtualSleep(clock))

    async def stop_while_sleeping(seconds: float) -> None:
        video.stop()
        clock.advance(seconds * 1000.0)

    await video.recv()
    video._pacer.sleep = stop_while_sleeping
    with pytest.raises(MediaStreamError):
        await video.recv()
    assert video.readyState == "ended"


async def test_real_clock_frames_are_not_early() -> None:
    clock = MediaClock()
    track = AvatarAudioTrack(AudioTimeline(), clock)
    for _ in range(4):
        frame = await asyncio.wait_for(track.recv(), timeout=2.0)
        assert clock.now_ms() >= frame.pts / 48
    track.stop()


async def test_frames_are_accepted_by_aiortcs_opus_and_vp8_encoders() -> None:
    track, clock, _ = audio_track(0.0)
    tone = (np.sin(np.arange(4800) / 7.0) * 8000).astype(np.int16)
    track.timeline.add(SpeechAudio(tone, 48000, 0.0, turn_id=1, clause_index=0))
    opus = get_encoder(next(c for c in CODECS["audio"] if c.mimeType == "audio/opus"))
    timestamps = []
    for _ in range(5):
        payloads, timestamp = opus.encode(await track.recv())
        assert payloads and all(payloads)
        timestamps.append(timestamp)
    assert timestamps == [960 * k for k in range(5)]  # RTP steps of one 20 ms frame

    faces = iter(image(v, 64) for v in range(0, 250, 50))
    video = AvatarVideoTrack(lambda _t: next(faces), clock, sleep=VirtualSleep(clock))
    vp8 = get_encoder(next(c for c in CODECS["video"] if c.mimeType == "video/VP8"))
    first = None
    for k in range(5):
        frame = await video.recv()
        payloads, timestamp = vp8.encode(frame)
        assert payloads and sum(map(len, payloads)) > 0
        first = timestamp if first is None else first
        assert timestamp - first == 3600 * k  # 40 ms on the 90 kHz clock


class BrokenEncoder:
    """An encoder whose process died: every frame fails."""

    closed = False

    async def encode(self, image: np.ndarray, pts: int) -> object:
        from models.errors import BackendError

        raise BackendError("video encoder process 123 exited")

    def close(self) -> None:
        self.closed = True


async def test_video_goes_on_in_process_when_its_encoder_process_is_lost() -> None:
    clock = ManualClock(0.0)
    track = AvatarVideoTrack(lambda _t: image(7), clock, sleep=VirtualSleep(clock))
    broken = BrokenEncoder()
    track.encoder = broken  # type: ignore[assignment]
    frame = await track.recv()  # a raw frame: aiortc's own encoder takes over
    assert frame.to_ndarray(format="rgb24")[0, 0, 0] == 7
    assert track.encoder is None and broken.closed


async def test_send_lateness_is_kept_per_frame() -> None:
    clock = ManualClock(0.0)
    track = AvatarVideoTrack(lambda _t: image(1), clock, fps=25, sleep=VirtualSleep(clock))
    await track.recv()
    await track.recv()  # on time: slot 40 ms, handed off at 40 ms
    clock.advance(65.0)  # the sender came back 25 ms after slot 80 began
    await track.recv()
    assert track.late_ms == [0.0, 0.0, 25.0]
