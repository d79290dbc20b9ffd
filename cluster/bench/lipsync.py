"""``avatarctl bench lipsync``: audio/video sync measured on rendered pixels.

Each utterance is spoken by the TTS and rendered offline (:func:`render_utterance`). The mouth
opening is then **estimated from the frames**, never from the animation parameters:

* **Mouth ROI**: a box around the pack's lip landmarks (FaceMesh 61/291 corners, 0 upper lip,
  17 lower lip) scaled to the output size, widened by :data:`ROI_PAD` of the mouth width and
  extended downwards so a dropped jaw stays inside.
* **Colour model of a closed mouth**: a render at ``jaw_open = 0, lip_close = 1`` (everything
  else at rest) gives the ROI's skin and lip colours; a Gaussian is fitted to them (RGB,
  trimmed refit). Teeth and the mouth cavity are far from skin and lips in that model.
* **Opening** of a frame = the fraction of ROI pixels whose Mahalanobis distance to the model
  exceeds the 99.5th percentile of the closed render's own distances. It is ~0.005 for the
  closed render and rises as teeth and cavity show; calibration checks it does
  (``jaw_open = 1, lip_close = 0`` must read well above closed).

**Offset**: the audio RMS envelope (a window of one frame, centred on the time) is evaluated at
``t_k - lag`` for every frame time ``t_k`` and every lag within ±:data:`MAX_LAG_MS` in 1 ms
steps; the lag with the highest Pearson correlation with the opening, refined by parabolic
interpolation, is the offset. Positive = the video lags the audio (the mouth moves after the
sound), negative = it leads.

**Silence**: 10 ms hops whose RMS is below :data:`SILENCE_DB` under the utterance's loud (p95)
level, in runs of at least :data:`MIN_SILENCE_MS`; frames in them count, except the first
:data:`AFTER_SPEECH_GUARD_MS` after speech ends. A frame is closed when its opening is below
``closed + CLOSED_FRACTION * (open - closed)`` of the calibration renders.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from models.animate import index, rest_vector
from models.errors import InputError
from models.render.base import FaceRenderer
from models.render.pack import AvatarPack

MAX_LAG_MS = 200.0
LAG_STEP_MS = 1.0
ROI_PAD = 0.15
SILENCE_DB = -35.0
SILENCE_HOP_MS = 10.0
MIN_SILENCE_MS = 100.0
AFTER_SPEECH_GUARD_MS = 60.0
CLOSED_FRACTION = 0.2
OUTLIER_QUANTILE = 99.5
TARGETS = {"av_offset_ms.p99": ("<=", 20.0), "mouth_closed_in_silence_rate": (">=", 0.95)}

SENTENCES = (
    "Hello.",
    "Our clinic opens at nine.",
    "Please bring your insurance card and a photo ID.",
    "Yes, we can book you in on Monday morning.",
    "Parking is free for patients in the lot behind the building.",
    "Thank you for calling.",
    "If you feel chest pain or trouble breathing, call emergency services right away.",
    "Doctor Patel sees children and adults.",
    "Your blood test results usually arrive within three working days, and we will phone you "
    "if anything needs a follow-up visit.",
    "Bye for now.",
    "Masks are available at the front desk.",
    "We are closed on public holidays, but the nurse line answers every day from eight to eight.",
)
"""Clinic replies of different lengths (short greetings to two-clause sentences)."""


# mouth opening from pixels -------------------------------------------------------------------

def mouth_roi(landmarks: np.ndarray, pack_size_px: int, out_size_px: int) -> tuple[slice, slice]:
    """``(rows, cols)`` slices of the mouth box in an ``out_size_px`` frame of the pack."""
    s = out_size_px / pack_size_px
    xs = landmarks[[61, 291, 78, 308], 0] * s
    top, bottom = landmarks[0, 1] * s, landmarks[17, 1] * s
    width = float(xs.max() - xs.min())
    pad = ROI_PAD * width
    x0, x1 = xs.min() - pad, xs.max() + pad
    y0, y1 = top - pad, bottom + 0.5 * width
    clip = lambda v: int(np.clip(round(v), 0, out_size_px))  # noqa: E731
    if clip(x1) - clip(x0) < 4 or clip(y1) - clip(y0) < 4:
        raise InputError("the avatar's mouth landmarks give an empty mouth box; re-enrol it")
    return slice(clip(y0), clip(y1)), slice(clip(x0), clip(x1))


@dataclass(frozen=True)
class MouthOpeningEstimator:
    """Mouth opening from rendered frames: the share of mouth-box pixels unlike a closed mouth.

    Build it with :meth:`calibrate` (renders a closed and an open mouth) or directly from a
    closed reference frame with :meth:`from_closed_frame`."""

    rows: slice
    cols: slice
    mean: np.ndarray
    inv_cov: np.ndarray
    cutoff: float
    closed_value: float = 0.0
    open_value: float = 1.0

    @classmethod
    def from_closed_frame(cls, frame: np.ndarray, rows: slice, cols: slice
                          ) -> MouthOpeningEstimator:
        """Fit the closed-mouth colour model to ``frame``'s mouth box."""
        px = frame[rows, cols].reshape(-1, 3).astype(np.float64)
        keep = np.ones(len(px), bool)
        for _ in range(2):  # trimmed refit: the lip line must not widen the model
            mean = px[keep].mean(axis=0)
            cov = np.cov(px[keep].T) + np.eye(3) * 4.0
            inv = np.linalg.inv(cov)
            d = _mahalanobis(px, mean, inv)
            keep = d <= np.percentile(d, 97.0)
        cutoff = float(np.percentile(_mahalanobis(px, mean, inv), OUTLIER_QUANTILE))
        return cls(rows, cols, mean, inv, cutoff)

    @classmethod
    def calibrate(cls, renderer: FaceRenderer, slot: int, pack: AvatarPack
                  ) -> MouthOpeningEstimator:
        """Render the avatar with the mouth closed and wide open; fit the model on the closed
        frame, record both readings and check the estimator responds to the opening."""
        rows, cols = mouth_roi(pack.landmarks, pack.size_px, renderer.size_px)
        closed, opened = calibration_params()
        frames = np.asarray(renderer.render([slot, slot], np.stack([closed, opened])))
        est = cls.from_closed_frame(frames[0], rows, cols)
        values = est.opening(frames)
        if values[1] - values[0] < 0.02:
            raise InputError(f"the mouth estimator does not see the mouth open in this "
                             f"renderer's output (closed {values[0]:.3f}, open {values[1]:.3f})")
        return MouthOpeningEstimator(rows, cols, est.mean, est.inv_cov, est.cutoff,
                                     float(values[0]), float(values[1]))

    @property
    def closed_threshold(self) -> float:
        """Openings below this count as a closed mouth."""
        return self.closed_value + CLOSED_FRACTION * (self.open_value - self.closed_value)

    def opening(self, frames: np.ndarray) -> np.ndarray:
        """Opening of each frame (uint8 (N, H, W, 3)): share of unlike pixels, (N,) float."""
        roi = np.asarray(frames)[:, self.rows, self.cols].astype(np.float64)
        d = _mahalanobis(roi.reshape(-1, 3), self.mean, self.inv_cov).reshape(roi.shape[:3])
        return (d > self.cutoff).mean(axis=(1, 2))


def _mahalanobis(px: np.ndarray, mean: np.ndarray, inv_cov: np.ndarray) -> np.ndarray:
    diff = px - mean
    return np.sqrt(np.einsum("ni,ij,nj->n", diff, inv_cov, diff))


def calibration_params() -> tuple[np.ndarray, np.ndarray]:
    """Parameter vectors of the closed (jaw 0, lips together) and open (jaw 1, lips apart)
    calibration renders; everything else at rest."""
    closed, opened = rest_vector(), rest_vector()
    closed[index("jaw_open")], closed[index("lip_close")] = 0.0, 1.0
    opened[index("jaw_open")], opened[index("lip_close")] = 1.0, 0.0
    return closed, opened


# audio envelope, offset and silence -----------------------------------------------------------

def rms_at(audio: np.ndarray, rate: int, times_ms: np.ndarray, window_ms: float) -> np.ndarray:
    """RMS of ``audio`` in a ``window_ms`` window centred on each time (silence outside)."""
    x = np.asarray(audio, dtype=np.float64)
    csum = np.concatenate([[0.0], np.cumsum(x * x)])
    half = 0.5 * window_ms * rate / 1000.0
    centre = np.asarray(times_ms, dtype=np.float64) * rate / 1000.0
    lo = np.clip(np.round(centre - half), 0, len(x)).astype(np.int64)
    hi = np.clip(np.round(centre + half), 0, len(x)).astype(np.int64)
    width = max(2.0 * half, 1.0)
    return np.sqrt((csum[hi] - csum[lo]) / width)


def estimate_offset_ms(
    opening: np.ndarray, audio: np.ndarray, rate: int, fps: float,
    max_lag_ms: float = MAX_LAG_MS,
) -> tuple[float, float]:
    """``(offset_ms, correlation)``: the delay of the mouth signal behind the audio envelope
    (positive = video late) maximising their Pearson correlation, with sub-ms refinement."""
    m = np.asarray(opening, dtype=np.float64)
    t = np.arange(len(m)) * (1000.0 / fps)
    lags = np.arange(-max_lag_ms, max_lag_ms + LAG_STEP_MS / 2, LAG_STEP_MS)
    env = rms_at(audio, rate, (t[None, :] - lags[:, None]).ravel(), 1000.0 / fps)
    env = env.reshape(len(lags), len(m))
    mc = m - m.mean()
    ec = env - env.mean(axis=1, keepdims=True)
    denom = np.sqrt((mc * mc).sum() * (ec * ec).sum(axis=1))
    corr = np.where(denom > 0, (ec @ mc) / np.where(denom > 0, denom, 1.0), 0.0)
    i = int(np.argmax(corr))
    lag = float(lags[i])
    if 0 < i < len(lags) - 1:
        a, b, c = corr[i - 1], corr[i], corr[i + 1]
        curve = a - 2 * b + c
        if curve < 0:
            lag += 0.5 * (a - c) / curve * LAG_STEP_MS
    return lag, float(corr[i])


def silent_frames(audio: np.ndarray, rate: int, n_frames: int, fps: float) -> np.ndarray:
    """Which of ``n_frames`` frame times fall in silence (module doc): bool (N,)."""
    dur_ms = 1000.0 * len(audio) / rate
    hops = np.arange(0.0, dur_ms, SILENCE_HOP_MS)
    level = rms_at(audio, rate, hops + SILENCE_HOP_MS / 2, SILENCE_HOP_MS)
    loud = np.percentile(level, 95) if len(level) else 0.0
    quiet = level < max(loud * 10 ** (SILENCE_DB / 20), 1.0)
    t = np.arange(n_frames) * (1000.0 / fps)
    out = np.zeros(n_frames, bool)
    k = 0
    while k < len(quiet):
        if not quiet[k]:
            k += 1
            continue
        j = k
        while j < len(quiet) and quiet[j]:
            j += 1
        start, end = hops[k], hops[j - 1] + SILENCE_HOP_MS
        if end - start >= MIN_SILENCE_MS:
            first = start + (AFTER_SPEECH_GUARD_MS if k > 0 else 0.0)
            out |= (t >= first) & (t < end)
        k = j
    return out


# the benchmark ---------------------------------------------------------------------------

def _abs_summary(values: Sequence[float]) -> dict[str, float]:
    v = np.abs(np.asarray(values, dtype=np.float64))
    return {"p50": round(float(np.percentile(v, 50)), 1),
            "p99": round(float(np.percentile(v, 99)), 1)}


def _met(figures: dict[str, Any]) -> dict[str, bool]:
    met = {}
    for key, (op, target) in TARGETS.items():
        value: Any = figures
        for part in key.split("."):
            value = value[part]
        met[key] = value <= target if op == "<=" else value >= target
    return met


def run_lipsync_bench(
    *,
    utterances: int = 10,
    size_px: int = 256,
    fps: float = 25,
    avatar: str = "default",
    device: str = "cpu",
    tts=None,
    renderer: FaceRenderer | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Render ``utterances`` clinic sentences and measure A/V offset and closed-mouth silence
    on the pixels; returns the benchmark's JSON figures."""
    from configs.schema import TTSConfig
    from models.render.offline import create_renderer, render_utterance
    from models.render.pack import load_pack
    from models.tts import create_tts

    if utterances < 1:
        raise InputError("--utterances must be at least 1")
    say = progress or (lambda _step: None)
    pack = load_pack(avatar)
    renderer = renderer or create_renderer(size_px=size_px, device=device)
    slot = renderer.add_avatar(pack)
    tts = tts or create_tts(TTSConfig(backend="espeak"))
    est = MouthOpeningEstimator.calibrate(renderer, slot, pack)
    rows: list[dict[str, Any]] = []
    offsets: list[float] = []
    silent_total = closed_total = frames_total = 0
    render_s = 0.0
    for i in range(utterances):
        text = SENTENCES[i % len(SENTENCES)]
        say(f"utterance {i + 1}/{utterances}")
        t0 = time.perf_counter()
        utt = render_utterance(text, renderer=renderer, slot=slot, tts=tts, fps=fps, seed=i)
        render_s += time.perf_counter() - t0
        opening = est.opening(utt.frames)
        offset, corr = estimate_offset_ms(opening, utt.audio, utt.rate, fps)
        silent = silent_frames(utt.audio, utt.rate, len(opening), fps)
        closed = silent & (opening < est.closed_threshold)
        offsets.append(offset)
        silent_total += int(silent.sum())
        closed_total += int(closed.sum())
        frames_total += len(opening)
        rows.append({"text": text, "frames": len(opening), "audio_ms": round(utt.audio_ms, 1),
                     "av_offset_ms": round(offset, 1), "correlation": round(corr, 3),
                     "silent_frames": int(silent.sum()), "closed_silent_frames": int(closed.sum())})
    figures: dict[str, Any] = {
        "utterances": utterances, "frames": frames_total, "size_px": renderer.size_px,
        "fps": fps, "device": renderer.device,
        "av_offset_ms": _abs_summary(offsets),
        "signed_offset_ms": {"mean": round(float(np.mean(offsets)), 1),
                             "p50": round(float(np.median(offsets)), 1)},
        "mouth_closed_in_silence_rate": round(closed_total / max(silent_total, 1), 4),
        "silent_frames": silent_total,
        "estimator": {"closed": round(est.closed_value, 4), "open": round(est.open_value, 4),
                      "closed_threshold": round(est.closed_threshold, 4)},
        "render_frames_per_s": round(frames_total / max(render_s, 1e-9), 1),
        "per_utterance": rows,
    }
    figures["targets_met"] = _met(figures)
    return figures
