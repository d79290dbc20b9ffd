"""``avatarctl bench render``: batched face rendering throughput, with and without VP8.

For each render size, every session count in ``--sessions`` is timed as one batched step
(:meth:`TorchFaceRenderer.render_tensor`, synchronised on CUDA) over realistic speaking
parameters: each session has its own animator track (own seed, own phase in the sentence).

How the session limits are derived (also printed under ``"method"``):

- ``batch_ms`` is the wall time of one step for the whole batch, after warm-up.
- ``max_sessions_at_fps``: the batch time curve (p50 of each measured batch size) is
  interpolated linearly (extrapolated with the last per-session slope); the largest session
  count whose estimated p50 fits in ``1000 / fps`` ms is then measured, and stepped down until
  the measured p50 fits.
- VP8: each session has its own PyAV ``libvpx`` encoder (realtime deadline, cpu-used 8, no
  lag, one thread, 500 kbit/s, as a WebRTC sender runs it). The CPU time of one encode
  (RGB -> I420 conversion included) is measured per frame. On CPU the renderer and the
  encoders share the cores, so a tick costs ``render(n) + n * encode / cores``; on CUDA the
  encoders run on the CPU while the GPU renders the next tick, so it costs
  ``max(render(n), n * encode / cores)``.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from fractions import Fraction
from itertools import pairwise
from typing import Any

import numpy as np
import torch

from models.render.strip import speaking_tracks, speech_phonemes
from models.render.torch_renderer import TorchFaceRenderer, resolve_device

FPS = (25, 30)
SLOW_BATCH_S = 2.0
"""A configuration whose single warm-up batch takes longer than this is skipped."""
TRACK_FRAMES = 64


def _cores() -> int:
    return max(1, len(os.sched_getaffinity(0)))


class _Timer:
    """Times batches of one renderer over rotating speaking parameters."""

    def __init__(self, renderer: TorchFaceRenderer, slot: int, tracks: np.ndarray) -> None:
        self.renderer, self.slot, self.tracks = renderer, slot, tracks
        self.step = 0
        self.cuda = renderer.device == "cuda"

    def one(self, n: int) -> float:
        frame = self.tracks[self.step % len(self.tracks), :n]
        self.step += 1
        if self.cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        self.renderer.render_tensor([self.slot] * n, frame)
        if self.cuda:
            torch.cuda.synchronize()
        return (time.perf_counter() - t) * 1000.0

    def measure(self, n: int, budget_s: float = 1.5, min_iters: int = 5,
                max_iters: int = 60) -> list[float]:
        self.one(n)
        self.one(n)
        times: list[float] = []
        start = time.perf_counter()
        while len(times) < max_iters and (len(times) < min_iters
                                          or time.perf_counter() - start < budget_s):
            times.append(self.one(n))
        return times


def _pct(times: list[float]) -> dict[str, float]:
    return {"p50": round(float(np.percentile(times, 50)), 2),
            "p99": round(float(np.percentile(times, 99)), 2)}


def vp8_encode_ms(size: int, frames: np.ndarray, fps: int = 25) -> float:
    """CPU ms to encode one ``size`` frame with PyAV's libvpx VP8 at realtime settings."""
    import av

    ctx = av.CodecContext.create("libvpx", "w")
    ctx.width = ctx.height = size
    ctx.pix_fmt = "yuv420p"
    ctx.time_base = Fraction(1, fps)
    ctx.framerate = Fraction(fps, 1)
    ctx.bit_rate = 500_000
    ctx.thread_count = 1
    ctx.options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0",
                   "error-resilient": "1"}
    spent = []
    for i, img in enumerate(frames):
        t = time.process_time()
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
        frame.pts = i
        ctx.encode(frame.reformat(format="yuv420p"))
        if i >= 3:  # the first frames are keyframes and allocation
            spent.append(time.process_time() - t)
    return float(np.mean(spent) * 1000.0)


def _curve_estimate(points: dict[int, float], budget_ms: float) -> int:
    """Largest n whose linearly interpolated batch time fits ``budget_ms`` (0 if none)."""
    ns = sorted(points)
    if points[ns[0]] > budget_ms:
        return 0
    best = ns[0]
    for a, b in pairwise(ns):
        ta, tb = points[a], points[b]
        if tb <= budget_ms:
            best = b
            continue
        return int(a + (budget_ms - ta) * (b - a) / max(tb - ta, 1e-9))
    last = ns[-1]
    prev = ns[-2] if len(ns) > 1 else 0
    t_prev = points[prev] if prev else 0.0
    slope = max((points[last] - t_prev) / max(last - prev, 1), 1e-3)
    return max(best, int(last + (budget_ms - points[last]) / slope))


def _max_sessions(timer: _Timer, points: dict[int, float], budget_ms: float,
                  cost: Callable[[int, float], float], cap: int) -> int:
    """Largest session count whose measured tick cost fits ``budget_ms``."""
    ticks = {n: cost(n, t) for n, t in points.items()}
    n = min(_curve_estimate(ticks, budget_ms), cap)
    while n > 0:
        if n not in points:
            points[n] = _pct(timer.measure(n, budget_s=0.6, min_iters=3))["p50"]
        if cost(n, points[n]) <= budget_ms:
            return n
        n = max(0, int(n * 0.9) if n > 10 else n - 1)
    return 0


def run_render_bench(sessions: list[int], sizes: list[int], device: str = "auto",
                     progress: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Measure every ``(sessions, size)`` pair; returns the JSON-ready figures."""
    from models.render.pack import load_pack

    dev = resolve_device(device)
    sessions = sorted(set(sessions))
    pack = load_pack("default")
    progress("phonemes")
    speech = speech_phonemes()
    cap = 4096 if dev == "cuda" else 512
    tracks = speaking_tracks(min(max(max(sessions), 8), 512), TRACK_FRAMES, speech=speech)
    cores = _cores()
    configs: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    max_sessions: dict[str, int] = {}
    max_vp8: dict[str, int] = {}
    encode: dict[str, float] = {}
    dtype = ""
    for size in sizes:
        progress(f"{size} px: precomputing the avatar")
        renderer = TorchFaceRenderer(size, device=dev)
        dtype = str(renderer.dtype).replace("torch.", "")
        slot = renderer.add_avatar(pack)
        timer = _Timer(renderer, slot, _tile(tracks, cap))
        progress(f"{size} px: VP8 encode cost")
        sample = renderer.render([slot] * 12, tracks[:12, 0])
        enc_ms = vp8_encode_ms(size, sample)
        encode[str(size)] = round(enc_ms, 3)

        def with_vp8(n: int, t: float, enc_ms: float = enc_ms) -> float:
            enc = n * enc_ms / cores
            return t + enc if dev == "cpu" else max(t, enc)

        points: dict[int, float] = {}
        measured: dict[int, dict[str, float]] = {}
        for n in sessions:
            progress(f"{size} px: {n} sessions")
            first = timer.one(n)
            if first > SLOW_BATCH_S * 1000:
                skipped.append({"sessions": n, "size_px": size,
                                "reason": f"one batch took {first / 1000:.1f} s "
                                          f"(> {SLOW_BATCH_S} s) on {dev}"})
                continue
            stats = _pct(timer.measure(n))
            measured[n] = stats
            points[n] = stats["p50"]
        limits, limits_vp8 = {}, {}
        if points:
            for fps in FPS:
                progress(f"{size} px: sessions at {fps} fps")
                budget = 1000.0 / fps
                limits[str(fps)] = _max_sessions(timer, points, budget, lambda n, t: t, cap)
                limits_vp8[str(fps)] = _max_sessions(timer, points, budget, with_vp8, cap)
        for table in (limits, limits_vp8):  # what fits a shorter tick fits a longer one
            for slow, fast in pairwise(FPS):
                table[str(slow)] = max(table[str(slow)], table[str(fast)])
        for fps in FPS if points else ():
            max_sessions[f"{size}px@{fps}fps"] = limits[str(fps)]
            max_vp8[f"{size}px@{fps}fps"] = limits_vp8[str(fps)]
        for n, stats in measured.items():
            tick_vp8 = with_vp8(n, stats["p50"])
            configs.append({
                "sessions": n, "size_px": size,
                "frames_per_s": round(n * 1000.0 / stats["p50"], 1),
                "batch_ms": stats,
                "max_sessions_at_fps": limits,
                "with_vp8": {
                    "frames_per_s": round(n * 1000.0 / tick_vp8, 1),
                    "tick_ms_p50": round(tick_vp8, 2),
                    "max_sessions_at_fps": limits_vp8,
                },
            })
        del renderer
    return {
        "benchmark": "render",
        "device": _device_name(dev), "device_kind": dev, "dtype": dtype,
        "torch": torch.__version__, "cpu_cores": cores,
        "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
        "renderer": "TorchFaceRenderer (per-parameter displacement fields + one grid_sample)",
        "vp8_encode_ms_per_frame": encode,
        "configs": configs,
        "skipped": skipped,
        "max_sessions": max_sessions,
        "max_sessions_with_vp8": max_vp8,
        "method": {
            "batch_ms": "wall time of one batched render step after warm-up",
            "max_sessions_at_fps": "largest n whose measured p50 batch time fits 1000/fps ms "
                                   "(interpolated from the curve, then measured)",
            "with_vp8": ("cpu: render(n) + n * vp8_encode_ms / cpu_cores; cuda: "
                         "max(render(n), n * vp8_encode_ms / cpu_cores), encoders pipelined"),
        },
    }


def _tile(tracks: np.ndarray, n: int) -> np.ndarray:
    reps = -(-n // tracks.shape[1])
    return np.tile(tracks, (1, reps, 1))[:, :n]


def _device_name(dev: str) -> str:
    if dev == "cuda":
        return torch.cuda.get_device_name(0)
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
