"""``avatarctl bench encode``: a short real sweep in both modes and its JSON."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from cluster.bench.encode import frames

pytestmark = pytest.mark.unit


def test_frames_move_in_the_mouth_region_only() -> None:
    seq = frames(64, count=8)
    assert all(f.shape == (64, 64, 3) for f in seq)
    diff = seq[0].astype(int) - seq[2].astype(int)
    assert not diff[:38].any() and diff[38:52].any()


def test_the_cli_sweeps_both_modes_and_prints_json() -> None:
    from cluster.cli.bench import app

    result = CliRunner().invoke(app, ["encode", "--sessions", "1,2", "--size", "128",
                                      "--seconds", "1", "--processes", "1", "--json"])
    assert result.exit_code == 0, result.output
    figures = json.loads(result.output)
    for mode in ("threads", "processes"):
        sweep = figures["modes"][mode]["sweep"]
        assert [r["sessions"] for r in sweep] == [1, 2]
        assert all(r["fps_p50"] > 15 for r in sweep), sweep  # 128 px is cheap: peers keep up
        assert figures["modes"][mode]["max_sessions_at_fps"] in (0, 1, 2)
    assert figures["processes"] == 1 and figures["size_px"] == 128


def test_bad_session_lists_are_refused_with_an_example() -> None:
    from cluster.cli.bench import app

    result = CliRunner().invoke(app, ["encode", "--sessions", "two"])
    assert result.exit_code == 2 and "1,4,16" in result.output
