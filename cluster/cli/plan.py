"""``avatarctl plan``: capacity and cost per region from a traffic profile, SLOs, list prices
and the benchmarks' measured capacities."""

from __future__ import annotations

from pathlib import Path

import typer

from cluster.cli.common import JsonOption, console, friendly_errors, out, print_json
from cluster.plan.inputs import TrafficProfile, traffic_from_dict
from cluster.plan.solve import Plan, RegionPlan
from models.errors import InputError


def plan(
    traffic: Path | None = typer.Argument(
        None, help="Traffic profile: YAML (peaks per region, diurnal curve, SLOs, stack, fleet) "
        "or CSV (hour_utc + sessions per region). Default: configs/traffic/clinic-launch.yaml."),
    peak: list[str] = typer.Option(
        [], "--peak", metavar="REGION=SESSIONS", help="Flat peak for a region (repeatable); "
        "replaces the profile's regions."),
    pricing: Path | None = typer.Option(None, help="Price list YAML (default: "
                                 "configs/pricing/list-2025.yaml)."),
    measured: list[Path] = typer.Option(
        [], "--measured", help="Benchmark JSON to read capacities from (repeatable; default: "
        "the docs/bench files). A figure none of them measured is a marked assumption."),
    size: int | None = typer.Option(None, "--size", help="Override slo.size_px."),
    fps: int | None = typer.Option(None, "--fps", help="Override slo.fps."),
    gpu: list[str] = typer.Option([], "--gpu", help="Allow only this GPU type (repeatable)."),
    spot_fraction: float | None = typer.Option(None, help="Override fleet.spot_fraction (0..1)."),
    plot: Path | None = typer.Option(None, help="Write a PNG: cost per avatar-hour against "
                              "concurrency, and the fleet over the day."),
    emit: str | None = typer.Option(
        None, help="kuberay or ray-launcher: write the worker-group sizes into a copy of that "
        "manifest at --out."),
    out_path: Path | None = typer.Option(
        None, "--out", help="Where --emit writes (the repository's manifests only if it points "
        "there)."),
    region: str | None = typer.Option(None, help="Region --emit sizes (needed with several)."),
    json_out: bool = JsonOption,
) -> None:
    """Plan nodes, worker-group min/max and cost per avatar-hour for each region and pool:
    renderer GPUs, VP8 encode cores, LLM and ASR/TTS, CPU nodes, network. Shows which
    resource binds, the headroom, and how the cost compares with one GPU per stream and with
    hosted avatar APIs."""
    from cluster.plan import figures, inputs, report, solve

    with friendly_errors():
        if emit is not None and emit not in ("kuberay", "ray-launcher"):
            raise InputError(f"--emit {emit!r}: choose kuberay or ray-launcher")
        if emit is not None and out_path is None:
            raise InputError("--emit needs --out PATH (the manifest copy to write)")
        profile_path = traffic or inputs.DEFAULT_TRAFFIC
        profile = inputs.load_traffic(profile_path)
        profile = _override(profile, peak, size, fps, gpu, spot_fraction, str(profile_path))
        price_path = pricing or inputs.DEFAULT_PRICING
        prices = inputs.load_pricing(price_path)
        files = list(measured) or list(figures.DEFAULT_MEASURED)
        capacities = figures.load_measured(files)
        result = solve.make_plan(profile, prices, capacities,
                                 pricing_source=inputs.display_path(price_path))
        sources = {"traffic_file": inputs.display_path(profile_path),
                   "pricing_file": inputs.display_path(price_path),
                   "pricing_as_of": prices.as_of, "measured_files": capacities.files}
        if plot is not None:
            report.write_plot(result, capacities, plot)
        emitted = None
        if emit is not None and out_path is not None:
            from cluster.plan.emit import emit as write_manifest

            emitted = write_manifest(emit, _region(result, region), profile,  # type: ignore[arg-type]
                                     out_path)
    if json_out:
        payload = report.plan_to_dict(result, sources)
        if emitted is not None:
            payload["emitted"] = {"paths": [str(p) for p in emitted.paths],
                                  "worker_groups": emitted.groups,
                                  "renderer_replicas": emitted.renderer_replicas,
                                  "sessions_per_replica": emitted.sessions_per_replica,
                                  "notes": emitted.notes}
        if plot is not None:
            payload["plot"] = str(plot)
        print_json(payload)
        return
    report.print_plan(result, out)
    console.print(f"prices: {sources['pricing_file']} (as of {prices.as_of}; list prices, "
                  f"check them); measured: {', '.join(capacities.files)}")
    if plot is not None:
        console.print(f"plot: {plot}")
    if emitted is not None:
        groups = ", ".join(f"{k} {v['min']}..{v['max']}" for k, v in emitted.groups.items())
        console.print(f"wrote {', '.join(map(str, emitted.paths))}: {groups}; Renderer "
                      f"num_replicas {emitted.renderer_replicas}, "
                      f"{emitted.sessions_per_replica} sessions each")
        for note in emitted.notes:
            console.print(f"[yellow]note:[/] {note}")


def _override(profile: TrafficProfile, peak: list[str], size: int | None, fps: int | None,
              gpu: list[str], spot_fraction: float | None, source: str) -> TrafficProfile:
    """The profile with the command line's overrides applied (validated again)."""
    data = profile.model_dump()
    if peak:
        regions = {}
        for item in peak:
            name, sep, value = item.partition("=")
            try:
                regions[name.strip()] = {"peak_sessions": float(value)}
                if not sep or not name.strip():
                    raise ValueError
            except ValueError:
                raise InputError(f"--peak {item!r}: write REGION=SESSIONS, e.g. "
                                 "--peak aws-us-east-1=500") from None
        data["regions"] = regions
    for section, key, value in (("slo", "size_px", size), ("slo", "fps", fps),
                                ("fleet", "spot_fraction", spot_fraction),
                                ("fleet", "gpu_types", tuple(gpu) or None)):
        if value is not None:
            data[section][key] = value
    return traffic_from_dict(data, source)


def _region(result: Plan, name: str | None) -> RegionPlan:
    names = [r.name for r in result.regions]
    if name is None and len(names) == 1:
        return result.regions[0]
    if name not in names:
        raise InputError(f"--emit sizes one region: pass --region with one of {', '.join(names)}")
    return next(r for r in result.regions if r.name == name)


def register(app: typer.Typer) -> None:
    """Add ``plan`` to the ``avatarctl`` app."""
    app.command("plan")(plan)
