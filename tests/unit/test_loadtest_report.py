"""The load test's report on synthetic sessions: pooled figures, the SLO verdict, the server's
/metrics, the JSON and the self-contained HTML page, and the capacity search."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest

from load_tests.capacity import find_capacity
from load_tests.profiles import make_profile
from load_tests.report import aggregate, build_report, during_stalls, write_report
from load_tests.runner import RunData, RunSettings, harness_figures
from load_tests.server_metrics import counter_delta, memory_growth_pct, server_sample
from load_tests.slo import DEFAULT_SLO, load_slo, slo_from_dict, verdict
from load_tests.user import SessionResult
from models.errors import ConfigError, InputError

pytestmark = pytest.mark.unit


def session(user: int, *, voice: list[float], fps: float = 25.0, freezes: int = 0,
            lost: int = 0, outcome: str = "ok", setup: float | None = 500.0) -> SessionResult:
    s = SessionResult(user, started_s=float(user), ended_s=60.0 + user, outcome=outcome,  # type: ignore[arg-type]
                      setup_ms=setup, turns=4, turn_ends=5, lost_turns=lost, fps=fps,
                      video_frames=int(fps * 60), freezes=freezes,
                      longest_gap_ms=250.0 if freezes else 45.0, frame_jitter_ms=3.0)
    if outcome != "ok":
        s.setup_ms = None
        return s
    s.values = {"voice_to_first_audio_ms": voice, "text_to_first_audio_ms": [300.0],
                "barge_in_stop_ms": [200.0], "voice_to_first_frame_ms": [v + 50 for v in voice],
                "av_offset_ms": [-20.0, 30.0], "abs_av_offset_ms": [20.0, 30.0]}
    s.frame_intervals_ms = [40.0] * 99 + [250.0 if freezes else 45.0]
    s.freezes_at = [(10.0 + i, 250.0) for i in range(freezes)]
    s.points = [(5.0, "voice_to_first_audio_ms", v) for v in voice]
    s.fps_windows = [(0.0, fps), (5.0, fps)]
    return s


def sessions_ok() -> list[SessionResult]:
    return [session(0, voice=[800.0, 900.0]), session(1, voice=[1000.0, 1100.0])]


def test_figures_pool_every_turn_of_every_session_and_count_outcomes() -> None:
    runs = [*sessions_ok(), session(2, voice=[], outcome="rejected"),
            session(3, voice=[], outcome="failed")]
    f = aggregate(runs)
    assert f["voice_to_first_audio_ms"]["n"] == 4
    assert f["voice_to_first_audio_ms"]["p50"] == pytest.approx(950.0)  # not a mean of p50s
    assert f["sessions"] == {"attempted": 4, "ok": 2, "rejected": 1, "failed": 1, "cut": 0}
    assert f["rejection_rate"] == 0.25 and f["failure_rate"] == 0.25
    assert f["session_setup_ms"]["n"] == 2
    assert f["frame_interval_ms"]["n"] == 200
    assert f["session_fps"]["p5"] == 25.0
    assert f["freezes"]["total"] == 0 and f["lost_turns"] == {"total": 0, "turns": 8,
                                                             "rate": 0.0}


def test_freezes_lost_turns_and_slow_sessions_break_the_default_slo() -> None:
    slo = load_slo()
    good = verdict(aggregate(sessions_ok()), slo)
    assert good["met"], good["broken"]
    bad_runs = [session(0, voice=[900.0], freezes=2, lost=1, fps=18.0), *sessions_ok()]
    bad = verdict(aggregate(bad_runs), slo)
    assert not bad["met"]
    assert {"freezes.total", "lost_turns.total", "session_fps.p5"} <= set(bad["broken"])
    slow = verdict(aggregate([session(0, voice=[5000.0, 6000.0])]), slo)
    assert slow["broken"] == ["voice_to_first_audio_ms.p95", "voice_to_first_frame_ms.p95"]


def test_an_unmeasured_figure_breaks_a_required_objective_only() -> None:
    slo = slo_from_dict({"name": "t", "objectives": [
        {"figure": "barge_in_stop_ms.p95", "max": 500},
        {"figure": "memory_growth_pct", "max": 10, "required": False}]})
    f = aggregate(sessions_ok())
    assert f["memory_growth_pct"] is None
    v = verdict(f, slo)
    assert v["met"] and [o["status"] for o in v["objectives"]] == ["met", "not_measured"]
    f["barge_in_stop_ms"]["p95"] = None
    v = verdict(f, slo)
    assert not v["met"] and v["broken"] == ["barge_in_stop_ms.p95"]


def test_slo_files_are_checked_when_loaded(tmp_path: Path) -> None:
    assert load_slo(DEFAULT_SLO).objectives
    with pytest.raises(ConfigError, match="not a load-test figure"):
        slo_from_dict({"name": "t", "objectives": [{"figure": "fps_typo.p95", "max": 1}]})
    with pytest.raises(ConfigError, match="exactly one of max or min"):
        slo_from_dict({"name": "t", "objectives": [{"figure": "rejection_rate"}]})
    with pytest.raises(ConfigError, match="maximum: Extra inputs"):
        slo_from_dict({"name": "t", "objectives": [{"figure": "rejection_rate", "max": 0,
                                                    "maximum": 1}]})
    with pytest.raises(InputError, match="no such file"):
        load_slo(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("name: [")
    with pytest.raises(ConfigError, match=r"bad\.yaml"):
        load_slo(tmp_path / "bad.yaml")


METRICS = """# HELP ray_avatar_sessions Live sessions on a renderer replica.
# TYPE ray_avatar_sessions gauge
ray_avatar_sessions{replica="a",SessionName="s"} 3.0
ray_avatar_sessions{replica="b"} 2.0
ray_avatar_sessions_created_total{SessionName="s"} 9.0
ray_avatar_session_capacity{replica="a"} 8.0
ray_avatar_frames_dropped_total{replica="a"} 12.0
ray_avatar_admission_rejections_total{reason="full"} 4.0
ray_component_rss_mb{Component="agent",pid="7"} 100.0
ray_component_rss_mb{Component="ray::DashboardAgent",pid="7"} 100.0
ray_component_rss_mb{Component="raylet",pid="8",label="a \\"quoted\\" value"} 50.5
ray_component_cpu_percentage{Component="raylet",pid="8"} 12.5
ray_serve_num_http_requests_total{route="/"} 1e3
garbage line
"""


def test_server_sample_sums_series_and_counts_a_process_once() -> None:
    s = server_sample(METRICS)
    assert s["sessions"] == 5.0 and s["capacity"] == 8.0 and s["sessions_created"] == 9.0
    assert s["frames_dropped"] == 12.0 and s["admission_rejections"] == 4.0
    assert s["memory_rss_mb"] == 150.5  # pid 7 listed under two names counts once
    assert s["cpu_percent"] == 12.5 and s["frames_rendered"] is None


def test_memory_growth_needs_a_long_enough_steady_window() -> None:
    samples = [(t, {"memory_rss_mb": 1000.0 + t, "frames_dropped": t / 10})
               for t in range(0, 300, 10)]
    assert memory_growth_pct(samples, 100.0) == pytest.approx(100 * 190 / 1100, abs=0.01)
    assert memory_growth_pct(samples, 100.0, min_window_s=200) is None
    assert counter_delta(samples, "frames_dropped") == 29.0
    assert counter_delta(samples, "missing") is None


def test_freezes_during_a_harness_stall_are_told_apart() -> None:
    freezes = [(10.0, 300.0), (20.0, 250.0)]
    stalls = [(10.2, 150.0), (30.0, 500.0), (20.1, 50.0)]  # only the first overlaps enough
    assert during_stalls(freezes, stalls) == 1


def run_data(sessions: list[SessionResult]) -> RunData:
    data = RunData(RunSettings("http://127.0.0.1:8000", make_profile("ramp", 2, 60.0)),
                   sessions=sessions)
    data.load = [(t / 4, 1 + (t > 100), 1 + (t > 100)) for t in range(240)]
    data.server = [(t, {"sessions": 2.0, "memory_rss_mb": 1000.0, "cpu_percent": 90.0,
                        "frames_dropped": 0.0}) for t in range(0, 60, 10)]
    data.harness = [(t, 0.1) for t in range(10, 60, 10)]
    data.loop_lag = [(t / 10, 1.0) for t in range(600)]
    data.wall_s, data.cpu_s = 60.0, 6.0
    return data


def test_report_writes_json_and_a_self_contained_html_page(tmp_path: Path) -> None:
    runs = [*sessions_ok(), session(2, voice=[700.0], freezes=1),
            session(3, voice=[], outcome="rejected")]
    data = run_data(runs)
    harness = harness_figures(data)
    assert harness["cpu_share_of_one_core"] == 0.1 and harness["loop_lag_ms"]["max"] == 1.0
    report = build_report(data, load_slo(), harness)
    json_path, html_path = write_report(report, tmp_path / "out")
    loaded = json.loads(json_path.read_text())
    assert loaded["verdict"]["met"] is False
    assert {"freezes.total", "rejection_rate"} <= set(loaded["verdict"]["broken"])
    assert loaded["max_concurrent"] == 2 and len(loaded["sessions"]) == 4
    for key in ("session_setup_ms", "voice_to_first_audio_ms", "voice_to_first_frame_ms",
                "text_to_first_audio_ms", "session_fps", "frame_jitter_ms", "freezes",
                "abs_av_offset_ms", "barge_in_stop_ms", "rejection_rate", "lost_turns"):
        assert key in loaded["figures"]
    page = html_path.read_text()
    assert "SLO cpu-2core: broken" in page and "<script" not in page
    images = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page)
    assert len(images) == 4
    assert all(base64.b64decode(i).startswith(b"\x89PNG") for i in images)
    assert "src='http" not in page  # nothing fetched from elsewhere


def test_capacity_search_stops_at_the_first_level_that_breaks_the_slo() -> None:
    tried: list[int] = []

    def level(n: int) -> dict:
        tried.append(n)
        return {"verdict": {"met": n <= 3, "broken": [] if n <= 3 else ["freezes.total"]},
                "figures": {"freezes": {"total": max(0, n - 3)}}, "max_concurrent": n}

    result = find_capacity(level, max_users=8)
    assert result["max_sessions_at_slo"] == 3 and result["slo_broke_at"] == 4
    assert tried == [1, 2, 3, 4]
    assert result["levels"][-1]["freezes.total"] == 1
    capped = find_capacity(level, max_users=2)
    assert capped["max_sessions_at_slo"] == 2 and capped["search_limit_reached"]
    none = find_capacity(lambda n: {"verdict": {"met": False, "broken": ["x"]}}, max_users=4)
    assert none["max_sessions_at_slo"] == 0
    with pytest.raises(InputError):
        find_capacity(level, max_users=4, start=5)
