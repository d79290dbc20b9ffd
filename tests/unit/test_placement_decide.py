"""The placement decision: feasibility, cost, stickiness, fallbacks, bad input, regions files."""

from __future__ import annotations

import json
import math
import random
import statistics
import time
from pathlib import Path

import pytest
import yaml

from cluster.placement import (
    SLO,
    ClientMeasurement,
    CostModel,
    Probe,
    RegionState,
    ServerView,
    Snapshot,
    client_view,
    decide,
    great_circle_km,
    load_regions,
)
from cluster.placement.regions import DEFAULT_REGIONS_FILE, parse_regions
from models.errors import ClusterFull, InputError

pytestmark = pytest.mark.unit

NOW = 10_000.0
# name: (price per GPU-hour, latitude, longitude)
PLACES = {"dublin": (0.88, 53.35, -6.26), "virginia": (0.80, 39.04, -77.49),
          "frankfurt": (2.23, 50.11, 8.68), "tokyo": (1.07, 35.68, 139.69)}
LONDON = (51.51, -0.13)


def region(name: str, *, capacity: int = 100, load: int = 0, reported_at_s: float = NOW - 2,
           draining: bool = False, price: float | None = None) -> RegionState:
    base, lat, lon = PLACES[name]
    return RegionState(name, f"https://{name}.example.com", "L4",
                       base if price is None else price, 0.09, 24, capacity, load,
                       reported_at_s, lat, lon, draining)


def snapshot(*regions: RegionState, **slo: float) -> Snapshot:
    return Snapshot(tuple(regions), SLO(**slo), CostModel(), ServerView())


def probes(age_s: float = 1.0, location: tuple[float, float] | None = LONDON,
           **figures: tuple[float, float, float]) -> ClientMeasurement:
    """``dublin=(rtt_ms, jitter_ms, loss)``, measured ``age_s`` ago."""
    lat, lon = location if location else (None, None)
    return ClientMeasurement({k: Probe(*v, NOW - age_s) for k, v in figures.items()}, lat, lon)


def test_the_cheapest_region_meeting_the_slo_wins_and_the_choice_is_explained() -> None:
    snap = snapshot(region("dublin"), region("virginia"), region("tokyo"))
    m = probes(dublin=(20, 3, 0.001), virginia=(80, 5, 0.001), tokyo=(230, 9, 0.001))
    d = decide(snap, m, now_s=NOW)
    assert d.region == "virginia" and d.slo_met and not d.sticky and not d.estimated
    assert d.gateway_url == "https://virginia.example.com"
    assert d.cost_per_avatar_hour_usd == pytest.approx(0.80 / 24 + 0.80 / 40 + 0.35 * 0.09)
    assert "virginia" in d.explanation and "rtt 80 ms" in d.explanation
    assert "$0.0848/avatar-h" in d.explanation and "2/3 regions feasible" in d.explanation
    assert d.explanation.endswith("; next dublin +$0.0053")
    ranked = [(c.region, c.feasible, c.reason) for c in d.candidates]
    assert ranked == [("virginia", True, "ok"), ("dublin", True, "ok"),
                      ("tokyo", False, "rtt 230 ms > 150")]


@pytest.mark.parametrize(("figures", "reason"), [
    ((60, 45, 0.001), "jitter 45 ms > 30"),
    ((60, 5, 0.05), "loss 5.0% > 2.0%"),
    ((151, 5, 0.0), "rtt 151 ms > 150"),
])
def test_jitter_loss_and_rtt_limits_each_exclude_a_region(figures: tuple, reason: str) -> None:
    snap = snapshot(region("dublin"), region("virginia"))
    d = decide(snap, probes(dublin=(20, 3, 0.0), virginia=figures), now_s=NOW)
    assert d.region == "dublin"
    assert {c.region: c.reason for c in d.candidates}["virginia"] == reason


def test_a_full_region_is_skipped_and_the_reconnect_reserve_is_a_second_choice() -> None:
    m = probes(dublin=(20, 3, 0.0), virginia=(80, 5, 0.0), frankfurt=(25, 3, 0.0))
    full = region("virginia", capacity=100, load=100)
    snap = snapshot(full, region("dublin", capacity=100, load=99), region("frankfurt"))
    d = decide(snap, m, now_s=NOW)
    assert d.region == "frankfurt"  # dublin has one free session: its reserve (2 %)
    reasons = {c.region: c.reason for c in d.candidates}
    assert reasons["virginia"] == "full" and reasons["dublin"] == "ok (reconnect reserve)"
    assert "dublin -$0.0900 but ok (reconnect reserve)" in d.explanation
    d = decide(snapshot(full, region("dublin", capacity=100, load=99)), m, now_s=NOW)
    assert d.region == "dublin" and d.slo_met and "reconnect reserve" in d.explanation


def test_placements_since_the_last_report_count_against_free_capacity() -> None:
    snap = snapshot(region("virginia", capacity=10, load=5), region("dublin"))
    m = probes(dublin=(20, 3, 0.0), virginia=(80, 5, 0.0))
    assert decide(snap, m, now_s=NOW, pending=[0, 0]).region == "virginia"
    assert decide(snap, m, now_s=NOW, pending=[5, 0]).region == "dublin"
    with pytest.raises(InputError, match="one count per region"):
        decide(snap, m, now_s=NOW, pending=[5])


def test_a_region_that_stops_reporting_is_shunned_then_drained() -> None:
    m = probes(dublin=(20, 3, 0.0), virginia=(80, 5, 0.0))
    late = snapshot(region("virginia", reported_at_s=NOW - 10), region("dublin"))
    d = decide(late, m, now_s=NOW)
    assert d.region == "dublin"
    assert {c.region: c.reason for c in d.candidates}["virginia"].startswith("ok (late load")
    alone = snapshot(region("virginia", reported_at_s=NOW - 10))
    d = decide(alone, m, now_s=NOW)
    assert d.region == "virginia" and "load report is late" in d.explanation
    drained = snapshot(region("virginia", reported_at_s=NOW - 20), region("dublin"))
    d = decide(drained, m, now_s=NOW)
    assert d.region == "dublin"
    assert {c.region: c.reason for c in d.candidates}["virginia"] == \
        "drained: no load report for 20 s"
    with pytest.raises(ClusterFull, match="drained"):
        decide(snapshot(region("virginia", reported_at_s=NOW - 20)), m, now_s=NOW)


def test_draining_and_unreachable_regions_are_excluded() -> None:
    m = probes(dublin=(20, 3, 0.0), virginia=(80, 5, 0.0), frankfurt=(25, 3, 0.0))
    snap = snapshot(region("virginia", draining=True), region("dublin"), region("frankfurt"))
    d = decide(snap, m, now_s=NOW, avoid={"dublin"})
    assert d.region == "frankfurt"
    reasons = {c.region: c.reason for c in d.candidates}
    assert reasons == {"virginia": "draining", "dublin": "unreachable for this client",
                       "frankfurt": "ok"}


def test_missing_probes_fall_back_to_a_conservative_distance_estimate() -> None:
    snap = snapshot(region("dublin"), region("virginia"), region("tokyo"))
    d = decide(snap, probes(), now_s=NOW)  # nothing measured, client in London
    assert d.region == "dublin" and d.estimated and "est." in d.explanation
    rtt = {c.region: c.rtt_ms for c in d.candidates}
    view = ServerView()
    expected = (view.base_rtt_ms + view.access_rtt_ms + 2 * view.route_factor
                * great_circle_km(LONDON, PLACES["virginia"][1:]) / view.fiber_km_per_ms)
    assert rtt["virginia"] == pytest.approx(expected)
    assert rtt["dublin"] < rtt["virginia"] < rtt["tokyo"]
    # virginia is cheaper, but the server cannot vouch for its jitter from London
    assert not {c.region: c.feasible for c in d.candidates}["virginia"]


def test_stale_probes_are_used_with_margins_and_old_ones_are_ignored() -> None:
    snap = snapshot(region("dublin"), region("virginia"))
    fresh_rtt, _, _, est = client_view(snap, probes(age_s=1, virginia=(80, 6, 0.01)), NOW)
    assert fresh_rtt[1] == 80 and est == [True, False]
    rtt, jit, loss, est = client_view(snap, probes(age_s=300, virginia=(80, 6, 0.01)), NOW)
    view = ServerView()
    assert est == [True, True]
    assert rtt[1] == 80 + view.stale_rtt_margin_ms
    assert jit[1] == pytest.approx(6 * view.stale_jitter_factor)
    assert loss[1] == pytest.approx(0.01 * view.stale_loss_factor)
    rtt, _, _, _ = client_view(snap, probes(age_s=3600, virginia=(80, 6, 0.01)), NOW)
    assert rtt[1] > 120  # an hour old: the distance estimate instead


def test_without_probes_or_location_the_region_is_unknown() -> None:
    snap = snapshot(region("dublin"), region("virginia"))
    d = decide(snap, probes(location=None, dublin=(20, 3, 0.0)), now_s=NOW)
    assert d.region == "dublin"
    assert json.loads(json.dumps(d.to_dict()))["candidates"][1]["rtt_ms"] is None


def test_great_circle_distance_matches_known_city_pairs() -> None:
    assert great_circle_km((51.51, -0.13), (40.71, -74.01)) == pytest.approx(5570, abs=20)
    assert great_circle_km((35.68, 139.69), (35.68, 139.69)) == pytest.approx(0, abs=1e-6)


@pytest.mark.parametrize(("probe", "message"), [
    (Probe(-5.0, 3.0, 0.0, NOW), "rtt_ms must be between 0 and 10000, got -5.0"),
    (Probe(20.0, math.nan, 0.0, NOW), "jitter_ms must be between 0 and 10000, got nan"),
    (Probe(20.0, 3.0, 1.5, NOW), "loss must be a fraction between 0 and 1, got 1.5"),
    (Probe(20.0, 3.0, 0.0, NOW + 60), "measured_at_s is 60.0 s in the future"),
    (Probe("20", 3.0, 0.0, NOW), "rtt_ms must be between 0 and 10000, got '20'"),  # type: ignore[arg-type]
    (Probe(20.0, 3.0, 0.0, math.nan), "measured_at_s must be a time in UNIX seconds"),
])
def test_bad_measurements_are_rejected_with_what_to_change(probe: Probe, message: str) -> None:
    snap = snapshot(region("dublin"), region("virginia"))
    m = ClientMeasurement({"virginia": Probe(80, 5, 0.0, NOW), "dublin": probe}, *LONDON)
    with pytest.raises(InputError, match="region 'dublin'") as err:
        decide(snap, m, now_s=NOW)
    assert message in err.value.message


def test_probes_of_unknown_regions_are_ignored_but_still_checked() -> None:
    snap = snapshot(region("dublin"))
    assert decide(snap, probes(dublin=(20, 3, 0.0), mars=(900, 9, 0.0)), now_s=NOW).slo_met
    with pytest.raises(InputError, match="mars"):
        decide(snap, probes(dublin=(20, 3, 0.0), mars=(-1, 9, 0.0)), now_s=NOW)


def test_a_reconnecting_session_keeps_its_region_within_the_switch_margin() -> None:
    m = probes(dublin=(20, 3, 0.0), virginia=(80, 5, 0.0))
    near_tie = snapshot(region("dublin", price=0.82), region("virginia"))
    d = decide(near_tie, m, now_s=NOW, previous_region="dublin")
    assert d.region == "dublin" and d.sticky and "kept on reconnect" in d.explanation
    assert decide(near_tie, m, now_s=NOW).region == "virginia"  # a new session goes there
    pricey = snapshot(region("dublin", price=1.5), region("virginia"))
    d = decide(pricey, m, now_s=NOW, previous_region="dublin")
    assert d.region == "virginia" and not d.sticky
    assert "left dublin: saves $" in d.explanation


def test_a_reconnecting_session_leaves_a_region_that_no_longer_fits() -> None:
    snap = snapshot(region("dublin", price=0.82, capacity=10, load=10), region("virginia"))
    d = decide(snap, probes(dublin=(20, 3, 0.0), virginia=(80, 5, 0.0)), now_s=NOW,
               previous_region="dublin")
    assert d.region == "virginia" and "left dublin: full" in d.explanation


def test_with_no_feasible_region_the_session_goes_where_the_slo_is_missed_least() -> None:
    snap = snapshot(region("virginia"), region("tokyo"), region("dublin", load=100))
    m = probes(virginia=(170, 5, 0.0), tokyo=(160, 5, 0.0), dublin=(20, 3, 0.0))
    d = decide(snap, m, now_s=NOW)
    assert d.region == "tokyo" and not d.slo_met
    assert "no region meets the SLO" in d.explanation and "rtt 160 ms > 150" in d.explanation


def test_no_free_session_anywhere_is_cluster_full() -> None:
    snap = snapshot(region("virginia", capacity=5, load=5), region("dublin", capacity=0))
    with pytest.raises(ClusterFull) as err:
        decide(snap, probes(dublin=(20, 3, 0.0), virginia=(80, 5, 0.0)), now_s=NOW)
    assert err.value.retryable and "virginia full" in err.value.message


def test_new_load_reports_keep_the_precomputed_constants() -> None:
    snap = snapshot(region("dublin"), region("virginia"))
    later = snap.with_reports([7, 100], [NOW, NOW])
    assert later.load == (7, 100) and later.free == (93, 0)
    assert later.cost_usd == snap.cost_usd and snap.load == (0, 0)
    with pytest.raises(InputError, match="one entry per region"):
        snap.with_reports([1], [NOW])
    with pytest.raises(InputError, match="active_sessions must be >= 0"):
        snap.with_reports([-1, 0], [NOW, NOW])


def test_a_decision_takes_well_under_100_microseconds() -> None:
    cfg = load_regions()
    snap = cfg.snapshot(reported_at_s=NOW)
    m = ClientMeasurement({name: Probe(40.0 + 15 * i, 4.0, 0.001, NOW - 1)
                           for i, name in enumerate(snap.names)}, *LONDON)
    times = []
    for _ in range(3000):
        t0 = time.perf_counter_ns()
        decide(snap, m, now_s=NOW)
        times.append(time.perf_counter_ns() - t0)
    assert statistics.median(times) / 1e3 < 100  # about 10 us on a quiet core


# --- regions files -------------------------------------------------------------------------


def test_the_world_regions_file_is_valid_and_plausible() -> None:
    cfg = load_regions(DEFAULT_REGIONS_FILE)
    assert 6 <= len(cfg.regions) <= 8
    snap = cfg.snapshot()
    assert all(0.05 < c < 0.2 for c in snap.cost_usd)  # USD per avatar-hour
    assert {r.gpu_type for r in cfg.regions} <= set(cfg.gpus)
    spread = [(r.latitude_deg, r.longitude_deg) for r in cfg.regions]
    assert max(great_circle_km(spread[0], p) for p in spread) > 10_000  # worldwide


def _world() -> dict:
    return yaml.safe_load(DEFAULT_REGIONS_FILE.read_text())


@pytest.mark.parametrize(("edit", "expected"), [
    (lambda d: d["regions"][1].pop("price_per_gpu_hour_usd"),
     "region 'us-east' (regions[1]): price_per_gpu_hour_usd: missing; set it to the on-demand"),
    (lambda d: d["regions"][0].update(renderer_capacity_sessions=-8),
     "region 'us-west' (regions[0]): renderer_capacity_sessions: Input should be greater than "
     "or equal to 0 (got -8)"),
    (lambda d: d["regions"][2].update(gpu_type="B200"),
     "region 'sa-east': unknown gpu_type 'B200'; known types: A10G, L4, L40S (add it under "
     "gpus:)"),
    (lambda d: d["regions"][3].update(name="us-west"),
     "region names must be unique; repeated: ['us-west']"),
    (lambda d: d["regions"][0].update(price_per_gpu_hour="0.7"),
     "price_per_gpu_hour: Extra inputs are not permitted"),
    (lambda d: d["slo"].update(max_rtt_ms=-1), "slo.max_rtt_ms: Input should be greater than 0"),
])
def test_bad_regions_files_say_what_to_change(edit, expected: str, tmp_path: Path) -> None:
    data = _world()
    edit(data)
    path = tmp_path / "regions.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(InputError) as err:
        load_regions(path)
    assert expected in err.value.message and str(path) in err.value.message


def test_a_missing_or_malformed_regions_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="regions file not found"):
        load_regions(tmp_path / "nope.yaml")
    with pytest.raises(InputError, match="top level must be a mapping"):
        parse_regions(["us-east"])
    (tmp_path / "bad.yaml").write_text("regions: [\n")
    with pytest.raises(InputError, match="not a valid YAML"):
        load_regions(tmp_path / "bad.yaml")


def test_the_one_pass_common_case_decides_exactly_like_the_general_path() -> None:
    rng = random.Random(7)
    snap = load_regions().snapshot(reported_at_s=NOW)
    loads = [rng.randrange(0, c + 1) for c in snap.capacity]
    snap = snap.with_reports(loads, [NOW - 1] * len(loads))
    for _ in range(300):
        figures = {name: Probe(rng.uniform(5, 260), rng.uniform(0.5, 40), rng.choice([0, 0.03]),
                               NOW - rng.uniform(0, 5)) for name in snap.names}
        prev = rng.choice([None, *snap.names])
        fast = decide(snap, ClientMeasurement(figures, *LONDON), now_s=NOW, previous_region=prev)
        # a probe of an unknown region sends the same client down the general path
        general = decide(snap, ClientMeasurement({**figures, "elsewhere": Probe(9, 1, 0, NOW)},
                                                 *LONDON), now_s=NOW, previous_region=prev)
        assert fast.to_dict() == general.to_dict()
