"""What the capacity planner reads: a traffic profile (peak concurrent sessions per region, a
diurnal curve, or hourly sessions from a CSV), the SLOs, the software stack, fleet choices and
a price list. Frozen pydantic models, unknown keys rejected; every loading error is an
:class:`~models.errors.InputError` that names the file, the key and what to change.

The measured capacities live in :mod:`cluster.plan.figures`.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from models.errors import InputError

HOURS = 24
REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_PRICING = REPO_ROOT / "configs" / "pricing" / "list-2025.yaml"
DEFAULT_TRAFFIC = REPO_ROOT / "configs" / "traffic" / "clinic-launch.yaml"
GPU_TYPES = ("H100", "H200", "L4", "A10G", "L40S")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- SLOs, stack, workload, fleet ---------------------------------------------------------


class Slo(_Strict):
    """What every session must get, and how full a node may run."""

    size_px: int = Field(256, ge=64, le=2048, description="Rendered frame side in pixels.")
    fps: int = Field(25, ge=1, le=120, description="Video frames per second per session.")
    target_utilization: float = Field(
        0.8, gt=0, le=1.0, description="Share of a node's measured capacity the plan fills; "
        "the rest is headroom for bursts and measurement noise.")
    max_sessions_per_renderer: int | None = Field(
        None, ge=1, description="Sessions one renderer may hold at most: what one node failure "
        "drops. None = as many as fit.")
    voice_to_first_audio_p95_ms: float | None = Field(
        None, gt=0, description="Checked against the measured end-to-end (or pipeline) figure; "
        "None = not checked.")
    llm_stream_tokens_per_s: float = Field(
        10.0, ge=0, description="GPU LLM only: decode speed each reply must get (speech needs "
        "about 4 tokens/s; the TTS wants clauses well ahead of the voice).")


class Stack(_Strict):
    """The model backends sessions use (configs/schema.py names)."""

    asr: Literal["whisper", "pocketsphinx", "nemo"] = "whisper"
    llm: Literal["kb", "llamacpp", "vllm", "openai"] = "kb"
    tts: Literal["espeak", "piper", "nemo"] = "espeak"


class Workload(_Strict):
    """What one session does, on average, during a conversation."""

    turns_per_minute: float = Field(3.0, ge=0, description="User turns per session-minute.")
    user_speech_s_per_turn: float = Field(3.0, ge=0, description="User speech per turn.")
    reply_audio_s_per_turn: float = Field(8.0, ge=0, description="Avatar speech per turn.")
    reply_tokens: int = Field(60, ge=0, description="LLM output tokens per reply.")
    prompt_tokens: int = Field(1200, ge=0, description="LLM prompt tokens per turn (persona, "
                               "history, retrieved passages).")
    prefill_weight: float = Field(0.1, ge=0, le=1, description="Cost of a prompt token "
                                  "relative to an output token on a GPU LLM.")
    stream_mbps: float = Field(1.5, gt=0, le=50, description="Video + audio sent per session "
                               "(WebRTC VP8 + Opus: 1-5 Mbit/s).")


class Fleet(_Strict):
    """How the fleet is bought and scaled."""

    gpu_types: tuple[str, ...] | None = Field(
        None, description="GPU types the plan may use; None = every type the region prices.")
    spot_fraction: float = Field(0.0, ge=0, le=1, description="Share of GPU hours bought as "
                                 "spot (interruptions drop renderer sessions: keep it low).")
    renderer_scaling: Literal["hourly", "fixed"] = Field(
        "hourly", description="hourly: renderer count follows the day (Renderer num_replicas "
        "changed on a schedule); fixed: the peak count all day.")
    min_nodes: int = Field(1, ge=0, description="Floor per pool and region, even at no load.")
    spare_renderer_nodes: int = Field(0, ge=0, description="Renderer nodes above the demand "
                                      "(N+1 for a node failure).")

    @field_validator("gpu_types")
    @classmethod
    def _known(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        for name in value or ():
            if name not in GPU_TYPES:
                raise ValueError(f"unknown GPU type {name!r}; known: {', '.join(GPU_TYPES)}")
        return value


# --- traffic ------------------------------------------------------------------------------


class RegionTraffic(_Strict):
    """Traffic of one region: a peak and a local-time curve, or 24 UTC hours of sessions."""

    peak_sessions: float | None = Field(None, ge=0, description="Peak concurrent sessions.")
    utc_offset_h: int = Field(0, ge=-12, le=14, description="Local time = UTC + this.")
    diurnal: tuple[float, ...] | None = Field(
        None, description="Share of the peak per local hour 0..23; None = the profile's.")
    hourly_sessions: tuple[float, ...] | None = Field(
        None, description="Concurrent sessions per UTC hour 0..23 (instead of a peak).")


class TrafficProfile(_Strict):
    """A traffic profile plus the SLOs, stack, workload and fleet choices it is planned for."""

    name: str = "traffic"
    regions: dict[str, RegionTraffic]
    diurnal: tuple[float, ...] | None = Field(
        None, description="Share of the peak per local hour 0..23 for every region; None = "
        "flat (the peak all day).")
    slo: Slo = Slo()
    stack: Stack = Stack()
    workload: Workload = Workload()
    fleet: Fleet = Fleet()

    def hourly(self) -> dict[str, tuple[float, ...]]:
        """Concurrent sessions per UTC hour (24 values) for each region."""
        out: dict[str, tuple[float, ...]] = {}
        for name, region in self.regions.items():
            if region.hourly_sessions is not None:
                out[name] = tuple(float(v) for v in region.hourly_sessions)
                continue
            curve = _normalized(region.diurnal or self.diurnal or (1.0,) * HOURS, name)
            peak = float(region.peak_sessions or 0.0)
            # UTC hour h is local hour h + offset.
            out[name] = tuple(peak * curve[(h + region.utc_offset_h) % HOURS]
                              for h in range(HOURS))
        return out


def _normalized(curve: tuple[float, ...], region: str) -> tuple[float, ...]:
    top = max(curve)
    if top <= 0:
        raise InputError(f"region {region}: the diurnal curve is all zero; give each local "
                         "hour's share of the peak (the busiest hour 1.0)")
    return tuple(v / top for v in curve)


def _check_traffic(profile: TrafficProfile, source: str) -> TrafficProfile:
    if not profile.regions:
        raise InputError(f"{source}: regions is empty; name at least one region with its "
                         "peak_sessions")
    for name, region in profile.regions.items():
        for label, curve in (("diurnal", region.diurnal), ("hourly_sessions",
                                                           region.hourly_sessions)):
            if curve is not None:
                _check_curve(curve, f"{source}: regions.{name}.{label}")
        if (region.peak_sessions is None) == (region.hourly_sessions is None):
            raise InputError(f"{source}: regions.{name}: give either peak_sessions or "
                             "hourly_sessions (24 values), not both or neither")
    if profile.diurnal is not None:
        _check_curve(profile.diurnal, f"{source}: diurnal")
    for name, sessions in profile.hourly().items():
        if max(sessions) <= 0:
            raise InputError(f"{source}: region {name} has no sessions at any hour; give it a "
                             "peak_sessions above 0 or remove it")
    return profile


def _check_curve(curve: tuple[float, ...], where: str) -> None:
    if len(curve) != HOURS:
        raise InputError(f"{where}: {len(curve)} values; give one per hour, 0 to 23 ({HOURS})")
    negative = [h for h, v in enumerate(curve) if v < 0]
    if negative:
        raise InputError(f"{where}: negative traffic at hour {negative[0]} ({curve[negative[0]]})"
                         "; sessions and shares must be >= 0")


def traffic_from_dict(data: dict[str, Any], source: str = "traffic") -> TrafficProfile:
    """Validate a traffic mapping (the YAML's content)."""
    try:
        profile = TrafficProfile.model_validate(data)
    except ValidationError as exc:
        raise InputError(f"{source}: {_explain(exc)}") from None
    return _check_traffic(profile, source)


def load_traffic(path: Path) -> TrafficProfile:
    """A traffic profile from YAML (``diurnal_csv:`` may name a CSV beside it) or from a CSV of
    concurrent sessions per UTC hour (``hour_utc`` plus one column per region)."""
    if path.suffix.lower() == ".csv":
        hours = read_hourly_csv(path)
        data: dict[str, Any] = {"name": path.stem, "regions": {
            r: {"hourly_sessions": v} for r, v in hours.items()}}
        return traffic_from_dict(data, str(path))
    data = _read_yaml(path)
    csv_name = data.pop("diurnal_csv", None)
    if csv_name is not None:
        hours = read_hourly_csv(path.parent / str(csv_name))
        regions = data.setdefault("regions", {})
        if not isinstance(regions, dict):
            raise InputError(f"{path}: regions must be a mapping of region name to traffic")
        if list(hours) == ["share"]:
            data["diurnal"] = hours["share"]
        else:
            for name, values in hours.items():
                entry = regions.setdefault(name, {})
                entry.pop("peak_sessions", None)
                entry["hourly_sessions"] = values
    data.setdefault("name", path.stem)
    return traffic_from_dict(data, str(path))


def read_hourly_csv(path: Path) -> dict[str, list[float]]:
    """``hour_utc`` (or ``hour``) 0..23 and one column per region (sessions) or ``share``."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    rows = list(csv.DictReader(io.StringIO(text)))
    if not rows or not rows[0]:
        raise InputError(f"{path}: empty; expected a header `hour_utc,<region>,...` and 24 rows")
    hour_key = next((k for k in rows[0] if k.strip() in ("hour_utc", "hour")), None)
    if hour_key is None:
        raise InputError(f"{path}: no hour_utc column; the header must start "
                         "`hour_utc,<region>,...`")
    columns = [k for k in rows[0] if k != hour_key]
    values: dict[str, list[float]] = {c.strip(): [0.0] * HOURS for c in columns}
    seen: set[int] = set()
    for line, row in enumerate(rows, start=2):
        try:
            hour = int(row[hour_key])
            if not 0 <= hour < HOURS or hour in seen:
                raise ValueError
            seen.add(hour)
            for c in columns:
                values[c.strip()][hour] = float(row[c])
        except (TypeError, ValueError):
            raise InputError(f"{path}:{line}: expected an hour 0..23 (each once) and numbers, "
                             f"got {dict(row)}") from None
    if len(seen) != HOURS:
        missing = sorted(set(range(HOURS)) - seen)
        raise InputError(f"{path}: hours {missing} missing; give all 24 UTC hours")
    return values


# --- prices -------------------------------------------------------------------------------


class GpuOffer(_Strict):
    """One GPU type in one region, priced per GPU-hour with its share of the host."""

    instance: str = Field(description="Instance or machine type, e.g. g6.4xlarge.")
    gpus_per_instance: int = Field(1, ge=1)
    on_demand_per_hour_usd: float = Field(ge=0, description="Per GPU (instance price / GPUs).")
    spot_per_hour_usd: float | None = Field(None, ge=0, description="Per GPU; None = none.")
    vcpus_per_gpu: float = Field(gt=0, description="Host vCPUs that come with each GPU.")
    host_memory_gb_per_gpu: float = Field(gt=0)
    network_gbps_per_gpu: float = Field(gt=0)
    memory_gb: float = Field(gt=0, description="GPU memory.")


class RegionPrices(_Strict):
    """List prices of one cloud region."""

    cloud: str
    cloud_region: str = Field(description="The provider's own region name.")
    cpu_core_per_hour_usd: float = Field(ge=0, description="Per vCPU-hour of a CPU node.")
    cpu_node_instance: str
    cpu_node_vcpus: int = Field(ge=1)
    egress_per_gb_usd: float = Field(ge=0, description="Internet egress per GB.")
    gpus: dict[str, GpuOffer]

    @field_validator("gpus")
    @classmethod
    def _known(cls, value: dict[str, GpuOffer]) -> dict[str, GpuOffer]:
        for name in value:
            if name not in GPU_TYPES:
                raise ValueError(f"unknown GPU type {name!r}; known: {', '.join(GPU_TYPES)}")
        return value


class PriceList(_Strict):
    """``configs/pricing/*.yaml``: list prices per cloud region, noted on a date."""

    as_of: str = Field(description="When the prices were read (list prices: check them).")
    note: str = ""
    currency: Literal["USD"] = "USD"
    regions: dict[str, RegionPrices]


def load_pricing(path: Path) -> PriceList:
    """Read and validate a price list."""
    try:
        return PriceList.model_validate(_read_yaml(path))
    except ValidationError as exc:
        raise InputError(f"{path}: {_explain(exc)}") from None


# --- helpers ------------------------------------------------------------------------------


def display_path(path: Path) -> str:
    """``path`` relative to the repository when it lies inside it (as outputs name sources)."""
    try:
        return str(path.resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except yaml.YAMLError as exc:
        raise InputError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: the top level must be a mapping of keys")
    return data


def _explain(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:3]:
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = "unknown key; remove it or check its spelling"
        parts.append(f"{where}: {message}")
    return "; ".join(parts)
