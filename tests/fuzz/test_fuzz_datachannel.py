"""Fuzzing the data channel: any string or bytes a client sends gets an accepted, pong or error
reply (or none, for interrupt), never an exception, and the session goes on."""

from __future__ import annotations

import pytest
from hypothesis import given, settings

from deployments.media.peer import CHANNEL_EVENTS, MAX_MESSAGE_CHARS, MediaPeer
from tests.fuzz.harness import Loop, RecordingChannel, light_session
from tests.fuzz.strategies import DATA_CHANNEL_MESSAGES, FUZZ, deep

pytestmark = [pytest.mark.unit]

REPLIES = {"accepted", "pong", "error"}


@pytest.fixture(scope="module")
def peer():
    loop = Loop()
    session = loop.run(light_session())
    peer = MediaPeer(session)  # no offer: no transport, no sockets
    peer._channel = RecordingChannel()
    yield loop, peer
    loop.run(peer.close())
    loop.run(session.aclose())
    loop.close()


def send(peer_fixture, message: object) -> list[dict]:
    loop, peer = peer_fixture
    peer._channel.sent.clear()
    loop.run(peer._on_message(message))
    return [m for m in peer._channel.sent if m["type"] in REPLIES]


@settings(FUZZ, max_examples=400)
@given(message=DATA_CHANNEL_MESSAGES)
def test_any_message_gets_a_known_reply_and_never_an_exception(peer, message):
    replies = send(peer, message)
    kinds = [m["type"] for m in peer[1]._channel.sent]
    assert set(kinds) <= REPLIES | set(CHANNEL_EVENTS), kinds
    assert len(replies) <= 1
    for reply in replies:
        if reply["type"] == "error":
            assert isinstance(reply["message"], str) and reply["message"]


def test_the_session_still_answers_after_the_fuzzing(peer):
    replies = send(peer, '{"type": "text", "text": "When are you open?"}')
    assert replies[-1]["type"] == "accepted" and replies[-1]["turn_id"] >= 1
    pong = send(peer, '{"type": "ping", "t": 1}')
    assert pong[-1]["type"] == "pong" and pong[-1]["t"] == 1


@pytest.mark.parametrize("message", [deep(3000), '{"type": "ping", "t": ' + deep(2000) + "}"])
def test_regression_json_nested_past_the_recursion_limit_gets_an_error_reply(peer, message):
    assert len(message) <= MAX_MESSAGE_CHARS
    replies = send(peer, message)
    assert [r["type"] for r in replies] == ["error"]
    assert "JSON" in replies[0]["message"]


def test_regression_a_number_past_the_int_digit_limit_gets_an_error_reply(peer):
    replies = send(peer, '{"type": "ping", "t": ' + "9" * 5000 + "}")
    assert [r["type"] for r in replies] == ["error"]
    assert "JSON" in replies[0]["message"]


@pytest.mark.parametrize("depth", range(980, 992))
def test_regression_a_ping_time_nested_at_the_recursion_limit_gets_an_error_reply(peer, depth):
    replies = send(peer, '{"type": "ping", "t": ' + deep(depth) + "}")
    assert [r["type"] for r in replies] == ["error"]


@pytest.mark.parametrize("t", ["NaN", "Infinity", '"x"', "true", "[1]", str(2**70)])
def test_regression_a_ping_time_that_is_not_a_finite_number_is_refused(peer, t):
    replies = send(peer, '{"type": "ping", "t": ' + t + "}")
    assert [r["type"] for r in replies] == ["error"] and "finite number" in replies[0]["message"]
