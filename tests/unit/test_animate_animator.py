"""The per-session animator: conductor events in, parameter frames out."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from models.animate import NUM_PARAMS, PARAMS, RANGES, AnimationFrame, Animator, index
from models.animate.params import MOUTH_REST, rest_vector
from models.animate.track import LOOKAHEAD_MS
from models.errors import InputError
from models.frames import (
    Clause,
    Interrupt,
    PhonemeTiming,
    SpeechAudio,
    StateChange,
    TextDelta,
    TurnEnd,
)

pytestmark = pytest.mark.unit

FIXTURE = Path(__file__).parents[1] / "fixtures" / "espeak_phonemes.json"
JAW, CLOSE = index("jaw_open"), index("lip_close")
SMILE, BROW, PITCH = index("smile"), index("brow_raise"), index("head_pitch")


def speech(offset_ms: float, utterance: int = 0, chunk: int = 0) -> list[SpeechAudio]:
    """A fixture utterance as the conductor emits it: SpeechAudio chunks on the media clock."""
    data = json.loads(FIXTURE.read_text(encoding="utf-8"))["utterances"][utterance]
    phonemes = [PhonemeTiming(p, s + offset_ms, d) for p, s, d in data["phonemes"]]
    size = chunk or len(phonemes)
    events = []
    for i in range(0, len(phonemes), size):
        part = tuple(phonemes[i : i + size])
        end = part[-1].start_ms + part[-1].duration_ms
        pcm = np.zeros(int((end - part[0].start_ms) * 22.05), dtype=np.int16)
        events.append(SpeechAudio(pcm, 22050, part[0].start_ms, 1, 0, part))
    return events


def speaking_animator(seed: int = 0, chunk: int = 0) -> Animator:
    animator = Animator(fps=30, seed=seed)
    animator.on_event(StateChange("listening", 0.0))
    animator.on_event(StateChange("thinking", 800.0))
    animator.on_event(StateChange("speaking", 1000.0))
    for event in speech(1000.0, chunk=chunk):
        animator.on_event(event)
    return animator


def test_frames_have_the_renderer_shape_and_ranges() -> None:
    animator = speaking_animator()
    frames = animator.frames(0.0, 200)
    assert frames.shape == (200, NUM_PARAMS) and frames.dtype == np.float32
    low = np.array([RANGES[n][0] for n in PARAMS])
    high = np.array([RANGES[n][1] for n in PARAMS])
    assert (frames >= low).all() and (frames <= high).all()
    frame = animator.frame_at(1300.0)
    assert isinstance(frame, AnimationFrame) and frame.state == "speaking"
    assert frame["jaw_open"] == frame.params[JAW] and set(frame.as_dict()) == set(PARAMS)
    assert animator.frame_at(900.0).state == "thinking"
    assert Animator().frame_at(0.0).state == "idle"
    np.testing.assert_array_equal(rest_vector()[:6], MOUTH_REST)


def test_idle_stream_never_freezes() -> None:
    frames = Animator(fps=25, seed=5).frames(0.0, 250)  # 10 s with no event at all
    assert np.allclose(frames[:, :6], MOUTH_REST)  # mouth closed
    moving = np.abs(np.diff(frames, axis=0))[:, [index("breath"), index("head_yaw")]]
    assert (moving.sum(axis=1) > 0).all()  # every frame differs from the last


def test_speech_moves_the_mouth_on_the_audio_clock_and_closes_after() -> None:
    animator = speaking_animator()
    end = speech(1000.0)[-1].phonemes[-1]
    last = end.start_ms if end.phoneme == "_" else end.start_ms + end.duration_ms
    talking = animator.sample(np.arange(1000.0, last, 1000 / 30))
    assert talking[:, JAW].max() > 0.6 and talking[:, CLOSE].max() > 0.97
    before = animator.sample(np.arange(0.0, 1000.0 - LOOKAHEAD_MS, 1000 / 30))
    after = animator.sample(np.arange(last + 120.0, last + 2000.0, 1000 / 30))
    for quiet in (before, after):
        np.testing.assert_allclose(quiet[:, :6], np.broadcast_to(MOUTH_REST, quiet[:, :6].shape),
                                   atol=0.01)


def test_streamed_chunks_match_one_batch_beyond_the_lookahead() -> None:
    batch = speaking_animator(chunk=0)
    live = Animator(fps=30, seed=0)
    times = np.arange(0.0, 6000.0, 1000 / 30)
    for event in (StateChange("listening", 0.0), StateChange("thinking", 800.0),
                  StateChange("speaking", 1000.0)):
        live.on_event(event)
    for event in speech(1000.0, chunk=6):
        before = live.sample(times)
        live.on_event(event)
        final = times < event.pts_ms - LOOKAHEAD_MS
        np.testing.assert_array_equal(before[final], live.sample(times)[final])
    np.testing.assert_allclose(live.sample(times), batch.sample(times), atol=1e-5)


def test_sampling_is_deterministic_in_any_order() -> None:
    a, b = speaking_animator(seed=7), speaking_animator(seed=7)
    whole = a.frames(0.0, 150)
    pieces = np.concatenate([b.frames(i * 1000 / 30 * 10, 10) for i in range(15)])
    np.testing.assert_allclose(whole, pieces, atol=1e-5)
    single = np.stack([b.frame_at(t).params for t in np.arange(0.0, 5000.0, 1000 / 30)[::7]])
    np.testing.assert_allclose(whole[::7], single, atol=1e-5)


def test_interrupt_returns_the_mouth_to_rest_smoothly() -> None:
    animator = speaking_animator()
    times = np.arange(0.0, 5000.0, 1000 / 30)
    before = animator.sample(times)
    cut = 2300.0
    animator.on_event(Interrupt(cut, 1))
    animator.on_event(StateChange("listening", cut))
    after = animator.sample(times)
    np.testing.assert_array_equal(before[times <= cut, :6], after[times <= cut, :6])
    np.testing.assert_allclose(after[times > cut + 150, :6],
                               np.broadcast_to(MOUTH_REST, after[times > cut + 150, :6].shape),
                               atol=0.01)
    assert np.abs(np.diff(after[times > cut - 50, JAW])).max() < 0.3


def test_nods_and_brow_raises_while_speaking() -> None:
    talking = speaking_animator(seed=0)
    quiet = Animator(fps=30, seed=0)  # the same states, nothing said
    for state, at in (("listening", 0.0), ("thinking", 800.0), ("speaking", 1000.0)):
        quiet.on_event(StateChange(state, at))  # type: ignore[arg-type]
    t = np.arange(1000.0, 5000.0, 1000 / 30)
    nod = talking.sample(t)[:, PITCH] - quiet.sample(t)[:, PITCH]
    brow = talking.sample(t)[:, BROW] - quiet.sample(t)[:, BROW]
    assert nod.min() < -1.5 and nod.max() <= 1e-6  # nods dip the head, a few degrees
    assert brow.max() > 0.2  # brows rise at phrase starts


def test_emotion_follows_the_reply_text_and_decays() -> None:
    animator = Animator(seed=0)
    animator.on_event(Clause("I'm sorry to hear that.", 0, 1000.0))
    animator.on_event(Clause("Let me check the schedule.", 1, 2000.0))  # stays concerned
    animator.on_event(TurnEnd(3000.0, 1, "I'm sorry to hear that. Let me check the schedule."))
    animator.on_event(Clause("Great, you're booked!", 0, 8000.0))
    f = animator.sample(np.array([500.0, 2500.0, 5500.0, 9000.0]))
    neutral, concerned, decayed, happy = f[:, SMILE]
    assert concerned < neutral - 0.2 and f[1, BROW] > f[0, BROW] + 0.2
    assert decayed == pytest.approx(neutral, abs=1e-6)
    assert happy > neutral + 0.3
    only_end = Animator(seed=0)  # no clauses: the turn's text decides
    only_end.on_event(TurnEnd(1000.0, 1, "You're welcome, glad to help!"))
    assert only_end.sample(np.array([1800.0]))[0, SMILE] > neutral + 0.3


def test_bad_input_is_rejected_or_ignored() -> None:
    with pytest.raises(InputError):
        Animator(fps=0)
    animator = Animator()
    with pytest.raises(InputError):
        animator.set_state("dancing", 0.0)  # type: ignore[arg-type]
    animator.on_event(TextDelta("hello", 0.0))  # not for the animator: ignored
    animator.on_event(SpeechAudio(np.zeros(0, np.int16), 16000, 0.0, 1, 0,
                                  (PhonemeTiming("ʘ", 0.0, 80.0), PhonemeTiming("x", 80.0, -5))))
    assert np.isfinite(animator.frames(0.0, 10)).all()


def test_sampling_cost_of_ten_seconds_at_30_fps() -> None:
    animator = Animator(fps=30, seed=0)
    offset = 0.0
    for u in (0, 1, 2):
        for event in speech(offset, utterance=u):
            animator.on_event(event)
        offset = animator.track.end_ms + 200.0
    animator.frames(0.0, 300)
    runs = 20
    t0 = time.perf_counter()
    for _ in range(runs):
        frames = animator.frames(0.0, 300)
    ms = 1000 * (time.perf_counter() - t0) / runs
    print(f"\nanimator: 10 s at 30 fps (all {NUM_PARAMS} parameters) sampled in {ms:.2f} ms")
    assert frames.shape == (300, NUM_PARAMS)
