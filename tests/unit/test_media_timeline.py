"""The reply audio schedule: placement at pts, resampling, mixing, interrupts, memory, input."""

from __future__ import annotations

import numpy as np
import pytest

from deployments.media.timeline import AudioTimeline
from models.errors import ConfigError, InputError
from models.frames import SpeechAudio

pytestmark = pytest.mark.unit

RATE = 48000
FRAME = 960  # 20 ms at 48 kHz


def speech(pcm: np.ndarray, pts_ms: float, turn_id: int = 1, rate: int = RATE) -> SpeechAudio:
    return SpeechAudio(pcm=pcm, sample_rate_hz=rate, pts_ms=pts_ms, turn_id=turn_id,
                       clause_index=0)


def constant(value: int, ms: float, rate: int = RATE) -> np.ndarray:
    return np.full(round(ms * rate / 1000), value, dtype=np.int16)


def render(timeline: AudioTimeline, start_ms: float, stop_ms: float) -> np.ndarray:
    """The output timeline from ``start_ms`` to ``stop_ms``, read frame by frame as a track."""
    frames = [timeline.frame(t) for t in np.arange(start_ms, stop_ms, timeline.frame_ms)]
    return np.concatenate(frames)


def test_frames_are_silence_when_nothing_is_scheduled() -> None:
    timeline = AudioTimeline()
    frame = timeline.frame(0.0)
    assert frame.dtype == np.int16 and frame.shape == (FRAME,)
    assert not frame.any()
    assert timeline.ends_at_ms() == float("-inf")
    assert not timeline.speaking_at(0.0)


def test_a_click_at_1000_ms_lands_on_sample_48000() -> None:
    timeline = AudioTimeline()
    click = np.zeros(480, dtype=np.int16)
    click[0] = 20000
    timeline.add(speech(click, 1000.0))
    out = render(timeline, 0.0, 1100.0)
    assert np.flatnonzero(out).tolist() == [48000]
    assert out[48000] == 20000


def test_a_resampled_click_peaks_at_its_pts() -> None:
    timeline = AudioTimeline()
    click = np.zeros(2205, dtype=np.int16)
    click[0] = 20000
    timeline.add(speech(click, 1000.0, rate=22050))
    out = render(timeline, 900.0, 1100.0)
    peak = int(np.argmax(np.abs(out.astype(np.int32)))) + round(0.9 * RATE)
    assert abs(peak - 48000) <= 1
    assert not out[: round(0.09 * RATE)].any()  # nothing leaks 10 ms before the click


def test_resampling_keeps_duration_and_pitch() -> None:
    rate = 22050
    t = np.arange(rate) / rate  # one second of 441 Hz
    tone = (np.sin(2 * np.pi * 441 * t) * 10000).astype(np.int16)
    timeline = AudioTimeline()
    timeline.add(speech(tone, 500.0, rate=rate))
    assert timeline.ends_at_ms() == pytest.approx(1500.0)
    out = render(timeline, 0.0, 2000.0)
    voiced = np.flatnonzero(np.abs(out) > 1000)
    assert voiced[0] == pytest.approx(0.5 * RATE, abs=48)
    assert voiced[-1] == pytest.approx(1.5 * RATE, abs=48)
    body = out[round(0.6 * RATE) : round(1.4 * RATE)].astype(np.float64)
    crossings = np.count_nonzero(np.diff(np.signbit(body)))
    assert crossings == pytest.approx(2 * 441 * 0.8, abs=4)


def test_overlapping_segments_mix_and_saturate() -> None:
    timeline = AudioTimeline()
    timeline.add(speech(constant(30000, 40), 0.0, turn_id=1))
    timeline.add(speech(constant(30000, 40), 20.0, turn_id=2))
    timeline.add(speech(constant(-30000, 20), 60.0, turn_id=3))
    timeline.add(speech(constant(-30000, 20), 60.0, turn_id=4))
    timeline.add(speech(constant(1000, 20), 80.0, turn_id=5))
    timeline.add(speech(constant(2000, 20), 80.0, turn_id=6))
    assert (timeline.frame(0.0) == 30000).all()
    assert (timeline.frame(20.0) == 32767).all()
    assert (timeline.frame(40.0) == 30000).all()
    assert (timeline.frame(60.0) == -32768).all()
    assert (timeline.frame(80.0) == 3000).all()


def test_audio_already_late_keeps_its_place() -> None:
    timeline = AudioTimeline()
    for t in range(0, 1220, 20):
        timeline.frame(float(t))  # the track has played up to 1220 ms
    ramp = (np.arange(RATE) // 2).astype(np.int16)
    timeline.add(speech(ramp, 1000.0))
    frame = timeline.frame(1220.0)
    assert frame[0] == (220 * 48) // 2  # sample 220 ms into the chunk, not its start
    assert timeline.ends_at_ms() == pytest.approx(2000.0)


def test_audio_wholly_in_the_past_is_not_kept() -> None:
    timeline = AudioTimeline()
    timeline.frame(5000.0)
    timeline.add(speech(constant(1000, 100), 1000.0))
    assert timeline.segment_count == 0


def test_interrupt_removes_only_the_future_of_that_turn_and_earlier_turns() -> None:
    timeline = AudioTimeline()
    timeline.add(speech(constant(100, 3000), 0.0, turn_id=0))
    timeline.add(speech(constant(1000, 2000), 0.0, turn_id=1))
    timeline.add(speech(constant(10000, 1500), 1500.0, turn_id=2))
    timeline.interrupt(1, 1000.0)
    assert not timeline.speaking_at(1200.0)
    assert timeline.speaking_at(1600.0)
    assert timeline.ends_at_ms() == pytest.approx(3000.0)
    out = render(timeline, 0.0, 3200.0)
    assert (out[:48000] == 1100).all()  # before the interrupt: untouched
    assert not out[48000:72000].any()  # turns 0 and 1 are gone from 1000 ms on
    assert (out[72000:144000] == 10000).all()  # the later turn plays in full
    assert not out[144000:].any()


def test_interrupt_cuts_late_audio_of_the_interrupted_turn() -> None:
    timeline = AudioTimeline()
    timeline.add(speech(constant(1000, 500), 0.0, turn_id=3))
    timeline.interrupt(3, 250.0)
    assert timeline.ends_at_ms() == pytest.approx(250.0)
    timeline.add(speech(constant(1000, 500), 500.0, turn_id=3))  # in flight when cut
    timeline.add(speech(constant(2000, 100), 600.0, turn_id=4))  # the next reply
    out = render(timeline, 0.0, 1000.0)
    assert (out[:12000] == 1000).all()
    assert not out[12000 : round(0.6 * RATE)].any()
    assert (out[round(0.6 * RATE) : round(0.7 * RATE)] == 2000).all()
    assert timeline.ends_at_ms() == pytest.approx(700.0)


def test_memory_stays_bounded_over_a_long_session() -> None:
    timeline = AudioTimeline()
    chunk = constant(500, 1000, rate=22050)
    played_ms = 0.0
    for second in range(600):  # ten minutes, replies scheduled two seconds ahead
        timeline.add(speech(chunk, 1000.0 * second + 2000.0, turn_id=second // 10, rate=22050))
        while played_ms < 1000.0 * (second + 1):
            timeline.frame(played_ms)
            played_ms += 20.0
        if second % 50 == 7:
            timeline.interrupt(second // 10, played_ms + 500.0)
    assert timeline.segment_count <= 3
    assert timeline.ends_at_ms() == pytest.approx(602000.0)


@pytest.mark.parametrize(
    ("audio", "message"),
    [
        (speech(np.zeros(10, dtype=np.float32), 0.0), "int16"),
        (speech(np.zeros((10, 2), dtype=np.int16), 0.0), "mono"),
        (speech(np.zeros(10, dtype=np.int16), 0.0, rate=0), "sample rate"),
        (speech(np.zeros(10, dtype=np.int16), 0.0, rate=10**6), "sample rate"),
        (speech(np.zeros(10, dtype=np.int16), float("nan")), "pts_ms"),
        (speech([0, 1, 2], 0.0), "numpy"),  # type: ignore[arg-type]
    ],
)
def test_bad_audio_is_rejected_with_a_reason(audio: SpeechAudio, message: str) -> None:
    timeline = AudioTimeline()
    with pytest.raises(InputError, match=message):
        timeline.add(audio)
    assert timeline.segment_count == 0


def test_a_frame_size_without_whole_samples_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="frame_ms"):
        AudioTimeline(sample_rate_hz=22050, frame_ms=15)
    with pytest.raises(ConfigError, match="sample rate"):
        AudioTimeline(sample_rate_hz=100)
