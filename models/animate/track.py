"""The lip-sync track: phoneme timings to a smooth mouth-parameter curve on the media clock.

Coarticulation follows Cohen & Massaro (1993): every viseme segment pulls each mouth parameter
towards its target with a *dominance* that is flat over the segment's core and falls off
smoothly around it; the mouth at time ``t`` is the dominance-weighted mean of the targets, plus a
weak constant pull towards rest. Lingual consonants have little dominance over the lips, so they
take the neighbouring vowels' rounding; labials dominate lip closure.

The dominance kernel is compactly supported (``(1 - (d/L)^2)^3`` for a distance ``d`` outside
the core, zero beyond ``L`` = :data:`SUPPORT_MS`), so:

* the mouth is exactly at rest once every phoneme is more than ``L`` behind (end of speech, and
  inside pauses: ``"_"`` segments also pull towards rest, the harder the longer they are);
* **streaming**: phonemes appended later (starting at or after the end of those already known)
  change the track only from :data:`LOOKAHEAD_MS` before their start on. A frame at ``t`` is
  final once phonemes are known up to ``t + LOOKAHEAD_MS`` or the speech has ended.

Bilabials (p b m) must close the lips even when short, which a weighted mean alone would not do:
a closure envelope (held for at least :data:`MIN_CLOSURE_MS`, so one frame at >= 25 fps always
lands on it, with cosine ramps of :data:`CLOSURE_RAMP_MS`) forces ``lip_close`` to 1 over them.

An interrupt at ``T`` fades the dominance of every known phoneme to zero over
:data:`INTERRUPT_FADE_MS` from ``T`` on and drops those that start too late to matter, so the mouth
returns smoothly to rest and frames up to ``T`` do not change.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from models.animate.params import MOUTH_PARAMS, MOUTH_REST
from models.animate.visemes import DOMINANCE, SHAPES, VISEME_INDEX, phoneme_visemes
from models.frames import PhonemeTiming

SUPPORT_MS = np.array([60.0, 80.0, 100.0, 70.0, 80.0, 80.0], dtype=np.float32)
"""How far each mouth parameter's dominance reaches beyond a segment's core: lip rounding
(anticipatory rounding) spreads furthest. The jaw's reach was set by `avatarctl bench
lipsync`: at 100 ms the mouth opened well before the sound on short words (|A/V offset| p99
45 ms); at 60 ms the p99 is 15 ms. Narrower reaches for the lips made them step too fast."""
LOOKAHEAD_MS = 100.0
"""Appending phonemes never changes the track more than this before their start."""
CORE_FRACTION = 0.6
"""Share of a segment's duration (centred) over which its dominance is flat."""
MIN_CLOSURE_MS = 45.0
CLOSURE_RAMP_MS = 45.0
INTERRUPT_FADE_MS = 120.0
BACKGROUND = 0.05
"""Constant dominance of the rest shape: the mouth drifts to rest where nothing is spoken."""

_BLOCK = 32  # times evaluated together in one vectorised block
_PP = VISEME_INDEX["PP"]
_SIL = VISEME_INDEX["sil"]
_NP = len(MOUTH_PARAMS)
_JAW, _CLOSE, _TEETH = 0, MOUTH_PARAMS.index("lip_close"), MOUTH_PARAMS.index("teeth_show")
_LMAX = float(max(SUPPORT_MS.max(), CLOSURE_RAMP_MS + MIN_CLOSURE_MS))
assert SUPPORT_MS.max() <= LOOKAHEAD_MS and CLOSURE_RAMP_MS + MIN_CLOSURE_MS / 2 <= LOOKAHEAD_MS


def _pause_weight(duration_ms: np.ndarray) -> np.ndarray:
    """Dominance scale of a pause: a short word gap barely matters, a sentence end rules."""
    return 3.0 * np.clip((duration_ms - 40.0) / 110.0, 0.05, 1.0)


class LipTrack:
    """A growing lip-sync track for one session: append phonemes, sample mouth parameters.

    Times are ms on the session's media clock. Sampling is vectorised over times; the result
    is ``(n, 6)`` float32 in :data:`~models.animate.params.MOUTH_PARAMS` order.
    """

    def __init__(self) -> None:
        self._start = np.zeros(0)
        self._end = np.zeros(0)
        self._vis = np.zeros(0, dtype=np.int64)
        self._scale = np.zeros(0)
        self._cut = np.zeros(0)
        self._hi_envelope = np.zeros(0)

    def __len__(self) -> int:
        return len(self._start)

    @property
    def end_ms(self) -> float:
        """End of the last known phoneme (``-inf`` when there is none)."""
        return float(self._end.max()) if len(self._end) else float("-inf")

    def append(self, phonemes: Iterable[PhonemeTiming]) -> None:
        """Add phonemes (absolute ``start_ms`` on the media clock); any order is accepted, but
        the lookahead guarantee holds for phonemes starting after those already known."""
        starts: list[float] = []
        ends: list[float] = []
        vis: list[int] = []
        scale: list[float] = []
        for p in phonemes:
            start, dur = float(p.start_ms), max(float(p.duration_ms), 0.0)
            if not np.isfinite(start) or not np.isfinite(dur) or dur <= 0.0:
                continue
            t = start
            for viseme, share in phoneme_visemes(p.phoneme):
                d = dur * share
                starts.append(t)
                ends.append(t + d)
                vis.append(VISEME_INDEX[viseme])
                scale.append(float(_pause_weight(np.array(dur))) if viseme == "sil" else 1.0)
                t += d
        if not starts:
            return
        self._start = np.concatenate([self._start, starts])
        self._end = np.concatenate([self._end, ends])
        self._vis = np.concatenate([self._vis, np.array(vis, dtype=np.int64)])
        self._scale = np.concatenate([self._scale, scale])
        self._cut = np.concatenate([self._cut, np.full(len(starts), np.inf)])
        self._reindex()

    def _reindex(self) -> None:
        order = np.argsort(self._start, kind="stable")
        for name in ("_start", "_end", "_vis", "_scale", "_cut"):
            setattr(self, name, getattr(self, name)[order])
        self._hi_envelope = np.maximum.accumulate(self._end) if len(self._end) else self._end

    def interrupt(self, at_ms: float) -> None:
        """Barge-in at ``at_ms``: fade every known phoneme out from ``at_ms`` and forget those
        too far ahead to have shaped any frame before it (frames up to ``at_ms`` are kept)."""
        keep = self._start < at_ms + _LMAX
        for name in ("_start", "_end", "_vis", "_scale", "_cut"):
            setattr(self, name, getattr(self, name)[keep])
        self._cut = np.minimum(self._cut, at_ms)
        self._reindex()

    def forget_before(self, ms: float) -> None:
        """Drop segments that can no longer affect frames at or after ``ms`` (bounds memory)."""
        keep = self._end + _LMAX >= ms
        if not keep.all():
            for name in ("_start", "_end", "_vis", "_scale", "_cut"):
                setattr(self, name, getattr(self, name)[keep])
            self._reindex()

    def sample(self, t_ms: float) -> np.ndarray:
        """Mouth parameters at one time, ``(6,)`` float32."""
        return self.sample_many(np.array([t_ms]))[0]

    def frames(self, start_ms: float, n: int, fps: float) -> np.ndarray:
        """``n`` frames at ``fps`` from ``start_ms``: ``(n, 6)`` float32."""
        return self.sample_many(start_ms + np.arange(n) * (1000.0 / fps))

    def sample_many(self, times_ms: np.ndarray) -> np.ndarray:
        """Mouth parameters at each time: ``(len(times_ms), 6)`` float32.

        Long requests are evaluated in blocks of nearby times, each against only the segments
        that can reach it, so the cost grows linearly with the number of frames.
        """
        t = np.asarray(times_ms, dtype=np.float64).reshape(-1)
        if len(t) <= _BLOCK:
            return self._sample_block(t)
        order = np.argsort(t, kind="stable")
        out = np.empty((len(t), _NP), dtype=np.float32)
        for b in range(0, len(t), _BLOCK):
            idx = order[b : b + _BLOCK]
            out[idx] = self._sample_block(t[idx])
        return out

    def _sample_block(self, t: np.ndarray) -> np.ndarray:
        out = np.broadcast_to(MOUTH_REST, (len(t), _NP)).copy()
        if not len(t) or not len(self._start):
            return out
        i0 = int(np.searchsorted(self._hi_envelope, t.min() - _LMAX, side="left"))
        i1 = int(np.searchsorted(self._start, t.max() + _LMAX, side="right"))
        if i1 <= i0:
            return out
        start, end = self._start[i0:i1], self._end[i0:i1]
        vis, scale, cut = self._vis[i0:i1], self._scale[i0:i1], self._cut[i0:i1]
        dur = end - start
        margin = 0.5 * (1.0 - CORE_FRACTION) * dur
        lo, hi = start + margin, end - margin
        tt = t[:, None]
        fade = _fade(tt, cut)  # (n, k)
        dist = np.maximum(np.maximum(lo - tt, tt - hi), 0.0)  # (n, k)
        x = np.clip(1.0 - (dist[:, :, None] / SUPPORT_MS) ** 2, 0.0, None) ** 3  # (n, k, 6)
        dom = x * (DOMINANCE[vis] * scale[:, None])[None] * fade[:, :, None]
        num = np.einsum("nkp,kp->np", dom, SHAPES[vis]) + BACKGROUND * MOUTH_REST
        mouth = num / (dom.sum(axis=1) + BACKGROUND)
        pp = vis == _PP
        if pp.any():
            closure = _closure(tt, start[pp], end[pp]) * fade[:, pp]
            e = closure.max(axis=1)
            mouth[:, _CLOSE] += (1.0 - mouth[:, _CLOSE]) * e
            mouth[:, _JAW] *= 1.0 - 0.75 * e  # the lips close; the jaw only half follows
            mouth[:, _TEETH] *= 1.0 - e
        return mouth.astype(np.float32)


def _fade(t: np.ndarray, cut: np.ndarray) -> np.ndarray:
    """1 before each segment's cut time, a smooth fall to 0 over the interrupt fade."""
    x = np.clip((t - cut) / INTERRUPT_FADE_MS, 0.0, 1.0)
    x = np.where(np.isfinite(x), x, 0.0)
    return 1.0 - x * x * (3.0 - 2.0 * x)


def _closure(t: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Lip-closure envelope of bilabial segments: 1 over the (widened) segment, cosine ramps."""
    centre = 0.5 * (start + end)
    half = np.maximum(0.5 * (end - start), 0.5 * MIN_CLOSURE_MS)
    dist = np.maximum(np.abs(t - centre) - half, 0.0)
    return 0.5 * (1.0 + np.cos(np.pi * np.minimum(dist / CLOSURE_RAMP_MS, 1.0)))
