"""Lip-sync measurement: the pixel mouth-opening estimator, the A/V offset estimator and the
silence detector on signals with a known answer, then on the real renderer's output."""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence

import numpy as np
import pytest

from cluster.bench.lipsync import (
    MouthOpeningEstimator,
    calibration_params,
    estimate_offset_ms,
    mouth_roi,
    silent_frames,
)
from models.animate import index, rest_vector
from models.errors import InputError
from models.render.base import FaceRenderer
from models.render.pack import AvatarPack, load_pack

pytestmark = pytest.mark.unit

RATE = 16000
FPS = 25
HAS_RENDERER = importlib.util.find_spec("models.render.torch_renderer") is not None


class DrawnMouthRenderer(FaceRenderer):
    """Skin, lips and a dark cavity whose height follows ``jaw_open * (1 - lip_close)``;
    ``static=True`` ignores the parameters (a renderer whose mouth never moves)."""

    def __init__(self, size_px: int = 128, static: bool = False) -> None:
        self.size_px, self.device, self.static = size_px, "cpu", static
        self.packs: list[AvatarPack] = []

    def add_avatar(self, pack: AvatarPack) -> int:
        self.packs.append(pack)
        return len(self.packs) - 1

    def render(self, avatar_slots: Sequence[int], params: np.ndarray) -> np.ndarray:
        s = self.size_px
        yy, xx = np.mgrid[0:s, 0:s].astype(np.float64)
        rng = np.random.default_rng(0)
        out = np.empty((len(params), s, s, 3), np.uint8)
        for b, (slot, p) in enumerate(zip(avatar_slots, params, strict=True)):
            lm = self.packs[slot].landmarks * (s / self.packs[slot].size_px)
            cx, cy = lm[[13, 14], 0].mean(), lm[[13, 14], 1].mean()
            half_w = 0.5 * (lm[308, 0] - lm[78, 0])
            gap = 0.0 if self.static else p[index("jaw_open")] * (1 - p[index("lip_close")])
            img = np.empty((s, s, 3))
            img[:] = (205, 160, 135)
            lips = ((xx - cx) / half_w) ** 2 + ((yy - cy) / (0.25 * half_w + gap * 8)) ** 2 < 1
            img[lips] = (170, 85, 85)
            hole = ((xx - cx) / (0.8 * half_w)) ** 2 + ((yy - cy) / max(gap * 8, 1e-6)) ** 2 < 1
            img[hole] = (40, 15, 20)
            img += rng.normal(0, 3, img.shape)
            out[b] = np.clip(img, 0, 255).astype(np.uint8)
        return out


def _mouth(params: dict[str, float]) -> np.ndarray:
    v = rest_vector()
    for name, value in params.items():
        v[index(name)] = value
    return v


@pytest.fixture(scope="module")
def pack() -> AvatarPack:
    return load_pack("default")


def test_mouth_box_covers_the_lips_at_any_output_size(pack: AvatarPack) -> None:
    for size in (128, 256, 512):
        rows, cols = mouth_roi(pack.landmarks, pack.size_px, size)
        lm = pack.landmarks * (size / pack.size_px)
        for i in (13, 14, 61, 291):
            assert rows.start <= lm[i, 1] < rows.stop and cols.start <= lm[i, 0] < cols.stop
        assert cols.stop - cols.start < size / 2


def test_pixel_opening_rises_with_the_jaw_and_separates_closed_from_open(
        pack: AvatarPack) -> None:
    renderer = DrawnMouthRenderer()
    slot = renderer.add_avatar(pack)
    est = MouthOpeningEstimator.calibrate(renderer, slot, pack)
    jaws = np.linspace(0, 1, 6)
    frames = renderer.render([slot] * 6, np.stack([_mouth({"jaw_open": j, "lip_close": 0})
                                                    for j in jaws]))
    values = est.opening(frames)
    assert np.all(np.diff(values) > 0)
    assert values[0] < est.closed_threshold < values[-1]
    closed, _ = calibration_params()
    assert est.opening(renderer.render([slot], closed[None]))[0] < est.closed_threshold


def test_calibration_refuses_a_renderer_whose_mouth_never_opens(pack: AvatarPack) -> None:
    renderer = DrawnMouthRenderer(static=True)
    slot = renderer.add_avatar(pack)
    with pytest.raises(InputError, match="does not see the mouth open"):
        MouthOpeningEstimator.calibrate(renderer, slot, pack)


def _syllables(duration_ms: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A speech-like envelope (syllable bumps every 150-300 ms with pauses) and noise
    audio modulated by it."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(duration_ms * RATE / 1000)) / RATE * 1000
    env = np.zeros_like(t)
    at = 300.0
    while at < duration_ms - 500:
        width = rng.uniform(60, 120)
        env += rng.uniform(0.5, 1.0) * np.exp(-0.5 * ((t - at) / (width / 2.5)) ** 2)
        at += rng.uniform(150, 300) + (400 if rng.random() < 0.15 else 0)
    audio = (env * rng.normal(0, 6000, len(t))).clip(-32000, 32000).astype(np.int16)
    return audio, env


@pytest.mark.parametrize("shift_ms", [80.0, -80.0, 0.0, 50.0])
def test_offset_estimator_recovers_a_known_shift(shift_ms: float) -> None:
    errors = []
    for seed in range(3):
        audio, env = _syllables(4000, seed)
        times = np.arange(int(4000 * FPS / 1000)) * (1000 / FPS)
        # the mouth shows at t what the audio envelope had at t - shift: video late by shift
        opening = np.interp(times - shift_ms, np.arange(len(env)) * 1000 / RATE, env)
        offset, corr = estimate_offset_ms(opening, audio, RATE, FPS)
        errors.append(offset - shift_ms)
        assert corr > 0.8
    assert np.max(np.abs(errors)) <= 5.0, errors


def test_silent_frames_follow_the_pauses_with_a_guard_after_speech() -> None:
    audio = np.zeros(RATE * 2, np.int16)
    rng = np.random.default_rng(1)
    for a, b in ((0.4, 0.9), (0.98, 1.3)):  # speech 400-900 ms and 980-1300 ms
        audio[int(a * RATE): int(b * RATE)] = rng.normal(0, 5000, int((b - a) * RATE))
    silent = silent_frames(audio, RATE, 50, FPS)
    t = np.arange(50) * 40.0
    assert silent[t < 400].all()  # the lead silence (no speech before it: no guard)
    assert not silent[(t >= 400) & (t < 1300)].any()  # speech; an 80 ms gap is too short
    assert not silent[(t >= 1300) & (t < 1360)].any()  # the guard after speech ends
    assert silent[t >= 1360].all()


@pytest.mark.skipif(not HAS_RENDERER, reason="models.render.torch_renderer is not there yet")
def test_real_renderer_mouth_reads_open_only_when_the_jaw_opens(pack: AvatarPack) -> None:
    from models.render.torch_renderer import TorchFaceRenderer

    renderer = TorchFaceRenderer(size_px=256, device="cpu")
    slot = renderer.add_avatar(pack)
    est = MouthOpeningEstimator.calibrate(renderer, slot, pack)
    jaws = [0.0, 0.5, 1.0]
    frames = renderer.render([slot] * 3, np.stack([_mouth({"jaw_open": j, "lip_close": 0})
                                                    for j in jaws]))
    values = est.opening(frames)
    assert values[0] < values[1] < values[2]
    assert values[2] > est.closed_threshold
    rest = renderer.render([slot], rest_vector()[None])
    assert est.opening(rest)[0] < est.closed_threshold
