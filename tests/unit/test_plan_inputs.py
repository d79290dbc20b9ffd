"""What the planner reads: traffic profiles (YAML, CSV), the price list, and the benchmarks'
JSON, with a source or "assumption" for every figure and clear errors for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cluster.plan import figures
from cluster.plan.figures import DEFAULT_MEASURED, gpu_type_of, load_measured
from cluster.plan.inputs import (
    DEFAULT_PRICING,
    DEFAULT_TRAFFIC,
    GPU_TYPES,
    REPO_ROOT,
    load_pricing,
    load_traffic,
    traffic_from_dict,
)
from cluster.plan.solve import make_plan
from models.errors import InputError

pytestmark = pytest.mark.unit

CSV = REPO_ROOT / "configs" / "traffic" / "clinic-hourly.csv"


@pytest.fixture(scope="module")
def docs_measured() -> figures.Measured:
    return load_measured(DEFAULT_MEASURED)


# --- traffic ------------------------------------------------------------------------------


def test_example_profile_peaks_follow_the_diurnal_curve() -> None:
    profile = load_traffic(DEFAULT_TRAFFIC)
    hourly = profile.hourly()
    assert max(hourly["aws-us-east-1"]) == 600 and max(hourly["aws-eu-west-1"]) == 250
    # Busiest local hour 10 is 15:00 UTC in us-east-1 (UTC-5).
    assert hourly["aws-us-east-1"][15] == 600
    assert min(hourly["aws-us-east-1"]) == pytest.approx(600 * 0.02)


def test_csv_gives_hourly_sessions_per_region() -> None:
    profile = load_traffic(CSV)
    hourly = profile.hourly()
    assert set(hourly) == {"aws-us-east-1", "gcp-us-central1"}
    assert hourly["aws-us-east-1"][14] == 600 and hourly["gcp-us-central1"][0] == 20


def test_yaml_can_take_its_curve_from_a_share_csv(tmp_path: Path) -> None:
    shares = "hour_utc,share\n" + "".join(f"{h},{0.5 if h < 12 else 1}\n" for h in range(24))
    (tmp_path / "curve.csv").write_text(shares)
    (tmp_path / "t.yaml").write_text("regions: {r1: {peak_sessions: 80}}\n"
                                     "diurnal_csv: curve.csv\n")
    hourly = load_traffic(tmp_path / "t.yaml").hourly()["r1"]
    assert hourly[:12] == (40.0,) * 12 and hourly[12:] == (80.0,) * 12


@pytest.mark.parametrize(("body", "message"), [
    ("hour_utc,r1\n" + "".join(f"{h},1\n" for h in range(23)), r"hours \[23\] missing"),
    ("time,r1\n0,1\n", r"no hour_utc column"),
    ("hour_utc,r1\n" + "".join(f"{h},{-1 if h == 5 else 1}\n" for h in range(24)),
     r"negative traffic at hour 5"),
    ("hour_utc,r1\n0,lots\n", r"csv:2: expected an hour 0..23"),
])
def test_bad_csv_says_what_to_fix(tmp_path: Path, body: str, message: str) -> None:
    path = tmp_path / "t.csv"
    path.write_text(body)
    with pytest.raises(InputError, match=message):
        load_traffic(path)


def test_unknown_keys_and_empty_traffic_are_refused() -> None:
    with pytest.raises(InputError, match=r"slo.frame_rate: unknown key"):
        traffic_from_dict({"regions": {"r1": {"peak_sessions": 1}}, "slo": {"frame_rate": 30}})
    with pytest.raises(InputError, match=r"region r1 has no sessions at any hour"):
        traffic_from_dict({"regions": {"r1": {"peak_sessions": 0}}})
    with pytest.raises(InputError, match=r"unknown GPU type 'V100'"):
        traffic_from_dict({"regions": {"r1": {"peak_sessions": 1}},
                           "fleet": {"gpu_types": ["V100"]}})


# --- prices -------------------------------------------------------------------------------


def test_price_list_covers_every_gpu_type_with_spot_prices() -> None:
    prices = load_pricing(DEFAULT_PRICING)
    assert prices.as_of
    priced = {g for r in prices.regions.values() for g in r.gpus}
    assert priced == set(GPU_TYPES)
    for region in prices.regions.values():
        assert region.cpu_core_per_hour_usd > 0 and region.egress_per_gb_usd > 0
        for offer in region.gpus.values():
            assert 0 < offer.spot_per_hour_usd < offer.on_demand_per_hour_usd


def test_bad_price_list_names_the_key(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("as_of: x\nregions: {r1: {cloud: aws}}\n")
    with pytest.raises(InputError, match=r"p.yaml: regions.r1.cloud_region: Field required"):
        load_pricing(path)


# --- measured figures ---------------------------------------------------------------------


def test_docs_benchmarks_give_their_figures_and_sources(docs_measured) -> None:
    vp8 = figures.vp8_ms_per_frame(docs_measured, 256)
    assert (vp8.value, vp8.source) == (1.558, "docs/bench/render-h100.json")
    h100 = figures.render_sessions(docs_measured, "H100", 512, 30)
    assert (h100.value, h100.source) == (2736, "docs/bench/render-h100.json")
    kb = docs_measured.get("llm.kb.core_s_per_turn")
    assert kb.source == "docs/bench/pipeline-cpu-2core.json"
    assert kb.value == pytest.approx((8.6 + 0.6) * 2 / 1000)
    serve = docs_measured.get("serve.core_s_per_turn")
    assert serve.value == pytest.approx(10.26 * 6 * 2 / 1000, abs=1e-4)
    latency = docs_measured.get("latency.voice_to_first_audio_p95_ms")
    assert (latency.value, latency.source) == (882.1, "docs/bench/e2e-cpu-2core.json")
    whisper = docs_measured.get("asr.whisper.core_s_per_turn")
    assert whisper.assumed and "docs/benchmarks.md" in whisper.note


def test_unmeasured_gpu_is_scaled_down_and_marked(docs_measured) -> None:
    l4 = figures.render_sessions(docs_measured, "L4", 256, 25)
    assert l4.assumed and l4.value == int(4096 * 0.3 / 3.35)
    h200 = figures.render_sessions(docs_measured, "H200", 256, 25)
    assert h200.value == 4096  # never scaled above the measured GPU
    odd = figures.render_sessions(docs_measured, "H100", 384, 25)
    assert odd.value == int(2985 * 512**2 / 384**2) and "pixel rate" in odd.note


def test_load_test_figure_caps_the_renderer(tmp_path: Path, docs_measured) -> None:
    load = tmp_path / "load.json"
    load.write_text(json.dumps({"max_sessions_at_slo": 120, "device": "NVIDIA H100 80GB HBM3"}))
    measured = load_measured([*DEFAULT_MEASURED, load])
    profile = traffic_from_dict({"regions": {"aws-us-east-1": {"peak_sessions": 500}},
                                 "fleet": {"gpu_types": ["H100"]}})
    plan = make_plan(profile, load_pricing(DEFAULT_PRICING), measured)
    renderer = plan.regions[0].renderer
    assert renderer.binding == "load test" and renderer.sessions_per_node == 96
    assert plan.figures["renderer.H100.max_sessions_at_slo"].source == str(load)


def test_latency_slo_is_checked_against_the_measured_figure(docs_measured) -> None:
    profile = traffic_from_dict({"regions": {"aws-us-east-1": {"peak_sessions": 10}},
                                 "slo": {"voice_to_first_audio_p95_ms": 800}})
    with pytest.raises(InputError, match=r"800 ms but the stack measured 882.1 ms "
                       r"\(docs/bench/e2e-cpu-2core.json\); raise the SLO"):
        make_plan(profile, load_pricing(DEFAULT_PRICING), docs_measured)


@pytest.mark.parametrize(("content", "message"), [
    ('{"hello": 1}', r"not a benchmark JSON the planner reads"),
    ("{not json", r"not valid JSON"),
    ('{"benchmark": "render", "device_kind": "cuda", "device": "NVIDIA V100"}',
     r"a render benchmark without the expected figures"),
])
def test_unreadable_benchmark_files(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "x.json"
    path.write_text(content)
    with pytest.raises(InputError, match=message):
        load_measured([path])
    with pytest.raises(InputError, match=r"file not found"):
        load_measured([tmp_path / "missing.json"])


def test_gpu_type_of_device_names() -> None:
    assert gpu_type_of("NVIDIA H100 80GB HBM3") == "H100"
    assert gpu_type_of("NVIDIA L40S") == "L40S"
    assert gpu_type_of("NVIDIA L4") == "L4"
    assert gpu_type_of("NVIDIA A10G") == "A10G"
    assert gpu_type_of("AMD EPYC") is None
