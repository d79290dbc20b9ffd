"""A plan as rich tables, as JSON (``cost_per_avatar_hour_usd`` at the top level) and as a PNG:
cost per avatar-hour against concurrency, and the fleet over the day."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from cluster.plan.figures import Measured
from cluster.plan.inputs import HOURS
from cluster.plan.solve import DAYS_PER_MONTH, Plan, RegionPlan, plan_region

LABELS = {"renderer": "renderer GPUs", "encode": "VP8 encode", "cpu": "CPU: ASR/LLM/TTS",
          "llm": "LLM GPUs", "speech": "ASR/TTS GPUs", "head": "Ray head", "network": "network"}


def _usd(value: float) -> str:
    if value >= 100:
        return f"${value:,.0f}"
    return f"${value:,.2f}" if value >= 1 else f"${value:.4f}"


def _range(lo: float, hi: float) -> str:
    return _usd(lo) if lo == hi else f"{_usd(lo)}-{_usd(hi)}"


# --- tables -------------------------------------------------------------------------------


def print_plan(plan: Plan, console: Console) -> None:
    """The plan as tables: pools per region, renderer options, totals, comparisons, inputs."""
    t = plan.traffic
    console.print(f"[bold]capacity plan: {t.name}[/] ({t.slo.size_px} px at {t.slo.fps} fps, "
                  f"stack {t.stack.asr}/{t.stack.llm}/{t.stack.tts}, target utilization "
                  f"{t.slo.target_utilization:.0%}, renderers {t.fleet.renderer_scaling})")
    for region in plan.regions:
        console.print(_region_table(region, plan))
        console.print(_options_table(region))
    console.print(_comparison_table(plan))
    console.print(_inputs_table(plan))
    for note in plan.notes:
        console.print(f"[yellow]note:[/] {note}")


def _region_table(region: RegionPlan, plan: Plan) -> Table:
    hours = region.avatar_hours_per_day
    groups = region.worker_groups()
    table = Table(title=f"{region.name} ({region.prices.cloud} {region.prices.cloud_region}): "
                  f"peak {region.peak_sessions:g} sessions, {hours:,.0f} avatar-hours/day; "
                  f"worker groups gpu {groups['gpu'][0]}..{groups['gpu'][1]}, cpu "
                  f"{groups['cpu'][0]}..{groups['cpu'][1]}", title_justify="left")
    for col in ("pool", "node", "nodes", "per node", "at peak", "free", "binds", "$/month",
                "$/avatar-h"):
        table.add_column(col, justify="left" if col in ("pool", "node", "binds") else "right")
    for p in region.pools:
        network = p.name == "network"
        table.add_row(
            LABELS.get(p.name, p.name), p.resource,
            "-" if network or p.on else f"{p.min_nodes}..{p.max_nodes}",
            "-" if network else f"{p.capacity_per_node:,.1f} {p.capacity_unit}",
            f"{p.demand_at_peak:,.1f} {p.capacity_unit}" if p.name != "head" else "-",
            "-" if network or p.name == "head" else f"{p.headroom_at_peak:.0%}",
            p.binding,
            f"in {p.on}" if p.on else _usd(p.cost_per_day_usd * DAYS_PER_MONTH),
            f"in {p.on}" if p.on else _usd(p.cost_per_day_usd / hours),
        )
    table.add_row("total", "", "", "", "", "", "", _usd(region.cost_per_day_usd * DAYS_PER_MONTH),
                  _usd(region.cost_per_day_usd / hours), style="bold")
    table.caption = ("nodes: min..max over the day (max = at peak); per node: capacity at "
                     "100 %; free: headroom at peak; $/avatar-h: the pool's cost over the "
                     "region's avatar-hours")
    return table


def _options_table(region: RegionPlan) -> Table:
    table = Table(title=f"{region.name}: renderer GPU types, sessions per node at 100 % of each "
                  "resource, and planned",
                  title_justify="left")
    for col in ("GPU", "$/GPU-h", "render", "encode", "network", "planned", "binds",
                "$/session-h", ""):
        table.add_column(col, justify="left" if col in ("GPU", "binds", "") else "right")
    for o in sorted(region.options, key=lambda o: o.cost_per_session_hour_usd):
        table.add_row(o.gpu, _usd(o.price_per_hour_usd), f"{o.limits['GPU render']:,.0f}",
                      f"{o.limits['encode CPU']:,.0f}", f"{o.limits['network']:,.0f}",
                      str(o.sessions_per_node), o.binding,
                      _usd(o.cost_per_session_hour_usd) if o.sessions_per_node else "-",
                      "chosen" if o is region.renderer else (o.problem or ""))
    return table


def _comparison_table(plan: Plan) -> Table:
    table = Table(title=f"whole plan: {plan.avatar_hours_per_day * DAYS_PER_MONTH:,.0f} "
                  f"avatar-hours/month, compute {_usd(plan.compute_cost_per_avatar_hour_usd)}"
                  "/avatar-hour", title_justify="left")
    for col in ("", "$/avatar-hour", "$/month", "x this plan"):
        table.add_column(col, justify="left" if not col else "right")
    for row in plan.comparisons():
        per_hour, month, times = (row["cost_per_avatar_hour_usd"], row["monthly_usd"],
                                  row["times_this_plan"])
        table.add_row(str(row["name"]), _range(*per_hour), _range(*month),
                      f"{times[0]:,.0f}-{times[1]:,.0f}" if times[0] != 1 else "1")
    return table


def _inputs_table(plan: Plan) -> Table:
    table = Table(title="input figures (assumption = a documented default, not measured)",
                  title_justify="left")
    for col in ("figure", "value", "source", "how"):
        table.add_column(col, justify="right" if col == "value" else "left")
    for f in sorted(plan.figures.values(), key=lambda f: (f.assumed, f.name)):
        source = "[yellow]assumption[/]" if f.assumed else f.source
        table.add_row(f.name, f"{f.value:g} {f.unit}", source, f.note)
    return table


# --- JSON ---------------------------------------------------------------------------------


def plan_to_dict(plan: Plan, sources: dict[str, str] | None = None) -> dict[str, Any]:
    """The plan as one JSON object; ``cost_per_avatar_hour_usd`` covers the whole plan."""
    t = plan.traffic
    return {
        "cost_per_avatar_hour_usd": round(plan.cost_per_avatar_hour_usd, 5),
        "compute_cost_per_avatar_hour_usd": round(plan.compute_cost_per_avatar_hour_usd, 5),
        "monthly_cost_usd": round(plan.monthly_cost_usd, 2),
        "avatar_hours_per_month": round(plan.avatar_hours_per_day * DAYS_PER_MONTH, 1),
        "peak_sessions": {"sum_of_regional_peaks": plan.sum_of_peaks, "coincident": max(
            sum(r.hourly_sessions[h] for r in plan.regions) for h in range(HOURS))},
        "regions": [_region_dict(r) for r in plan.regions],
        "comparisons": plan.comparisons(),
        "inputs": {
            **(sources or {}),
            "traffic": t.name, "slo": t.slo.model_dump(), "stack": t.stack.model_dump(),
            "workload": t.workload.model_dump(), "fleet": t.fleet.model_dump(),
            "figures": [{"name": f.name, "value": f.value, "unit": f.unit, "source": f.source,
                         "note": f.note} for f in plan.figures.values()],
        },
        "notes": plan.notes,
    }


def _region_dict(r: RegionPlan) -> dict[str, Any]:
    hours = r.avatar_hours_per_day
    groups = r.worker_groups()
    return {
        "name": r.name, "cloud": r.prices.cloud, "cloud_region": r.prices.cloud_region,
        "peak_sessions": r.peak_sessions, "avatar_hours_per_day": round(hours, 2),
        "cost_per_avatar_hour_usd": round(r.cost_per_day_usd / hours, 5),
        "compute_cost_per_avatar_hour_usd": round(r.compute_cost_per_day_usd / hours, 5),
        "monthly_cost_usd": round(r.cost_per_day_usd * DAYS_PER_MONTH, 2),
        "renderer": {"gpu": r.renderer.gpu, "sessions_per_node": r.renderer.sessions_per_node,
                     "limits_sessions": {k: round(v, 1) for k, v in r.renderer.limits.items()},
                     "binding": r.renderer.binding},
        "worker_groups": {name: {"min": lo, "max": hi} for name, (lo, hi) in groups.items()},
        "pools": [{
            "name": p.name, "resource": p.resource, "on": p.on,
            "nodes_at_peak": p.max_nodes, "min_nodes": p.min_nodes, "max_nodes": p.max_nodes,
            "nodes_by_hour_utc": list(p.nodes_by_hour),
            "price_per_node_hour_usd": p.price_per_node_hour_usd,
            "capacity_per_node": round(p.capacity_per_node, 3), "unit": p.capacity_unit,
            "demand_at_peak": round(p.demand_at_peak, 3),
            "headroom_at_peak": round(p.headroom_at_peak, 4), "binding": p.binding,
            "monthly_cost_usd": round(p.cost_per_day_usd * DAYS_PER_MONTH, 2),
            "cost_per_avatar_hour_usd": round(p.cost_per_day_usd / hours, 5),
        } for p in r.pools],
        "renderer_options": [{
            "gpu": o.gpu, "price_per_hour_usd": o.price_per_hour_usd,
            "sessions_per_node": o.sessions_per_node, "binding": o.binding,
            "cost_per_session_hour_usd": (round(o.cost_per_session_hour_usd, 5)
                                          if o.sessions_per_node else None),
            "problem": o.problem} for o in r.options],
        "sessions_by_hour_utc": list(r.hourly_sessions),
    }


# --- plot ---------------------------------------------------------------------------------


def cost_curve(plan: Plan, region: RegionPlan, measured: Measured,
               counts: list[int]) -> list[tuple[float, float]]:
    """(total, compute) cost per avatar-hour at a steady ``n`` sessions, for each count."""
    out = []
    for n in counts:
        r = plan_region(region.name, (float(n),) * HOURS, region.prices, plan.traffic,
                        measured)
        out.append((r.cost_per_day_usd / (24 * n), r.compute_cost_per_day_usd / (24 * n)))
    return out


def write_plot(plan: Plan, measured: Measured, path: Path) -> Path:
    """PNG: cost per avatar-hour against concurrency, and the fleet over the day (UTC)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    top = max(1000, 4 * int(max(r.peak_sessions for r in plan.regions)))
    counts = sorted({max(1, round(10 ** (i / 12))) for i in range(int(12 * math.log10(top)) + 1)})
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5))
    ax1.axhspan(1, 5, color="tab:red", alpha=0.12, label="one GPU per stream ($1-5/h)")
    ax1.axhspan(6, 12, color="tab:purple", alpha=0.12, label="hosted ($6-12/avatar-h)")
    for i, region in enumerate(plan.regions):
        curve = cost_curve(plan, region, measured, counts)
        color = f"C{i}"
        ax1.plot(counts, [c[0] for c in curve], color=color, label=f"{region.name} total")
        ax1.plot(counts, [c[1] for c in curve], color=color, linestyle="--",
                 label=f"{region.name} compute")
    ax1.set(xscale="log", yscale="log", xlabel="concurrent sessions (steady)",
            ylabel="USD per avatar-hour", title="cost per avatar-hour against concurrency")
    ax1.grid(True, which="both", alpha=0.3)
    ax1.legend(fontsize=8)

    hours = list(range(HOURS))
    bottom = [0.0] * HOURS
    labels = {"renderer": "renderer GPUs", "llm": "LLM GPUs", "speech": "ASR/TTS GPUs",
              "cpu": "CPU nodes"}
    for i, (name, label) in enumerate(labels.items()):
        nodes = [sum(p.nodes_by_hour[h] for r in plan.regions for p in r.pools
                     if p.name == name) for h in hours]
        if any(nodes):
            ax2.bar(hours, nodes, bottom=bottom, label=label, color=f"C{i + 2}")
            bottom = [b + n for b, n in zip(bottom, nodes, strict=True)]
    ax2.set(xlabel="hour (UTC)", ylabel="nodes", title="fleet over the day", xticks=hours[::2])
    twin = ax2.twinx()
    twin.plot(hours, [sum(r.hourly_sessions[h] for r in plan.regions) for h in hours],
              color="black", marker=".", label="concurrent sessions")
    twin.set_ylabel("concurrent sessions")
    handles = ax2.get_legend_handles_labels()
    extra = twin.get_legend_handles_labels()
    ax2.legend(handles[0] + extra[0], handles[1] + extra[1], fontsize=8, loc="upper left")
    fig.suptitle(f"{plan.traffic.name}: {_usd(plan.cost_per_avatar_hour_usd)} per avatar-hour "
                 f"({_usd(plan.compute_cost_per_avatar_hour_usd)} compute), "
                 f"{_usd(plan.monthly_cost_usd)} per month")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
