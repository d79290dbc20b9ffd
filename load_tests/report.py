"""A load test's report: figures pooled over sessions, the SLO verdict, JSON and HTML.

Percentiles pool the raw per-turn values of every session (never percentiles of
percentiles). ``session_fps`` and ``frame_jitter_ms`` are per-session values; their ``p5`` is
the rate that 95 % of sessions reached. Rates are over attempted sessions. The HTML page is one
self-contained file: tables and PNG plots (:mod:`load_tests.plots`) embedded as base64.
"""

from __future__ import annotations

import html
import json
import math
import os
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from deployments.timing import percentiles
from load_tests.server_metrics import counter_delta, memory_growth_pct
from load_tests.slo import SLO, verdict
from load_tests.user import SERIES, SessionResult

QUANTILES = (50, 95, 99)
MEMORY_WARMUP_S = 30.0
"""Memory growth is measured from this long after the full load is reached (the first
sessions' allocations are not a leak) ..."""
MEMORY_MIN_WINDOW_S = 120.0
"""... over at least this long; shorter runs report it as not measured."""
STALL_MS = 100.0
"""A harness event-loop lag at least this long overlapping a freeze marks the freeze as
possibly the harness's own (its timestamps were late)."""
JSON_NAME, HTML_NAME = "loadtest.json", "loadtest.html"


def _summary(values: Sequence[float | None], quantiles: Sequence[int] = QUANTILES
             ) -> dict[str, Any]:
    return percentiles(values, quantiles, 1)


def aggregate(sessions: Sequence[SessionResult], server: Sequence[tuple[float, dict[str, Any]]]
              = (), steady_from_s: float = 0.0,
              loop_lag: Sequence[tuple[float, float]] = ()) -> dict[str, Any]:
    """The run's figures from its sessions, ``/metrics`` samples and the harness's loop lag
    (``(t_s, ms)``); ``steady_from_s``: when the full load was reached."""
    count = {k: sum(1 for s in sessions if s.outcome == k)
             for k in ("ok", "rejected", "failed", "cut")}
    attempted = len(sessions)
    done = [s for s in sessions if s.outcome == "ok"]
    figures: dict[str, Any] = {
        "sessions": {"attempted": attempted, **count},
        "rejection_rate": _rate(count["rejected"], attempted),
        "failure_rate": _rate(count["failed"], attempted),
        "session_setup_ms": _summary([s.setup_ms for s in sessions]),
    }
    for key in (*SERIES, "abs_av_offset_ms"):
        figures[key] = _summary([v for s in done for v in s.values.get(key, ())])
    figures["frame_interval_ms"] = _summary([v for s in done for v in s.frame_intervals_ms])
    figures["frame_jitter_ms"] = _summary([s.frame_jitter_ms for s in done], (5, 50, 95, 99))
    figures["session_fps"] = _summary([s.fps for s in done], (5, 50, 95, 99))
    video_min = sum(s.video_frames / s.fps for s in done if s.fps) / 60.0
    freezes = sum(s.freezes for s in done)
    gaps = [s.longest_gap_ms for s in done if s.longest_gap_ms is not None]
    figures["freezes"] = {
        "total": freezes, "sessions": sum(1 for s in done if s.freezes),
        "per_session_minute": round(freezes / video_min, 3) if video_min > 0 else None,
        "longest_ms": round(max(gaps), 1) if gaps else None,
        "during_harness_stall": during_stalls([f for s in done for f in s.freezes_at],
                                              loop_lag)}
    turns = sum(s.turns for s in done)
    lost = sum(s.lost_turns for s in done)
    figures["lost_turns"] = {"total": lost, "turns": turns, "rate": _rate(lost, turns)}
    figures["server_errors"] = sum(s.server_errors for s in done)
    figures["memory_growth_pct"] = memory_growth_pct(
        server, steady_from_s + MEMORY_WARMUP_S, MEMORY_MIN_WINDOW_S)
    figures["frames_dropped"] = counter_delta(server, "frames_dropped")
    # The last samples are taken after every user hung up, until none is live (at most
    # settle_s): a live session then is a leak (or another client's: run against a cluster
    # nobody else uses).
    figures["leaked_sessions"] = server[-1][1].get("sessions") if server else None
    figures["probe"] = _probes(sessions)
    return figures


def during_stalls(freezes: Sequence[tuple[float, float]],
                  loop_lag: Sequence[tuple[float, float]], min_lag_ms: float = STALL_MS) -> int:
    """Freezes (``(start s, gap ms)``) that overlap a harness loop stall (``(woke s, lag
    ms)`` with lag >= ``min_lag_ms``, spanning ``[woke - lag, woke]``)."""
    stalls = [(t - ms / 1000.0, t) for t, ms in loop_lag if ms >= min_lag_ms]
    return sum(1 for start, gap in freezes
               if any(a <= start + gap / 1000.0 and b >= start for a, b in stalls))


def _rate(n: int, of: int) -> float | None:
    return round(n / of, 4) if of else None


def _probes(sessions: Sequence[SessionResult]) -> dict[str, Any]:
    probes = [s.probe for s in sessions if s.probe is not None]
    ok = [p for p in probes if p.get("rtt_ms") is not None]
    notes = sorted({str(p.get("error") or p.get("skipped")) for p in probes
                    if p.get("rtt_ms") is None})
    return {"probed": len(probes), "answered": len(ok),
            "rtt_ms": _summary([p["rtt_ms"] for p in ok]),
            "jitter_ms": _summary([p.get("jitter_ms") for p in ok]), "notes": notes[:3]}


def server_summary(server: Sequence[tuple[float, dict[str, Any]]]) -> dict[str, Any]:
    """What ``/metrics`` said over the run."""
    def series(key: str) -> list[float]:
        return [s[key] for _, s in server if isinstance(s.get(key), int | float)]

    rss = series("memory_rss_mb")
    sessions = series("sessions")
    return {
        "samples": len(server), "sessions_max": max(sessions) if sessions else None,
        "capacity": max(series("capacity"), default=None),
        "memory_rss_mb": {"first": rss[0], "last": rss[-1], "max": max(rss)} if rss else None,
        "cpu_percent": _summary(series("cpu_percent")),
        "admission_rejections": counter_delta(server, "admission_rejections"),
        "frames_dropped": counter_delta(server, "frames_dropped"),
        "frames_rendered": counter_delta(server, "frames_rendered"),
    }


def machine() -> dict[str, Any]:
    """Where the harness ran."""
    return {"cpus": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(),
            "load_avg": [round(x, 2) for x in os.getloadavg()]}


def build_report(data: Any, slo: SLO, harness: dict[str, Any]) -> dict[str, Any]:
    """The whole JSON report of a :class:`load_tests.runner.RunData`."""
    settings = data.settings
    profile = settings.profile
    figures = aggregate(data.sessions, data.server, profile.ramp_s, data.loop_lag)
    report: dict[str, Any] = {
        "benchmark": "loadtest", "target": settings.target, "profile": profile.name,
        "users": profile.users, "duration_s": profile.duration_s, "seed": settings.seed,
        "turns_per_session": settings.turns, "steady_from_s": profile.ramp_s,
        "max_concurrent": max((a for _, _, a in data.load), default=0),
        "figures": figures, "verdict": verdict(figures, slo),
        "server": server_summary(data.server), "metrics_error": data.metrics_error,
        "harness": harness, "machine": machine(),
        "timeline": {
            "load": data.load[::4], "server": data.server, "harness_cpu": data.harness,
            "points": [p for s in data.sessions for p in s.points],
            "fps": [w for s in data.sessions for w in s.fps_windows],
            "freezes": sorted(f for s in data.sessions for f in s.freezes_at),
            "loop_stalls": [p for p in data.loop_lag if p[1] >= STALL_MS],
            "rejections": sorted(s.started_s for s in data.sessions
                                 if s.outcome == "rejected"),
            "failures": sorted(s.started_s for s in data.sessions if s.outcome == "failed"),
        },
        "sessions": [s.to_dict() for s in data.sessions],
    }
    return _clean(report)


def _clean(value: Any) -> Any:
    """JSON-safe: NaN and infinities become null, tuples lists."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_report(report: dict[str, Any], folder: Path) -> tuple[Path, Path]:
    """``loadtest.json`` and ``loadtest.html`` in ``folder``; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    json_path, html_path = folder / JSON_NAME, folder / HTML_NAME
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    html_path.write_text(render_html(report))
    return json_path, html_path


# --- HTML -----------------------------------------------------------------------------------

_STYLE = """body{font:14px system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;
text-align:right}td:first-child,th:first-child{text-align:left}.met{color:#137333}
.broken{color:#c5221f;font-weight:600}.not_measured{color:#888}img{max-width:100%}
.banner{padding:.6em 1em;font-size:1.3em;color:#fff}"""


def render_html(report: dict[str, Any]) -> str:
    """One self-contained page: verdict, SLO table, figures, plots and sessions."""
    from load_tests.plots import plots_png

    e = html.escape
    v = report["verdict"]
    colour = "#137333" if v["met"] else "#c5221f"
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>load test "
             f"{e(report['target'])}</title><style>{_STYLE}</style></head><body>",
             f"<div class='banner' style='background:{colour}'>SLO {e(v['slo'])}: "
             f"{'met' if v['met'] else 'broken'}</div>",
             f"<p>{e(report['profile'])} profile, {report['users']} users, "
             f"{report['duration_s']:g} s against {e(report['target'])}; "
             f"{report['max_concurrent']} sessions at once at most.</p>",
             "<h2>SLO</h2>", _table(["figure", "bound", "value", "status", "why"], [
                 [o["figure"], f"{o['op']} {o['bound']:g}", _fmt(o["value"]),
                  f"<span class='{o['status']}'>{o['status']}</span>", e(o["why"])]
                 for o in v["objectives"]], escape=False),
             "<h2>Figures</h2>", _figure_table(report["figures"])]
    for title, png in plots_png(report).items():
        parts.append(f"<h2>{e(title)}</h2><img alt='{e(title)}' "
                     f"src='data:image/png;base64,{png}'>")
    parts += ["<h2>Server and harness</h2>",
              f"<pre>{e(json.dumps({'server': report['server'], 'harness': report['harness']}, indent=1))}</pre>",  # noqa: E501
              "<h2>Sessions</h2>", _table(
                  ["user", "start s", "outcome", "setup ms", "turns", "lost", "fps", "freezes",
                   "jitter ms", "error"],
                  [[s["user"], _fmt(s["started_s"]), s["outcome"], _fmt(s["setup_ms"]),
                    s["turns"], s["lost_turns"], _fmt(s["fps"]), s["freezes"],
                    _fmt(s["frame_jitter_ms"]), s["error"] or ""]
                   for s in report["sessions"]]),
              "</body></html>"]
    return "\n".join(parts)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _table(head: list[str], rows: list[list[Any]], escape: bool = True) -> str:
    cell = (lambda x: html.escape(str(x))) if escape else str
    body = "".join("<tr>" + "".join(f"<td>{cell(c)}</td>" for c in row) + "</tr>"
                   for row in rows)
    return ("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"
            + body + "</table>")


def _figure_table(figures: dict[str, Any]) -> str:
    rows = []
    for key, value in figures.items():
        if isinstance(value, dict) and "n" in value:
            rows.append([key, *(_fmt(value.get(q)) for q in ("p5", "p50", "p95", "p99")),
                         value["n"]])
        elif isinstance(value, dict):
            rows.append([key, "", ", ".join(f"{k} {_fmt(v)}" for k, v in value.items()
                                            if not isinstance(v, dict | list)), "", "", ""])
        else:
            rows.append([key, "", _fmt(value), "", "", ""])
    return _table(["figure", "p5", "p50 / value", "p95", "p99", "n"], rows)
