"""The real jitter test of the placement scheduler: three simulated regions in network
namespaces, their paths to the client impaired by ``tc netem`` when the kernel has it, else by
the user-space relay (the test says which); the UDP probe must measure RTT within +-2 ms and
jitter within +-30 % of what is applied, and :func:`decide` must pick the right region in each
scenario from those measurements. Needs root and ``ip netns``; skips otherwise.
See docs/placement-probes.md for the formulas and the accuracy measured."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cluster.placement.decide import decide
from cluster.placement.impair import Impairment
from cluster.placement.model import SLO, ClientMeasurement, RegionState, Snapshot
from cluster.placement.netlab import (
    Lab,
    SimulatedRegion,
    netem_available,
    netns_unavailable_reason,
    region_lab,
)
from cluster.placement.probe import ProbeResult, mean_abs_delta, percentile, rfc3550_jitter

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REGIONS = (
    SimulatedRegion("metro", Impairment(10.0, 1.0)),        # close, expensive
    SimulatedRegion("far", Impairment(40.0, 2.0)),          # distant, mid-priced
    SimulatedRegion("jittery", Impairment(25.0, 15.0, loss=0.1)),  # cheapest, bad path
)
PRICE_PER_GPU_HOUR_USD = {"metro": 1.86, "far": 1.01, "jittery": 0.71}
COUNT, INTERVAL_MS = 200, 10
RTT_TOLERANCE_MS = 2.0
JITTER_TOLERANCE = 0.30
J_SPREAD = 0.16
"""Relative standard deviation of a single RFC 3550 jitter reading (an average over about
16 packets) for independent normal delays: used only with netem, where the applied delays of
the run are not known and the reading is compared with its expected value."""


@dataclass(frozen=True)
class Measured:
    """One region's probe result, its unimpaired base RTT (relay mode; 0 with netem) and the
    delays the relay applied to each probe's echo, by seq (None: dropped)."""

    result: ProbeResult
    base_rtt_ms: float
    applied: dict[int, float | None]


def _announce(request: pytest.FixtureRequest, text: str) -> None:
    """Show ``text`` in the test output even under output capture."""
    plugins = request.config.pluginmanager
    reporter, capture = plugins.get_plugin("terminalreporter"), plugins.get_plugin("capturemanager")
    if reporter is None or capture is None:
        print(text)
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line(text)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
        ) -> Iterator[Lab]:
    reason = netns_unavailable_reason()
    if reason:
        pytest.skip(f"needs root and ip netns: {reason}")
    with region_lab(REGIONS, tmp_path_factory.mktemp("netlab"), seed=1, lifetime_s=90) as built:
        how = ("tc netem on each region's veth" if built.mode == "netem" else
               "user-space relay (kernel has no sch_netem)")
        _announce(request, f"\nnetns lab: impairment = {built.mode}: {how}")
        yield built


def _probe(lab: Lab, targets: list[str], count: int, interval_ms: float) -> list[ProbeResult]:
    out = lab.run_in_client([sys.executable, "-m", "cluster.placement.probe", "udp", *targets,
                             "--count", str(count), "--interval-ms", f"{interval_ms:g}",
                             "--timeout-s", "1", "--samples"], timeout_s=60)
    return [ProbeResult.from_dict(json.loads(line)) for line in out.splitlines()]


@pytest.fixture(scope="module")
def measured(lab: Lab, request: pytest.FixtureRequest) -> dict[str, Measured]:
    paths = list(lab.regions.values())
    base = [0.0] * len(paths)
    if lab.mode == "relay":
        base_runs = _probe(lab, [f"{p.host}:{p.base_port}" for p in paths], 100, 5)
        base = [r.rtt_ms.p50 if r.rtt_ms else math.inf for r in base_runs]
    results = _probe(lab, [f"{p.host}:{p.port}" for p in paths], COUNT, INTERVAL_MS)
    out = {}
    for path, result, base_ms in zip(paths, results, base, strict=True):
        applied: dict[int, float | None] = {}
        if path.log is not None:
            for line in path.log.read_text().splitlines():
                entry = json.loads(line)
                applied[entry["seq"]] = entry["held_ms"]
        out[path.name] = Measured(result, base_ms, applied)
    rows = ["region   applied (nominal)  rtt-base  applied p50  jitter  applied J  formula"
            "  mad    applied mad  loss (applied)"]
    for region in REGIONS:
        m, imp = out[region.name], region.impairment
        held = _delivered(m)
        rtt = m.result.rtt_ms.p50 - m.base_rtt_ms if m.result.rtt_ms else math.nan
        dropped = sum(d is None for d in m.applied.values()) / COUNT if m.applied else imp.loss
        rows.append(
            f"{region.name:8} {imp.delay_ms:5g} +-{imp.jitter_ms:<3g} {imp.loss:4.0%}    "
            f"{rtt:8.2f}  {percentile(held, 50) if held else math.nan:11.2f}  "
            f"{m.result.jitter_ms:6.2f}  {rfc3550_jitter(held):9.2f}  "
            f"{imp.expected_jitter_ms():7.2f}  {m.result.jitter_mad_ms:5.2f}  "
            f"{mean_abs_delta(held):11.2f}  {m.result.loss:4.1%} ({dropped:.1%})")
    _announce(request, "\n".join(rows))
    return out


def test_lab_says_which_impairment_it_used(lab: Lab) -> None:
    assert lab.mode == ("netem" if netem_available() else "relay")
    assert {p.host for p in lab.regions.values()} == {f"10.77.{i}.2" for i in range(3)}


def _delivered(m: Measured) -> list[float]:
    """The applied delays of the echoes that came back, in seq order."""
    return [d for s in m.result.samples
            if s.received_ms is not None and (d := m.applied.get(s.seq)) is not None]


@pytest.mark.parametrize("region", REGIONS, ids=lambda r: r.name)
def test_probe_rtt_within_2_ms_of_the_applied_delay(measured: dict[str, Measured],
                                                    region: SimulatedRegion) -> None:
    m = measured[region.name]
    assert m.result.rtt_ms is not None
    added = m.result.rtt_ms.p50 - m.base_rtt_ms
    if m.applied:
        applied = percentile(_delivered(m), 50)
        assert abs(added - applied) <= RTT_TOLERANCE_MS, (added, applied)
    else:  # netem: compare with the nominal delay, allowing for the sample median's spread
        spread = 3 * 1.2533 * region.impairment.jitter_ms / math.sqrt(m.result.received)
        assert abs(added - region.impairment.delay_ms) <= RTT_TOLERANCE_MS + spread


@pytest.mark.parametrize("region", REGIONS, ids=lambda r: r.name)
def test_probe_jitter_within_30_percent_of_the_applied_jitter(measured: dict[str, Measured],
                                                              region: SimulatedRegion) -> None:
    m, expected = measured[region.name], region.impairment.expected_jitter_ms()
    if m.applied:  # against the same estimators on the delays the relay really applied
        delivered = _delivered(m)
        applied = rfc3550_jitter(delivered)
        assert abs(m.result.jitter_ms - applied) <= JITTER_TOLERANCE * applied
        applied_mad = mean_abs_delta(delivered)
        assert abs(m.result.jitter_mad_ms - applied_mad) <= JITTER_TOLERANCE * applied_mad
    else:  # netem: the run's mean |D| against the formula for the applied distribution
        assert abs(m.result.jitter_mad_ms - expected) <= JITTER_TOLERANCE * expected
        allowed = JITTER_TOLERANCE + 3 * J_SPREAD
        assert abs(m.result.jitter_ms - expected) <= allowed * expected


@pytest.mark.parametrize("region", REGIONS, ids=lambda r: r.name)
def test_probe_loss_is_the_applied_loss(measured: dict[str, Measured],
                                        region: SimulatedRegion) -> None:
    m, loss = measured[region.name], region.impairment.loss
    if m.applied:
        dropped = sum(d is None for d in m.applied.values()) / COUNT
        assert m.result.loss == pytest.approx(dropped, abs=1.5 / COUNT)
    else:
        assert abs(m.result.loss - loss) <= 4 * math.sqrt(loss * (1 - loss) / COUNT) + 1 / COUNT


SCENARIOS = {
    # name: (SLO, expected region, regions that must be rejected and why)
    "cheap-but-jittery rejected by the jitter SLO": (
        SLO(max_rtt_ms=150, max_jitter_ms=6, max_loss=0.2), "far", {"jittery": "jitter"}),
    "latency SLO leaves only the metro region": (
        SLO(max_rtt_ms=32, max_jitter_ms=6, max_loss=0.2), "metro",
        {"far": "rtt", "jittery": "jitter"}),
    "loose SLO: the cheapest region wins": (
        SLO(max_rtt_ms=150, max_jitter_ms=40, max_loss=0.2), "jittery", {}),
    "lossy region rejected by the loss SLO": (
        SLO(max_rtt_ms=150, max_jitter_ms=40, max_loss=0.02), "far", {"jittery": "loss"}),
}


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_scheduler_picks_the_expected_region(measured: dict[str, Measured],
                                             scenario: str) -> None:
    slo, expected, rejected = SCENARIOS[scenario]
    now = time.time()
    regions = tuple(
        RegionState(name=r.name, gateway_url=f"https://{r.name}.example.test", gpu_type="L4",
                    price_per_gpu_hour_usd=PRICE_PER_GPU_HOUR_USD[r.name],
                    egress_price_per_gb_usd=0.09, sessions_per_gpu=24, capacity_sessions=100,
                    reported_at_s=now)
        for r in REGIONS)
    probes = {name: m.result.to_probe() for name, m in measured.items()}
    decision = decide(Snapshot(regions, slo), ClientMeasurement(probes), now_s=now)
    assert decision.region == expected, decision.explanation
    assert decision.slo_met and not decision.estimated
    reasons = {c.region: c.reason for c in decision.candidates if not c.feasible}
    assert set(reasons) == set(rejected), reasons
    for name, word in rejected.items():
        assert reasons[name].startswith(word), reasons


def test_lab_removes_everything_when_its_user_fails(lab: Lab, tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="boom"),  \
            region_lab(REGIONS[:1], tmp_path, mode=lab.mode, lifetime_s=30) as small:
        names = {small.client_namespace, *(p.namespace for p in small.regions.values())}
        assert names <= set(_namespaces())
        raise RuntimeError("boom")
    assert not names & set(_namespaces())
    assert small.pids and not any(Path(f"/proc/{pid}").exists() for pid in small.pids)


def _namespaces() -> list[str]:
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return [line.split()[0] for line in listing.stdout.splitlines() if line.strip()]
