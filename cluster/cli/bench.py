"""``avatarctl bench``: benchmarks that print JSON."""

from __future__ import annotations

import asyncio
from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cluster.cli.common import ConfigOption, JsonOption, console, emit_json, friendly_errors, load

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
    if emit_json(figures, out, json_out):
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


@app.command("lipsync")
def lipsync(
    utterances: int = typer.Option(10, min=1, help="Clinic sentences to render (>= 10 for "
                                   "the published figure)."),
    size: int = typer.Option(256, help="Frame size in pixels: 256 or 512."),
    fps: int = typer.Option(25, min=10, max=60, help="Video frame rate."),
    avatar: str = typer.Option("default", help="Avatar pack to render."),
    device: str = typer.Option("cpu", help="Render device: cpu, cuda or auto."),
    json_out: bool = JsonOption,
    out: Path | None = typer.Option(None, help="Also write the JSON to this file."),
) -> None:
    """Audio/video sync on rendered pixels: renders utterances, reads the mouth opening from
    the frames, cross-correlates it with the audio envelope (av_offset_ms, positive = video
    late) and checks the mouth is closed in silence."""
    from cluster.bench.lipsync import run_lipsync_bench

    with friendly_errors(), console.status("lip-sync benchmark") as status:
        figures = run_lipsync_bench(
            utterances=utterances, size_px=size, fps=fps, avatar=avatar, device=device,
            progress=lambda step: status.update(f"lip-sync benchmark: {step}"))
    if emit_json(figures, out, json_out):
        return
    table = Table(title=f"lip-sync benchmark ({figures['utterances']} utterances)")
    for column in ("utterance", "audio ms", "av offset ms", "corr", "closed in silence"):
        table.add_column(column, justify="left" if column == "utterance" else "right")
    for row in figures["per_utterance"]:
        table.add_row(row["text"][:40], f"{row['audio_ms']}", f"{row['av_offset_ms']}",
                      f"{row['correlation']}",
                      f"{row['closed_silent_frames']}/{row['silent_frames']}")
    console.print(table)
    console.print(f"|av_offset_ms| p50 {figures['av_offset_ms']['p50']}, p99 "
                  f"{figures['av_offset_ms']['p99']} (signed mean "
                  f"{figures['signed_offset_ms']['mean']}); mouth closed in silence "
                  f"{figures['mouth_closed_in_silence_rate']:.1%}")
    console.print("targets: " + ", ".join(
        f"[{'green' if ok else 'red'}]{k}[/]" for k, ok in figures["targets_met"].items()))


def _int_list(text: str, what: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        console.print(f"[bold red]error:[/] --{what} takes positive integers separated by "
                      f"commas, e.g. 1,4,16; got {text!r}", highlight=False)
        raise typer.Exit(2)
    return values


@app.command("render")
def render(
    sessions: str = typer.Option("1,4,16,64", help="Batch sizes (sessions per step), comma "
                                 "separated."),
    size: str = typer.Option("256,512", help="Render sizes in px (256 and/or 512)."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    json_out: bool = JsonOption,
    out: Path | None = typer.Option(None, help="Also write the JSON to this file."),
) -> None:
    """Batched face rendering: frames/s, batch time and sessions per device at 25/30 fps,
    render only and with per-session VP8 encoding included."""
    from cluster.bench.render import run_render_bench

    counts = _int_list(sessions, "sessions")
    sizes = _int_list(size, "size")
    with friendly_errors(), Progress(
        TextColumn("[bold]{task.description}"), TimeElapsedColumn(), console=console,
        transient=True,
    ) as bar:
        task = bar.add_task("preparing", total=None)
        figures = run_render_bench(counts, sizes, device,
                                   progress=lambda step: bar.update(task, description=step))
    if emit_json(figures, out, json_out):
        return
    table = Table(title=f"render benchmark on {figures['device']} ({figures['dtype']})")
    for col in ("size", "sessions", "frames/s", "batch p50 ms", "batch p99 ms", "frames/s +vp8"):
        table.add_column(col, justify="right")
    for c in figures["configs"]:
        table.add_row(str(c["size_px"]), str(c["sessions"]), f"{c['frames_per_s']}",
                      f"{c['batch_ms']['p50']}", f"{c['batch_ms']['p99']}",
                      f"{c['with_vp8']['frames_per_s']}")
    console.print(table)
    console.print("max sessions: " + ", ".join(
        f"{k}: {v} ({figures['max_sessions_with_vp8'].get(k)} with VP8)"
        for k, v in figures["max_sessions"].items()))
    for s in figures["skipped"]:
        console.print(f"[yellow]skipped[/] {s['sessions']} sessions at {s['size_px']} px: "
                      f"{s['reason']}")


@app.command("encode")
def encode(
    sessions: str = typer.Option("1,2,4,6,8,12,16", help="Video peers to try, comma "
                                 "separated (the sweep stops after two that fall behind)."),
    size: int = typer.Option(512, help="Frame size in px."),
    processes: int | None = typer.Option(None, min=1, help="Encoder processes for the "
                                         "processes mode (default: one per usable core)."),
    seconds: float = typer.Option(4.0, min=1.0, help="Send time per step."),
    json_out: bool = JsonOption,
    out: Path | None = typer.Option(None, help="Also write the JSON to this file."),
) -> None:
    """VP8 encoding at 25 fps per peer: how many peers keep up with aiortc's encoder in the
    renderer's threads, and with the encoder processes (cluster.webrtc.encoder_processes)."""
    import asyncio

    from cluster.bench.encode import run_encode_bench

    counts = tuple(_int_list(sessions, "sessions"))
    with friendly_errors(), Progress(
        TextColumn("[bold]{task.description}"), TimeElapsedColumn(), console=console,
        transient=True,
    ) as bar:
        task = bar.add_task("starting encoder processes", total=None)
        figures = asyncio.run(run_encode_bench(
            size, counts, processes, seconds,
            progress=lambda mode, n: bar.update(task, description=f"{mode}: {n} peers done")))
    if emit_json(figures, out, json_out):
        return
    table = Table(title=f"VP8 at {size} px, 25 fps per peer, {figures['setup']['cores']} cores")
    for col in ("mode", "peers", "fps min", "fps p50", "latency p50 ms", "latency p99 ms",
                "kept up"):
        table.add_column(col, justify="right")
    for mode, m in figures["modes"].items():
        for r in m["sweep"]:
            table.add_row(mode, str(r["sessions"]), str(r["fps_min"]), str(r["fps_p50"]),
                          str(r["frame_latency_ms"]["p50"]), str(r["frame_latency_ms"]["p99"]),
                          "[green]yes[/]" if r["kept_up"] else "[red]no[/]")
    console.print(table)
    console.print("max peers at 25 fps: " + ", ".join(
        f"{mode} {m['max_sessions_at_fps']}" for mode, m in figures["modes"].items()))


@app.command("serve")
def serve_overhead(
    config: str = ConfigOption,
    turns: int = typer.Option(12, min=1, help="Typed questions (the persona's answerable "
                              "ones, in order) through each path."),
    hops: int = typer.Option(200, min=10, help="Paired Knowledge search calls (Serve handle "
                             "vs in-process)."),
    sessions: int = typer.Option(20, min=1, help="Sessions to create (one at a time)."),
    port: int = typer.Option(8031, min=1, max=65535, help="HTTP port of the benchmark's own "
                             "local cluster (must be free)."),
    json_out: bool = JsonOption,
    out: Path | None = typer.Option(None, help="Also write the JSON to this file."),
) -> None:
    """What Ray Serve adds: a handle hop, a typed turn over HTTP + SSE and a session creation,
    each against the same work in-process, interleaved in one run on a local Ray.

    Starts its own local Ray and Serve on --port (with private copies of the knowledge store
    and session store) and stops them at the end; takes a few minutes on a small machine."""
    from cluster.bench.serve import run_serve_bench

    cfg = load(config)
    with friendly_errors(), Progress(
        TextColumn("[bold]{task.description}"), TimeElapsedColumn(), console=console,
        transient=True,
    ) as bar:
        task = bar.add_task("preparing", total=None)
        figures = run_serve_bench(cfg, turns=turns, sessions=sessions, hops=hops, port=port,
                                  progress=lambda step: bar.update(task, description=step))
    if emit_json(figures, out, json_out):
        return
    table = Table(title=f"Serve overhead ({figures['setup']['cpus']} CPUs, "
                  f"{figures['setup']['profile']} profile)")
    for column in ("figure", "p50", "p95", "n"):
        table.add_column(column, justify="left" if column == "figure" else "right")

    def row(name: str, s: dict) -> None:
        table.add_row(name, f"{s['p50']}", f"{s['p95']}", f"{s['n']}")

    row("hop overhead ms (serve - in-process)", figures["hop_overhead_ms"])
    for path, s in figures["hop_ms"].items():
        row(f"  Knowledge.search ms, {path}", s)
    row("turn overhead ms (serve - in-process)", figures["turn_overhead_ms"])
    for path, s in figures["text_to_first_audio_ms"].items():
        row(f"  text to first audio ms, {path}", s)
    for path, s in figures["server_text_to_first_audio_ms"].items():
        row(f"  same, server marks, {path}", s)
    row("session create ms", figures["session_create_ms"])
    table.add_row("startup s", f"{figures['startup_s']}", "", "")
    console.print(table)
    console.print("targets: " + ", ".join(
        f"[{'green' if ok else 'red'}]{k} <= {figures['targets'][k]}[/]"
        for k, ok in figures["met"].items()))


@app.command("admission")
def admission(
    config: str = ConfigOption,
    sessions: int = typer.Option(4, min=4, max=16, help="The renderer's capacity for the run "
                                 "(one replica). The overload offers 1.5x this; tenant A's "
                                 "quota is half of it plus one; tenant B gets the rest."),
    turns: int = typer.Option(8, min=1, max=50, help="Measured rounds per arm; each round "
                              "every measuring session asks one typed question."),
    retry_ms: float = typer.Option(0.0, min=0, max=10_000, help="0: a refused would-be "
                                   "session asks again after Retry-After (a well-behaved "
                                   "client); N: every N ms (50 or more), ignoring it."),
    think_ms: float = typer.Option(500.0, min=0, max=10_000, help="Pause between the turns "
                                   "of tenant A's talking sessions."),
    port: int = typer.Option(8032, min=1, max=65535, help="HTTP port of the benchmark's own "
                             "local cluster (must be free)."),
    json_out: bool = JsonOption,
    out: Path | None = typer.Option(None, help="Also write the JSON to this file."),
) -> None:
    """Admission under load: how fast excess sessions are refused, and whether one tenant's
    flood slows the others.

    Starts its own local cluster on --port (one renderer of --sessions capacity, tenants
    maple-clinic and maple-annex, cluster.admission.max_sessions_per_tenant set) and stops
    it at the end; about 2-3 minutes on 2 cores with the defaults.

    1. Overload: the renderer is full and 1.5x its capacity ask for sessions (503 +
       Retry-After). Refusal latency p50/p95/max (target p95 <= 100 ms), and the admitted
       sessions' text-to-first-audio p95 with the excess over without it.

    2. Fairness: tenant A asks for 10x its quota at once (the quota admits exactly that many,
       the rest get 429 + Retry-After), keeps talking and asks again, while tenant B's
       sessions measure text to first audio. B's p95 with A flooding vs A at its quota
       (target increase <= 10 %), and vs A idle.

    Rounds of the arms are interleaved, so machine drift hits all alike. Example:
    avatarctl bench admission --sessions 4 --turns 4 --json --out out/bench/admission.json"""
    from cluster.bench.admission import run_admission_bench

    cfg = load(config)
    with friendly_errors(), Progress(
        TextColumn("[bold]{task.description}"), TimeElapsedColumn(), console=console,
        transient=True,
    ) as bar:
        task = bar.add_task("preparing", total=None)
        figures = run_admission_bench(
            cfg, sessions=sessions, turns=turns, retry_ms=retry_ms, think_ms=think_ms,
            port=port, progress=lambda step: bar.update(task, description=step))
    if emit_json(figures, out, json_out):
        return
    over, fair = figures["overload"], figures["fairness"]
    table = Table(title=f"admission ({over['capacity_sessions']} sessions capacity, tenant "
                  f"quota {fair['quota']})")
    for column in ("figure", "p50", "p95", "max / n"):
        table.add_column(column, justify="left" if column == "figure" else "right")

    def row(name: str, s: dict) -> None:
        table.add_row(name, f"{s['p50']}", f"{s['p95']}", f"{s.get('max', s['n'])}")

    row(f"refusal ms at 1.5x capacity {over['refusal_status']}", over["refusal_ms"])
    for arm, s in over["admitted_text_to_first_audio_ms"].items():
        row(f"  admitted text to first audio ms, {arm}", s)
    row(f"quota refusal ms {fair['refusal_status']}", fair["refusal_ms"])
    for arm, s in fair["b_text_to_first_audio_ms"].items():
        row(f"  tenant B text to first audio ms, {arm}", s)
    console.print(table)
    console.print(f"admitted p95 ratio (excess / quiet) {over['admitted_p95_ratio']}; "
                  f"tenant A admitted {fair['burst_admitted']} of {fair['a_attempted']}; "
                  f"B p95 +{fair['b_p95_increase_pct']} % (vs A idle "
                  f"+{fair['b_p95_increase_vs_idle_pct']} %)")
    console.print("targets: " + ", ".join(
        f"[{'green' if ok else 'red'}]{k}[/]" for k, ok in figures["met"].items()))


@app.command("e2e")
def e2e(
    target: str | None = typer.Option(None, help="URL of a running cluster (make run); "
                                      "default http://127.0.0.1:8000 when it answers."),
    serve: bool = typer.Option(False, "--serve", help="Start a local cluster on a free port "
                               "for the run (the default when --target is not given and "
                               "nothing answers on 127.0.0.1:8000)."),
    config: str = ConfigOption,
    turns: int = typer.Option(8, min=1, max=40, help="Scripted turns, cycling spoken, typed, "
                              "spoken, barge-in."),
    json_out: bool = JsonOption,
    out: Path | None = typer.Option(None, help="Also write the JSON to this file."),
) -> None:
    """One session end to end over real WebRTC, measured at an aiortc client: session setup,
    voice/text to first audio and to the first moving mouth, barge-in stop, frame rate and
    intervals, A/V offset from decoded frames. Bounded to about 4 minutes."""
    from cluster.bench.e2e import DEFAULT_TARGET, answers, run_e2e_bench

    if target is not None and serve:
        console.print("[bold red]error:[/] pass either --target or --serve, not both",
                      highlight=False)
        raise typer.Exit(2)
    cfg = load(config)
    if target is None and not serve:
        serve = not answers(DEFAULT_TARGET)
        target = None if serve else DEFAULT_TARGET
    with friendly_errors(), Progress(
        TextColumn("[bold]{task.description}"), TimeElapsedColumn(), console=console,
        transient=True,
    ) as bar:
        task = bar.add_task("preparing", total=None)
        figures = run_e2e_bench(cfg, target=target, serve=serve, turns=turns,
                                progress=lambda step: bar.update(task, description=step))
    if emit_json(figures, out, json_out):
        return
    table = Table(title=f"end to end over WebRTC ({figures['setup']['url']})")
    for column in ("figure", "p50", "p95", "p99", "n"):
        table.add_column(column, justify="left" if column == "figure" else "right")
    for key, value in figures.items():
        if isinstance(value, dict) and "p50" in value:
            table.add_row(key, *(f"{value[k]}" for k in ("p50", "p95", "p99", "n")))
    table.add_row("fps", f"{figures['fps']}", "", "", f"{figures['video_frames']}")
    console.print(table)
    console.print("targets: " + ", ".join(
        f"[{'green' if ok else 'red'}]{k} {figures['targets'][k]}[/]"
        for k, ok in figures["met"].items()))


@app.command("failover")
def failover(
    config: str = ConfigOption,
    trials: int = typer.Option(20, min=1, help="Conversations, one kill each."),
    kill: str = typer.Option("renderer", help="What to SIGKILL mid-reply, comma separated "
                             "and taken in turn: renderer (the session's own; the client "
                             "resumes on another), llm, tts (a shared replica: the turn ends "
                             "with the answer or an apology)."),
    nodes: int = typer.Option(3, min=1, max=8, help="Ray nodes started on this machine, one "
                              "fake GPU and one renderer each."),
    turns: int = typer.Option(2, min=0, help="Committed typed turns before the kill."),
    video: bool = typer.Option(False, "--video/--no-video", help="Also connect WebRTC media "
                               "(recovery then counts up to the new renderer's first frame)."),
    port: int = typer.Option(8071, min=1, max=65535, help="HTTP port of the benchmark's own "
                             "cluster (must be free)."),
    json_out: bool = JsonOption,
    out: Path | None = typer.Option(None, help="Also write the JSON to this file."),
) -> None:
    """Kill replicas mid-conversation on a multi-node local cluster: how long until the
    conversation goes on with its history (target p95 <= 5 s), committed turns lost (0),
    sessions leaked (0). A few minutes for 20 trials on a small machine."""
    from cluster.bench.failover import run_failover_bench

    cfg = load(config)
    kinds = tuple(k.strip() for k in kill.split(",") if k.strip())
    with friendly_errors(), Progress(
        TextColumn("[bold]{task.description}"), TimeElapsedColumn(), console=console,
        transient=True,
    ) as bar:
        task = bar.add_task("starting the cluster", total=None)
        figures = run_failover_bench(
            cfg, trials=trials, kinds=kinds, nodes=nodes, turns=turns, video=video, port=port,
            progress=lambda step: (bar.update(task, description=step),
                                   console.log(step) if step.startswith("trial") else None))
    if emit_json(figures, out, json_out):
        return
    table = Table(title=f"failover: {trials} trials, kill {kill}, {nodes} nodes")
    for column in ("trial", "kill", "detect ms", "recovered ms", "history", "lost",
                   "answer ms", "result"):
        table.add_column(column, justify="right")
    for t in figures["trials"]:
        table.add_row(str(t["index"] + 1), t["kill"], str(t["detect_ms"]), str(t["recovered_ms"]),
                      f"{t['history_turns']}/{t['committed_turns']}", str(t["lost_turns"]),
                      str(t["answer_ms"]),
                      "[green]ok[/]" if t["ok"] else "[red]" + "; ".join(t["problems"]) + "[/]")
    console.print(table)
    s = figures["summary"]
    console.print(f"recovered p50/p95/max {s['recovered_ms']['p50']}/{s['recovered_ms']['p95']}/"
                  f"{s['recovered_ms']['max']} ms; lost turns {s['lost_committed_turns']}; "
                  f"leaked sessions {s['leaked_sessions']}")
    console.print("targets: " + ", ".join(
        f"[{'green' if ok else 'red'}]{k}[/]" for k, ok in figures["targets"].items()))
