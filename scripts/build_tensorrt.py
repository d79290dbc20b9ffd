"""Export an avatar's render step to ONNX and build its TensorRT engine.

Usage (on the GPU machine, with the gpu extra installed)::

    python scripts/build_tensorrt.py --avatar default --size 512 --out build/trt
    # then: TorchFaceRenderer(512, device="cuda", engine_dir="build/trt")

Writes ``OUT/<avatar>-<size>.onnx`` and ``OUT/<avatar>-<size>.engine`` (FP16, dynamic batch
``--min-batch``..``--max-batch``, tuned for ``--opt-batch``). ``--onnx-only`` stops after the
export (works on CPU, no TensorRT needed), and ``--check`` compares the ONNX graph with the
PyTorch renderer through onnxruntime when it is installed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    from models.errors import AvatarError
    from models.render.pack import load_pack
    from models.render.step import RenderStep
    from models.render.trt import build_engine, engine_path, export_onnx
    from models.render.warp import build_fields

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--avatar", default="default", help="pack name or folder")
    ap.add_argument("--size", type=int, default=512, choices=(256, 512))
    ap.add_argument("--out", type=Path, default=Path("build/trt"))
    ap.add_argument("--min-batch", type=int, default=1)
    ap.add_argument("--opt-batch", type=int, default=64)
    ap.add_argument("--max-batch", type=int, default=256)
    ap.add_argument("--fp32", action="store_true", help="build without FP16 kernels")
    ap.add_argument("--onnx-only", action="store_true")
    ap.add_argument("--check", action="store_true", help="compare ONNX with PyTorch (onnxruntime)")
    args = ap.parse_args(argv)
    try:
        pack = load_pack(args.avatar)
        step = RenderStep(build_fields(pack.portrait, pack.landmarks, args.size), args.size)
        engine = engine_path(args.out, pack.name, args.size)
        onnx_path = export_onnx(step, engine.with_suffix(".onnx"))
        print(f"exported {onnx_path}")
        if args.check:
            _check(step, onnx_path)
        if args.onnx_only:
            return 0
        build_engine(onnx_path, engine, fp16=not args.fp32, min_batch=args.min_batch,
                     opt_batch=args.opt_batch, max_batch=args.max_batch)
        print(f"built {engine}")
    except AvatarError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    return 0


def _check(step: object, onnx_path: Path) -> None:
    import onnxruntime as ort
    import torch

    from models.animate import Animator

    params = np.concatenate([Animator(25, seed=s).frames(0.0, 1) for s in range(3)])
    with torch.no_grad():
        ref = step(torch.from_numpy(params)).numpy()  # type: ignore[operator]
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"params": params})[0]
    err = float(np.abs(got - ref).max())
    print(f"onnxruntime vs PyTorch: max abs difference {err:.4f} (0..255 scale)")
    if err > 1.0:
        raise SystemExit(f"ONNX graph differs from PyTorch by {err:.2f}")


if __name__ == "__main__":
    raise SystemExit(main())
