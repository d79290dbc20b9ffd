"""The placement simulation, its LP bound and ``avatarctl place simulate`` (small days)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from cluster.cli import place
from cluster.placement import SLO, CostModel, RegionState, ServerView, Snapshot, load_regions
from cluster.placement.lp_bound import lp_bound
from cluster.placement.simulate import simulate
from cluster.placement.workload import DAY_S, Workload, diurnal, make_workload

pytestmark = pytest.mark.unit

SESSIONS = 4000


@pytest.fixture(scope="module")
def world() -> Snapshot:
    return load_regions().snapshot()


@pytest.fixture(scope="module")
def day(world: Snapshot) -> dict:
    return simulate(world, SESSIONS, seed=3, utilization=0.6,
                    policies=("engine", "nearest", "cheapest"))


def test_the_figures_have_every_key_and_are_json(day: dict) -> None:
    for figures in (day, *day["baselines"].values()):
        assert figures["decisions"] >= SESSIONS * 0.95
        assert figures["decisions_per_s"] > 0
        assert 0 < figures["decision_us"]["p50"] <= figures["decision_us"]["p99"]
        assert 0.05 < figures["cost_per_avatar_hour_usd"] < 0.2
        assert 0 <= figures["slo_violation_rate"] <= 1
        assert len(figures["load_sessions_by_hour"]["us-east"]) >= 24
    assert set(day["baselines"]) == {"nearest", "cheapest"}
    assert day["lp_bound"]["client_classes"] > 5 and day["lp_bound"]["unserved_hours_share"] == 0
    assert set(day["targets_met"]) >= {"decisions_per_s>=50000", "cost_within_3pct_of_lp",
                                       "20pct_cheaper_than_nearest"}
    json.loads(json.dumps(day))


def test_the_scheduler_is_cheaper_than_nearest_region_without_more_violations(day: dict) -> None:
    nearest = day["baselines"]["nearest"]
    assert day["cost_per_avatar_hour_usd"] < 0.9 * nearest["cost_per_avatar_hour_usd"]
    assert day["slo_violation_rate"] <= nearest["slo_violation_rate"]
    assert day["violations"]["avoidable"] == 0


def test_the_lp_bound_is_below_every_policy_that_meets_the_slo(day: dict) -> None:
    bound = day["lp_bound"]["cost_per_avatar_hour_usd"]
    assert bound <= day["cost_per_avatar_hour_usd"] < 1.08 * bound
    assert bound <= day["baselines"]["nearest"]["cost_per_avatar_hour_usd"]
    cheapest = day["baselines"]["cheapest"]  # cheap only because it ignores latency
    assert cheapest["slo_violation_rate"] > 0.1


def test_with_room_and_no_failures_no_session_misses_the_slo(world: Snapshot) -> None:
    figures = simulate(world, 2000, seed=5, failures=0, utilization=0.4, policies=("engine",))
    assert figures["slo_violation_rate"] == 0
    assert figures["violations"] == {"slo_missed": 0, "rejected_full": 0, "dead_region": 0,
                                     "avoidable": 0}
    assert figures["sticky_decisions"] > 0  # reconnects after drops stay put


def test_the_same_seed_gives_the_same_day(world: Snapshot) -> None:
    a = make_workload(world, 3000, seed=11)
    b = make_workload(world, 3000, seed=11)
    c = make_workload(world, 3000, seed=12)
    assert np.array_equal(a.arrival_s, b.arrival_s) and np.array_equal(a.rtt_ms, b.rtt_ms)
    assert a.failures == b.failures and not np.array_equal(a.arrival_s, c.arrival_s)
    runs = [simulate(world, 800, seed=11, policies=("engine", "nearest")) for _ in range(2)]
    for key in ("cost_per_avatar_hour_usd", "slo_violation_rate", "violations", "decisions"):
        assert runs[0][key] == runs[1][key]
    assert runs[0]["lp_bound"]["cost_per_avatar_hour_usd"] == \
        runs[1]["lp_bound"]["cost_per_avatar_hour_usd"]


def test_the_simulated_world_is_diurnal_and_every_client_can_be_served(world: Snapshot) -> None:
    work = make_workload(world, 20_000, seed=1)
    assert work.arrival_s.min() >= 0 and work.arrival_s.max() < DAY_S
    assert np.all(np.diff(work.arrival_s) >= 0)
    per_hour = np.bincount((work.arrival_s // 3600).astype(int), minlength=24)
    assert per_hour.max() > 1.5 * per_hour.min()
    assert np.all(work.feasible_mask > 0)  # some region meets every client's SLO
    assert diurnal(np.array([20.5]))[0] > 3 * diurnal(np.array([4.0]))[0]


def _tiny_workload(masks: list[int], spans: list[tuple[float, float]]) -> Workload:
    n = len(masks)
    start = np.array([a for a, _ in spans])
    end = np.array([b for _, b in spans])
    zeros = np.zeros(n)
    return Workload(start, end, np.full(n, np.inf), zeros.astype(int), zeros, zeros,
                    np.zeros((n, 2), np.float32), np.zeros((n, 2), np.float32),
                    zeros.astype(np.float32), zeros.astype(int), zeros, np.array(masks), ())


def test_the_lp_fills_the_cheap_region_first_within_capacity_and_slo() -> None:
    cheap = RegionState("cheap", "u", "L4", 0.5, 0.0, 10, 1, latitude_deg=0, longitude_deg=0)
    dear = RegionState("dear", "u", "L4", 1.5, 0.0, 10, 5, latitude_deg=0, longitude_deg=90)
    snap = Snapshot((cheap, dear), SLO(), CostModel(egress_gb_per_avatar_hour=0), ServerView())
    c_cheap, c_dear = snap.cost_usd
    # two clients that may use either region for the same hour; cheap holds one session
    both = lp_bound(snap, _tiny_workload([0b11, 0b11], [(0, 3600), (0, 3600)]))
    assert both["cost_per_avatar_hour_usd"] == pytest.approx((c_cheap + c_dear) / 2)
    # a client whose SLO only the dear region meets pays for it
    only = lp_bound(snap, _tiny_workload([0b10], [(0, 1800)]))
    assert only["cost_per_avatar_hour_usd"] == pytest.approx(c_dear)
    assert only["avatar_hours"] == pytest.approx(0.5) and only["slo_missed_hours_share"] == 0


# --- the command line ------------------------------------------------------------------------

runner = CliRunner()


@pytest.fixture(scope="module")
def cli() -> typer.Typer:
    root = typer.Typer()
    root.add_typer(place.app, name="place")
    return root


def test_simulate_prints_json_and_writes_a_load_plot(cli: typer.Typer, tmp_path: Path) -> None:
    plot = tmp_path / "load.png"
    result = runner.invoke(cli, ["place", "simulate", "--sessions", "1000", "--seed", "2",
                                 "--policies", "engine,nearest", "--json", "--plot", str(plot)])
    assert result.exit_code == 0, result.output
    figures = json.loads(result.stdout)
    assert figures["sessions"] == 1000 and figures["seed"] == 2
    assert set(figures["decision_us"]) >= {"p50", "p99"}
    assert "nearest" in figures["baselines"] and "cost_per_avatar_hour_usd" in figures["lp_bound"]
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 20_000


def test_simulate_prints_a_table_by_default(cli: typer.Typer) -> None:
    result = runner.invoke(cli, ["place", "simulate", "--sessions", "800",
                                 "--policies", "engine,random"], env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.output
    assert "LP bound" in result.output and "random" in result.output
    assert "targets:" in result.output


def test_simulate_rejects_bad_input_without_a_traceback(cli: typer.Typer,
                                                       tmp_path: Path) -> None:
    bad = tmp_path / "regions.yaml"
    bad.write_text("gpus: {L4: {on_demand_per_hour_usd: 0.8, memory_gb: 24}}\nregions:\n"
                   "  - {name: x, gateway_url: u, gpu_type: L4, renderer_capacity_sessions: -1}\n")
    result = runner.invoke(cli, ["place", "simulate", "--regions", str(bad), "--sessions", "10"])
    assert result.exit_code == 2
    assert "price_per_gpu_hour_usd: missing" in result.output
    assert "renderer_capacity_sessions" in result.output and "Traceback" not in result.output
    result = runner.invoke(cli, ["place", "simulate", "--sessions", "10", "--policies", "nearest"])
    assert result.exit_code == 2 and "must include engine" in result.output


def test_simulate_help_explains_the_options(cli: typer.Typer) -> None:
    result = runner.invoke(cli, ["place", "simulate", "--help"], env={"COLUMNS": "160"})
    assert result.exit_code == 0
    for option in ("--sessions", "--regions", "--seed", "--json", "--plot", "--utilization"):
        assert option in result.output
