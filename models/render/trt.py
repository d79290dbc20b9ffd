"""TensorRT engines for the render step: ONNX export, engine build and execution.

The engine is built per avatar and size by ``scripts/build_tensorrt.py`` from
:class:`~models.render.step.RenderStep` (input ``params`` (B, 16) float32 with a dynamic batch,
output ``frames`` (B, 3, S, S) float32) and saved as ``ENGINE_DIR/<avatar>-<size>.engine``.
:class:`TorchFaceRenderer` runs an avatar through its engine when constructed with
``engine_dir`` on CUDA and the file exists. ``tensorrt`` is imported only here, inside functions.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch

from models.errors import BackendError, BackendUnavailable

INPUT, OUTPUT = "params", "frames"


def engine_path(engine_dir: str | Path, avatar: str, size_px: int) -> Path:
    """Where the engine for ``avatar`` at ``size_px`` lives."""
    return Path(engine_dir) / f"{avatar}-{size_px}.engine"


def _tensorrt() -> Any:
    try:
        import tensorrt
    except ImportError:
        raise BackendUnavailable("TensorRT is not installed; install the gpu extra "
                                 "(pip install -e '.[gpu]') or leave engine_dir unset") from None
    return tensorrt


def export_onnx(step: torch.nn.Module, path: Path, max_batch: int = 4) -> Path:
    """Export ``step`` (a :class:`RenderStep`) to ONNX with a dynamic batch axis."""
    from models.animate.params import NUM_PARAMS

    path.parent.mkdir(parents=True, exist_ok=True)
    example = torch.zeros(max_batch, NUM_PARAMS)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer notes about constant colours; intended
        torch.onnx.export(step.cpu().float().eval(), (example,), str(path), input_names=[INPUT],
                          output_names=[OUTPUT], opset_version=17, dynamo=False,
                          dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}})
    return path


def build_engine(onnx_path: Path, out: Path, fp16: bool = True, min_batch: int = 1,
                 opt_batch: int = 64, max_batch: int = 256, workspace_gib: int = 4) -> Path:
    """Build a serialised TensorRT engine from the ONNX file."""
    from models.animate.params import NUM_PARAMS

    trt = _tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BackendError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_gib << 30)
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    profile.set_shape(INPUT, (min_batch, NUM_PARAMS), (opt_batch, NUM_PARAMS),
                      (max_batch, NUM_PARAMS))
    config.add_optimization_profile(profile)
    blob = builder.build_serialized_network(network, config)
    if blob is None:
        raise BackendError(f"TensorRT failed to build an engine from {onnx_path}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(bytes(blob))
    return out


class TrtStep:
    """Runs a serialised render-step engine on the current CUDA stream."""

    def __init__(self, path: Path, size_px: int) -> None:
        trt = _tensorrt()
        self.size_px = size_px
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self._engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
        if self._engine is None:
            raise BackendError(f"TensorRT could not load {path}; rebuild it with "
                               "scripts/build_tensorrt.py for this GPU and TensorRT version")
        self._context = self._engine.create_execution_context()

    def __call__(self, params: torch.Tensor) -> torch.Tensor:
        """``params`` (B, 16) on CUDA -> frames (B, 3, S, S) float32 on CUDA."""
        p = params.float().contiguous()
        s = self.size_px
        out = torch.empty((p.shape[0], 3, s, s), device=p.device, dtype=torch.float32)
        self._context.set_input_shape(INPUT, tuple(p.shape))
        self._context.set_tensor_address(INPUT, p.data_ptr())
        self._context.set_tensor_address(OUTPUT, out.data_ptr())
        if not self._context.execute_async_v3(torch.cuda.current_stream().cuda_stream):
            raise BackendError("TensorRT render step failed")
        return out
