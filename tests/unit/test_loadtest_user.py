"""A simulated user's figures (freezes, jitter, lost turns, its script) and the runner's
scheduling, with the HTTP side mocked (no sockets) and users replaced by fakes."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import numpy as np
import pytest

from cluster.bench.e2e_metrics import TurnLog
from load_tests import runner
from load_tests.profiles import make_profile
from load_tests.runner import RunSettings, probe_url, run_load
from load_tests.user import (
    EXPECTED_TURN_ENDS,
    SessionResult,
    UserContext,
    conversation,
    expected_turn_ends,
    frame_figures,
    lost_turns,
    run_user,
)

pytestmark = pytest.mark.unit


def test_frame_gaps_over_200_ms_are_freezes_with_their_time_and_length() -> None:
    t = list(np.arange(0, 10, 0.04))
    t = np.asarray(t[:100] + [x + 0.3 for x in t[100:]])  # one 340 ms gap at 3.96 s
    f = frame_figures(t, origin=-1.0)
    assert f["freezes"] == 1
    assert f["freezes_at"] == [(pytest.approx(4.96, abs=0.01), pytest.approx(340.0, abs=1))]
    assert f["longest_gap_ms"] == pytest.approx(340.0, abs=1)
    assert f["frame_jitter_ms"] > 0
    smooth = frame_figures(np.arange(0, 10, 0.04), origin=0.0)
    assert smooth["freezes"] == 0 and smooth["frame_jitter_ms"] < 0.01
    assert smooth["fps_windows"][0] == (0.0, 25.0)
    assert frame_figures(np.zeros(0), 0.0)["longest_gap_ms"] is None


def turn_end(user_text: str) -> dict:
    return {"type": "turn_end", "user_text": user_text, "reply": "..."}


def test_a_question_without_its_turn_end_is_lost() -> None:
    turns = [TurnLog("voice", "Are you open?", speech_start=1.0, speech_end=2.0),
             TurnLog("text", "Where can I park?", typed_at=10.0),
             TurnLog("barge", "Do you take walk-ins?", typed_at=20.0, speech_start=21.0,
                     speech_end=22.0, spoken_text="How late on Saturday?")]
    events = [(3.0, turn_end("are you open")), (11.0, turn_end("Where can I park?")),
              (21.2, turn_end("Do you take walk-ins?")), (23.0, turn_end("how late")),
              (5.0, {"type": "state"})]
    assert expected_turn_ends(turns) == 1 + 1 + EXPECTED_TURN_ENDS["barge"]
    assert lost_turns(turns, events, end=30.0) == (0, 4)
    no_typed_answer = [e for e in events if e[1].get("user_text") != "Where can I park?"]
    assert lost_turns(turns, no_typed_answer, end=30.0) == (1, 3)
    # the spoken question's turn_end only counts inside its own turn's window
    late = [e for e in events if e[0] != 3.0] + [(12.0, turn_end("are you open"))]
    assert lost_turns(turns, late, end=30.0)[0] == 1
    unanswered_barge = [e for e in events if e[0] < 23.0]
    assert lost_turns(turns, unanswered_barge, end=30.0) == (1, 3)


def test_each_user_plays_a_seeded_script_with_idle_pauses() -> None:
    questions = [f"question {i}?" for i in range(6)]
    a, b = conversation(questions, 6, seed=1), conversation(questions, 6, seed=1)
    assert a == b and len(a.turns) == 6 and len(a.pauses_s) == 6
    assert [t[0] for t in a.turns] == ["voice", "text", "voice", "barge", "voice", "text"]
    assert a.turns[3][2] is not None  # the barge-in's spoken interruption
    assert all(0.5 <= p <= 3.0 for p in a.pauses_s)
    others = {conversation(questions, 6, seed=s).turns[0][1] for s in range(20)}
    assert len(others) > 1  # users start at different questions


def mock(handler) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url="http://127.0.0.1:8000",
                             transport=httpx.MockTransport(handler))


async def test_a_full_cluster_is_an_admission_rejection_with_its_retry_after() -> None:
    def full(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/sessions"
        assert json.loads(request.content) == {"video": True}
        return httpx.Response(503, json={"error": "full"}, headers={"Retry-After": "5"})

    async with mock(full) as http:
        ctx = UserContext(http, {}, time.monotonic())
        result = await run_user(ctx, 3, conversation(["q?"], 2, 0), asyncio.Event())
    assert result.outcome == "rejected" and result.status == 503
    assert result.retry_after_s == 5.0 and result.setup_ms is None

    def broken(request: httpx.Request) -> httpx.Response:
        return httpx.Response(500, text="boom")

    async with mock(broken) as http:
        result = await run_user(UserContext(http, {}, time.monotonic()), 0,
                                conversation(["q?"], 1, 0), asyncio.Event())
    assert result.outcome == "failed" and "500" in (result.error or "")
    row = result.to_dict()
    assert row["outcome"] == "failed" and "frame_intervals_ms" not in row


def test_probe_url_is_the_gateway_websocket() -> None:
    assert probe_url("http://127.0.0.1:8000/") == "ws://127.0.0.1:8000/v1/probe"
    assert probe_url("https://a.example") == "wss://a.example/v1/probe"


async def test_the_runner_follows_the_profile_replaces_users_and_cuts_stragglers(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner, "START_GAP_S", 0.05)
    monkeypatch.setattr(runner, "TICK_S", 0.05)
    monkeypatch.setattr(runner, "GRACE_S", 0.3)
    started: list[int] = []

    async def fake_user(ctx, index, plan, stop) -> SessionResult:
        started.append(index)
        result = SessionResult(index, time.monotonic() - ctx.origin)
        if index == 1:  # a session that ignores the hang-up request: cut by the hard stop
            await asyncio.sleep(60)
        await asyncio.sleep(1.0 if index % 2 == 0 else 0.0)
        if index == 3:
            result.outcome, result.retry_after_s = "rejected", 1.0
        else:
            result.outcome = "ok"
        return result

    monkeypatch.setattr(runner, "run_user", fake_user)
    metrics_calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        metrics_calls.append(request.url.path)
        return httpx.Response(200, text='ray_avatar_sessions{replica="a"} 2\n')

    seen = []
    settings = RunSettings("http://127.0.0.1:8000", make_profile("constant", 2, 5.0),
                           turns=2, probe=False, metrics_every_s=1.0, settle_s=0.0)
    t0 = time.monotonic()
    data = await run_load(settings, ["q?"], {}, progress=seen.append,
                          transport=httpx.MockTransport(handler))
    wall = time.monotonic() - t0
    assert 5.0 <= wall < 7.0  # the duration, then a short grace
    assert max(a for _, _, a in data.load) == 2  # never more users than the profile asks
    assert len(started) > 2  # finished users were replaced
    outcomes = {s.user: s.outcome for s in data.sessions}
    assert "cut" in outcomes.values()  # user 1 ignored the hang-up: the hard stop cut it
    assert "rejected" in outcomes.values()
    assert set(metrics_calls) == {"/metrics"} and data.server[0][1]["sessions"] == 2.0
    assert seen and seen[-1].target_users == 2
    assert data.loop_lag and data.wall_s >= 5.0


async def test_every_call_on_a_session_carries_the_token_from_its_creation() -> None:
    from load_tests.user import SessionHTTP, _create

    seen: list[tuple[str, str, str | None]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((request.method, request.url.path, request.headers.get("authorization")))
        if request.url.path == "/v1/sessions":
            return httpx.Response(201, json={"session_id": "r.s1", "token": "tok"})
        return httpx.Response(204)

    async with mock(handler) as http:
        result = SessionResult(0, 0.0)
        session = await _create(UserContext(http, {}, time.monotonic()), result)
        assert isinstance(session, SessionHTTP) and session.sid == "r.s1"
        await session.post("/v1/sessions/r.s1/offer", json={})
        await session.delete("/v1/sessions/r.s1")
    assert seen == [("POST", "/v1/sessions", None),
                    ("POST", "/v1/sessions/r.s1/offer", "Bearer tok"),
                    ("DELETE", "/v1/sessions/r.s1", "Bearer tok")]
