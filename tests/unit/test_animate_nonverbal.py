"""Non-verbal behaviour: blinks, gaze, breathing, emotion."""

from __future__ import annotations

import numpy as np
import pytest

from models.animate import Animator, classify_emotion, index
from models.animate.nonverbal import SmoothTimeline, breath, smoothstep
from models.frames import StateChange

pytestmark = pytest.mark.unit

BLINK, GAZE_X, GAZE_Y = index("blink_left"), index("gaze_x"), index("gaze_y")


def blink_spans(closure: np.ndarray, step_ms: float) -> list[float]:
    """Durations (ms) of the runs where the eyelids are not fully open."""
    shut = np.r_[False, closure > 0.0, False]
    edges = np.flatnonzero(np.diff(shut.astype(int)))
    return [(b - a) * step_ms for a, b in zip(edges[::2], edges[1::2], strict=True)]


def idle_blinks(seed: int, seconds: float = 60.0, state: str = "idle") -> list[float]:
    animator = Animator(fps=25, seed=seed)
    animator.on_event(StateChange(state, 0.0))  # type: ignore[arg-type]
    t = np.arange(0.0, seconds * 1000.0, 5.0)  # 200 Hz: resolves every blink
    return blink_spans(animator.sample(t)[:, BLINK], 5.0)


def test_blink_rate_and_duration_are_natural() -> None:
    counts = []
    for seed in range(6):
        spans = idle_blinks(seed)
        counts.append(len(spans))
        assert 6 <= len(spans) <= 32, (seed, len(spans))
        # single blinks last 100-150 ms (a double blink is two of them)
        assert all(85.0 <= s <= 160.0 for s in spans), spans
    assert 13.0 <= float(np.mean(counts)) <= 22.0, counts


def test_blinks_are_reproducible_per_seed_and_both_eyes_close() -> None:
    a, b, c = Animator(seed=3), Animator(seed=3), Animator(seed=4)
    t = np.arange(0.0, 30_000.0, 40.0)
    fa = a.sample(t)
    np.testing.assert_array_equal(fa, b.sample(t))
    assert not np.array_equal(fa[:, BLINK], c.sample(t)[:, BLINK])
    np.testing.assert_array_equal(fa[:, BLINK], fa[:, index("blink_right")])
    assert fa[:, BLINK].max() > 0.5  # a 25 fps stream shows the eyes (nearly) closed


def test_fewer_blinks_while_speaking() -> None:
    idle = sum(len(idle_blinks(s, 120.0, "idle")) for s in range(4))
    speaking = sum(len(idle_blinks(s, 120.0, "speaking")) for s in range(4))
    assert speaking < idle


def test_gaze_looks_away_while_thinking_and_at_the_user_otherwise() -> None:
    animator = Animator(seed=1)
    for state, t in (("listening", 0.0), ("thinking", 3000.0), ("speaking", 6000.0)):
        animator.on_event(StateChange(state, t))  # type: ignore[arg-type]

    def gaze(start: float) -> np.ndarray:
        f = animator.sample(np.arange(start, start + 2000.0, 40.0))
        return np.hypot(f[:, GAZE_X], f[:, GAZE_Y])

    assert gaze(800.0).max() < 3.0  # eye contact while listening
    assert gaze(3800.0).min() > 8.0  # looks away (up) while thinking
    assert animator.sample(np.array([4000.0]))[0, GAZE_Y] > 5.0
    assert gaze(6800.0).max() < 3.0  # back to the user when speaking
    # the look-away is a smooth movement, not a jump
    moves = np.abs(np.diff(animator.sample(np.arange(2900.0, 3500.0, 40.0))[:, GAZE_X]))
    assert moves.max() < 4.0


def test_idle_breathing_and_head_motion_are_smooth_and_small() -> None:
    animator = Animator(seed=2)
    f = animator.sample(np.arange(0.0, 60_000.0, 40.0))
    b = f[:, index("breath")]
    assert 0.0 <= b.min() and b.max() <= 1.0 and b.max() - b.min() > 0.5
    crossings = np.count_nonzero(np.diff(np.sign(b - 0.5)) > 0)
    assert 11 <= crossings <= 19  # about 15 breaths a minute
    for name in ("head_yaw", "head_pitch", "head_roll"):
        head = f[:, index(name)]
        assert np.abs(head).max() < 5.0 and np.abs(head).max() > 0.2, name
        assert np.abs(np.diff(head)).max() < 0.3, name  # degrees per frame: no jitter
    np.testing.assert_array_equal(breath(np.arange(5.0), 2, np.full(5, 0.5)),
                                  breath(np.arange(5.0), 2, np.full(5, 0.5)))


@pytest.mark.parametrize(("text", "emotion"), [
    ("I'm sorry to hear that. If this is an emergency, please call 911.", "concerned"),
    ("Unfortunately Dr. Patel is unable to see you today.", "concerned"),
    ("Great, you're welcome! Glad I could help.", "happy"),
    ("Thank you for calling Maple Grove Family Clinic.", "happy"),
    ("We open at nine on weekdays.", "neutral"),
    ("", "neutral"),
    ("Glad you called, but I'm sorry, that sounds like an emergency.", "concerned"),
])
def test_emotion_classifier(text: str, emotion: str) -> None:
    assert classify_emotion(text) == emotion


def test_smooth_timeline_restarts_from_where_it_was() -> None:
    line = SmoothTimeline([0.0], 100.0)
    line.add(0.0, [1.0])
    line.add(50.0, [0.0])  # halfway through the first move
    v = line.sample(np.arange(0.0, 200.0, 1.0))[:, 0]
    assert np.abs(np.diff(v)).max() < 0.05
    assert v[49] == pytest.approx(0.5, abs=0.05) and v[-1] == 0.0
    line.drop_after(10.0)
    assert line.sample(np.array([150.0]))[0, 0] == 1.0


class WholeHistory:
    """The unbounded timeline as it was before changes were forgotten (the reference)."""

    def __init__(self, initial: list[float], transition_ms: float) -> None:
        self.initial = np.asarray(initial, dtype=np.float64)
        self.transition_ms = transition_ms
        self.times: list[float] = []
        self.targets: list[np.ndarray] = []
        self.starts: list[np.ndarray] = []

    def add(self, t_ms: float, target: list[float]) -> None:
        target = np.asarray(target, dtype=np.float64)
        if self.times and t_ms < self.times[-1]:
            pairs = sorted([*zip(self.times, self.targets, strict=True), (t_ms, target)],
                           key=lambda p: p[0])
            self.times, self.targets, self.starts = [], [], []
            for t, tgt in pairs:
                self.add(t, tgt)
            return
        start = self.sample(np.array([t_ms]))[0]
        self.times.append(float(t_ms))
        self.targets.append(target)
        self.starts.append(start)

    def drop_after(self, t_ms: float) -> None:
        keep = sum(1 for t in self.times if t <= t_ms)
        del self.times[keep:], self.targets[keep:], self.starts[keep:]

    def sample(self, times_ms: np.ndarray) -> np.ndarray:
        t = np.asarray(times_ms, dtype=np.float64).reshape(-1)
        if not self.times:
            return np.broadcast_to(self.initial, (len(t), len(self.initial))).copy()
        k = np.searchsorted(np.array(self.times), t, side="right") - 1
        kk = np.maximum(k, 0)
        start, target = np.array(self.starts)[kk], np.array(self.targets)[kk]
        out = start + (target - start) * smoothstep((t - np.array(self.times)[kk])
                                                    / self.transition_ms)[:, None]
        out[k < 0] = self.initial
        return out


def session_changes(n: int, seed: int = 5):
    """A long session's changes: mostly in order, some late, some pending ones dropped."""
    rng = np.random.default_rng(seed)
    now = 0.0
    for _ in range(n):
        now += float(rng.uniform(50.0, 900.0))
        late = rng.uniform() < 0.15
        yield ("add", now - float(rng.uniform(0.0, 400.0)) if late else now,
               rng.uniform(-10.0, 10.0, 3).tolist())
        if rng.uniform() < 0.05:
            yield ("drop_after", now - 100.0, None)


def test_smooth_timeline_matches_the_whole_history_exactly() -> None:
    new = SmoothTimeline([0.0, 1.0, 2.0], 250.0, keep_ms=np.inf, max_changes=10**9)
    old = WholeHistory([0.0, 1.0, 2.0], 250.0)
    for op, t, target in session_changes(300):
        for line in (new, old):
            line.add(t, target) if op == "add" else line.drop_after(t)
    times = np.arange(-100.0, old.times[-1] + 500.0, 7.0)
    np.testing.assert_array_equal(new.sample(times), old.sample(times))


def test_a_long_session_keeps_the_timeline_small_and_recent_output_unchanged() -> None:
    bounded = SmoothTimeline([0.0, 0.0, 0.0], 700.0)
    whole = SmoothTimeline([0.0, 0.0, 0.0], 700.0, keep_ms=np.inf, max_changes=10**9)
    sizes = []
    for i, (op, t, target) in enumerate(session_changes(20_000)):
        for line in (bounded, whole):
            line.add(t, target) if op == "add" else line.drop_after(t)
        if i % 1000 == 999:
            sizes.append(len(bounded))
            recent = np.linspace(t - 30_000.0, t + 2_000.0, 400)
            np.testing.assert_array_equal(bounded.sample(recent), whole.sample(recent))
    assert len(whole) > 19_000
    assert max(sizes) <= 200, sizes  # about a minute of changes, not the whole session
    assert len(bounded) <= bounded.max_changes


def test_smooth_timeline_never_keeps_more_than_max_changes() -> None:
    line = SmoothTimeline([0.0], 100.0, max_changes=8)
    for i in range(1000):
        line.add(float(i), [float(i % 3)])  # a burst: a thousand changes in one second
    assert len(line) == 8
    assert line.sample(np.array([999.0 + 100.0]))[0, 0] == pytest.approx(999 % 3)
