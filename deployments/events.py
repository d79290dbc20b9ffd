"""Session output as wire messages: one ``(type, JSON-ready dict)`` per conductor event.

The Gateway sends them as Server-Sent Events (``event: <type>``, ``data: <json>``); the same
dicts go over a WebRTC data channel. Times are ``pts_ms`` on the session's media clock.
"""

from __future__ import annotations

import base64
import json

import numpy as np

from models.frames import (
    Clause,
    ErrorEvent,
    Interrupt,
    SpeechAudio,
    StateChange,
    TextDelta,
    Transcript,
    TurnEnd,
)

EVENT_TYPES = ("transcript", "text_delta", "clause", "state", "audio", "interrupt", "turn_end",
               "error", "closed")


def _ms(value: float) -> float:
    return round(float(value), 1)


def to_wire(event: object) -> tuple[str, dict[str, object]] | None:
    """The wire form of a conductor event, or None for events that stay internal."""
    if isinstance(event, SpeechAudio):
        pcm = np.ascontiguousarray(event.pcm, dtype="<i2")
        return "audio", {
            "pcm16_b64": base64.b64encode(pcm.tobytes()).decode("ascii"),
            "sample_rate_hz": event.sample_rate_hz, "pts_ms": _ms(event.pts_ms),
            "duration_ms": _ms(1000.0 * len(pcm) / event.sample_rate_hz),
            "turn_id": event.turn_id, "clause_index": event.clause_index,
        }
    if isinstance(event, Transcript):
        return "transcript", {"text": event.text, "is_final": event.is_final,
                              "pts_ms": _ms(event.pts_ms)}
    if isinstance(event, TextDelta):
        return "text_delta", {"text": event.text, "pts_ms": _ms(event.pts_ms)}
    if isinstance(event, Clause):
        return "clause", {"text": event.text, "index": event.index, "pts_ms": _ms(event.pts_ms)}
    if isinstance(event, StateChange):
        return "state", {"state": event.state, "pts_ms": _ms(event.pts_ms)}
    if isinstance(event, Interrupt):
        return "interrupt", {"turn_id": event.turn_id, "pts_ms": _ms(event.pts_ms)}
    if isinstance(event, TurnEnd):
        return "turn_end", {
            "turn_id": event.turn_id, "reply": event.text, "user_text": event.user_text,
            "refused": event.refused, "interrupted": event.interrupted,
            "marks_ms": {k: _ms(v) for k, v in event.marks.items()},
        }
    if isinstance(event, ErrorEvent):
        return "error", {"message": event.message, "pts_ms": _ms(event.pts_ms)}
    return None


def sse(kind: str, data: dict[str, object]) -> bytes:
    """One Server-Sent Event."""
    return f"event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()
