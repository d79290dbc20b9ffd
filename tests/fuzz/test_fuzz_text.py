"""Fuzzing typed text: any unicode, control characters, huge strings, invalid UTF-8 bytes and
non-strings either start a turn with cleaned text or raise InputError with a message."""

from __future__ import annotations

import pytest
from hypothesis import given, settings

from models.errors import InputError
from tests.fuzz.harness import Loop, light_session
from tests.fuzz.strategies import FUZZ, TEXT_INPUTS

pytestmark = [pytest.mark.unit]


@pytest.fixture(scope="module")
def conductor():
    loop = Loop()
    session = loop.run(light_session())
    yield loop, session.conductor
    loop.run(session.aclose())
    loop.close()


@settings(FUZZ, max_examples=400)
@given(text=TEXT_INPUTS)
def test_any_text_starts_a_turn_or_gets_an_input_error(conductor, text):
    loop, c = conductor
    before = c._turn_id
    try:
        turn = loop.run(c.send_text(text))
    except InputError as exc:
        assert exc.message and c._turn_id == before  # refused: no turn started
        return
    assert turn == c._turn_id == before + 1
    said = c.timings[-1]
    assert said.turn_id == turn


@settings(FUZZ, max_examples=300)
@given(text=TEXT_INPUTS)
def test_cleaned_text_is_printable_nonempty_and_within_the_limit(conductor, text):
    _, c = conductor
    try:
        cleaned = c._validate_text(text)
    except InputError:
        return
    assert cleaned and cleaned == cleaned.strip()
    assert len(cleaned) <= c.config.max_text_chars
    assert all(ch.isprintable() or ch in "\n\t" for ch in cleaned)
    cleaned.encode("utf-8")  # no lone surrogates reach the language model or the TTS


def test_the_conductor_still_answers_after_the_fuzzing(conductor):
    loop, c = conductor
    turn = loop.run(c.send_text("When are you open?"))
    loop.run(c.wait_idle())
    assert c.history[-1].role == "assistant" and c.history[-2].content == "When are you open?"
    assert c.timings[-1].turn_id == turn


def test_regression_text_longer_than_the_knowledge_search_takes_is_refused_up_front(conductor):
    loop, c = conductor
    before = c._turn_id
    with pytest.raises(InputError, match="at most 1000"):
        loop.run(c.send_text("When are you open? " * 60))  # 1,140 characters, under 2,000
    assert c._turn_id == before
