"""``avatarctl bench encode``: how many video peers one renderer can encode at 25 fps, with
aiortc's encoder in the renderer's threads or with the :class:`EncoderPool` processes.

Each simulated peer asks for a frame on its own 40 ms grid (as the video track does), then
encodes it exactly as the renderer would:

- ``threads``: aiortc's ``Vp8Encoder.encode`` on the event loop's default executor (what
  aiortc's RTP sender does with a frame a track returns).
- ``processes``: :meth:`VideoEncoder.encode` on an :class:`EncoderPool` of ``--processes``.

Frames are the default avatar's portrait at the chosen size with a moving mouth region, so
VP8 has real motion to code. A peer keeps up when it delivers at least 98% of its frames;
``max_sessions_at_fps`` is the largest session count in the sweep where every peer kept up.
"""

from __future__ import annotations

import asyncio
import os
import platform
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from deployments.media.encode import VIDEO_CLOCK_HZ, EncoderPool
from deployments.timing import percentiles

KEEP_UP = 0.98
PORTRAIT = Path(__file__).resolve().parents[2] / "configs" / "avatars" / "default" / \
    "portrait.png"


def frames(size_px: int, count: int = 25) -> list[np.ndarray]:
    """The portrait at ``size_px`` with its lower face moving from frame to frame."""
    from PIL import Image

    base = np.asarray(Image.open(PORTRAIT).convert("RGB").resize((size_px, size_px)))
    out = []
    top, bottom = int(size_px * 0.6), int(size_px * 0.8)
    for i in range(count):
        img = base.copy()
        shift = round(3 * float(np.sin(2 * np.pi * i / count)) * size_px / 256)
        img[top:bottom] = np.roll(base[top:bottom], shift, axis=0)
        out.append(np.ascontiguousarray(img))
    return out


async def _peer(encode: Any, images: list[np.ndarray], fps: int, seconds: float,
                latencies: list[float]) -> int:
    """One peer's send loop; returns the frames it delivered."""
    loop = asyncio.get_running_loop()
    period = 1.0 / fps
    start = loop.time() + np.random.default_rng().uniform(0, period)  # peers are not in phase
    sent = 0
    slot = 0
    while (due := start + slot * period) < start + seconds:
        if (wait := due - loop.time()) > 0:
            await asyncio.sleep(wait)
        await encode(images[slot % len(images)], slot * VIDEO_CLOCK_HZ // fps)
        latencies.append((loop.time() - due) * 1000.0)
        sent += 1
        # a peer that fell behind skips to the current slot, as the video track does
        slot = max(slot + 1, int((loop.time() - start) / period))
    return sent


async def _run(mode: str, sessions: int, images: list[np.ndarray], fps: int, seconds: float,
               pool: EncoderPool | None) -> dict[str, Any]:
    from aiortc.codecs.vpx import Vp8Encoder
    from av import VideoFrame

    loop = asyncio.get_running_loop()
    encoders: list[Any] = []
    coders = []
    for _ in range(sessions):
        if mode == "processes":
            assert pool is not None
            enc = pool.open()
            encoders.append(enc)
            coders.append(enc.encode)
        else:
            vp8 = Vp8Encoder()

            async def encode(image: np.ndarray, pts: int, vp8: Any = vp8) -> Any:
                frame = VideoFrame.from_ndarray(image, format="rgb24")
                frame.pts, frame.time_base = pts, Fraction(1, VIDEO_CLOCK_HZ)
                return await loop.run_in_executor(None, vp8.encode, frame, False)

            coders.append(encode)
    latencies: list[float] = []
    cpu0, wall0 = time.process_time(), time.perf_counter()
    sent = await asyncio.gather(*(_peer(c, images, fps, seconds, latencies) for c in coders))
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    for enc in encoders:
        enc.close()
    expected = fps * seconds
    per_peer = [n / seconds for n in sent]
    return {
        "sessions": sessions, "fps_min": round(min(per_peer), 2),
        "fps_p50": round(float(np.median(per_peer)), 2),
        "kept_up": min(sent) >= KEEP_UP * expected,
        "frame_latency_ms": percentiles(latencies, (50, 95, 99)),
        "renderer_process_cpu_share": round(cpu / wall, 2),
    }


async def run_encode_bench(size_px: int = 512, sessions: tuple[int, ...] = (1, 2, 4, 6, 8),
                           processes: int | None = None, seconds: float = 4.0, fps: int = 25,
                           modes: tuple[str, ...] = ("threads", "processes"),
                           progress: Any = None) -> dict[str, Any]:
    """Sweep ``sessions`` for each mode; JSON-ready figures."""
    cores = max(1, len(os.sched_getaffinity(0)))
    processes = processes or cores
    images = frames(size_px)
    report: dict[str, Any] = {"size_px": size_px, "fps": fps, "seconds": seconds,
                              "processes": processes, "modes": {}}
    pool = None
    if "processes" in modes:
        pool = EncoderPool(processes, fps=fps)
        await pool.start()
    try:
        for mode in modes:
            rows = []
            for n in sessions:
                rows.append(await _run(mode, n, images, fps, seconds, pool))
                if progress is not None:
                    progress(mode, n)
                if not rows[-1]["kept_up"] and len(rows) >= 2 and not rows[-2]["kept_up"]:
                    break  # two sizes in a row fell behind: larger ones will too
            kept = [r["sessions"] for r in rows if r["kept_up"]]
            report["modes"][mode] = {"max_sessions_at_fps": max(kept, default=0),
                                     "sweep": rows}
    finally:
        if pool is not None:
            await pool.shutdown()
    report["setup"] = {"cores": cores, "cpus": os.cpu_count(), "python": platform.python_version(),
                       "machine": platform.machine(), "load_avg": [round(x, 2)
                                                                   for x in os.getloadavg()]}
    return report
