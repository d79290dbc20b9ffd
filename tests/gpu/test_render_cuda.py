"""The warp renderer on CUDA: float16 output matches the float32 CPU renderer."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(),
                                                  reason="needs a CUDA GPU")]


@pytest.mark.parametrize("size", [256, 512])
def test_cuda_fp16_matches_cpu(size: int) -> None:
    from models.animate import Animator
    from models.render.pack import load_pack
    from models.render.torch_renderer import TorchFaceRenderer

    pack = load_pack("default")
    cpu = TorchFaceRenderer(size, device="cpu")
    gpu = TorchFaceRenderer(size, device="cuda")
    assert gpu.dtype == torch.float16
    cpu.add_avatar(pack)
    gpu.add_avatar(pack)
    params = np.concatenate([Animator(25, seed=s).frames(40.0 * s, 1) for s in range(6)])
    params[0, 0] = 1.0  # one wide open mouth
    a = cpu.render([0] * 6, params).astype(np.int16)
    b = gpu.render([0] * 6, params).astype(np.int16)
    assert b.shape == a.shape and b.dtype == np.int16
    diff = np.abs(a - b)
    assert diff.mean() < 1.5
    assert np.mean(diff > 24) < 0.005
    t = gpu.render_tensor([0] * 6, params)
    assert t.is_cuda and t.dtype == torch.float16


def test_cuda_batch_of_64_at_512() -> None:
    from models.render.pack import load_pack
    from models.render.torch_renderer import TorchFaceRenderer

    gpu = TorchFaceRenderer(512, device="cuda")
    gpu.add_avatar(load_pack("default"))
    out = gpu.render([0] * 64, np.zeros((64, 16), np.float32))
    assert out.shape == (64, 512, 512, 3)
    assert np.abs(out[0].astype(int) - out[63]).max() == 0
