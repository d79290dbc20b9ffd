"""``avatarctl kb``: ingest, search and list through the real CLI, and its error handling."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cluster.cli.kb import app

pytestmark = [pytest.mark.unit, pytest.mark.slow]

runner = CliRunner()


@pytest.fixture()
def qdrant_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "qdrant"
    monkeypatch.setenv("AVATAR_MODELS__KNOWLEDGE__QDRANT_PATH", str(path))
    return path


def test_ingest_search_and_list(qdrant_dir: Path, tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "faq.yaml").write_text("- q: Is parking free?\n  a: Yes, parking is free.\n")
    (docs / "hours.md").write_text("# Hours\nWe open at 7:30 a.m. on weekdays.\n")

    result = runner.invoke(app, ["ingest", str(docs), "--kb", "maple-clinic", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert (report["passages"], report["tenant"]) == (2, "maple")  # tenant from the profile

    result = runner.invoke(app, ["search", "can I park for free", "--kb", "maple-clinic",
                                 "--top-k", "1", "--json"])
    assert result.exit_code == 0, result.output
    [hit] = json.loads(result.stdout)["passages"]
    assert hit["answer"] == "Yes, parking is free."

    result = runner.invoke(app, ["list", "--json"])
    assert result.exit_code == 0, result.output
    [kb] = json.loads(result.stdout)["knowledge_bases"]
    assert (kb["name"], kb["passages"]) == ("maple-clinic", 2)


@pytest.mark.parametrize(("args", "says"), [
    (["search", "hours", "--kb", "nope"], "not configured"),
    (["search", "   ", "--kb", "maple-clinic"], "question is empty"),
    (["ingest", "/nonexistent/folder", "--kb", "maple-clinic"], "no such file"),
    (["list", "--config", "no-such-profile"], "unknown config profile"),
])
def test_errors_are_one_red_line_and_exit_code_2(
    qdrant_dir: Path, args: list[str], says: str
) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert says in result.output
    assert "Traceback" not in result.output
