"""``avatarctl place``: the placement scheduler (which edge region serves a new session)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cluster.cli.common import JsonOption, console, emit_json, friendly_errors
from cluster.placement.regions import DEFAULT_REGIONS_FILE

app = typer.Typer(
    help="Placement scheduler: route each new session to the edge region with the lowest cost "
    "per avatar-hour among those that meet the latency SLO (docs/placement.md).",
    no_args_is_help=True,
)


@app.command("simulate")
def simulate(
    sessions: int = typer.Option(
        100_000, min=1, help="Sessions in the simulated day (the published figures use "
        "1000000; about 2 minutes per million and policy)."),
    regions: Path = typer.Option(
        DEFAULT_REGIONS_FILE, "--regions", help="Regions file: GPU types, regions with prices, "
        "capacities and positions, SLO and cost model (configs/regions/world.yaml)."),
    seed: int = typer.Option(0, help="Seed of the workload and the random baseline: the same "
                             "seed gives the same figures (except timings)."),
    failures: int = typer.Option(2, min=0, help="Region outages during the day (20-90 min "
                                 "each): the region stops reporting and its sessions reconnect."),
    utilization: float | None = typer.Option(
        None, help="Scale capacities so that the day's peak concurrency is this share of the "
        "total (e.g. 0.5). Default: capacities as in the regions file, which are sized for a "
        "million sessions a day, scaled by --sessions / 1000000."),
    no_probes: float = typer.Option(
        0.05, help="Share of clients that send no probes: the server places them with its "
        "conservative distance estimate."),
    stale_probes: float = typer.Option(
        0.03, help="Share of clients whose probes are 2-15 minutes old (used with margins)."),
    policies: str = typer.Option(
        "engine,nearest,cheapest,random", help="Policies to run, comma separated: engine (the "
        "scheduler) and any of the baselines nearest, cheapest, random."),
    plot: Path | None = typer.Option(None, help="Write a PNG of load per region over the day."),
    json_out: bool = JsonOption,
    out: Path | None = typer.Option(None, help="Also write the JSON to this file."),
) -> None:
    """Replay a simulated day of sessions through the scheduler and the baselines.

    Clients in 44 metros arrive with their local day (a midday and an evening peak), probe
    every region, drop and reconnect (churn), and regions fail. Reports per policy the cost per
    avatar-hour, the SLO violation rate and the decision time, and the LP lower bound on cost
    (HiGHS). Targets: >= 50,000 decisions/s on one core, p99 <= 100 us, cost within 3 % of the
    LP bound, >= 20 % cheaper than nearest-region with no more violations."""
    from cluster.placement.plots import plot_load
    from cluster.placement.regions import load_regions
    from cluster.placement.simulate import simulate as run_simulation

    names = tuple(p.strip() for p in policies.split(",") if p.strip())
    with friendly_errors():
        snap = load_regions(regions).snapshot()
        with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=console, transient=True,
                      disable=json_out) as bar:
            task = bar.add_task("preparing", total=sessions * len(names))
            figures = run_simulation(
                snap, sessions, seed=seed, failures=failures, utilization=utilization,
                no_probes=no_probes, stale_probes=stale_probes, policies=names,
                progress=lambda n: bar.advance(task, n),
                step=lambda text: bar.update(task, description=text))
    if plot is not None:
        console.print(f"load plot: {plot_load(figures, plot)}")
    if emit_json(figures, out, json_out):
        return
    _print_table(figures)


def _print_table(figures: dict) -> None:
    rows = {"engine": figures, **figures["baselines"]}
    lp = figures["lp_bound"]["cost_per_avatar_hour_usd"]
    nearest = rows.get("nearest", {}).get("cost_per_avatar_hour_usd")
    table = Table(title=f"one day, {figures['sessions']:,} sessions, seed {figures['seed']}, "
                  f"peak load {figures['peak_utilization']:.0%} of capacity")
    for column in ("policy", "$/avatar-h", "vs LP", "vs nearest", "SLO viol.",
                   "miss/full/dead", "decisions/s", "p50 us", "p99 us"):
        table.add_column(column, justify="left" if column == "policy" else "right")
    for name, r in rows.items():
        cost = r["cost_per_avatar_hour_usd"]
        v = r["violations"]
        table.add_row(
            name, f"{cost:.4f}", f"{cost / lp - 1:+.1%}",
            f"{cost / nearest - 1:+.1%}" if nearest else "", f"{r['slo_violation_rate']:.3%}",
            f"{v['slo_missed']}/{v['rejected_full']}/{v['dead_region']}",
            f"{r['decisions_per_s']:,}", f"{r['decision_us']['p50']:.1f}",
            f"{r['decision_us']['p99']:.1f}")
    table.add_row("LP bound", f"{lp:.4f}", "", f"{lp / nearest - 1:+.1%}" if nearest else "",
                  f"{figures['lp_bound']['slo_missed_hours_share']:.3%}", "", "", "", "")
    console.print(table)
    console.print("targets: " + ", ".join(
        f"[{'green' if ok else 'red'}]{k} {'met' if ok else 'MISSED'}[/]"
        for k, ok in figures["targets_met"].items()))


@app.command("serve")
def serve(
    regions: Path = typer.Option(DEFAULT_REGIONS_FILE, "--regions", help="Regions file (the "
                                 "regions' gateway URLs, prices, capacities, SLO)."),
    host: str = typer.Option("127.0.0.1", help="Listen address."),
    port: int = typer.Option(8100, help="Listen port."),
    report_key_env: str | None = typer.Option(
        None, help="Environment variable with the key regions send as X-Region-Key "
        "(cluster.placement_report_key_env on each region)."),
) -> None:
    """Run the global entry: regions report their load to it (POST /v1/regions/NAME/report,
    from cluster.placement_entry_url), clients POST /v1/sessions with their probes and get a
    session in the best region, with its token and signalling URL. Ctrl-C stops it."""
    import os

    import uvicorn

    from cluster.placement.entry import PlacementService, entry_app
    from cluster.placement.regions import load_regions

    with friendly_errors():
        config = load_regions(regions)
        key = os.environ.get(report_key_env) if report_key_env else None
        if report_key_env and not key:
            console.print(f"[bold red]error:[/] {report_key_env} is not set; export the "
                          "regions' report key first", highlight=False)
            raise typer.Exit(2)
        app_ = entry_app(PlacementService(config), report_key=key)
    console.print(f"global entry for {len(config.regions)} regions on http://{host}:{port} "
                  "(POST /v1/sessions, GET /v1/regions)")
    uvicorn.run(app_, host=host, port=port, log_level="warning")
