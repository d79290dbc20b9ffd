"""``avatarctl bench``: benchmarks that print JSON."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cluster.cli.common import ConfigOption, JsonOption, console, friendly_errors, load, print_json

app = typer.Typer(help="Benchmarks: each prints one JSON object with --json.",
                  no_args_is_help=True)


@app.command("pipeline")
def pipeline(
    config: str = ConfigOption,
    turns: int = typer.Option(24, min=20, help="Scripted voice turns (>= 20): answerable, "
                              "adversarial, off-topic and barge-in."),
    json_out: bool = JsonOption,
    out: Path | None = typer.Option(None, help="Also write the JSON to this file."),
) -> None:
    """Voice turns through the conversation core in-process, fed at real time.

    Questions come from the persona's eval/ files, spoken by the piper voice; the figures
    are latency percentiles per stage, ASR word error rate, grounded answers and guardrail
    rates. Needs a quiet machine for meaningful latencies."""
    from cluster.bench.pipeline import run_pipeline_bench

    cfg = load(config)
    with friendly_errors(), Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), console=console, transient=True,
    ) as bar:
        task = bar.add_task("preparing", total=turns)
        figures = asyncio.run(run_pipeline_bench(
            cfg, turns,
            progress=lambda step: bar.update(task, description=step),
            on_turn=lambda n: bar.update(task, completed=n),
        ))
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(figures, indent=2, default=str))
    if json_out:
        print_json(figures)
        return
    _print_table(figures)


def _print_table(figures: dict) -> None:
    table = Table(title=f"pipeline benchmark ({figures['turns']} turns)")
    table.add_column("figure")
    table.add_column("p50 / value", justify="right")
    table.add_column("p95", justify="right")
    for key, value in figures.items():
        if isinstance(value, dict) and "p50" in value:
            table.add_row(key, f"{value['p50']}", f"{value.get('p95')}")
        elif isinstance(value, int | float):
            table.add_row(key, f"{value}", "")
    console.print(table)
    met = figures.get("targets_met", {})
    console.print("targets: " + ", ".join(
        f"[{'green' if ok else 'red'}]{k}[/]" for k, ok in met.items()))
