"""Non-verbal behaviour: blinks, gaze, breathing, micro head motion, gestures and emotion.

Everything here is a pure function of time, a seed and the history of events (state changes,
phonemes, reply text), so a session's animation is reproducible: the same seed and events give
the same frames, whatever order or batch size the frames are sampled in.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Sequence
from functools import lru_cache
from typing import Literal

import numpy as np

from models.frames import AvatarState

STATES: tuple[AvatarState, ...] = ("idle", "listening", "thinking", "speaking")
"""Avatar states in the order used by per-state tables (rows below)."""

Emotion = Literal["neutral", "happy", "concerned"]
EMOTIONS: tuple[Emotion, ...] = ("neutral", "happy", "concerned")

# per state: gaze_x, gaze_y, head_yaw, head_pitch, head_roll (degrees). Thinking looks up and
# to the image's left, away from the user; every other state keeps eye contact.
POSE_TARGETS = np.array([
    [0.0, 0.0, 0.0, 0.0, 0.0],
    [0.0, 0.0, 0.0, -1.0, 2.0],
    [-12.0, 9.0, -4.0, 3.0, 0.0],
    [0.0, 0.0, 0.0, 0.0, 0.0],
], dtype=np.float64)
# per state: gaze wander (deg), head motion (deg), breathing depth (0..0.5), blink keep-probability
STATE_STYLE = np.array([
    [3.0, 1.5, 0.5, 1.0],
    [0.8, 1.0, 0.4, 0.95],
    [1.2, 1.0, 0.4, 1.0],
    [1.0, 2.5, 0.25, 0.7],
], dtype=np.float64)
EMOTION_OFFSETS = {"neutral": (0.1, 0.0), "happy": (0.55, 0.15), "concerned": (-0.2, 0.3)}
"""``(smile, brow_raise)`` per emotion."""

BLINK_BLOCK_MS = 10_000.0
BLINK_CANDIDATES_PER_MIN = 17.0
BLINK_MIN_GAP_MS = 600.0
DOUBLE_BLINK_P = 0.12
NOD_DEG = 2.5
NOD_MS = 400.0
BROW_RAISE = 0.3
BROW_MS = 500.0
STRESSED_VOWEL_MS = 110.0
PHRASE_PAUSE_MS = 150.0
MIN_NOD_GAP_MS = 700.0


def smoothstep(x: np.ndarray) -> np.ndarray:
    """``3x² - 2x³`` on ``x`` clipped to [0, 1]."""
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def smooth_noise(t_ms: np.ndarray, seed: int, channel: int, max_hz: float = 0.4) -> np.ndarray:
    """Smooth, seeded noise in about [-1, 1]: a sum of three sinusoids of random frequency
    (0.05 to ``max_hz``) and phase. Pure in ``t_ms``; band-limited, so it never jitters."""
    rng = np.random.default_rng([seed, 101, channel])
    freqs = rng.uniform(0.05, max_hz, 3)
    phases = rng.uniform(0.0, 2 * np.pi, 3)
    amps = np.array([0.5, 0.3, 0.2])
    t = np.asarray(t_ms, dtype=np.float64)[..., None] / 1000.0
    return (amps * np.sin(2 * np.pi * freqs * t + phases)).sum(axis=-1)


def breath(t_ms: np.ndarray, seed: int, depth: np.ndarray) -> np.ndarray:
    """Breathing phase in [0, 1]: about 15 breaths a minute, ``depth`` (0..0.5) around 0.5."""
    rng = np.random.default_rng([seed, 202])
    hz, phase = rng.uniform(0.22, 0.28), rng.uniform(0.0, 2 * np.pi)
    t = np.asarray(t_ms, dtype=np.float64) / 1000.0
    wobble = 0.15 * smooth_noise(t_ms, seed, 99, max_hz=0.05)
    return 0.5 + depth * np.sin(2 * np.pi * hz * t + phase + wobble)


TIMELINE_KEEP_MS = 60_000.0
"""A :class:`SmoothTimeline` forgets changes this much older than its latest one."""
TIMELINE_MAX_CHANGES = 512
"""...and never keeps more changes than this, whatever their times."""


class SmoothTimeline:
    """A vector that moves smoothly (smoothstep over ``transition_ms``) to each new target.

    ``add(t, target)`` records a change; ``sample(times)`` gives ``(n, dim)`` values. A change
    that interrupts a running transition starts from wherever that transition had got to.

    The timeline stays small over a long session: changes older than ``keep_ms`` before the
    latest one (beyond ``max_changes`` in all) are forgotten, except the last of them, which
    still sets the value from its time on. Samples from that time on are exactly what the whole
    history would give; earlier samples, and changes added before it, are no longer exact
    (the changes are ignored).
    """

    def __init__(self, initial: Sequence[float], transition_ms: float,
                 keep_ms: float = TIMELINE_KEEP_MS,
                 max_changes: int = TIMELINE_MAX_CHANGES) -> None:
        self.initial = np.asarray(initial, dtype=np.float64)
        self.transition_ms = float(transition_ms)
        self.keep_ms = float(keep_ms)
        self.max_changes = max(1, int(max_changes))
        self._times: list[float] = []
        self._targets: list[np.ndarray] = []
        self._starts: list[np.ndarray] = []
        self._floor_ms = -np.inf
        """Time of the oldest change kept once older ones were forgotten."""
        self._arrays: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def __len__(self) -> int:
        """How many changes are kept."""
        return len(self._times)

    def add(self, t_ms: float, target: Sequence[float]) -> None:
        """Move towards ``target`` from ``t_ms`` on (changes are kept in time order)."""
        t_ms = float(t_ms)
        if t_ms < self._floor_ms:
            return  # older than what is kept: it cannot be placed exactly any more
        target = np.asarray(target, dtype=np.float64)
        i = bisect.bisect_right(self._times, t_ms)
        self._times.insert(i, t_ms)
        self._targets.insert(i, target)
        self._starts.insert(i, self._value(i - 1, t_ms))
        for j in range(i + 1, len(self._times)):  # later changes start from the new path
            self._starts[j] = self._value(j - 1, self._times[j])
        self._forget()
        self._arrays = None

    def drop_after(self, t_ms: float) -> None:
        """Forget changes scheduled after ``t_ms`` (a pending decay that a new turn overrides)."""
        keep = bisect.bisect_right(self._times, t_ms)
        if self._floor_ms > -np.inf:
            keep = max(keep, 1)  # the oldest kept change stands for the forgotten ones
        del self._times[keep:], self._targets[keep:], self._starts[keep:]
        self._arrays = None

    def last_target(self) -> np.ndarray:
        """The most recent target (the initial value when nothing was added)."""
        return self._targets[-1] if self._targets else self.initial

    def sample(self, times_ms: np.ndarray) -> np.ndarray:
        """Values at each time, ``(n, dim)``."""
        t = np.asarray(times_ms, dtype=np.float64).reshape(-1)
        if not self._times:
            return np.broadcast_to(self.initial, (len(t), len(self.initial))).copy()
        if self._arrays is None:
            self._arrays = (np.array(self._times), np.array(self._starts),
                            np.array(self._targets))
        times, starts, targets = self._arrays
        k = np.searchsorted(times, t, side="right") - 1
        before = k < 0
        kk = np.maximum(k, 0)
        start, target = starts[kk], targets[kk]
        s = smoothstep((t - times[kk]) / self.transition_ms)[:, None]
        out = start + (target - start) * s
        out[before] = self.initial
        return out

    def _value(self, k: int, t_ms: float) -> np.ndarray:
        """The value at ``t_ms`` on the path of change ``k`` (the initial value for -1)."""
        if k < 0:
            return self.initial
        start, target = self._starts[k], self._targets[k]
        s = float(smoothstep(np.array((t_ms - self._times[k]) / self.transition_ms)))
        return start + (target - start) * s

    def _forget(self) -> None:
        horizon = self._times[-1] - self.keep_ms
        drop = bisect.bisect_right(self._times, horizon) - 1  # keep the last one before it
        drop = max(drop, len(self._times) - self.max_changes)
        if drop > 0:
            del self._times[:drop], self._targets[:drop], self._starts[:drop]
            self._floor_ms = self._times[0]


@lru_cache(maxsize=256)
def _blink_block(seed: int, block: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Candidate blinks of one block: onsets (ms), durations (ms), keep-draws in [0, 1)."""
    rng = np.random.default_rng([seed, 303, block])
    mean = BLINK_CANDIDATES_PER_MIN * BLINK_BLOCK_MS / 60_000.0
    n = int(rng.poisson(mean))
    onsets = np.sort(rng.uniform(0.0, BLINK_BLOCK_MS, n)) + block * BLINK_BLOCK_MS
    durs = rng.uniform(100.0, 150.0, n)
    draws = rng.uniform(0.0, 1.0, n)
    double = rng.uniform(0.0, 1.0, n) < DOUBLE_BLINK_P
    gaps = rng.uniform(60.0, 120.0, n)
    keep = np.ones(n, dtype=bool)
    last = -np.inf
    if block > 0:
        prev = _blink_block_raw_last(seed, block - 1)
        last = prev
    for i in range(n):
        if onsets[i] - last < BLINK_MIN_GAP_MS:
            keep[i] = False
        else:
            last = onsets[i]
    o, d, u, dbl, g = onsets[keep], durs[keep], draws[keep], double[keep], gaps[keep]
    second = o[dbl] + d[dbl] + g[dbl]
    return (np.concatenate([o, second]), np.concatenate([d, d[dbl]]),
            np.concatenate([u, u[dbl]]))


@lru_cache(maxsize=256)
def _blink_block_raw_last(seed: int, block: int) -> float:
    rng = np.random.default_rng([seed, 303, block])
    n = int(rng.poisson(BLINK_CANDIDATES_PER_MIN * BLINK_BLOCK_MS / 60_000.0))
    onsets = rng.uniform(0.0, BLINK_BLOCK_MS, n)
    return float(onsets.max() + block * BLINK_BLOCK_MS) if n else -np.inf


def blink_candidates(seed: int, start_ms: float, end_ms: float) -> tuple[np.ndarray, ...]:
    """Blinks that may overlap ``[start_ms, end_ms]``: onsets, durations and keep-draws (a
    caller keeps a blink when its draw is below the state's keep-probability at its onset)."""
    first = int(np.floor((start_ms - 400.0) / BLINK_BLOCK_MS))
    last = int(np.floor(end_ms / BLINK_BLOCK_MS))
    parts = [_blink_block(seed, b) for b in range(max(first, 0), max(last, 0) + 1)]
    if not parts:
        return np.zeros(0), np.zeros(0), np.zeros(0)
    return tuple(np.concatenate(x) for x in zip(*parts, strict=True))


def blink_closure(t_ms: np.ndarray, onsets: np.ndarray, durs: np.ndarray) -> np.ndarray:
    """Eyelid closure in [0, 1] at each time: fast close (40%), slower open (60%)."""
    t = np.asarray(t_ms, dtype=np.float64)[:, None]
    u = (t - onsets) / durs
    closing = np.sin(0.5 * np.pi * np.clip(u / 0.4, 0.0, 1.0)) ** 2
    opening = np.cos(0.5 * np.pi * np.clip((u - 0.4) / 0.6, 0.0, 1.0)) ** 2
    v = np.where(u < 0.4, closing, opening)
    v = np.where((u >= 0.0) & (u <= 1.0), v, 0.0)
    return v.max(axis=1) if v.shape[1] else np.zeros(len(t))


def bumps(t_ms: np.ndarray, onsets: np.ndarray, width_ms: float) -> np.ndarray:
    """Sum of raised-cosine bumps (peak 1 at ``onset + width/2``), clipped to 1."""
    if not len(onsets):
        return np.zeros(len(t_ms))
    u = (np.asarray(t_ms, dtype=np.float64)[:, None] - onsets) / width_ms
    v = np.where((u >= 0) & (u <= 1), 0.5 - 0.5 * np.cos(2 * np.pi * u), 0.0)
    return np.minimum(v.sum(axis=1), 1.0)


_HAPPY = re.compile(
    r"\b(great|glad|welcome|wonderful|happy|pleasure|perfect|excellent|congratulations|"
    r"thanks|thank you|awesome|delighted|good news|love)\b", re.IGNORECASE)
_CONCERNED = re.compile(
    r"\b(sorry|emergency|unfortunately|urgent|pain|worried|concern(ed)?|afraid|apologi[sz]e|"
    r"can't|cannot|unable|911|nine one one|hospital|bleeding|serious|regret|sad)\b",
    re.IGNORECASE)


def classify_emotion(text: str) -> Emotion:
    """A small rule classifier for the reply's emotion: concern words beat happy ones
    (``"sorry"``, ``"emergency"`` -> concerned; ``"great"``, ``"welcome"`` -> happy)."""
    if not isinstance(text, str) or not text.strip():
        return "neutral"
    concerned = len(_CONCERNED.findall(text))
    happy = len(_HAPPY.findall(text))
    if concerned and concerned >= happy:
        return "concerned"
    if happy:
        return "happy"
    return "neutral"
