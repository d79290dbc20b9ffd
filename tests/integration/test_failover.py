"""Failover on a real 2-node Ray cluster over HTTP on 127.0.0.1: a renderer process SIGKILLed
mid-reply, then the shared LLM's.

Renderer: the client is told (410 on its event stream), resumes on the other renderer with
its token, the new session carries every committed turn and answers the next question, and
the store still holds every committed turn. LLM: the interrupted turn ends with words (the
answer after a retry, or the apology), never silence. Afterwards no session is left active.
How fast is measured by ``avatarctl bench failover``, not here.
"""

from __future__ import annotations

import pytest

pytest.importorskip("ray")

from cluster.bench.failover import run_failover_bench
from configs import load_config

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_renderer_and_llm_kills_lose_nothing_and_leak_nothing() -> None:
    report = run_failover_bench(load_config("local"), trials=3, kinds=("renderer", "llm"),
                                nodes=2, turns=2, port=8072)
    problems = {t["index"]: t["problems"] for t in report["trials"] if t["problems"]}
    assert not problems, problems
    renderer = [t for t in report["trials"] if t["kill"] == "renderer"]
    assert len(renderer) == 2
    for t in renderer:
        assert t["resumed_on"] and not t["killed"].endswith(t["resumed_on"])
        assert t["history_turns"] == t["committed_turns"] == 2
        assert t["stored_turns"] == 2 and t["lost_turns"] == 0
        assert t["answer_ms"] is not None
    llm = next(t for t in report["trials"] if t["kill"] == "llm")
    assert llm["interrupted_turn"], "the turn the LLM died in ended in silence"
    assert report["summary"]["leaked_sessions"] == 0
