"""``avatarctl loadtest``: simulated users over the real protocol, an SLO verdict, capacity."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import typer
from rich.live import Live
from rich.table import Table

from cluster.cli.common import (
    ConfigOption,
    JsonOption,
    console,
    friendly_errors,
    load,
    out,
    print_json,
)
from models.errors import BackendUnavailable, InputError

DEFAULT_TARGET = "http://127.0.0.1:8000"
QUESTION_POOL = 8
"""Answerable questions the users draw from (synthesised once, before the clock starts)."""
MAX_TURNS = 40


def check_target(url: str, allow_remote: bool) -> str:
    """The target's base URL; only this machine unless ``allow_remote``."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InputError(f"--target {url!r}: give an http:// URL, e.g. {DEFAULT_TARGET}")
    if not allow_remote and not is_loopback(parts.hostname):
        raise InputError(f"--target {url}: {parts.hostname} is not this machine; a load test "
                         "drives real traffic, so pass --allow-remote to aim it elsewhere")
    return url.rstrip("/")


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback address (no name is resolved)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def loadtest(
    target: str = typer.Option(DEFAULT_TARGET, help="Base URL of the cluster to load."),
    users: int = typer.Option(8, help="Peak concurrent users (with --find-capacity: the most "
                              "the search tries)."),
    duration: float = typer.Option(120.0, help="Seconds of load (with --find-capacity: per "
                                   "level); users then hang up, stragglers are cut 25 s later."),
    profile: str = typer.Option("ramp", help="constant, ramp, step, spike or soak."),
    report: Path | None = typer.Option(None, "--report", help="Write loadtest.json and "
                                       "loadtest.html (plots) into this folder."),
    slo: Path | None = typer.Option(None, help="SLO file (default configs/slo/default.yaml)."),
    json_out: bool = JsonOption,
    find_capacity: bool = typer.Option(False, "--find-capacity", help="Step constant load up "
                                       "1 user at a time until the SLO breaks; report "
                                       "max_sessions_at_slo."),
    seed: int = typer.Option(0, help="Seed of the users' question order and idle pauses."),
    turns: int = typer.Option(6, help="Scripted turns per session before the user hangs up "
                              "(spoken, typed, spoken, barge-in, ...)."),
    probe: bool = typer.Option(True, help="Probe the gateway's /v1/probe before each create."),
    device: str | None = typer.Option(None, help="What the target renders on, for the "
                                      "planner (e.g. H100); default from its /readyz."),
    allow_remote: bool = typer.Option(False, "--allow-remote", help="Allow a target that is "
                                      "not this machine."),
    config: str = ConfigOption,
) -> None:
    """Load a running cluster with simulated users over WebRTC and judge it by an SLO.

    Each user probes the gateway, creates a session, connects over WebRTC and plays a scripted
    conversation (spoken questions at real time, typed ones, barge-ins, idle pauses), then
    hangs up. Figures are what a user sees: setup, voice/text to first audio and frame, fps,
    jitter, freezes, A/V offset from decoded pixels, barge-in stop, lost turns, rejections,
    plus the server's /metrics and the harness's own CPU share. Exit code: 0 SLO met, 1 SLO
    broken, 2 bad input or no target."""
    from load_tests.profiles import make_profile
    from load_tests.slo import load_slo

    with friendly_errors():
        url = check_target(target, allow_remote)
        shape = make_profile("constant" if find_capacity else profile, users, duration)
        if not 1 <= turns <= MAX_TURNS:
            raise InputError(f"--turns {turns}: pick 1 to {MAX_TURNS}")
        objectives = load_slo(slo)
        cfg = load(config)
        readyz = _ready(url)
        questions, audio = _questions(cfg.persona)
    label = device or ("gpu" if readyz.get("gpu_ids") else "cpu")
    run = _Runner(url, turns, seed, probe, questions, audio, objectives, json_out)
    if find_capacity:
        result = _capacity(run, users, duration, report)
        result.update(device=label, target=url, slo=objectives.name, step_duration_s=duration)
        if json_out:
            print_json(result)
        else:
            out.print(f"max_sessions_at_slo: [bold]{result['max_sessions_at_slo']}[/] "
                          f"({objectives.name}; levels: " + ", ".join(
                              f"{lv['users']} {'met' if lv['met'] else 'broken'}"
                              for lv in result["levels"]) + ")")
        raise typer.Exit(0 if result["max_sessions_at_slo"] >= 1 else 1)
    figures = run(shape, report)
    figures["device"] = label
    if json_out:
        print_json(figures)
    else:
        _print_verdict(figures)
    raise typer.Exit(0 if figures["verdict"]["met"] else 1)


class _Runner:
    """Runs one load (a profile) with the live display and builds its report."""

    def __init__(self, url: str, turns: int, seed: int, probe: bool, questions: list[str],
                 audio: dict[str, Any], slo: Any, quiet: bool) -> None:
        self.url, self.turns, self.seed, self.probe = url, turns, seed, probe
        self.questions, self.audio, self.slo, self.quiet = questions, audio, slo, quiet

    def __call__(self, shape: Any, folder: Path | None) -> dict[str, Any]:
        from load_tests.report import build_report, write_report
        from load_tests.runner import RunSettings, harness_figures, run_load

        settings = RunSettings(self.url, shape, self.turns, self.seed, self.probe)
        with Live(_table(None, shape), console=console, transient=True,
                  refresh_per_second=2) as live:
            data = asyncio.run(run_load(settings, self.questions, self.audio,
                                        progress=_throttled(live, shape)))
        result = build_report(data, self.slo, harness_figures(data))
        if folder is not None:
            json_path, html_path = write_report(result, folder)
            console.print(f"report: {json_path} and {html_path}")
        return result


def _throttled(live: Live, shape: Any) -> Callable[[Any], None]:
    last = [-1.0]

    def update(progress: Any) -> None:
        if progress.t_s - last[0] >= 0.5:
            last[0] = progress.t_s
            live.update(_table(progress, shape))

    return update


def _table(progress: Any, shape: Any) -> Table:
    table = Table(title=f"load test: {shape.name}, {shape.users} users, {shape.duration_s:g} s",
                  show_header=False)
    if progress is None:
        table.add_row("starting", "")
        return table
    table.add_row("elapsed", f"{progress.t_s:.0f} / {progress.duration_s:.0f} s")
    table.add_row("users active / target", f"{progress.active} / {progress.target_users}")
    table.add_row("sessions ok / rejected / failed",
                  f"{progress.ok} / {progress.rejected} / {progress.failed}")
    table.add_row("turns", str(progress.turns))
    for key, value in progress.p95_ms.items():
        table.add_row(f"{key} p95 so far", "-" if value is None else f"{value:.0f} ms")
    if progress.harness_cpu_share is not None:
        table.add_row("harness CPU", f"{100 * progress.harness_cpu_share:.0f} % of a core")
    return table


def _capacity(run: _Runner, users: int, duration: float, folder: Path | None) -> dict[str, Any]:
    from load_tests.capacity import find_capacity
    from load_tests.profiles import make_profile

    def level(n: int) -> dict[str, Any]:
        console.print(f"capacity: {n} users for {duration:g} s")
        sub = None if folder is None else folder / f"users-{n}"
        return run(make_profile("constant", n, duration), sub)

    with friendly_errors():
        return find_capacity(level, max_users=users)


def _ready(url: str) -> dict[str, Any]:
    """The target's /readyz, or :class:`BackendUnavailable` when nothing answers."""
    import httpx

    try:
        if httpx.get(f"{url}/healthz", timeout=3.0).status_code == 200:
            ready = httpx.get(f"{url}/readyz", timeout=10.0)
            return ready.json() if ready.status_code == 200 else {}
    except (httpx.HTTPError, ValueError):
        pass
    raise BackendUnavailable(f"nothing answers GET {url}/healthz; start the cluster "
                             "(make run) or point --target at one")


def _questions(persona: str) -> tuple[list[str], dict[str, Any]]:
    from cluster.bench.e2e import voices
    from cluster.bench.scenario import load_eval

    answerable, _ = load_eval(persona)
    questions = [t.text for t in answerable[:QUESTION_POOL]]
    with console.status("synthesising the spoken questions (piper)"):
        return questions, voices(questions)


def _print_verdict(report: dict[str, Any]) -> None:
    v = report["verdict"]
    table = Table(title=f"load test against {report['target']}: SLO {v['slo']} "
                  f"{'met' if v['met'] else 'broken'}")
    for column in ("figure", "bound", "value", "status"):
        table.add_column(column, justify="left" if column == "figure" else "right")
    colours = {"met": "green", "broken": "red", "not_measured": "yellow"}
    for o in v["objectives"]:
        table.add_row(o["figure"], f"{o['op']} {o['bound']:g}",
                      "-" if o["value"] is None else f"{o['value']:g}",
                      f"[{colours[o['status']]}]{o['status']}[/]")
    out.print(table)
    h = report["harness"]
    out.print(f"sessions: {report['figures']['sessions']}; harness CPU "
                  f"{h['cpu_share_of_one_core']} of a core "
                  f"({h['cpu_share_of_machine']} of the machine)")


def register(app: typer.Typer) -> None:
    """Add ``loadtest`` to the ``avatarctl`` app."""
    app.command("loadtest")(loadtest)
