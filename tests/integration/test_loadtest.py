"""``avatarctl loadtest`` against a real local cluster on 127.0.0.1: two simulated users over
WebRTC for about 30 s; the JSON has every figure, the HTML page its plots, and the exit code
is the SLO verdict."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from cluster.bench.e2e import free_port
from cluster.bench.serve import _isolated
from cluster.cli import loadtest
from cluster.local import serve_app
from configs import load_config
from load_tests.slo import slo_from_dict, verdict

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FIGURES = ("session_setup_ms", "voice_to_first_audio_ms", "voice_to_first_frame_ms",
           "text_to_first_audio_ms", "barge_in_stop_ms", "av_offset_ms", "abs_av_offset_ms",
           "frame_interval_ms", "frame_jitter_ms", "session_fps", "freezes", "lost_turns",
           "rejection_rate", "failure_rate", "memory_growth_pct", "frames_dropped", "probe")


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("loadtest-cluster")
    served, _ = _isolated(load_config("local"), tmp, free_port())
    served = served.model_copy(update={"cluster": served.cluster.model_copy(
        update={"metrics_port": free_port()})})
    with serve_app(served) as url:
        yield url


def test_two_users_for_30_s_report_every_figure_and_the_verdict(
        target: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loadtest, "QUESTION_POOL", 3)  # fewer questions to synthesise
    cli = typer.Typer()
    loadtest.register(cli)

    @cli.command("version")
    def version() -> None:
        """Keeps loadtest a sub-command."""

    out = tmp_path / "report"
    result = CliRunner().invoke(cli, [
        "loadtest", "--target", target, "--users", "2", "--duration", "30",
        "--profile", "constant", "--turns", "3", "--seed", "1", "--report", str(out),
        "--json"])
    assert result.exit_code in (0, 1), result.output
    report = json.loads(result.stdout)
    assert result.exit_code == (0 if report["verdict"]["met"] else 1)

    figures = report["figures"]
    assert set(FIGURES) <= set(figures)
    assert figures["sessions"]["ok"] >= 2 and figures["sessions"]["failed"] == 0
    assert report["max_concurrent"] == 2
    assert figures["session_setup_ms"]["n"] >= 2
    assert figures["voice_to_first_audio_ms"]["n"] >= 1
    assert figures["text_to_first_audio_ms"]["n"] >= 1
    assert 15.0 <= figures["session_fps"]["p50"] <= 30.0
    assert figures["frame_interval_ms"]["n"] > 500
    assert report["server"]["samples"] >= 2 and report["server"]["sessions_max"] >= 1
    assert report["server"]["memory_rss_mb"]["last"] > 100
    harness = report["harness"]
    assert 0 < harness["cpu_share_of_one_core"] < 2

    assert (out / "loadtest.json").is_file()
    page = (out / "loadtest.html").read_text()
    assert page.count("data:image/png;base64,") == 4

    # the verdict follows the SLO: a bound every run meets, and one no run can
    lenient = slo_from_dict({"name": "lenient", "objectives": [
        {"figure": "session_fps.p50", "min": 1}, {"figure": "failure_rate", "max": 0}]})
    strict = slo_from_dict({"name": "strict", "objectives": [
        {"figure": "voice_to_first_audio_ms.p95", "max": 1}]})
    assert verdict(figures, lenient)["met"]
    assert verdict(figures, strict)["broken"] == ["voice_to_first_audio_ms.p95"]
