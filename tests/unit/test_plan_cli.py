"""``avatarctl plan`` through the real command: tables, JSON, the plot, errors without
tracebacks, and the target for the default stack on the H100 figures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from cluster.cli import plan

pytestmark = pytest.mark.unit

runner = CliRunner()


@pytest.fixture(scope="module")
def app() -> typer.Typer:
    cli = typer.Typer()
    plan.register(cli)

    @cli.command("version")
    def version() -> None:  # a second command keeps `plan` a sub-command
        """Print nothing."""

    return cli


def _json(app: typer.Typer, *args: str) -> dict:
    result = runner.invoke(app, ["plan", *args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_json_has_the_whole_plans_cost_per_avatar_hour(app: typer.Typer) -> None:
    payload = _json(app)
    regions = payload["regions"]
    hours = sum(r["avatar_hours_per_day"] for r in regions)
    per_day = sum(r["cost_per_avatar_hour_usd"] * r["avatar_hours_per_day"] for r in regions)
    assert payload["cost_per_avatar_hour_usd"] == pytest.approx(per_day / hours, rel=1e-3)
    assert payload["monthly_cost_usd"] == pytest.approx(per_day * 30, rel=1e-3)
    sources = {f["name"]: f["source"] for f in payload["inputs"]["figures"]}
    assert sources["encode.vp8_ms_per_frame_256px"] == "docs/bench/render-h100.json"
    assert sources["asr.whisper.core_s_per_turn"] == "assumption"
    pools = {p["name"] for p in regions[0]["pools"]}
    assert {"renderer", "encode", "cpu", "head", "network"} <= pools
    names = [c["name"] for c in payload["comparisons"]]
    assert names == ["this plan", "baseline: one GPU per stream", "hosted avatar API"]
    assert payload["inputs"]["pricing_as_of"]


def test_default_stack_on_h100_costs_under_ten_cents_of_compute(app: typer.Typer) -> None:
    payload = _json(app, "--gpu", "H100")
    assert {r["renderer"]["gpu"] for r in payload["regions"]} == {"H100"}
    assert payload["compute_cost_per_avatar_hour_usd"] <= 0.10
    # VP8 on the CPU binds, not the GPU: an H100 renders 4096 sessions but encodes ~373.
    limits = payload["regions"][0]["renderer"]["limits_sessions"]
    assert payload["regions"][0]["renderer"]["binding"] == "encode CPU"
    assert limits["encode CPU"] < limits["GPU render"]


def test_table_plot_and_csv_profile(app: typer.Typer, tmp_path: Path) -> None:
    png = tmp_path / "plan.png"
    result = runner.invoke(app, ["plan", "configs/traffic/clinic-hourly.csv",
                                 "--plot", str(png)], env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.output
    for text in ("gcp-us-central1", "encode CPU", "baseline: one GPU per stream",
                 "assumption"):
        assert text in result.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000


def test_overrides_from_the_command_line(app: typer.Typer) -> None:
    payload = _json(app, "--peak", "aws-us-east-1=100", "--fps", "30", "--size", "512")
    assert [r["name"] for r in payload["regions"]] == ["aws-us-east-1"]
    assert payload["regions"][0]["peak_sessions"] == 100
    assert (payload["inputs"]["slo"]["fps"], payload["inputs"]["slo"]["size_px"]) == (30, 512)


@pytest.mark.parametrize(("args", "message"), [
    (["--peak", "mars-1=10"], "region 'mars-1' has no prices"),
    (["--peak", "aws-us-east-1"], "write REGION=SESSIONS"),
    (["--emit", "kuberay"], "--emit needs --out"),
    (["--emit", "helm", "--out", "x.yaml"], "choose kuberay or ray-launcher"),
    (["--size", "2048", "--fps", "60"], "no GPU type meets the SLO"),
])
def test_errors_say_what_to_change(app: typer.Typer, args: list[str], message: str) -> None:
    result = runner.invoke(app, ["plan", *args], env={"COLUMNS": "200"})
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert "Traceback" not in result.output


def test_emit_needs_a_region_when_there_are_several(app: typer.Typer, tmp_path: Path) -> None:
    out = tmp_path / "rs.yaml"
    result = runner.invoke(app, ["plan", "--emit", "kuberay", "--out", str(out)],
                           env={"COLUMNS": "200"})
    assert result.exit_code == 2 and "pass --region with one of" in result.output
    payload = _json(app, "--emit", "kuberay", "--out", str(out), "--region", "aws-eu-west-1")
    assert payload["emitted"]["paths"] == [str(out)] and out.exists()
