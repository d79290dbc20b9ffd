"""The load-test report's plots, drawn from its JSON alone (matplotlib, Agg backend) and
returned as base64 PNGs for :func:`load_tests.report.render_html`."""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from typing import Any

import numpy as np

LATENCIES = (("voice_to_first_audio_ms", "voice → first audio"),
             ("voice_to_first_frame_ms", "voice → first frame"),
             ("text_to_first_audio_ms", "text → first audio"),
             ("barge_in_stop_ms", "barge-in stop"))


def plots_png(report: dict[str, Any]) -> dict[str, str]:
    """``{title: base64 PNG}``: latency percentiles over time, frame rate and freezes, A/V
    offsets, and sessions, rejections and resources."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    timeline = report["timeline"]
    duration = float(report["duration_s"])
    width = max(5.0, duration / 12.0)
    out = {}
    for title, draw in (("Latency over time", _latency), ("Frame rate and freezes", _fps),
                        ("A/V offset per reply", _offsets),
                        ("Sessions, rejections and resources", _load)):
        fig = plt.figure(figsize=(10, 3.6))
        draw(fig, timeline, report, width)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=80)
        plt.close(fig)
        out[title] = base64.b64encode(buf.getvalue()).decode("ascii")
    return out


def binned(points: Sequence[tuple[float, float]], width: float, q: float
           ) -> tuple[list[float], list[float]]:
    """``q``-th percentile of the values in each ``width``-second bin: (bin centres, values)."""
    if not points:
        return [], []
    t = np.asarray([p[0] for p in points], np.float64)
    v = np.asarray([p[1] for p in points], np.float64)
    idx = np.floor(t / width).astype(int)
    xs, ys = [], []
    for b in sorted(set(idx.tolist())):
        xs.append((b + 0.5) * width)
        ys.append(float(np.percentile(v[idx == b], q)))
    return xs, ys


def _users(ax: Any, timeline: dict[str, Any]) -> None:
    load = timeline.get("load") or []
    if load:
        twin = ax.twinx()
        twin.step([p[0] for p in load], [p[1] for p in load], where="post", color="0.6",
                  lw=1, ls="--", label="target users")
        twin.step([p[0] for p in load], [p[2] for p in load], where="post", color="0.3",
                  lw=1, label="users in a session")
        twin.set_ylabel("users")
        twin.set_ylim(0, max(p[1] for p in load) + 1)
        twin.legend(loc="upper right", fontsize=8)


def _latency(fig: Any, timeline: dict[str, Any], report: dict[str, Any], width: float) -> None:
    ax = fig.add_subplot(111)
    for i, (key, label) in enumerate(LATENCIES):
        pts = [(p[0], p[2]) for p in timeline["points"] if p[1] == key]
        if not pts:
            continue
        colour = f"C{i}"
        ax.scatter(*zip(*pts, strict=True), s=8, alpha=0.35, color=colour)
        xs, p50 = binned(pts, width, 50)
        _, p95 = binned(pts, width, 95)
        ax.plot(xs, p95, "o-", color=colour, lw=2, ms=4, label=f"{label} p95")
        ax.plot(xs, p50, "o:", color=colour, lw=1, ms=3, label=f"{label} p50")
    ax.set_xlabel("s since start")
    ax.set_ylabel("ms")
    ax.set_xlim(0, report["duration_s"])
    ax.set_ylim(bottom=0)
    ax.legend(loc="upper left", bbox_to_anchor=(1.08, 1.0), fontsize=7)
    _users(ax, timeline)


def _fps(fig: Any, timeline: dict[str, Any], report: dict[str, Any], width: float) -> None:
    ax = fig.add_subplot(111)
    pts = [(w[0], w[1]) for w in timeline["fps"]]
    if pts:
        ax.scatter(*zip(*pts, strict=True), s=6, alpha=0.3, color="C0",
                   label="one session, 5 s window")
        xs, lo = binned(pts, width, 5)
        xm, mid = binned(pts, width, 50)
        ax.plot(xm, mid, color="C0", lw=2, label="p50 over sessions")
        ax.plot(xs, lo, color="C3", lw=1.5, label="p5 over sessions")
    for i, (t, _gap) in enumerate(timeline["freezes"]):
        ax.axvline(t, color="C3", alpha=0.5, lw=1, label="freeze (> 200 ms gap)" if i == 0
                   else None)
    for i, (t, ms) in enumerate(timeline.get("loop_stalls") or []):
        ax.axvspan(t - ms / 1000.0, t, color="0.5", alpha=0.3,
                   label="harness loop stall" if i == 0 else None)
    ax.set_xlabel("s since start")
    ax.set_ylabel("decoded frames / s")
    ax.set_xlim(0, report["duration_s"])
    ax.set_ylim(bottom=0)
    ax.legend(loc="lower left", fontsize=7)


def _offsets(fig: Any, timeline: dict[str, Any], report: dict[str, Any], width: float) -> None:
    ax = fig.add_subplot(111)
    pts = [(p[0], p[2]) for p in timeline["points"] if p[1] == "av_offset_ms"]
    if pts:
        ax.scatter(*zip(*pts, strict=True), s=10, alpha=0.6, color="C4",
                   label="A/V offset of a reply (+ = video late)")
    for o in report["verdict"]["objectives"]:
        if o["figure"].startswith("abs_av_offset_ms") and o["op"] == "<=":
            ax.axhspan(-o["bound"], o["bound"], color="C2", alpha=0.1,
                       label=f"SLO ±{o['bound']:g} ms")
    ax.axhline(0, color="0.5", lw=0.8)
    ax.set_xlabel("s since start")
    ax.set_ylabel("ms")
    ax.set_xlim(0, report["duration_s"])
    ax.legend(loc="upper left", fontsize=7)


def _load(fig: Any, timeline: dict[str, Any], report: dict[str, Any], width: float) -> None:
    ax, res = fig.add_subplot(121), fig.add_subplot(122)
    load = timeline.get("load") or []
    if load:
        ax.step([p[0] for p in load], [p[2] for p in load], where="post", color="C0",
                label="users in a session")
    server = timeline.get("server") or []
    live = [(t, s["sessions"]) for t, s in server if s.get("sessions") is not None]
    if live:
        ax.plot(*zip(*live, strict=True), color="C1", marker=".", label="server sessions")
    for key, colour in (("rejections", "C3"), ("failures", "C7")):
        times = timeline.get(key) or []
        if times:
            ax.step(times, range(1, len(times) + 1), where="post", color=colour,
                    label=f"{key} (cumulative)")
    ax.set_xlabel("s since start")
    ax.set_ylabel("count")
    ax.legend(loc="upper left", fontsize=7)
    rss = [(t, s["memory_rss_mb"]) for t, s in server if s.get("memory_rss_mb") is not None]
    cpu = [(t, s["cpu_percent"]) for t, s in server if s.get("cpu_percent") is not None]
    if rss:
        res.plot(*zip(*rss, strict=True), color="C2", label="server RSS (MB)")
    res.set_xlabel("s since start")
    res.set_ylabel("MB")
    twin = res.twinx()
    if cpu:
        twin.plot(*zip(*cpu, strict=True), color="C1", label="server CPU %")
    harness = [(t, 100.0 * s) for t, s in timeline.get("harness_cpu") or []]
    if harness:
        twin.plot(*zip(*harness, strict=True), color="C5", ls="--", label="harness CPU %")
    twin.set_ylabel("% of one core")
    res.legend(loc="upper left", fontsize=7)
    twin.legend(loc="upper right", fontsize=7)
