"""Pure figures of the end-to-end WebRTC benchmark (``avatarctl bench e2e``).

Everything here works on what a client can observe: the arrival times (seconds, one
monotonic clock) of decoded audio and video frames, the audio level of each, a mouth signal
read from each video frame's pixels, and the times at which the client itself spoke or typed.
No I/O, no clock: the benchmark's runner (:mod:`cluster.bench.e2e`) records, these functions
compute; the signal helpers they use are in :mod:`cluster.bench.signals`.

* **Silence**: an audio frame is silent when its RMS is at most :data:`SILENCE_RMS` (int16
  units, about -50 dBFS). Onsets (:func:`first_above`) and stops (:func:`silent_from`) are read
  on that threshold.
* **Mouth region**: the lower-middle of the frame (:data:`MOUTH_ROWS` x :data:`MOUTH_COLS`, as
  fractions of the frame), read on the luma plane; :func:`mouth_signal` is the mean absolute
  difference from an idle baseline (the median mouth region of frames seen while nobody
  spoke). :func:`idle_threshold` puts the "mouth moved" threshold above the idle frames' own
  spread.
* **A/V offset** (:func:`best_lag`): the audio energy envelope in 10 ms bins (by arrival time)
  and the mouth signal interpolated to the same bins are cross-correlated (Pearson) over lags
  of -200..+200 ms; the best lag, refined by parabolic interpolation, is the offset.
  Positive = the video arrives late (the mouth moves after the sound).
* **Two arrival times** per frame: when it came out of the decoder (what a player gets; all
  latencies use it) and when its last RTP packet arrived (``wire``). aiortc's receiver holds
  audio four frames (80 ms) and video one frame (40 ms), so on decoded times video looks
  ~40 ms early; ``av_offset_wire_ms`` is the same estimate on wire times, free of that.
* **Breakdown**: ping/pong on the data channel maps the session's media clock onto the
  client's (:func:`clock_offset`), which places the server's timing marks and interrupt on the
  client's timeline: a spoken turn splits into inbound, server and outbound time, a barge-in
  into detection and drain.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cluster.bench.signals import (
    BIN_MS,
    MIN_REPLY_S,
    MOUTH_COLS,
    MOUTH_ROWS,
    SILENCE_RMS,
    first_above,
    idle_baseline,
    idle_threshold,
    intervals_ms,
    mouth_signal,
    rate_per_s,
    reply_offset,
    silent_from,
)
from deployments.timing import percentiles

TARGETS: dict[str, tuple[str, float]] = {
    "voice_to_first_audio_ms.p50": ("<=", 500.0),
    "voice_to_first_audio_ms.p95": ("<=", 800.0),
    "text_to_first_audio_ms.p95": ("<=", 300.0),
    "fps": (">=", 24.5),
    "frame_interval_ms.p99": ("<=", 45.0),
    "abs_av_offset_ms.p99": ("<=", 30.0),
    "barge_in_stop_ms.p95": ("<=", 150.0),
    "session_setup_ms.p95": ("<=", 1500.0),
}
"""Figure path -> (comparison, bound)."""


def summary(values: Sequence[float | None], digits: int = 1) -> dict[str, Any]:
    """``{"p50", "p95", "p99", "n"}`` of the values present (None and NaN are skipped)."""
    return percentiles(values, (50, 95, 99), digits)


def lookup(report: dict[str, Any], path: str) -> Any:
    """``report["a"]["b"]`` for ``"a.b"`` (None when a part is missing)."""
    value: Any = report
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def check_targets(report: dict[str, Any], targets: dict[str, tuple[str, float]] = TARGETS
                  ) -> dict[str, bool]:
    """Each target met? A figure that could not be measured is not met."""
    met = {}
    for key, (op, bound) in targets.items():
        value = lookup(report, key)
        ok = isinstance(value, int | float) and not math.isnan(value)
        met[key] = bool(ok and (value <= bound if op == "<=" else value >= bound))
    return met


# --- a recorded run -------------------------------------------------------------------------


@dataclass
class TurnLog:
    """What the client did in one scripted turn (times in seconds on the run's clock).

    ``kind``: ``voice`` (a spoken question), ``text`` (a typed one) or ``barge`` (a typed
    question whose reply a spoken one interrupts). ``typed_at``: when the typed question left;
    ``speech_start``/``speech_end``: the spoken question's first and last voiced sample;
    ``until``: when the client moved on (searches for this turn's reply stop there).
    """

    kind: str
    text: str
    typed_at: float | None = None
    speech_start: float | None = None
    speech_end: float | None = None
    until: float | None = None
    spoken_text: str | None = None


@dataclass
class Recording:
    """Everything the client saw, on one clock (seconds).

    Per audio frame: its arrival after decoding (``audio_t``), the arrival of its last RTP
    packet (``audio_wire_t``, NaN when unknown), its RMS and its energy in each 10 ms half
    (``audio_energy``, (N, 2)). Per video frame: the same two arrivals and its mouth region
    (luma, (N, h, w)).
    """

    audio_t: np.ndarray
    audio_wire_t: np.ndarray
    audio_rms: np.ndarray
    audio_energy: np.ndarray
    video_t: np.ndarray
    video_wire_t: np.ndarray
    mouths: np.ndarray
    turns: list[TurnLog] = field(default_factory=list)
    events: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    """Data-channel messages with their arrival."""
    clock_offset_s: float | None = None
    """Client time minus the session's media time (:func:`clock_offset`)."""

    def energy_series(self, wire: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """``(times, energies)`` of the 10 ms halves, each half timed from its frame's
        arrival (decoded, or on the wire)."""
        t = self.audio_wire_t if wire else self.audio_t
        e = self.audio_energy.reshape(len(t), -1)
        times = t[:, None] + np.arange(e.shape[1])[None, :] * BIN_MS / 1000.0
        return times.reshape(-1), e.reshape(-1)


def clock_offset(pongs: Sequence[tuple[float, float, float]]) -> float | None:
    """Client clock minus the session's media clock (s), from ``(sent, received, pts_ms)`` of
    ping/pong pairs: the pair with the shortest round trip, its reply taken at mid-trip."""
    if not pongs:
        return None
    sent, received, pts_ms = min(pongs, key=lambda p: p[1] - p[0])
    return (sent + received) / 2.0 - pts_ms / 1000.0


def idle_mask(video_t: np.ndarray, audio_t: np.ndarray, audio_rms: np.ndarray,
              speech: Sequence[tuple[float, float]], guard_s: float = 0.3) -> np.ndarray:
    """Video frames seen while neither side spoke: no received audio frame above the silence
    threshold and no spoken question within ``guard_s`` of the frame."""
    loud = np.sort(np.asarray(audio_t)[np.asarray(audio_rms) > SILENCE_RMS])
    t = np.asarray(video_t, dtype=np.float64)
    lo = np.searchsorted(loud, t - guard_s)
    hi = np.searchsorted(loud, t + guard_s)
    quiet = hi == lo
    for start, end in speech:
        quiet &= (t < start - guard_s) | (t > end + guard_s)
    return quiet


def analyse(rec: Recording) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The client-side figures of a run and a per-turn log (milliseconds)."""
    speech = [(t.speech_start, t.speech_end) for t in rec.turns
              if t.speech_start is not None and t.speech_end is not None]
    quiet = idle_mask(rec.video_t, rec.audio_t, rec.audio_rms, speech)
    if quiet.sum() >= 5:
        baseline = idle_baseline(rec.mouths[quiet])
    elif len(rec.mouths):
        baseline = idle_baseline(rec.mouths[:5])
    else:
        baseline = np.zeros((1, 1), np.float32)
    signal = mouth_signal(rec.mouths, baseline) if len(rec.mouths) else np.zeros(0)
    threshold = idle_threshold(signal[quiet] if len(signal) else [])
    series: dict[str, list[float]] = {k: [] for k in (
        "voice_to_first_audio_ms", "voice_to_first_frame_ms", "text_to_first_audio_ms",
        "barge_in_stop_ms", "av_offset_ms", "av_offset_wire_ms", "inbound_ms", "server_ms",
        "outbound_ms", "barge_in_detect_ms", "barge_in_drain_ms")}
    log = []
    for turn in rec.turns:
        row = _turn_figures(rec, turn, signal, threshold)
        for key, values in series.items():
            value = row.get(key)
            if isinstance(value, list):
                values.extend(value)
            elif value is not None:
                values.append(value)
        log.append({"kind": turn.kind, "question": turn.text, "spoken": turn.spoken_text,
                    **{k: None if v is None else round(v, 1) if isinstance(v, float) else v
                       for k, v in row.items()}})
    intervals = intervals_ms(rec.video_t)
    fps = rate_per_s(rec.video_t)
    figures: dict[str, Any] = {key: summary(values) for key, values in series.items()}
    for group, parts in (("voice_breakdown_ms", ("inbound", "server", "outbound")),
                         ("barge_in_breakdown_ms", ("barge_in_detect", "barge_in_drain"))):
        figures[group] = {p.removeprefix("barge_in_"): figures.pop(f"{p}_ms") for p in parts}
    figures["abs_av_offset_ms"] = summary([abs(v) for v in series["av_offset_ms"]])
    figures["client_receive_delay_ms"] = {
        kind: _median_ms(decoded - wire) for kind, decoded, wire in (
            ("audio", rec.audio_t, rec.audio_wire_t), ("video", rec.video_t, rec.video_wire_t))}
    figures["frame_interval_ms"] = summary(intervals)
    figures["fps"] = None if fps is None else round(fps, 2)
    figures["video_frames"] = len(rec.video_t)
    figures["mouth"] = {"rows": list(MOUTH_ROWS), "cols": list(MOUTH_COLS),
                        "idle_frames": int(quiet.sum()), "threshold": round(threshold, 2),
                        "idle_p50": _r(np.median(signal[quiet])) if quiet.any() else None,
                        "max": _r(signal.max()) if len(signal) else None}
    return figures, log


def _median_ms(delays: np.ndarray) -> float | None:
    d = delays[np.isfinite(delays)]
    return round(float(np.median(d)) * 1000.0, 1) if len(d) else None


def _r(value: float) -> float:
    return round(float(value), 2)


def _turn_figures(rec: Recording, turn: TurnLog, signal: np.ndarray, threshold: float
                  ) -> dict[str, Any]:
    until = turn.until if turn.until is not None else math.inf
    a_t, a_rms = rec.audio_t, rec.audio_rms

    def onset(after: float) -> float | None:
        at = first_above(a_t, a_rms, SILENCE_RMS, after)
        return at if at is not None and at <= until else None

    row: dict[str, Any] = {}
    replies: list[float] = []
    if turn.typed_at is not None:
        first = onset(turn.typed_at)
        if turn.kind == "barge" and turn.speech_start is not None and first is not None \
                and first > turn.speech_start:
            first = None  # the typed question was never answered before the barge-in
        row["text_to_first_audio_ms"] = _ms(first, turn.typed_at)
        if first is not None:
            replies.append(first)
    if turn.kind == "barge" and turn.speech_start is not None:
        talking = first_above(a_t, a_rms, SILENCE_RMS, turn.speech_start - 0.1)
        if talking is not None and talking <= turn.speech_start + 0.05:
            stop = silent_from(a_t, a_rms, turn.speech_start)
            row["barge_in_stop_ms"] = _ms(stop, turn.speech_start)
            row["barge_in_stopped_before_speech_end"] = (
                stop is not None and turn.speech_end is not None and stop < turn.speech_end)
            cut = _event_time(rec, "interrupt", turn.speech_start, until)
            if cut is not None:  # when the server cut the reply, on the client's clock
                row["barge_in_detect_ms"] = _ms(cut, turn.speech_start)
                row["barge_in_drain_ms"] = None if stop is None else _ms(stop, cut)
        else:
            row["barge_in_stop_ms"] = None
            row["barge_in_note"] = "the avatar was not talking when the interruption began"
    if turn.speech_end is not None and (
            turn.kind == "voice" or row.get("barge_in_stopped_before_speech_end")):
        first = onset(turn.speech_end)
        row["voice_to_first_audio_ms"] = _ms(first, turn.speech_end)
        frame = first_above(rec.video_t, signal, threshold, turn.speech_end)
        row["voice_to_first_frame_ms"] = _ms(frame if frame is not None and frame <= until
                                             else None, turn.speech_end)
        if first is not None:
            replies.append(first)
        row.update(_voice_breakdown(rec, turn, first, until))
    for i, first in enumerate(replies):
        stop = replies[i + 1] - 0.5 if i + 1 < len(replies) else until
        end = _last_loud(rec, first, stop)
        if end - first < MIN_REPLY_S:
            continue
        for key, wire in (("av_offset_ms", False), ("av_offset_wire_ms", True)):
            offset, corr = _reply_offset(rec, signal, first, end, wire)
            if offset is not None:
                row.setdefault(key, []).append(round(offset, 1))
                if not wire:
                    row.setdefault("av_correlation", []).append(round(corr, 3))
    return row


def _last_loud(rec: Recording, start: float, stop: float) -> float:
    t = rec.audio_t
    loud = t[(t >= start) & (t <= stop) & (rec.audio_rms > SILENCE_RMS)]
    return float(loud[-1]) if len(loud) else start


def _reply_offset(rec: Recording, signal: np.ndarray, first: float, end: float, wire: bool
                  ) -> tuple[float | None, float]:
    """A/V offset of the reply heard from ``first`` to ``end`` (decoded arrivals), on decoded
    or on wire arrival times."""
    if wire:
        i, j = np.searchsorted(rec.audio_t, [first, end])
        j = min(j, len(rec.audio_t) - 1)
        first, end = float(rec.audio_wire_t[i]), float(rec.audio_wire_t[j])
        if not (math.isfinite(first) and math.isfinite(end)):
            return None, 0.0
    times, energy = rec.energy_series(wire)
    video_t = rec.video_wire_t if wire else rec.video_t
    return reply_offset(times, energy, video_t, signal, first - 0.3, end + 0.3)


def _ms(at: float | None, since: float) -> float | None:
    return None if at is None else (at - since) * 1000.0


def _event_time(rec: Recording, kind: str, start: float, until: float) -> float | None:
    """Media time of the first ``kind`` event arriving in ``[start, until]``, on the client's
    clock."""
    if rec.clock_offset_s is None:
        return None
    for at, event in rec.events:
        if start <= at <= until and event.get("type") == kind and "pts_ms" in event:
            return float(event["pts_ms"]) / 1000.0 + rec.clock_offset_s
    return None


def _voice_breakdown(rec: Recording, turn: TurnLog, first: float | None, until: float
                     ) -> dict[str, float | None]:
    """Where a spoken turn's time went, from its ``turn_end`` marks on the client's clock:
    ``inbound`` (end of speech at the client -> the server's speech_end mark, which is
    stamped on arrival), ``server`` (speech_end -> tts_first_audio) and ``outbound``
    (tts_first_audio -> the first audible frame decoded at the client)."""
    if rec.clock_offset_s is None or turn.speech_end is None:
        return {}
    for at, event in rec.events:
        marks = event.get("marks_ms") if event.get("type") == "turn_end" else None
        if not (turn.speech_end <= at <= until and isinstance(marks, dict)
                and "speech_end" in marks and "tts_first_audio" in marks):
            continue
        end = marks["speech_end"] / 1000.0 + rec.clock_offset_s
        audio = marks["tts_first_audio"] / 1000.0 + rec.clock_offset_s
        return {"inbound_ms": _ms(end, turn.speech_end), "server_ms": _ms(audio, end),
                "outbound_ms": None if first is None else _ms(first, audio)}
    return {}
