"""Wire form of session events, SSE framing, per-turn stage latencies and the metrics sink."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest

from deployments.events import EVENT_TYPES, sse, to_wire
from deployments.metrics import MetricsSink
from deployments.timing import STAGES, stage_latencies
from models.frames import (
    AudioChunk,
    Clause,
    ErrorEvent,
    Interrupt,
    Passage,
    PhonemeTiming,
    SpeechAudio,
    SpeechEnded,
    SpeechStarted,
    StateChange,
    TextDelta,
    Transcript,
    TTSChunk,
    TurnEnd,
)

pytestmark = pytest.mark.unit

SAMPLES = np.array([0, 1, -1, 255, -256, 12345, -12345, 32767, -32768], dtype=np.int16)


def decode_audio(data: dict[str, object]) -> np.ndarray:
    return np.frombuffer(base64.b64decode(str(data["pcm16_b64"])), dtype="<i2")


# --- to_wire -----------------------------------------------------------------------------------


def test_each_conductor_event_has_its_wire_form() -> None:
    marks = {"asr_final": 1000.04, "tts_first_audio": 1234.56}
    cases = [
        (Transcript("book a cleaning", True, 1000.04, speech_end_ms=900.0, confidence=0.9),
         "transcript", {"text": "book a cleaning", "is_final": True, "pts_ms": 1000.0}),
        (TextDelta("We open ", 1010.26), "text_delta", {"text": "We open ", "pts_ms": 1010.3}),
        (Clause("We open at nine.", 2, 1020.0), "clause",
         {"text": "We open at nine.", "index": 2, "pts_ms": 1020.0}),
        (StateChange("speaking", 1030.0), "state", {"state": "speaking", "pts_ms": 1030.0}),
        (Interrupt(1040.0, 7), "interrupt", {"turn_id": 7, "pts_ms": 1040.0}),
        (ErrorEvent("the answer failed; ask again", 1050.0), "error",
         {"message": "the answer failed; ask again", "pts_ms": 1050.0}),
        (TurnEnd(1300.0, 7, "We open at nine.", refused=False, interrupted=True, marks=marks,
                 user_text="when do you open?"), "turn_end",
         {"turn_id": 7, "reply": "We open at nine.", "user_text": "when do you open?",
          "refused": False, "interrupted": True,
          "marks_ms": {"asr_final": 1000.0, "tts_first_audio": 1234.6}}),
    ]
    for event, kind, data in cases:
        wire = to_wire(event)
        assert wire == (kind, data), event
        assert kind in EVENT_TYPES
        assert json.loads(json.dumps(wire[1])) == data  # JSON-ready as it is


def test_audio_round_trips_to_the_same_samples() -> None:
    phonemes = (PhonemeTiming("h", 2000.0, 20.0),)
    event = SpeechAudio(SAMPLES, 8000, 2000.04, turn_id=3, clause_index=1, phonemes=phonemes)
    kind, data = to_wire(event)  # type: ignore[misc]
    assert kind == "audio" and kind in EVENT_TYPES
    np.testing.assert_array_equal(decode_audio(data), SAMPLES)
    assert data["sample_rate_hz"] == 8000 and data["pts_ms"] == 2000.0
    assert data["duration_ms"] == round(1000.0 * len(SAMPLES) / 8000, 1)
    assert (data["turn_id"], data["clause_index"]) == (3, 1)
    assert json.loads(json.dumps(data)) == data


@pytest.mark.parametrize("layout", ["big-endian", "strided"])
def test_audio_in_any_memory_layout_is_sent_as_little_endian_pcm16(layout: str) -> None:
    pcm = {"big-endian": SAMPLES.astype(">i2"),
           "strided": np.repeat(SAMPLES, 2)[::2]}[layout]
    _, data = to_wire(SpeechAudio(pcm, 16000, 0.0, 1, 0))  # type: ignore[misc]
    np.testing.assert_array_equal(decode_audio(data), SAMPLES)


def test_numpy_scalars_in_events_still_serialise() -> None:
    _, data = to_wire(Transcript("hi", True, np.float64(12.345)))  # type: ignore[misc]
    assert json.dumps(data) == '{"text": "hi", "is_final": true, "pts_ms": 12.3}'


@pytest.mark.parametrize("event", [
    AudioChunk(SAMPLES, 16000, 0.0), SpeechStarted(0.0), SpeechEnded(0.0),
    TTSChunk(SAMPLES, 22050, 0.0), Passage("text", 0.5, "a.md", "kb", "t1"),
    PhonemeTiming("a", 0.0, 10.0), "not an event", None,
], ids=lambda e: type(e).__name__)
def test_internal_events_stay_off_the_wire(event: object) -> None:
    assert to_wire(event) is None


# --- SSE framing -------------------------------------------------------------------------------


def parse_sse(raw: bytes) -> list[tuple[str, dict[str, object]]]:
    out = []
    for block in raw.decode().split("\n\n"):
        if not block:
            continue
        lines = block.split("\n")
        assert len(lines) == 2 and lines[0].startswith("event: ") and lines[1].startswith("data: ")
        out.append((lines[0][len("event: "):], json.loads(lines[1][len("data: "):])))
    return out


def test_sse_frames_one_event_per_block() -> None:
    assert sse("state", {"state": "idle", "pts_ms": 1.5}) == \
        b'event: state\ndata: {"state":"idle","pts_ms":1.5}\n\n'


def test_sse_keeps_multiline_and_unicode_text_in_one_data_line() -> None:
    events = [("text_delta", {"text": "line one\nline two\n\ndone", "pts_ms": 1.0}),
              ("transcript", {"text": "café — 東京", "is_final": True, "pts_ms": 2.0}),
              ("closed", {})]
    stream = b"".join(sse(kind, data) for kind, data in events)
    assert parse_sse(stream) == events


# --- stage latencies ---------------------------------------------------------------------------


def test_voice_turn_stages_are_measured_from_the_end_of_speech() -> None:
    marks = {"speech_start": 0.0, "speech_end": 1000.0, "endpoint": 1300.0, "asr_final": 1450.0,
             "input_rail_done": 1460.0, "retrieval_done": 1500.0, "llm_first_token": 1700.0,
             "first_clause": 1800.0, "tts_first_audio": 1900.0, "llm_done": 2100.0,
             "turn_end": 3000.0}
    assert stage_latencies(marks) == {
        "endpoint": 300.0, "asr": 450.0, "retrieval": 50.0, "llm_first_token": 200.0,
        "first_clause": 350.0, "first_audio": 450.0, "voice_to_first_audio": 900.0,
        "turn": 1550.0,
    }


def test_typed_turn_stages_are_measured_from_the_text_arriving() -> None:
    marks = {"asr_final": 100.0, "retrieval_done": 120.0, "llm_first_token": 220.0,
             "first_clause": 300.0, "tts_first_audio": 360.0, "turn_end": 1000.0}
    out = stage_latencies(marks)
    assert out == {"retrieval": 20.0, "llm_first_token": 100.0, "first_clause": 200.0,
                   "first_audio": 260.0, "text_to_first_audio": 260.0, "turn": 900.0}
    assert set(out) <= set(STAGES)


def test_missing_marks_leave_their_stages_out() -> None:
    assert stage_latencies({}) == {}
    # a refused typed turn: no retrieval, no model, no audio
    assert stage_latencies({"asr_final": 10.0, "turn_end": 25.0}) == {"turn": 15.0}
    # an interrupted voice turn that never reached speech
    out = stage_latencies({"speech_end": 0.0, "endpoint": 250.0, "asr_final": 400.0})
    assert out == {"endpoint": 250.0, "asr": 400.0}


def test_stage_latencies_are_never_negative() -> None:
    # the audio timeline can run a little ahead of the session clock
    marks = {"speech_end": 1000.0, "endpoint": 990.0, "asr_final": 980.0,
             "retrieval_done": 990.0, "llm_first_token": 985.0, "tts_first_audio": 995.0,
             "first_clause": 970.0, "turn_end": 1200.0}
    out = stage_latencies(marks)
    assert out["endpoint"] == 0.0 and out["asr"] == 0.0 and out["llm_first_token"] == 0.0
    assert out["voice_to_first_audio"] == 0.0 and out["first_clause"] == 0.0
    assert all(v >= 0.0 for v in out.values())
    assert set(out) <= set(STAGES)


# --- metrics sink ------------------------------------------------------------------------------


def test_metrics_sink_counts_what_the_cluster_reports() -> None:
    sink = MetricsSink()
    sink.frames(4, 0)
    sink.frames(4, 2)
    sink.render_batch(3.5)
    sink.sessions(live=3, capacity=8)
    sink.sessions(live=2, capacity=8)
    for reason in ("full", "full", "draining"):
        sink.rejection(reason)
    sink.session_created()
    for outcome in ("answered", "answered", "refused", "error"):
        sink.turn(outcome)
    sink.stage_latency("asr", 120.0)
    assert sink.counters["frames_rendered"] == 8 and sink.counters["frames_dropped"] == 2
    assert sink.latencies["render_batch"] == [3.5] and sink.latencies["asr"] == [120.0]
    assert sink.gauges == {"sessions": 2, "capacity": 8}
    assert sink.counters["rejected_full"] == 2 and sink.counters["rejected_draining"] == 1
    assert sink.counters["sessions_created"] == 1
    assert sink.counters["turns_answered"] == 2 and sink.counters["turns_refused"] == 1
    assert sink.counters["turns_error"] == 1 and sink.counters["turns_interrupted"] == 0


def test_metrics_sink_keeps_the_newest_thousand_samples_per_stage() -> None:
    sink = MetricsSink()
    for i in range(1500):
        sink.stage_latency("turn", float(i))
    sink.stage_latency("asr", 1.0)
    assert sink.latencies["turn"] == [float(i) for i in range(500, 1500)]
    assert sink.latencies["asr"] == [1.0]


def test_metrics_sinks_do_not_share_state() -> None:
    a, b = MetricsSink(), MetricsSink()
    a.turn("answered")
    a.stage_latency("asr", 1.0)
    assert b.counters["turns_answered"] == 0 and b.latencies == {}
