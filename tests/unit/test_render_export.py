"""The exportable render step (ONNX / TensorRT path) and the render benchmark's arithmetic."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cluster.bench.render import _curve_estimate, _max_sessions, vp8_encode_ms
from models.animate import Animator
from models.render.pack import load_pack
from models.render.step import RenderStep
from models.render.torch_renderer import TorchFaceRenderer
from models.render.trt import engine_path, export_onnx
from models.render.warp import build_fields

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def setup() -> tuple[TorchFaceRenderer, RenderStep, np.ndarray]:
    pack = load_pack("default")
    renderer = TorchFaceRenderer(256, device="cpu")
    renderer.add_avatar(pack)
    step = RenderStep(build_fields(pack.portrait, pack.landmarks, 256), 256).eval()
    params = np.concatenate([Animator(25, seed=s).frames(0.0, 1) for s in range(3)])
    params[0, 0] = 1.0
    return renderer, step, params


def test_step_module_equals_renderer(setup: tuple) -> None:
    renderer, step, params = setup
    with torch.no_grad():
        ours = step(torch.from_numpy(params))
    assert torch.allclose(ours, renderer.render_tensor([0, 0, 0], params), atol=1e-3)


def test_onnx_export_runs_in_onnxruntime(setup: tuple, tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    _, step, params = setup
    path = export_onnx(step, engine_path(tmp_path, "default", 256).with_suffix(".onnx"))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    five = np.concatenate([params, params[:2]])  # a batch size other than the export's
    got = sess.run(None, {"params": five})[0]
    with torch.no_grad():
        ref = step(torch.from_numpy(five)).numpy()
    assert got.shape == (5, 3, 256, 256)
    assert np.abs(got - ref).max() < 0.5


def test_sessions_at_fps_come_from_the_batch_time_curve() -> None:
    assert _curve_estimate({1: 5.0, 4: 8.0, 16: 20.0}, 40.0) == 36  # extrapolated: 1 ms per session
    assert _curve_estimate({1: 5.0, 4: 8.0, 16: 20.0}, 14.0) == 10
    assert _curve_estimate({1: 50.0}, 40.0) == 0

    class Timer:  # batch time 2 ms + 1 ms per session, measured on demand
        def measure(self, n: int, **_: object) -> list[float]:
            return [2.0 + n]

    points = {1: 3.0, 4: 6.0}
    assert _max_sessions(Timer(), points, 40.0, lambda n, t: t, cap=512) == 38  # type: ignore
    assert 38 in points
    with_encode = _max_sessions(Timer(), points, 40.0, lambda n, t: t + n * 1.0, cap=512)
    assert with_encode == 19  # type: ignore[arg-type]


def test_vp8_encode_cost_is_measured(setup: tuple) -> None:
    renderer, _, params = setup
    frames = renderer.render([0] * 3, params)
    ms = vp8_encode_ms(256, np.concatenate([frames, frames]))
    assert 0.0 < ms < 200.0
