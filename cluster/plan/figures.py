"""Capacities the planner computes with: read from the JSON the project's benchmarks write, or,
for a figure nobody has measured, a documented default that every output marks as an
assumption.

Each benchmark file is recognised by its content (render, pipeline, serve, e2e, a load test's
``max_sessions_at_slo``, an LLM benchmark's ``llm_tokens_per_s``), not by its name. A later file
overrides an earlier one for the same figure.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cluster.plan.inputs import GPU_TYPES, REPO_ROOT, display_path
from models.errors import InputError

ASSUMPTION = "assumption"
DEFAULT_MEASURED = tuple(REPO_ROOT / "docs" / "bench" / name for name in (
    "render-h100.json", "render-cpu.json", "pipeline-cpu-2core.json", "serve-cpu-2core.json",
    "e2e-cpu-2core.json"))

# Memory bandwidth (TB/s): the batched renderer (one grid_sample) and small-model decoding are
# bandwidth-bound, so an unmeasured GPU is scaled from a measured one by this ratio, never up.
GPU_BANDWIDTH_TB_S = {"H100": 3.35, "H200": 4.8, "L40S": 0.864, "A10G": 0.6, "L4": 0.3}

# Documented defaults: (value, unit, why). Keys are the figure names used in the output.
DEFAULTS: dict[str, tuple[float, str, str]] = {
    "renderer.reserved_cpus": (2.0, "vCPU", "the Renderer actor's own loop, batching and GPU "
                               "feed (its num_cpus in configs/serve/gpu.yaml)"),
    "renderer.session_overhead_cores": (0.02, "cores/session", "Opus audio encoding, RTP/SRTP "
                                        "and the session's conductor on the renderer node"),
    "vad.cores_per_session": (0.005, "cores/session", "Silero VAD: about 0.15 ms per 32 ms "
                              "frame on one core"),
    "asr.whisper.core_s_per_turn": (0.6, "core-s/turn", "Whisper tiny.en int8: about 190 ms "
                                    "on 2 threads for a 2.45 s question (docs/benchmarks.md), "
                                    "x1.5 for speculative starts"),
    "asr.pocketsphinx.core_s_per_turn": (0.15, "core-s/turn", "pocketsphinx light mode, "
                                         "about 5% of real time for 3 s of speech"),
    "asr.nemo.streams_per_gpu": (200.0, "streams/GPU (H100)", "NeMo streaming FastConformer, "
                                 "batched real-time streams on one H100"),
    "llm.kb.core_s_per_turn": (0.03, "core-s/turn", "retrieval (MiniLM + Qdrant) and the "
                               "extractive answerer"),
    "llm.llamacpp.core_s_per_turn": (2.4, "core-s/turn", "gemma3 270M Q4 via xllamacpp: 60 "
                                     "tokens at about 50 tokens/s on 2 threads"),
    "llm.vllm.tokens_per_s_per_gpu": (10000.0, "tokens/s (H100)", "vLLM, a 1-2B model "
                                      "(Qwen2.5-1.5B), continuous batching, output tokens"),
    "llm.vllm.stream_tokens_per_s": (150.0, "tokens/s (H100)", "decode speed of one reply "
                                     "with the GPU batching dozens of others"),
    "tts.espeak.rtf": (0.01, "core-s per audio s", "espeak real-time factor 0.005-0.009 "
                       "(docs/benchmarks.md)"),
    "tts.piper.rtf": (0.08, "core-s per audio s", "piper joe voice real-time factor about "
                      "0.08 (docs/benchmarks.md)"),
    "tts.nemo.streams_per_gpu": (100.0, "streams/GPU (H100)", "FastPitch + HiFi-GAN, batched "
                                 "real-time streams on one H100"),
    "serve.core_s_per_turn": (0.1, "core-s/turn", "Ray Serve hops of one turn (proxy, Gateway, "
                              "Renderer, Knowledge, LLM, TTS)"),
    "serve.hops_per_turn": (6.0, "hops", "HTTP proxy, Gateway, Renderer, Knowledge, LLM, TTS"),
    "cpu.pool_base_vcpus": (2.0, "vCPU", "Gateway and Knowledge replicas that run at no load"),
    "head.vcpus": (4.0, "vCPU", "the Ray head (GCS, Serve controller, proxy) in the manifests"),
}


@dataclass(frozen=True)
class Figure:
    """One input figure and where it came from (a file, or "assumption")."""

    name: str
    value: float
    unit: str
    source: str
    note: str = ""

    @property
    def assumed(self) -> bool:
        return self.source == ASSUMPTION


@dataclass
class RenderMeasure:
    """A render benchmark's figures for one device kind."""

    source: str
    device: str
    gpu_type: str | None
    # (size_px, fps) -> sessions that fit one frame time, render only (no encoding).
    sessions: dict[tuple[int, int], float] = field(default_factory=dict)
    vp8_ms: dict[int, float] = field(default_factory=dict)
    single_batch_p99_ms: dict[int, float] = field(default_factory=dict)


@dataclass
class Measured:
    """Everything read from benchmark JSON, plus the documented defaults."""

    figures: dict[str, Figure] = field(default_factory=dict)
    render: dict[str, RenderMeasure] = field(default_factory=dict)  # GPU type or "cpu"
    files: list[str] = field(default_factory=list)
    sessions_at_slo: dict[str, Figure] = field(default_factory=dict)  # GPU type -> load test
    llm_tokens_per_s: dict[str, Figure] = field(default_factory=dict)  # GPU type -> bench

    def get(self, name: str) -> Figure:
        """The measured figure, else its documented default (marked as an assumption)."""
        if name in self.figures:
            return self.figures[name]
        value, unit, why = DEFAULTS[name]
        return Figure(name, value, unit, ASSUMPTION, why)


def gpu_type_of(device: str) -> str | None:
    """The GPU type a device name shows (``NVIDIA H100 80GB HBM3`` -> ``H100``)."""
    text = device.upper()
    for name in ("H200", "H100", "L40S", "A10G"):
        if name in text:
            return name
    if re.search(r"\bL4\b", text):
        return "L4"
    if re.search(r"\bA10\b", text):
        return "A10G"
    return None


def load_measured(paths: list[Path] | tuple[Path, ...]) -> Measured:
    """Read benchmark JSON files; an unreadable or unrecognised file is an InputError."""
    measured = Measured()
    for path in paths:
        data = _read_json(path)
        source = display_path(path)
        kind = _kind(data)
        if kind is None:
            raise InputError(f"{path}: not a benchmark JSON the planner reads (render, pipeline, "
                             "serve, e2e, a load test's max_sessions_at_slo or an LLM "
                             "benchmark's llm_tokens_per_s); drop it from --measured")
        try:
            _READERS[kind](data, source, measured)
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"{path}: a {kind} benchmark without the expected figures "
                             f"({exc!r}); re-run `avatarctl bench {kind} --json`") from None
        measured.files.append(source)
    return measured


def _kind(data: dict[str, Any]) -> str | None:
    if data.get("benchmark") == "render":
        return "render"
    if "max_sessions_at_slo" in data:
        return "load"
    if "llm_tokens_per_s" in data:
        return "llm"
    if "hop_overhead_ms" in data:
        return "serve"
    if "session_setup_ms" in data and "voice_to_first_audio_ms" in data:
        return "e2e"
    if "asr_ms" in data and "voice_to_first_audio_ms" in data:
        return "pipeline"
    return None


def _read_render(data: dict[str, Any], source: str, measured: Measured) -> None:
    cuda = data.get("device_kind") == "cuda"
    device = str(data.get("device", ""))
    gpu = gpu_type_of(device) if cuda else None
    if cuda and gpu is None:
        raise ValueError(f"GPU {device!r} is none of {', '.join(GPU_TYPES)}")
    entry = RenderMeasure(source, device, gpu)
    entry.vp8_ms = {int(k): float(v) for k, v in data["vp8_encode_ms_per_frame"].items()}
    for config in data["configs"]:
        size = int(config["size_px"])
        for fps, n in config["max_sessions_at_fps"].items():
            entry.sessions[(size, int(fps))] = float(n)
        if int(config["sessions"]) == 1:
            entry.single_batch_p99_ms[size] = float(config["batch_ms"]["p99"])
    measured.render[gpu or "cpu"] = entry


def _read_pipeline(data: dict[str, Any], source: str, measured: Measured) -> None:
    cpus = float(data.get("setup", {}).get("cpus", 1))
    wall_ms = float(data["retrieval_ms"]["p50"]) + float(data["llm_first_token_ms"]["p50"])
    measured.figures["llm.kb.core_s_per_turn"] = Figure(
        "llm.kb.core_s_per_turn", round(wall_ms * cpus / 1000, 4), "core-s/turn", source,
        f"(retrieval_ms p50 + llm_first_token_ms p50) x {cpus:g} cores / 1000: an upper bound")
    _latency(data, source, measured, "pipeline")


def _read_e2e(data: dict[str, Any], source: str, measured: Measured) -> None:
    _latency(data, source, measured, "e2e")


def _latency(data: dict[str, Any], source: str, measured: Measured, kind: str) -> None:
    name = "latency.voice_to_first_audio_p95_ms"
    current = measured.figures.get(name)
    # The end-to-end figure (the whole path) wins over the in-process pipeline's.
    if current is not None and kind == "pipeline" and "e2e" in current.note:
        return
    measured.figures[name] = Figure(name, float(data["voice_to_first_audio_ms"]["p95"]), "ms",
                                    source, f"voice_to_first_audio_ms p95 ({kind})")


def _read_serve(data: dict[str, Any], source: str, measured: Measured) -> None:
    cpus = float(data.get("setup", {}).get("cpus", 1))
    hops = measured.get("serve.hops_per_turn").value
    hop_ms = float(data["hop_overhead_ms"]["p50"])
    measured.figures["serve.core_s_per_turn"] = Figure(
        "serve.core_s_per_turn", round(hop_ms * hops * cpus / 1000, 4), "core-s/turn", source,
        f"hop_overhead_ms p50 {hop_ms:g} x {hops:g} hops x {cpus:g} cores / 1000")


def _read_load(data: dict[str, Any], source: str, measured: Measured) -> None:
    device = str(data.get("device") or data.get("setup", {}).get("device", ""))
    gpu = gpu_type_of(device)
    if gpu is None:
        raise ValueError(f"no GPU type in its device {device!r}")
    value = float(data["max_sessions_at_slo"])
    measured.sessions_at_slo[gpu] = Figure(
        f"renderer.{gpu}.max_sessions_at_slo", value, "sessions/node", source,
        "load test: sessions one renderer node held within the SLOs")


def _read_llm(data: dict[str, Any], source: str, measured: Measured) -> None:
    device = str(data.get("device") or data.get("setup", {}).get("device", ""))
    gpu = gpu_type_of(device)
    if gpu is None:
        raise ValueError(f"no GPU type in its device {device!r}")
    measured.llm_tokens_per_s[gpu] = Figure(
        f"llm.vllm.{gpu}.tokens_per_s", float(data["llm_tokens_per_s"]), "tokens/s", source,
        "LLM benchmark: output tokens per second on one GPU")


_READERS = {"render": _read_render, "pipeline": _read_pipeline, "e2e": _read_e2e,
            "serve": _read_serve, "load": _read_load, "llm": _read_llm}


# --- per-GPU figures ----------------------------------------------------------------------


def _scale(gpu: str, measured_gpu: str) -> float:
    return min(1.0, GPU_BANDWIDTH_TB_S[gpu] / GPU_BANDWIDTH_TB_S[measured_gpu])


def _nearest(points: dict[tuple[int, int], float], size: int, fps: int) -> tuple[int, int]:
    # The closest measured point in pixel rate, preferring ones at least as demanding.
    rate = size * size * fps
    return min(points, key=lambda p: (p[0] * p[0] * p[1] < rate,
                                      abs(math.log(p[0] * p[0] * p[1] / rate))))


def render_sessions(measured: Measured, gpu: str, size: int, fps: int) -> Figure:
    """Sessions one GPU renders at ``size`` px and ``fps`` (render only, no encoding)."""
    name = f"render.{gpu}.sessions_{size}px_{fps}fps"
    own = measured.render.get(gpu)
    base = own or next((m for k, m in measured.render.items() if k != "cpu"), None)
    if base is None or not base.sessions or base.gpu_type is None:
        raise InputError("no GPU render benchmark among the --measured files; add one "
                         "(docs/bench/render-h100.json, or `avatarctl bench render --json` "
                         "on a GPU)")
    point = _nearest(base.sessions, size, fps)
    value = base.sessions[point] * (point[0] ** 2 * point[1]) / (size * size * fps)
    notes = []
    if point != (size, fps):
        notes.append(f"scaled by pixel rate from {point[0]} px @ {point[1]} fps")
    if base is not own:
        factor = _scale(gpu, base.gpu_type)
        value *= factor
        notes.append(f"x{factor:.2f} memory bandwidth vs the measured {base.gpu_type}")
        return Figure(name, math.floor(value), "sessions/GPU", ASSUMPTION,
                      f"from {base.source}: " + "; ".join(notes))
    return Figure(name, math.floor(value), "sessions/GPU", base.source, "; ".join(notes))


def vp8_ms_per_frame(measured: Measured, size: int) -> Figure:
    """libvpx VP8 encode time of one frame on a GPU node's CPU (the CPU host's otherwise)."""
    name = f"encode.vp8_ms_per_frame_{size}px"
    base = next((m for k, m in measured.render.items() if k != "cpu" and m.vp8_ms), None)
    base = base or measured.render.get("cpu")
    if base is None or not base.vp8_ms:
        return Figure(name, round(2.5 * (size / 256) ** 2, 3), "ms", ASSUMPTION,
                      "no render benchmark: 2.5 ms at 256 px, scaled by pixel count")
    near = min(base.vp8_ms, key=lambda s: abs(math.log(s / size)))
    value = base.vp8_ms[near] * (size / near) ** 2
    note = "" if near == size else f"scaled by pixel count from {near} px"
    return Figure(name, round(value, 3), "ms", base.source, note)


def single_frame_ms(measured: Measured, gpu: str, size: int) -> Figure | None:
    """p99 of one session's render step on ``gpu``; None when no benchmark ran on that type
    (one session's step is launch-bound there, so scaling another GPU's would mislead)."""
    own = measured.render.get(gpu)
    if own is None or not own.single_batch_p99_ms:
        return None
    near = min(own.single_batch_p99_ms, key=lambda s: abs(math.log(s / size)))
    value = own.single_batch_p99_ms[near] * max(1.0, (size / near) ** 2)
    note = "" if near == size else f"scaled by pixel count from {near} px"
    return Figure(f"render.{gpu}.frame_p99_ms_{size}px", round(value, 2), "ms", own.source,
                  f"one session's render step{'; ' + note if note else ''}")


def per_gpu(measured: Measured, name: str, gpu: str) -> Figure:
    """A GPU throughput default given for an H100, scaled to ``gpu`` by memory bandwidth."""
    if name == "llm.vllm.tokens_per_s_per_gpu" and gpu in measured.llm_tokens_per_s:
        return measured.llm_tokens_per_s[gpu]
    base = measured.get(name)
    factor = GPU_BANDWIDTH_TB_S[gpu] / GPU_BANDWIDTH_TB_S["H100"]
    note = base.note if gpu == "H100" else f"{base.note}; x{factor:.2f} memory bandwidth"
    return Figure(f"{name}[{gpu}]", round(base.value * factor, 1), base.unit.replace(
        "(H100)", "").strip(), base.source, note)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: file not found; pass an existing benchmark JSON to "
                         "--measured") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object at the top level")
    return data
