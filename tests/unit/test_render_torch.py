"""The batched warp renderer: shapes, fidelity at rest, mouth and eyelids, batch independence."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from models.animate import NUM_PARAMS, Animator, index
from models.errors import InputError
from models.render.pack import AvatarPack, load_pack
from models.render.torch_renderer import TorchFaceRenderer
from models.render.warp import EYE_L_LOWER, EYE_L_UPPER, LIP_LOWER_INNER, LIP_UPPER_INNER

pytestmark = pytest.mark.unit
SIZE = 256


@pytest.fixture(scope="module")
def pack() -> AvatarPack:
    return load_pack("default")


@pytest.fixture(scope="module")
def renderer(pack: AvatarPack) -> TorchFaceRenderer:
    r = TorchFaceRenderer(SIZE, device="cpu")
    assert r.add_avatar(pack) == 0
    return r


def vec(**values: float) -> np.ndarray:
    v = np.zeros(NUM_PARAMS, np.float32)
    for name, value in values.items():
        v[index(name)] = value
    return v


def box(pack: AvatarPack, ids: list[int], pad: float = 2.0) -> tuple[slice, slice]:
    lm = pack.landmarks[ids, :2] * (SIZE / pack.size_px)
    return (slice(int(lm[:, 1].min() - pad), int(lm[:, 1].max() + pad + 1)),
            slice(int(lm[:, 0].min() - pad), int(lm[:, 0].max() + pad + 1)))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 99.0 if mse == 0 else 10 * np.log10(255.0**2 / mse)


def dark_or_teeth(region: np.ndarray) -> float:
    """Share of pixels that look like mouth interior: dark cavity or bright grey teeth."""
    luma = region.mean(-1)
    chroma = region.max(-1).astype(int) - region.min(-1)
    return float(np.mean((luma < 70) | ((luma > 165) & (chroma < 45))))


def test_shape_dtype_and_rest_matches_portrait(renderer: TorchFaceRenderer,
                                               pack: AvatarPack) -> None:
    out = renderer.render([0, 0], np.stack([vec(), vec(jaw_open=0.5)]))
    assert out.shape == (2, SIZE, SIZE, 3) and out.dtype == np.uint8
    small = np.asarray(Image.fromarray(pack.portrait).resize((SIZE, SIZE),
                                                             Image.Resampling.LANCZOS))
    assert psnr(out[0], small) > 35.0


def test_jaw_open_moves_mouth_not_background(renderer: TorchFaceRenderer,
                                             pack: AvatarPack) -> None:
    rest, jaw = renderer.render([0, 0], np.stack([vec(), vec(jaw_open=1.0)])).astype(int)
    ys, xs = box(pack, LIP_UPPER_INNER + LIP_LOWER_INNER, pad=6)
    mouth_change = np.abs(jaw[ys, xs] - rest[ys, xs]).mean()
    corner_change = np.abs(jaw[:48, :48] - rest[:48, :48]).max()
    side_change = np.abs(jaw[:, -40:] - rest[:, -40:]).mean()
    assert mouth_change > 25.0
    assert corner_change <= 1 and side_change < 0.5


def test_lip_close_hides_interior_and_jaw_open_shows_cavity(renderer: TorchFaceRenderer,
                                                             pack: AvatarPack) -> None:
    frames = renderer.render([0, 0, 0, 0], np.stack([
        vec(lip_close=1.0), vec(jaw_open=1.0), vec(lip_close=1.0, jaw_open=0.6), vec()]))
    ys, xs = box(pack, LIP_UPPER_INNER + LIP_LOWER_INNER, pad=1)
    closed, opened, pressed, smiling = (dark_or_teeth(f[ys, xs]) for f in frames)
    assert smiling > 0.15  # the portrait shows its teeth
    assert closed < 0.08 and pressed < 0.08
    ys2, xs2 = box(pack, LIP_UPPER_INNER + LIP_LOWER_INNER, pad=16)
    dark = (frames[1][ys2, xs2].mean(-1) < 70).mean()
    assert opened > 0.3 and dark > 0.1


def test_blink_hides_the_iris(renderer: TorchFaceRenderer, pack: AvatarPack) -> None:
    open_, shut = renderer.render([0, 0], np.stack([vec(), vec(blink_left=1.0)]))
    ys, xs = box(pack, EYE_L_UPPER + EYE_L_LOWER, pad=0)
    iris_open = (open_[ys, xs].mean(-1) < 80).sum()
    iris_shut = (shut[ys, xs].mean(-1) < 80).sum()
    assert iris_open > 10 and iris_shut < 0.25 * iris_open
    other_ys, other_xs = box(pack, [33, 133, 159, 145], pad=0)  # the other eye stays open
    assert np.abs(open_[other_ys, other_xs].astype(int) - shut[other_ys, other_xs]).max() <= 2


def test_batch_equals_frames_rendered_one_by_one(renderer: TorchFaceRenderer) -> None:
    params = np.concatenate([Animator(25, seed=s).frames(0.0, 1) for s in range(4)])
    params[1, index("jaw_open")] = 0.9
    params[2, index("head_roll")] = 6.0
    batch = renderer.render([0] * 4, params).astype(int)
    for i in range(4):
        single = renderer.render([0], params[i:i + 1])[0]
        assert np.abs(batch[i] - single).max() <= 1


def test_adding_an_avatar_leaves_other_sessions_alone(pack: AvatarPack) -> None:
    r = TorchFaceRenderer(SIZE, device="cpu")
    r.add_avatar(pack)
    params = np.stack([vec(jaw_open=0.7, lip_close=0.2), vec(blink_right=1.0, smile=0.5)])
    before = r.render([0, 0], params)
    mirrored = AvatarPack("mirror", pack.portrait[:, ::-1].copy(),
                          pack.landmarks * np.array([-1, 1, 1], np.float32)
                          + np.array([pack.size_px, 0, 0], np.float32))
    assert r.add_avatar(mirrored) == 1
    assert np.array_equal(r.render([0, 0], params), before)
    mixed = r.render([1, 0], params)
    assert np.abs(mixed[1].astype(int) - before[1]).max() <= 1
    alone = r.render([1], params[:1])[0]
    assert np.abs(mixed[0].astype(int) - alone).max() <= 1


def test_bad_input_is_reported(renderer: TorchFaceRenderer) -> None:
    with pytest.raises(InputError, match="slot"):
        renderer.render([5], np.zeros((1, NUM_PARAMS), np.float32))
    with pytest.raises(InputError, match="params"):
        renderer.render([0], np.zeros((1, 3), np.float32))
    with pytest.raises(InputError, match="size"):
        TorchFaceRenderer(300, device="cpu")
