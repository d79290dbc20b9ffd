"""The capacity plan's arithmetic on hand-computed cases: one region, one GPU type, round
figures, so every node count and dollar below can be checked on paper."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cluster.plan.figures import load_measured
from cluster.plan.inputs import PriceList, traffic_from_dict
from cluster.plan.solve import make_plan
from models.errors import InputError

pytestmark = pytest.mark.unit

# An L4 render benchmark: 100 sessions at 256 px / 25 fps, VP8 2.0 ms a frame, one session's
# step 4 ms (p99).
RENDER = {
    "benchmark": "render", "device": "NVIDIA L4", "device_kind": "cuda",
    "vp8_encode_ms_per_frame": {"256": 2.0},
    "configs": [{"sessions": 1, "size_px": 256, "frames_per_s": 250.0,
                 "batch_ms": {"p50": 3.0, "p99": 4.0}, "max_sessions_at_fps": {"25": 100}}],
}
L4 = {"instance": "g6.test", "on_demand_per_hour_usd": 2.0, "spot_per_hour_usd": 1.0,
      "vcpus_per_gpu": 12, "host_memory_gb_per_gpu": 64, "network_gbps_per_gpu": 10,
      "memory_gb": 24}
PRICES = {"as_of": "test", "regions": {"r1": {
    "cloud": "aws", "cloud_region": "us-test-1", "cpu_core_per_hour_usd": 0.05,
    "cpu_node_instance": "c.test", "cpu_node_vcpus": 10, "egress_per_gb_usd": 0.1,
    "gpus": {"L4": L4}}}}


@pytest.fixture()
def measured(tmp_path: Path):
    path = tmp_path / "render-l4.json"
    path.write_text(json.dumps(RENDER))
    return load_measured([path])


def _plan(measured, regions: dict[str, Any] | None = None, prices: dict[str, Any] | None = None,
          **sections: Any):
    data = {"name": "t", "regions": regions or {"r1": {"peak_sessions": 200}}, **sections}
    return make_plan(traffic_from_dict(data), PriceList.model_validate(prices or PRICES),
                     measured)


def test_flat_peak_by_hand(measured) -> None:
    plan = _plan(measured)
    (region,) = plan.regions
    # Encode per session: 2.0 ms x 25 fps / 1000 + 0.02 overhead = 0.07 cores; 12 - 2 reserved
    # vCPUs -> 142.9 sessions. Render 100 binds; 80 % of it = 80 per node; 200 / 80 -> 3 nodes.
    assert region.renderer.limits["GPU render"] == 100
    assert region.renderer.limits["encode CPU"] == pytest.approx(10 / 0.07)
    assert region.renderer.limits["network"] == pytest.approx(10_000 / 1.5)
    assert (region.renderer.sessions_per_node, region.renderer.binding) == (80, "GPU render")
    renderer = region.pool("renderer")
    assert renderer.nodes_by_hour == (3,) * 24
    assert renderer.cost_per_day_usd == pytest.approx(3 * 2.0 * 24)
    assert renderer.headroom_at_peak == pytest.approx(1 - 200 / 300)
    # CPU: 0.005 VAD + 3 turns/min / 60 x (0.1 Serve + 0.6 whisper + 0.03 kb + 0.01 x 8 s
    # espeak) = 0.0455 cores/session; 2 base + 200 x 0.0455 = 11.1 vCPU / (10 x 0.8) -> 2 nodes.
    cpu = region.pool("cpu")
    assert cpu.demand_at_peak == pytest.approx(11.1)
    assert cpu.nodes_by_hour == (2,) * 24
    assert cpu.cost_per_day_usd == pytest.approx(2 * 10 * 0.05 * 24)
    assert region.pool("head").cost_per_day_usd == pytest.approx(4 * 0.05 * 24)
    # Egress: 1.5 Mbit/s = 0.675 GB per avatar-hour; 4800 avatar-hours x 0.675 x $0.10.
    assert region.egress_cost_per_day_usd == pytest.approx(4800 * 0.675 * 0.1)
    compute = 144 + 24 + 4.8
    assert plan.compute_cost_per_day_usd == pytest.approx(compute)
    assert plan.cost_per_avatar_hour_usd == pytest.approx((compute + 324) / 4800)
    assert plan.monthly_cost_usd == pytest.approx((compute + 324) * 30)
    assert region.worker_groups() == {"gpu": (3, 3), "cpu": (2, 2)}
    encode = region.pool("encode")
    assert encode.demand_at_peak == pytest.approx(200 * 0.07)
    assert encode.cost_per_day_usd == 0 and encode.on == "renderer"


def test_few_host_cpus_make_encoding_bind(measured) -> None:
    prices = json.loads(json.dumps(PRICES))
    prices["regions"]["r1"]["gpus"]["L4"]["vcpus_per_gpu"] = 4  # 2 usable / 0.07 = 28.6
    region = _plan(measured, prices=prices).regions[0]
    assert region.renderer.binding == "encode CPU"
    assert region.renderer.sessions_per_node == 22  # floor(28.57 x 0.8)
    assert region.pool("renderer").max_nodes == 10  # ceil(200 / 22)


def test_diurnal_curve_sets_hourly_fleet_and_worker_group_range(measured) -> None:
    curve = [0.25] * 12 + [1.0] * 12
    plan = _plan(measured, regions={"r1": {"peak_sessions": 160, "utc_offset_h": 0}},
                 diurnal=curve)
    region = plan.regions[0]
    assert region.hourly_sessions == (40.0,) * 12 + (160.0,) * 12
    assert region.pool("renderer").nodes_by_hour == (1,) * 12 + (2,) * 12
    assert region.worker_groups()["gpu"] == (1, 2)
    assert region.avatar_hours_per_day == 12 * 40 + 12 * 160
    renderer_cost = (12 * 1 + 12 * 2) * 2.0
    assert region.pool("renderer").cost_per_day_usd == pytest.approx(renderer_cost)


def test_utc_offset_shifts_local_hours(measured) -> None:
    curve = [0.0] * 24
    curve[12] = 1.0  # busy at local noon only
    plan = _plan(measured, regions={"r1": {"peak_sessions": 50, "utc_offset_h": 2}},
                 diurnal=curve)
    sessions = plan.regions[0].hourly_sessions
    assert sessions[10] == 50 and sum(sessions) == 50  # 10:00 UTC is noon at UTC+2


def test_fixed_renderers_stay_at_the_peak_count(measured) -> None:
    curve = [0.25] * 12 + [1.0] * 12
    plan = _plan(measured, regions={"r1": {"peak_sessions": 160}}, diurnal=curve,
                 fleet={"renderer_scaling": "fixed", "spare_renderer_nodes": 1})
    assert plan.regions[0].pool("renderer").nodes_by_hour == (3,) * 24


def test_session_cap_spot_prices_and_floor(measured) -> None:
    plan = _plan(measured, regions={"r1": {"peak_sessions": 120}},
                 slo={"max_sessions_per_renderer": 50},
                 fleet={"spot_fraction": 0.5, "min_nodes": 2})
    region = plan.regions[0]
    assert (region.renderer.sessions_per_node, region.renderer.binding) == (
        50, "session cap (slo)")
    assert region.renderer.price_per_hour_usd == pytest.approx(0.5 * 2.0 + 0.5 * 1.0)
    assert region.pool("renderer").max_nodes == 3
    assert region.pool("cpu").min_nodes == 2  # the floor, though one node would do


def test_gpu_llm_pool_counts_tokens(measured) -> None:
    plan = _plan(measured, stack={"asr": "whisper", "llm": "vllm", "tts": "espeak"})
    llm = plan.regions[0].pool("llm")
    # 200 sessions x 3/60 turns/s x (60 + 1200 x 0.1) tokens = 1800 tokens/s; an L4 is
    # 10000 x 0.3/3.35 = 895.5 tokens/s (assumption); / 0.8 -> 3 GPUs.
    assert llm.demand_at_peak == pytest.approx(1800)
    assert llm.capacity_per_node == pytest.approx(895.5)
    assert llm.max_nodes == 3
    assert plan.regions[0].worker_groups()["gpu"] == (6, 6)
    assert plan.figures["llm.vllm.tokens_per_s_per_gpu[L4]"].assumed


def test_gpu_speech_pool_shares_gpus(measured) -> None:
    plan = _plan(measured, stack={"asr": "nemo", "llm": "kb", "tts": "nemo"})
    speech = plan.regions[0].pool("speech")
    # Per session: 0.05 turns/s x 3 s / (200 x 0.0896) + 0.05 x 8 s / (100 x 0.0896) GPUs.
    per_session = 0.15 / 17.9 + 0.4 / 9.0
    assert 1 / speech.capacity_per_node == pytest.approx(per_session, rel=1e-3)
    assert speech.max_nodes == -(-200 * per_session // 0.8)


def test_comparisons_with_the_baseline_and_hosted_prices(measured) -> None:
    plan = _plan(measured)
    rows = {r["name"]: r for r in plan.comparisons()}
    assert rows["baseline: one GPU per stream"]["monthly_usd"] == [200 * 720, 200 * 3600]
    hours_month = 4800 * 30
    assert rows["hosted avatar API"]["monthly_usd"] == [hours_month * 6, hours_month * 12]
    times = rows["hosted avatar API"]["times_this_plan"]
    assert times[0] == pytest.approx(6 / plan.cost_per_avatar_hour_usd)


# --- inconsistent input -------------------------------------------------------------------


def test_region_without_prices_says_what_to_add(measured) -> None:
    with pytest.raises(InputError, match=r"region 'r2' has no prices.*add it under regions"):
        _plan(measured, regions={"r1": {"peak_sessions": 10}, "r2": {"peak_sessions": 10}})


def test_negative_traffic_is_refused(measured) -> None:
    with pytest.raises(InputError, match=r"peak_sessions.*greater than or equal to 0"):
        _plan(measured, regions={"r1": {"peak_sessions": -5}})
    with pytest.raises(InputError, match=r"negative traffic at hour 3"):
        _plan(measured, diurnal=[1.0] * 3 + [-0.1] + [1.0] * 20)


def test_render_slo_no_gpu_can_meet(measured) -> None:
    with pytest.raises(InputError, match=r"no GPU type meets the SLO \(2048 px at 60 fps\).*"
                       r"VP8 encodes a 2048 px frame in 128 ms.*Lower slo.size_px or slo.fps"):
        _plan(measured, slo={"size_px": 2048, "fps": 60})


def test_llm_speed_slo_no_gpu_can_meet(measured) -> None:
    with pytest.raises(InputError, match=r"no GPU type decodes 500 tokens/s.*lower it"):
        _plan(measured, stack={"llm": "vllm"}, slo={"llm_stream_tokens_per_s": 500})


def test_spot_without_a_spot_price(measured) -> None:
    prices = json.loads(json.dumps(PRICES))
    prices["regions"]["r1"]["gpus"]["L4"]["spot_per_hour_usd"] = None
    with pytest.raises(InputError, match=r"no spot price; set fleet.spot_fraction to 0"):
        _plan(measured, prices=prices, fleet={"spot_fraction": 0.3})


def test_gpu_types_the_region_does_not_price(measured) -> None:
    with pytest.raises(InputError, match=r"prices none of the GPU types.*\(H100\); it prices L4"):
        _plan(measured, fleet={"gpu_types": ["H100"]})
