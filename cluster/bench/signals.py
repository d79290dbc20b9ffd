"""Signal helpers of the end-to-end WebRTC benchmark: onsets, silences, frame rates, the
mouth signal and the audio/mouth cross-correlation (see :mod:`cluster.bench.e2e_metrics` for
how the benchmark reads them). Pure functions over arrays and arrival times.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

SILENCE_RMS = 100.0
"""Audio frames with RMS at or below this (int16 units, ~-50 dBFS) count as silent."""
STAY_SILENT_MS = 200.0
"""A stop counts once the audio has stayed silent this long."""
BIN_MS = 10.0
MAX_LAG_MS = 200.0
MOUTH_ROWS = (0.50, 0.72)
MOUTH_COLS = (0.34, 0.66)
"""The mouth region: rows and columns as fractions of the frame's height and width."""
MIN_THRESHOLD = 2.0
"""The mouth threshold is at least this many grey levels of mean difference."""
MIN_REPLY_S = 1.0
"""Replies shorter than this (first to last audible frame) get no A/V offset."""


def rms(samples: np.ndarray) -> float:
    """Root mean square of int16 (or float) samples, in the samples' units."""
    x = np.asarray(samples, dtype=np.float64)
    return float(np.sqrt(np.mean(x * x))) if x.size else 0.0


def first_above(times: Sequence[float], values: Sequence[float], threshold: float,
                after: float) -> float | None:
    """The first time at or after ``after`` whose value is above ``threshold`` (None if none)."""
    t = np.asarray(times, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    hits = np.flatnonzero((t >= after) & (v > threshold))
    return float(t[hits[0]]) if len(hits) else None


def silent_from(times: Sequence[float], values: Sequence[float], after: float,
                threshold: float = SILENCE_RMS, hold_s: float = STAY_SILENT_MS / 1000.0
                ) -> float | None:
    """The start of the first silent run at or after ``after`` that lasts ``hold_s``.

    A run starts at a frame at or below ``threshold`` and lasts while later frames stay at or
    below it; it counts once a frame ``hold_s`` after its start is still silent (so the
    recording must reach that far). None when the audio never goes quiet that long.
    """
    t = np.asarray(times, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    start: float | None = None
    for ti, vi in zip(t, v, strict=True):
        if ti < after:
            continue
        if vi > threshold:
            start = None
        elif start is None:
            start = float(ti)
        if start is not None and ti - start >= hold_s:
            return start
    return None


def intervals_ms(times: Sequence[float]) -> list[float]:
    """Gaps between consecutive arrival times (seconds in, milliseconds out)."""
    t = np.asarray(times, dtype=np.float64)
    return [float(x) for x in np.diff(t) * 1000.0]


def rate_per_s(times: Sequence[float]) -> float | None:
    """Frames per second over the span from the first to the last arrival."""
    if len(times) < 2 or times[-1] <= times[0]:
        return None
    return (len(times) - 1) / (times[-1] - times[0])


# --- the mouth ------------------------------------------------------------------------------


def mouth_box(height: int, width: int) -> tuple[slice, slice]:
    """``(rows, cols)`` of the mouth region in a ``height`` x ``width`` frame."""
    return (slice(round(MOUTH_ROWS[0] * height), round(MOUTH_ROWS[1] * height)),
            slice(round(MOUTH_COLS[0] * width), round(MOUTH_COLS[1] * width)))


def mouth_signal(regions: np.ndarray, baseline: np.ndarray) -> np.ndarray:
    """Mean absolute difference of each mouth region (N, h, w) from the idle ``baseline``."""
    diff = np.abs(np.asarray(regions, dtype=np.float32) - baseline.astype(np.float32))
    return diff.reshape(len(diff), -1).mean(axis=1)


def idle_baseline(regions: np.ndarray) -> np.ndarray:
    """The idle mouth: the per-pixel median of mouth regions seen during silence."""
    return np.median(np.asarray(regions, dtype=np.float32), axis=0)


def idle_threshold(idle_values: Sequence[float]) -> float:
    """"Mouth moved" threshold: above the idle frames' own signal (its 99th percentile plus
    three standard deviations), and at least :data:`MIN_THRESHOLD`."""
    v = np.asarray(idle_values, dtype=np.float64)
    if not v.size:
        return MIN_THRESHOLD
    return max(MIN_THRESHOLD, float(np.percentile(v, 99) + 3.0 * v.std()))


# --- envelopes and the A/V offset -----------------------------------------------------------


def bin_energy(times: Sequence[float], energy: Sequence[float], start: float, n_bins: int,
               bin_ms: float = BIN_MS) -> np.ndarray:
    """Mean energy per ``bin_ms`` bin from ``start`` (s); empty bins take the previous bin's
    value (0 before the first sample)."""
    t = np.asarray(times, dtype=np.float64)
    e = np.asarray(energy, dtype=np.float64)
    idx = np.floor((t - start) * 1000.0 / bin_ms).astype(np.int64)
    keep = (idx >= 0) & (idx < n_bins)
    sums = np.bincount(idx[keep], weights=e[keep], minlength=n_bins)
    counts = np.bincount(idx[keep], minlength=n_bins)
    out = np.zeros(n_bins)
    last = 0.0
    for i in range(n_bins):
        if counts[i]:
            last = sums[i] / counts[i]
        out[i] = last
    return out


def resample_to_bins(times: Sequence[float], values: Sequence[float], start: float,
                     n_bins: int, bin_ms: float = BIN_MS) -> np.ndarray:
    """``values`` at ``times`` (s) linearly interpolated to the centres of ``n_bins`` bins."""
    centres = start + (np.arange(n_bins) + 0.5) * bin_ms / 1000.0
    return np.interp(centres, np.asarray(times, np.float64), np.asarray(values, np.float64))


def smooth(x: np.ndarray, width: int) -> np.ndarray:
    """Moving average over ``width`` bins (same length)."""
    if width <= 1:
        return np.asarray(x, dtype=np.float64)
    kernel = np.ones(width) / width
    return np.convolve(np.asarray(x, np.float64), kernel, mode="same")


def best_lag(audio_env: np.ndarray, video: np.ndarray, bin_ms: float = BIN_MS,
             max_lag_ms: float = MAX_LAG_MS) -> tuple[float | None, float]:
    """``(lag_ms, correlation)``: the delay of ``video`` behind ``audio_env`` (same bins) that
    maximises their Pearson correlation over the overlap; positive = video late. ``lag_ms`` is
    None when either signal is flat."""
    a = np.asarray(audio_env, dtype=np.float64)
    v = np.asarray(video, dtype=np.float64)
    if len(a) != len(v):
        raise ValueError(f"signals differ in length: {len(a)} and {len(v)}")
    max_k = round(max_lag_ms / bin_ms)
    if len(a) <= 2 * max_k + 2:
        return None, 0.0
    lags = np.arange(-max_k, max_k + 1)
    corr = np.array([_pearson(a[max_k - k: len(a) - max_k - k], v[max_k: len(v) - max_k])
                     for k in lags])
    if not np.isfinite(corr).any():
        return None, 0.0
    corr = np.nan_to_num(corr, nan=-1.0)
    i = int(np.argmax(corr))
    lag = float(lags[i])
    if 0 < i < len(lags) - 1:
        c0, c1, c2 = corr[i - 1], corr[i], corr[i + 1]
        curve = c0 - 2 * c1 + c2
        if curve < 0:
            lag += 0.5 * (c0 - c2) / curve
    return lag * bin_ms, float(corr[i])


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    xc, yc = x - x.mean(), y - y.mean()
    denom = math.sqrt(float((xc * xc).sum() * (yc * yc).sum()))
    return float((xc * yc).sum() / denom) if denom > 0 else math.nan


def reply_offset(audio_times: Sequence[float], audio_energy: Sequence[float],
                 video_times: Sequence[float], video_signal: Sequence[float], start: float,
                 stop: float, smooth_ms: float = 40.0) -> tuple[float | None, float]:
    """A/V offset (ms, positive = video late) and its correlation over ``[start, stop]`` (s):
    audio energy binned by arrival, mouth signal interpolated to the same bins, both smoothed
    over ``smooth_ms``."""
    n_bins = int((stop - start) * 1000.0 / BIN_MS)
    a_t, a_e = np.asarray(audio_times, np.float64), np.asarray(audio_energy, np.float64)
    v_t, v_s = np.asarray(video_times, np.float64), np.asarray(video_signal, np.float64)
    a_ok, v_ok = np.isfinite(a_t), np.isfinite(v_t)  # frames whose arrival is unknown
    audio_times, audio_energy, video_times, video_signal = a_t[a_ok], a_e[a_ok], v_t[v_ok], \
        v_s[v_ok]
    if n_bins <= 0 or len(video_times) < 2:
        return None, 0.0
    width = max(1, round(smooth_ms / BIN_MS))
    env = smooth(np.sqrt(bin_energy(audio_times, audio_energy, start, n_bins)), width)
    mouth = smooth(resample_to_bins(video_times, video_signal, start, n_bins), width)
    return best_lag(env, mouth)


# --- targets --------------------------------------------------------------------------------
