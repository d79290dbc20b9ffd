"""``avatarctl plan --emit``: one region's worker-group sizes written into a copy of the KubeRay
RayService (cluster/k8s/rayservice.yaml) or the Ray cluster launcher config
(cluster/launcher/aws-gpu.yaml, with a copy of configs/serve/gpu.yaml beside it).

The manifests are edited as text, line by line, so their comments survive; the result is
parsed again before it is written. Group sizes never fall below what the Serve config in the
copy asks for (its GPU replicas at their minimum and maximum), so the copy stays deployable.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from cluster.plan.inputs import REPO_ROOT, TrafficProfile
from cluster.plan.solve import RegionPlan
from models.errors import InputError

RAYSERVICE = REPO_ROOT / "cluster" / "k8s" / "rayservice.yaml"
LAUNCHER = REPO_ROOT / "cluster" / "launcher" / "aws-gpu.yaml"
GPU_SERVE = REPO_ROOT / "configs" / "serve" / "gpu.yaml"
CALLS_PER_SESSION = 5  # the Renderer's max_ongoing_requests per session (see gpu.yaml)
Target = Literal["kuberay", "ray-launcher"]


@dataclass
class Emitted:
    """What was written and the sizes it carries."""

    paths: list[Path]
    groups: dict[str, dict[str, int]]
    renderer_replicas: int
    sessions_per_replica: int
    notes: list[str] = field(default_factory=list)


def emit(target: Target, region: RegionPlan, traffic: TrafficProfile, out: Path) -> Emitted:
    """Write ``target``'s manifest sized for ``region`` to ``out`` (and nothing else, but the
    launcher's Serve config beside it)."""
    if target == "kuberay":
        return _emit_kuberay(region, traffic, out)
    if target == "ray-launcher":
        return _emit_launcher(region, traffic, out)
    raise InputError(f"--emit {target!r}: choose kuberay or ray-launcher")


# --- sizes --------------------------------------------------------------------------------


def _renderers(region: RegionPlan, traffic: TrafficProfile) -> int:
    pool = region.pool("renderer")
    assert pool is not None
    count = pool.max_nodes if traffic.fleet.renderer_scaling == "fixed" else pool.min_nodes
    return max(1, count)  # Serve needs a Renderer to admit the first session


def _edit_serve(text: str, region: RegionPlan, traffic: TrafficProfile,
                notes: list[str]) -> str:
    """Renderer replicas and capacity, and GPU model ranges, in a Serve config's text."""
    sessions = region.renderer.sessions_per_node
    limit = CALLS_PER_SESSION * sessions
    text = _sub(text, r"(deployments\.renderer\.sessions_per_replica:\s*)\d+", sessions)
    text = _sub(text, r"(deployments\.renderer\.max_ongoing_requests:\s*)\d+", limit)
    text = _in_block(text, r"- name: Renderer\b", r"- name: ", {
        "num_replicas": _renderers(region, traffic), "max_ongoing_requests": limit})
    llm, speech = region.pool("llm"), region.pool("speech")
    if llm is not None:
        text = _in_block(text, r"- name: LLM\b", r"- name: ", {
            "min_replicas": max(1, llm.min_nodes),
            "max_replicas": max(llm.max_nodes, llm.min_nodes + 1, 2)})
    if speech is not None:  # ASR and TTS replicas take 0.25 GPU each: 2 of each per GPU
        lo, hi = max(1, 2 * speech.min_nodes), 2 * speech.max_nodes
        for name in ("ASR", "TTS"):
            text = _in_block(text, rf"- name: {name}\b", r"- name: ",
                             {"min_replicas": lo, "max_replicas": max(hi, lo + 1)})
    off_gpu = [name for name, pool in (("the LLM", llm), ("ASR/TTS", speech)) if pool is None]
    if off_gpu:
        stack = traffic.stack
        notes.append(f"the plan's stack ({stack.asr}/{stack.llm}/{stack.tts}) runs "
                     f"{' and '.join(off_gpu)} on CPU nodes, but the copied Serve config "
                     "(profile gpu) keeps them on GPUs: the group sizes include those GPU "
                     "replicas; point the config at a profile that runs them on CPU to save them")
    return text


def _serve_gpu_demand(serve: dict[str, Any]) -> tuple[float, float]:
    """GPUs the Serve config asks for with every deployment at its minimum and maximum."""
    low = high = 0.0
    (app,) = serve["applications"]
    for dep in app["deployments"]:
        gpus = (dep.get("ray_actor_options") or {}).get("num_gpus", 0) or 0
        auto = dep.get("autoscaling_config")
        lo, hi = ((auto.get("min_replicas", 1), auto["max_replicas"]) if auto
                  else (dep.get("num_replicas", 1),) * 2)
        if dep["name"] == "LLM" and not dep.get("ray_actor_options"):
            gpus = 1  # Ray Serve LLM places one GPU per vLLM replica itself
        low += gpus * lo
        high += gpus * hi
    return low, high


def _group_sizes(region: RegionPlan, traffic: TrafficProfile, serve: dict[str, Any],
                 notes: list[str]) -> dict[str, dict[str, int]]:
    groups = region.worker_groups()
    low, high = _serve_gpu_demand(serve)
    pool = region.pool("renderer")
    assert pool is not None
    high += pool.max_nodes - _renderers(region, traffic)  # Renderer raised to its peak
    gpu_lo = max(groups["gpu"][0], math.ceil(low))
    gpu_hi = max(groups["gpu"][1], math.ceil(high), gpu_lo)
    if (gpu_lo, gpu_hi) != groups["gpu"]:
        notes.append(f"gpu group {gpu_lo}..{gpu_hi} instead of the plan's "
                     f"{groups['gpu'][0]}..{groups['gpu'][1]}: the Serve config's GPU replicas "
                     f"need {low:g}..{high:g} GPUs")
    cpu_lo, cpu_hi = groups["cpu"]
    return {"gpu": {"min": gpu_lo, "max": gpu_hi}, "cpu": {"min": cpu_lo,
                                                          "max": max(cpu_hi, cpu_lo, 1)}}


def _header(region: RegionPlan, traffic: TrafficProfile, renderers: int) -> str:
    pool = region.pool("renderer")
    assert pool is not None
    lines = [
        f"# Sized by `avatarctl plan` for region {region.name} (traffic {traffic.name}): "
        f"{region.renderer.gpu} renderers,",
        f"# {region.renderer.sessions_per_node} sessions each ({region.renderer.binding} "
        f"binds), {traffic.slo.size_px} px at {traffic.slo.fps} fps.",
    ]
    if traffic.fleet.renderer_scaling == "hourly" and pool.max_nodes > renderers:
        lines += [f"# Renderer num_replicas is the overnight floor ({renderers}); raise it hour "
                  f"by hour up to {pool.max_nodes} as the plan's",
                  "# fleet does (nodes_by_hour_utc in `avatarctl plan --json`)."]
    return "\n".join(lines) + "\n"


# --- KubeRay ------------------------------------------------------------------------------


def _emit_kuberay(region: RegionPlan, traffic: TrafficProfile, out: Path) -> Emitted:
    notes: list[str] = []
    text = RAYSERVICE.read_text(encoding="utf-8")
    start = text.index("serveConfigV2: |")
    end = text.index("rayClusterConfig:", start)
    serve_text = _edit_serve(text[start:end], region, traffic, notes)
    text = text[:start] + serve_text + text[end:]
    rayservice = _rayservice(text)
    serve = yaml.safe_load(rayservice["spec"]["serveConfigV2"])
    groups = _group_sizes(region, traffic, serve, notes)
    offer = region.prices.gpus[region.renderer.gpu]
    pod_cpus = max(1, math.floor(offer.vcpus_per_gpu) - 1)  # one vCPU for the kubelet
    pod_memory = max(8, math.floor(offer.host_memory_gb_per_gpu * 0.9))
    for name, size in groups.items():
        text = _in_block(text, rf"- groupName: {name}\b", r"- groupName: |^---", {
            "replicas": size["min"], "minReplicas": size["min"], "maxReplicas": size["max"]})
    text = _in_block(text, r"- groupName: gpu\b", r"- groupName: |^---", {},
                     flow={"cpu": f'"{pod_cpus}"', "memory": f"{pod_memory}Gi"})
    text = _header(region, traffic, _renderers(region, traffic)) + text
    _rayservice(text)  # still one parseable RayService
    _write(out, text)
    return Emitted([out], groups, _renderers(region, traffic),
                   region.renderer.sessions_per_node, notes)


def _rayservice(text: str) -> dict[str, Any]:
    docs = [d for d in yaml.safe_load_all(text) if d]
    (rayservice,) = [d for d in docs if d.get("kind") == "RayService"]
    return rayservice


# --- cluster launcher ---------------------------------------------------------------------


def _emit_launcher(region: RegionPlan, traffic: TrafficProfile, out: Path) -> Emitted:
    prices = region.prices
    if prices.cloud != "aws":
        raise InputError(f"--emit ray-launcher writes an AWS config; region {region.name} is on "
                         f"{prices.cloud}: pick an aws region with --region or use --emit "
                         "kuberay")
    notes: list[str] = []
    serve_text = _edit_serve(GPU_SERVE.read_text(encoding="utf-8"), region, traffic, notes)
    groups = _group_sizes(region, traffic, yaml.safe_load(serve_text), notes)
    offer = prices.gpus[region.renderer.gpu]
    per = offer.gpus_per_instance
    gpu_lo, gpu_hi = (math.ceil(groups["gpu"][k] / per) for k in ("min", "max"))
    cpu_lo, cpu_hi = groups["cpu"]["min"], groups["cpu"]["max"]
    cr = prices.cloud_region
    text = LAUNCHER.read_text(encoding="utf-8")
    text = _sub(text, r"(\n  region:\s*)\S+", cr)
    text = _sub(text, r"(\n  availability_zone:\s*)\S+", f"{cr}a,{cr}b,{cr}c")
    text = _sub(text, r"(\nmax_workers:\s*)\d+", gpu_hi + cpu_hi)
    text = _sub(text, r"(\n# )GPU \d+ \+ CPU \d+\.", f"GPU {gpu_hi} + CPU {cpu_hi}.")
    text = _in_block(text, r"^  gpu_worker:", r"^  \S", {
        "min_workers": gpu_lo, "max_workers": gpu_hi, "InstanceType": offer.instance},
        flow={'"CPU"': f"{offer.vcpus_per_gpu * per:g}", '"GPU"': str(per)})
    text = _in_block(text, r"^  cpu_worker:", r"^  \S|^\S", {
        "min_workers": cpu_lo, "max_workers": cpu_hi, "InstanceType": prices.cpu_node_instance},
        flow={'"CPU"': str(prices.cpu_node_vcpus)})
    serve_out = out.with_name(out.stem + ".serve.yaml")
    header = _header(region, traffic, _renderers(region, traffic))
    deploy = f"# Deploy {serve_out.name} (written beside this file) with `serve deploy`.\n"
    text = header + deploy + text
    config = yaml.safe_load(text)
    assert config["available_node_types"]["gpu_worker"]["max_workers"] == gpu_hi
    if per > 1:
        notes.append(f"{offer.instance} has {per} GPUs: {gpu_lo}..{gpu_hi} instances hold "
                     f"{groups['gpu']['min']}..{groups['gpu']['max']} GPU nodes' worth")
    _write(out, text)
    _write(serve_out, header + serve_text)
    groups = {"gpu": {"min": gpu_lo, "max": gpu_hi}, "cpu": {"min": cpu_lo, "max": cpu_hi}}
    return Emitted([out, serve_out], groups, _renderers(region, traffic),
                   region.renderer.sessions_per_node, notes)


# --- text edits ---------------------------------------------------------------------------


def _sub(text: str, pattern: str, value: object) -> str:
    new, count = re.subn(pattern, lambda m: f"{m.group(1)}{value}", text, count=1)
    if count != 1:
        raise InputError(f"the manifest no longer has {pattern!r}; update cluster/plan/emit.py")
    return new


def _in_block(text: str, start: str, stop: str, keys: dict[str, object],
              flow: dict[str, str] | None = None) -> str:
    """Set ``key: value`` lines (the first of each) and keys inside ``{...}`` flow mappings
    between the line matching ``start`` and the next line matching ``stop``."""
    lines = text.split("\n")
    begin = next((i for i, line in enumerate(lines) if re.search(start, line)), None)
    if begin is None:
        raise InputError(f"the manifest has no block {start!r}; update cluster/plan/emit.py")
    end = next((i for i in range(begin + 1, len(lines)) if re.search(stop, lines[i])),
               len(lines))
    todo = dict(keys)
    for i in range(begin, end):
        line = lines[i]
        for key in list(todo):
            m = re.match(rf"^(\s*{re.escape(key)}:\s*)[^\s#]+", line)
            if m:
                lines[i] = m.group(1) + str(todo.pop(key)) + line[m.end():]
                break
        for key, value in (flow or {}).items():
            if "{" in line:
                lines[i] = re.sub(rf"((?<![\w.-]){re.escape(key)}:\s*)[^,}}]+",
                                  rf"\g<1>{value}", lines[i])
    if todo:
        raise InputError(f"the manifest's {start!r} block has no {', '.join(todo)}; update "
                         "cluster/plan/emit.py")
    return "\n".join(lines)


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
