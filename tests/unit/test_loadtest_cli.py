"""``avatarctl loadtest`` through the real command: bad input is exit code 2 with a message
(never a traceback, never traffic to another host), the SLO verdict is the exit code, and
--find-capacity prints max_sessions_at_slo. The run itself is replaced by a stub here (the
integration test drives a real cluster)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from cluster.cli import loadtest
from cluster.cli.loadtest import check_target, is_loopback
from models.errors import InputError

pytestmark = pytest.mark.unit

runner = CliRunner()


@pytest.fixture
def app() -> typer.Typer:
    cli = typer.Typer()
    loadtest.register(cli)

    @cli.command("version")
    def version() -> None:  # a second command keeps `loadtest` a sub-command
        """Print nothing."""

    return cli


@pytest.fixture
def stub(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """No cluster, no piper: the target answers and each run reports ``state['met']``."""
    state: dict[str, Any] = {"met": True, "runs": []}
    monkeypatch.setattr(loadtest, "_ready", lambda url: {"gpu_ids": []})
    monkeypatch.setattr(loadtest, "_questions", lambda persona: (["q?"], {}))

    def run(self: Any, shape: Any, folder: Path | None) -> dict[str, Any]:
        state["runs"].append((shape.name, shape.users, shape.duration_s))
        met = state["met"](shape.users) if callable(state["met"]) else state["met"]
        return {"target": self.url, "verdict": {"slo": "t", "met": met,
                                               "broken": [] if met else ["freezes.total"],
                                               "objectives": []},
                "figures": {"sessions": {}}, "max_concurrent": shape.users,
                "harness": {"cpu_share_of_one_core": 0.1, "cpu_share_of_machine": 0.05}}

    monkeypatch.setattr(loadtest._Runner, "__call__", run)
    return state


@pytest.mark.parametrize(("args", "message"), [
    (["--target", "http://10.1.2.3:8000"], "--allow-remote"),
    (["--target", "http://example.com"], "not this machine"),
    (["--target", "ftp://127.0.0.1"], "http:// URL"),
    (["--profile", "wave"], "--profile"),
    (["--users", "0"], "--users"),
    (["--duration", "1"], "--duration"),
    (["--turns", "0"], "--turns"),
    (["--slo", "/nonexistent/slo.yaml"], "no such file"),
])
def test_bad_input_is_exit_code_2_with_what_to_change(app: typer.Typer, stub: dict,
                                                      args: list[str], message: str) -> None:
    result = runner.invoke(app, ["loadtest", *args])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert "Traceback" not in result.output
    assert stub["runs"] == []  # nothing was run


def test_only_loopback_targets_unless_allowed() -> None:
    for host in ("127.0.0.1", "127.8.0.1", "localhost", "[::1]"):
        assert check_target(f"http://{host}:8000/", False) == f"http://{host}:8000"
    assert not is_loopback("192.168.1.2") and not is_loopback("myhost")
    assert check_target("http://10.0.0.5:8000", True) == "http://10.0.0.5:8000"
    with pytest.raises(InputError):
        check_target("http://10.0.0.5:8000", False)


def test_nothing_answering_is_exit_code_2(app: typer.Typer, monkeypatch: pytest.MonkeyPatch
                                          ) -> None:
    from models.errors import BackendUnavailable

    def down(url: str) -> dict:
        raise BackendUnavailable(f"nothing answers GET {url}/healthz")

    monkeypatch.setattr(loadtest, "_ready", down)
    result = runner.invoke(app, ["loadtest", "--users", "2"])
    assert result.exit_code == 2 and "nothing answers" in result.output


@pytest.mark.parametrize(("met", "code"), [(True, 0), (False, 1)])
def test_the_exit_code_is_the_slo_verdict(app: typer.Typer, stub: dict, met: bool,
                                          code: int) -> None:
    stub["met"] = met
    result = runner.invoke(app, ["loadtest", "--users", "3", "--duration", "30",
                                 "--profile", "spike", "--json"])
    assert result.exit_code == code, result.output
    payload = json.loads(result.stdout)
    assert payload["verdict"]["met"] is met and payload["device"] == "cpu"
    assert stub["runs"] == [("spike", 3, 30.0)]


def test_find_capacity_prints_max_sessions_at_slo_for_the_planner(app: typer.Typer,
                                                                  stub: dict) -> None:
    stub["met"] = lambda users: users <= 2
    result = runner.invoke(app, ["loadtest", "--find-capacity", "--users", "5",
                                 "--duration", "20", "--device", "H100", "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["max_sessions_at_slo"] == 2 and payload["device"] == "H100"
    assert [lv["users"] for lv in payload["levels"]] == [1, 2, 3]
    assert stub["runs"] == [("constant", n, 20.0) for n in (1, 2, 3)]
    stub["met"], stub["runs"] = False, []
    result = runner.invoke(app, ["loadtest", "--find-capacity", "--users", "5", "--json"])
    assert result.exit_code == 1 and json.loads(result.stdout)["max_sessions_at_slo"] == 0


def test_the_live_display_shows_users_sessions_and_the_p95_so_far() -> None:
    from rich.console import Console

    from load_tests.profiles import make_profile
    from load_tests.runner import Progress

    shape = make_profile("ramp", 4, 60.0)
    progress = Progress(12.3, 60.0, 2, 2, 3, 1, 0, 7, {"voice_to_first_audio_ms": 1234.5,
                                                       "text_to_first_audio_ms": None}, 0.25)
    console = Console(record=True, width=100)
    console.print(loadtest._table(progress, shape))
    console.print(loadtest._table(None, shape))
    text = console.export_text()
    for part in ("12 / 60 s", "2 / 2", "3 / 1 / 0", "1234 ms", "25 % of a core", "starting"):
        assert part in text
