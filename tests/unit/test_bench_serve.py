"""The Serve overhead benchmark's pure parts: paired differences, interleaving, SSE parsing
and the JSON it prints (no Ray: the measurements are synthetic)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from cluster.bench.serve import (
    TARGETS,
    SSEParser,
    build_report,
    interleaved,
    overhead,
    paired_differences,
    summary,
)
from deployments.events import sse

pytestmark = pytest.mark.unit


def _raw(turn_pairs: list[tuple[float | None, float | None]]) -> dict:
    return {
        "hops": {"serve": [12.0, 11.0, 30.0, 12.5], "in_process": [10.0, 10.5, 9.0, 10.0]},
        "turns": [{"question": f"q{i}",
                   "serve": {"first_audio_ms": s, "server_first_audio_ms": 200.0,
                             "reply": None if s is None else "r"},
                   "in_process": {"first_audio_ms": loc, "server_first_audio_ms": 190.0,
                                  "reply": "r" if i else "other"}}
                  for i, (s, loc) in enumerate(turn_pairs)],
        "session_create_ms": [40.0, 50.0, 60.0],
        "startup_s": 42.04,
    }


def test_overhead_is_percentiles_of_pair_differences_not_difference_of_percentiles() -> None:
    # serve is slower on every pair by 1, 2 or 3 ms; one slow outlier pair is slow on both
    serve = [11.0, 12.0, 13.0, 501.0]
    local = [10.0, 10.0, 10.0, 500.0]
    assert paired_differences(serve, local) == [1.0, 2.0, 3.0, 1.0]
    result = overhead(serve, local)
    assert result == {"p50": 1.5, "p95": 2.9, "n": 4}
    # the difference of the series' p95s would have been ~0.5 ms, not ~3
    assert summary(serve)["p95"] - summary(local)["p95"] != result["p95"]


def test_unmeasured_pairs_are_left_out_and_an_empty_series_has_no_percentiles() -> None:
    assert paired_differences([5.0, None, 7.0], [4.0, 3.0, None]) == [1.0]
    assert summary([None, None]) == {"p50": None, "p95": None, "n": 0}
    with pytest.raises(ValueError, match="length"):
        paired_differences([1.0], [1.0, 2.0])


def test_report_shape_and_targets_from_synthetic_measurements() -> None:
    report = build_report(_raw([(310.0, 300.0), (420.0, 400.0), (None, 390.0)]),
                          {"profile": "local", "cpus": 2})
    assert report["hop_overhead_ms"] == {"p50": 2.25, "p95": 18.23, "n": 4}
    assert report["hop_ms"]["serve"]["p50"] == 12.25
    assert report["hop_ms"]["in_process"]["p50"] == 10.0
    assert report["turn_overhead_ms"] == {"p50": 15.0, "p95": 19.5, "n": 2}
    assert report["text_to_first_audio_ms"]["serve"]["n"] == 2
    assert report["text_to_first_audio_ms"]["in_process"]["n"] == 3
    assert report["server_text_to_first_audio_ms"]["serve"]["p50"] == 200.0
    assert report["session_create_ms"]["p50"] == 50.0
    assert report["startup_s"] == 42.0
    assert report["targets"] == TARGETS == {"hop_overhead_p50_ms": 3, "turn_overhead_p50_ms": 15}
    assert report["met"] == {"hop_overhead_p50_ms": True, "turn_overhead_p50_ms": True}
    assert report["same_replies"] == 1  # the first pair differs, the third has no serve reply
    assert report["setup"] == {"profile": "local", "cpus": 2}
    assert report["turn_log"][0] == {"question": "q0", "serve_ms": 310.0, "in_process_ms": 300.0,
                                     "overhead_ms": 10.0, "serve_server_ms": 200.0,
                                     "in_process_server_ms": 190.0}
    assert report["turn_log"][2]["overhead_ms"] is None
    json.dumps(report, allow_nan=False)  # plain JSON, no NaN


def test_targets_are_missed_when_slow_or_unmeasured() -> None:
    slow = build_report(_raw([(400.0, 300.0)]), {})
    assert slow["met"]["turn_overhead_p50_ms"] is False
    none = build_report(_raw([(None, 300.0)]), {})
    assert none["turn_overhead_ms"]["p50"] is None
    assert none["met"]["turn_overhead_p50_ms"] is False


async def test_interleaving_alternates_the_order_and_pairs_the_same_query() -> None:
    calls: list[tuple[str, str]] = []

    def recorder(name: str):
        async def call(query: str) -> None:
            calls.append((name, query))
        return call

    a, b = await interleaved(recorder("A"), recorder("B"), ["x", "y", "z"], n=4, warmup=2)
    assert len(a) == len(b) == 4
    assert [name for name, _ in calls] == ["A", "B", "B", "A"] * 3
    assert [q for _, q in calls] == ["x", "x", "y", "y", "z", "z", "x", "x", "y", "y", "z", "z"]


def test_sse_parser_reads_the_gateway_wire_format() -> None:
    wire = (sse("state", {"state": "thinking", "pts_ms": 1.0}) + b": keep-alive\n\n"
            + sse("turn_end", {"turn_id": 3, "reply": "Hello:\nthere", "marks_ms": {}}))
    parser = SSEParser()
    events = [e for line in wire.decode().split("\n") if (e := parser.feed(line)) is not None]
    assert events == [("state", {"state": "thinking", "pts_ms": 1.0}),
                      ("turn_end", {"turn_id": 3, "reply": "Hello:\nthere", "marks_ms": {}})]


def test_cli_offers_the_serve_benchmark_with_its_options() -> None:
    from cluster.cli import bench

    result = CliRunner().invoke(bench.app, ["serve", "--help"])
    assert result.exit_code == 0, result.output
    for option in ("--turns", "--hops", "--sessions", "--port", "--json", "--out"):
        assert option in result.output
