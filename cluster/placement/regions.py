"""Regions files: the regions, their GPU types, the SLO and the cost model, validated.

A regions file (``configs/regions/world.yaml``) has the keys ``gpus`` (GPU types the regions may
use), ``regions`` (a list of :class:`configs.schema.RegionConfig`), and optionally ``slo``,
``cost`` and ``server_view``. Every problem is an :class:`InputError` naming the file, the
region and what to change.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import yaml
from pydantic import Field, ValidationError

from cluster.placement.model import SLO, CostModel, RegionState, ServerView, Snapshot
from configs.loader import CONFIG_DIR
from configs.schema import GpuPrice, RegionConfig, Strict
from models.errors import InputError

DEFAULT_REGIONS_FILE = CONFIG_DIR / "regions" / "world.yaml"

_HINTS = {
    "price_per_gpu_hour_usd": "the on-demand USD price of one GPU-hour in this region",
    "renderer_capacity_sessions": "the sessions the region's renderers hold (>= 0)",
    "gpu_type": "one of the types under gpus:",
    "gateway_url": "the region's gateway, e.g. https://us-east.avatars.example.com",
    "name": "a unique region name",
}


class PlacementConfig(Strict):
    """Everything the scheduler needs that does not change between load reports."""

    gpus: dict[str, GpuPrice] = Field(description="GPU types the regions may use.")
    regions: tuple[RegionConfig, ...] = Field(min_length=1)
    slo: SLO = SLO()
    cost: CostModel = CostModel()
    server_view: ServerView = ServerView()

    def snapshot(self, active_sessions: Sequence[int] | None = None,
                 reported_at_s: float = 0.0) -> Snapshot:
        """A snapshot where every region reported ``active_sessions`` (default 0) at
        ``reported_at_s``."""
        loads = active_sessions if active_sessions is not None else [0] * len(self.regions)
        states = tuple(RegionState.from_config(r, active_sessions=a, reported_at_s=reported_at_s)
                       for r, a in zip(self.regions, loads, strict=True))
        return Snapshot(states, self.slo, self.cost, self.server_view)


def _format(exc: ValidationError, data: dict, source: str) -> str:
    regions = data.get("regions") if isinstance(data.get("regions"), list) else []
    lines = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        where = ".".join(str(p) for p in loc) or "(top level)"
        if len(loc) >= 2 and loc[0] == "regions" and isinstance(loc[1], int):
            entry = regions[loc[1]] if loc[1] < len(regions) else None
            name = entry.get("name") if isinstance(entry, dict) else None
            key = ".".join(str(p) for p in loc[2:]) or "(entry)"
            where = f"region {name!r} (regions[{loc[1]}]): {key}"
            hint = _HINTS.get(str(loc[-1])) if loc[2:] else None
        else:
            hint = None
        got = err.get("input")
        got_text = "" if err["type"] == "missing" or isinstance(got, dict) else f" (got {got!r})"
        message = "missing" if err["type"] == "missing" else err["msg"]
        lines.append(f"{where}: {message}{got_text}" + (f"; set it to {hint}" if hint else ""))
    return f"{source}: invalid regions file:\n  " + "\n  ".join(lines)


def parse_regions(data: object, source: str = "regions file") -> PlacementConfig:
    """Validate a parsed regions file; raises :class:`InputError` saying what to change."""
    if not isinstance(data, dict):
        raise InputError(f"{source}: the top level must be a mapping with 'gpus' and 'regions'")
    try:
        config = PlacementConfig.model_validate(data)
    except ValidationError as exc:
        raise InputError(_format(exc, data, source)) from None
    names = [r.name for r in config.regions]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise InputError(f"{source}: region names must be unique; repeated: {duplicates}")
    for region in config.regions:
        if region.gpu_type not in config.gpus:
            raise InputError(
                f"{source}: region {region.name!r}: unknown gpu_type {region.gpu_type!r}; "
                f"known types: {', '.join(sorted(config.gpus))} (add it under gpus:)")
    return config


def load_regions(path: str | Path = DEFAULT_REGIONS_FILE) -> PlacementConfig:
    """Read and validate a regions file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: regions file not found (e.g. {DEFAULT_REGIONS_FILE})") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not a valid YAML regions file: {exc}") from None
    return parse_regions(data, str(path))
