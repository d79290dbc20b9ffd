"""The per-session animator: conductor events in, one parameter vector per video frame out.

:class:`Animator` listens to the conductor's output (:class:`~models.frames.SpeechAudio`,
:class:`~models.frames.StateChange`, :class:`~models.frames.Clause`,
:class:`~models.frames.Interrupt`, :class:`~models.frames.TurnEnd`) and samples frames at any
media-clock time. Frames exist whether or not anything is spoken: idle, listening and thinking
frames breathe, blink and move a little, so the stream never freezes.

Sampling is pure: a frame depends only on its time, the seed and the events received, so the
same inputs give the same frames in any sampling order or batch size. A frame at ``t`` is final
once the events up to ``t`` + :data:`~models.animate.track.LOOKAHEAD_MS` have arrived.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from models.animate import nonverbal as nv
from models.animate.params import NUM_PARAMS, AnimationFrame, clip_params, index
from models.animate.track import LipTrack
from models.animate.visemes import VOWELS, viseme_of
from models.errors import InputError
from models.frames import (
    AvatarState,
    Clause,
    Interrupt,
    PhonemeTiming,
    SpeechAudio,
    StateChange,
    TurnEnd,
)

EYE_TRANSITION_MS = 250.0
HEAD_TRANSITION_MS = 700.0
EMOTION_TRANSITION_MS = 600.0
EMOTION_HOLD_MS = 1500.0
"""How long the reply's emotion lingers after its speech ends before it decays to neutral."""
HISTORY_MS = 30_000.0
LIP_LEAD_MS = 15.0
"""The mouth moves this much ahead of the sound. `avatarctl bench lipsync` measured the video
about 15 ms late without it (the coarticulation blend rises into each phoneme); speakers'
lips also lead their sound slightly, so a small lead reads as natural."""
"""Events older than this behind the latest sampled frame are forgotten."""

_MOUTH = slice(0, 6)
_SMILE, _BROW = index("smile"), index("brow_raise")
_BLINK = [index("blink_left"), index("blink_right")]
_GAZE = [index("gaze_x"), index("gaze_y")]
_HEAD = [index("head_yaw"), index("head_pitch"), index("head_roll")]
_BREATH = index("breath")


def _state_row(state: str) -> int:
    return nv.STATES.index(state) if state in nv.STATES else 0


class Animator:
    """One session's animation: feed it events with :meth:`on_event`, sample frames with
    :meth:`frame_at` or :meth:`frames` (``fps`` frames per second from a start time)."""

    def __init__(self, fps: int = 25, seed: int = 0, lip_lead_ms: float = LIP_LEAD_MS) -> None:
        if not isinstance(fps, int | float) or not 1 <= fps <= 240:
            raise InputError(f"animator fps must be a number from 1 to 240, got {fps!r}")
        self.fps = fps
        self.lip_lead_ms = float(lip_lead_ms)
        self.seed = int(seed)
        self.track = LipTrack()
        self._state_times: list[float] = []
        self._states: list[AvatarState] = []
        idle = nv.POSE_TARGETS[0]
        self._eyes = nv.SmoothTimeline(idle[:2], EYE_TRANSITION_MS)
        self._head = nv.SmoothTimeline(np.r_[idle[2:], nv.STATE_STYLE[0]], HEAD_TRANSITION_MS)
        self._emotion = nv.SmoothTimeline(nv.EMOTION_OFFSETS["neutral"], EMOTION_TRANSITION_MS)
        self._turn_emotion: nv.Emotion = "neutral"
        self._nods: list[float] = []
        self._brows: list[float] = []
        self._last_voiced_end = -np.inf
        self._pause_seen = True
        self._last_nod = -np.inf
        self._speech_end = -np.inf

    # events -----------------------------------------------------------------------------

    def on_event(self, event: object) -> None:
        """Consume one conductor output event; other event types are ignored."""
        if isinstance(event, SpeechAudio):
            self.add_phonemes(event.phonemes)
            self._speech_end = max(self._speech_end, event.pts_ms + event.duration_ms)
        elif isinstance(event, StateChange):
            self.set_state(event.state, event.pts_ms)
        elif isinstance(event, Clause):
            self._set_emotion(nv.classify_emotion(event.text), event.pts_ms, sticky=True)
        elif isinstance(event, Interrupt):
            # the track runs lip_lead_ms ahead of the frames: frames shown before the
            # interrupt keep the mouth they had
            self.track.interrupt(event.pts_ms + self.lip_lead_ms)
            self._nods = [t for t in self._nods if t < event.pts_ms]
            self._brows = [t for t in self._brows if t < event.pts_ms]
            self._speech_end = min(self._speech_end, event.pts_ms)
            self._pause_seen = True
        elif isinstance(event, TurnEnd):
            if self._turn_emotion == "neutral" and event.text:
                self._set_emotion(nv.classify_emotion(event.text), event.pts_ms, sticky=True)
            spoken_until = max(self._speech_end, self.track.end_ms)
            decay_at = max(event.pts_ms, spoken_until) + EMOTION_HOLD_MS
            self._emotion.add(decay_at, nv.EMOTION_OFFSETS["neutral"])
            self._turn_emotion = "neutral"

    def set_state(self, state: AvatarState, pts_ms: float) -> None:
        """The avatar enters ``state`` at ``pts_ms`` (gaze, head and style follow smoothly)."""
        if state not in nv.STATES:
            raise InputError(f"unknown avatar state {state!r}; use one of {nv.STATES}")
        pos = int(np.searchsorted(self._state_times, pts_ms, side="right"))
        self._state_times.insert(pos, float(pts_ms))
        self._states.insert(pos, state)
        row = nv.STATES.index(state)
        pose = nv.POSE_TARGETS[row]
        self._eyes.add(pts_ms, pose[:2])
        self._head.add(pts_ms, np.r_[pose[2:], nv.STATE_STYLE[row]])

    def add_phonemes(self, phonemes: Iterable[PhonemeTiming]) -> None:
        """Add phonemes (absolute media-clock times) to the lip track and derive gestures:
        a brow raise and a nod at each phrase start, nods on long (stressed) vowels."""
        phonemes = sorted(phonemes, key=lambda p: p.start_ms)
        self.track.append(phonemes)
        for p in phonemes:
            viseme = viseme_of(p.phoneme)
            end = p.start_ms + p.duration_ms
            if viseme == "sil":
                self._pause_seen |= p.duration_ms >= nv.PHRASE_PAUSE_MS
                continue
            gap = p.start_ms - self._last_voiced_end
            phrase_start = self._pause_seen or gap >= nv.PHRASE_PAUSE_MS
            if phrase_start:
                self._brows.append(p.start_ms - 50.0)
            stressed = viseme in VOWELS and (phrase_start or p.duration_ms >= nv.STRESSED_VOWEL_MS)
            if stressed and p.start_ms - self._last_nod >= nv.MIN_NOD_GAP_MS:
                self._nods.append(p.start_ms - 80.0)
                self._last_nod = p.start_ms
            self._pause_seen = False
            self._last_voiced_end = max(self._last_voiced_end, end)

    def _set_emotion(self, emotion: nv.Emotion, pts_ms: float, *, sticky: bool) -> None:
        if sticky and emotion == "neutral" and self._turn_emotion != "neutral":
            return
        self._emotion.drop_after(pts_ms)
        self._emotion.add(pts_ms, nv.EMOTION_OFFSETS[emotion])
        self._turn_emotion = emotion

    # sampling ---------------------------------------------------------------------------

    def state_at(self, pts_ms: float) -> AvatarState:
        """The avatar's state at ``pts_ms`` (``"idle"`` before any state change)."""
        k = int(np.searchsorted(self._state_times, pts_ms, side="right")) - 1
        return self._states[k] if k >= 0 else "idle"

    def frame_at(self, pts_ms: float) -> AnimationFrame:
        """The frame at ``pts_ms`` on the media clock."""
        params = self.sample(np.array([pts_ms], dtype=np.float64))[0]
        return AnimationFrame(float(pts_ms), params, self.state_at(pts_ms))

    def frames(self, start_ms: float, n: int) -> np.ndarray:
        """``n`` frames at this animator's fps from ``start_ms``: ``(n, NUM_PARAMS)`` float32."""
        return self.sample(start_ms + np.arange(int(n)) * (1000.0 / self.fps))

    def sample(self, times_ms: np.ndarray) -> np.ndarray:
        """Frames at arbitrary times: ``(len(times_ms), NUM_PARAMS)`` float32."""
        t = np.asarray(times_ms, dtype=np.float64).reshape(-1)
        out = np.zeros((len(t), NUM_PARAMS), dtype=np.float64)
        if not len(t):
            return out.astype(np.float32)
        self._forget(t.min() - HISTORY_MS)
        out[:, _MOUTH] = self.track.sample_many(t + self.lip_lead_ms)
        emotion = self._emotion.sample(t)
        out[:, _SMILE] = emotion[:, 0]
        out[:, _BROW] = emotion[:, 1] + nv.BROW_RAISE * nv.bumps(t, np.array(self._brows),
                                                                  nv.BROW_MS)
        out[:, _BLINK] = self._blinks(t)[:, None]
        head = self._head.sample(t)  # yaw, pitch, roll, wander, head motion, breath depth, keep
        wander, motion = head[:, 3], head[:, 4]
        gaze = self._eyes.sample(t)
        out[:, _GAZE[0]] = gaze[:, 0] + wander * nv.smooth_noise(t, self.seed, 1, 0.3)
        out[:, _GAZE[1]] = gaze[:, 1] + 0.6 * wander * nv.smooth_noise(t, self.seed, 2, 0.3)
        out[:, _HEAD[0]] = head[:, 0] + motion * nv.smooth_noise(t, self.seed, 3)
        nod = nv.NOD_DEG * nv.bumps(t, np.array(self._nods), nv.NOD_MS)
        out[:, _HEAD[1]] = head[:, 1] + 0.7 * motion * nv.smooth_noise(t, self.seed, 4) - nod
        out[:, _HEAD[2]] = head[:, 2] + 0.4 * motion * nv.smooth_noise(t, self.seed, 5)
        out[:, _BREATH] = nv.breath(t, self.seed, head[:, 5])
        return clip_params(out)

    def _blinks(self, t: np.ndarray) -> np.ndarray:
        onsets, durs, draws = nv.blink_candidates(self.seed, float(t.min()), float(t.max()))
        if not len(onsets):
            return np.zeros(len(t))
        rows = [_state_row(self.state_at(o)) for o in onsets]
        keep = draws < nv.STATE_STYLE[rows, 3]
        return nv.blink_closure(t, onsets[keep], durs[keep])

    def _forget(self, before_ms: float) -> None:
        self.track.forget_before(before_ms)
        if self._nods and self._nods[0] < before_ms:
            self._nods = [x for x in self._nods if x >= before_ms]
        if self._brows and self._brows[0] < before_ms:
            self._brows = [x for x in self._brows if x >= before_ms]
