"""One simulated user: region probe, session create, WebRTC, a scripted conversation, hang-up.

The user is the end-to-end benchmark's client (:class:`cluster.bench.client.Client`): a
microphone track at real time out; audio, video and the data channel in, decoding only the
audio level and the mouth region's luma. It plays :func:`conversation` turns (spoken questions
from the piper voice, typed ones, barge-ins) with idle pauses between them, hangs up, and
reads its figures with :func:`cluster.bench.e2e_metrics.analyse` in a worker thread so that
the other users' receive loops keep their timing.

On top of the benchmark's figures a session reports its **freezes** (decoded video frames
further apart than :data:`FREEZE_MS`), its frame-interval **jitter** (standard deviation of
the intervals), its fps per :data:`FPS_WINDOW_S` window and its **lost turns**: questions that
never got a ``turn_end`` (:func:`lost_turns`).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from cluster.bench.client import Client, SessionHTTP
from cluster.bench.e2e import play_turn, script
from cluster.bench.e2e_metrics import TurnLog, analyse
from cluster.bench.signals import SILENCE_RMS, first_above
from models.errors import AvatarError

FREEZE_MS = 200.0
"""Decoded video frames further apart than this are a freeze."""
FPS_WINDOW_S = 5.0
EXPECTED_TURN_ENDS = {"voice": 1, "text": 1, "barge": 2}
"""``turn_end`` events each kind of scripted turn should produce (a barge-in: the interrupted
typed question and the spoken one)."""
PAUSE_S = (0.5, 3.0)
"""Idle pause before each turn: uniform in this range (seconds), drawn from the user's seed."""
TURN_END_WAIT_S = 3.0
PROBE_COUNT = 10
SERIES = ("voice_to_first_audio_ms", "voice_to_first_frame_ms", "text_to_first_audio_ms",
          "barge_in_stop_ms", "av_offset_ms")
"""Per-turn figures kept raw, so the report pools them over sessions."""

Outcome = Literal["ok", "rejected", "failed", "cut"]
Turn = tuple[str, str, str | None]


@dataclass(frozen=True)
class UserPlan:
    """What one user will do: the scripted turns and the idle pause before each."""

    turns: tuple[Turn, ...]
    pauses_s: tuple[float, ...]


def conversation(questions: list[str], turns: int, seed: int) -> UserPlan:
    """A user's script: ``turns`` turns cycling spoken, typed, spoken, barge-in over the
    questions from a seeded starting point, with seeded idle pauses."""
    if not questions:
        raise AvatarError("a simulated user needs at least one question")
    rng = random.Random(seed)
    k = rng.randrange(len(questions))
    plan = script(questions[k:] + questions[:k], turns)
    pauses = tuple(round(rng.uniform(*PAUSE_S), 2) for _ in plan)
    return UserPlan(tuple(plan), pauses)


@dataclass
class SessionResult:
    """One simulated user's session, as the report reads it (times: seconds since the run
    began; figures: milliseconds)."""

    user: int
    started_s: float
    ended_s: float = math.nan
    outcome: Outcome = "failed"
    status: int | None = None
    error: str | None = None
    retry_after_s: float | None = None
    probe: dict[str, Any] | None = None
    setup_ms: float | None = None
    turns: int = 0
    turn_ends: int = 0
    lost_turns: int = 0
    video_frames: int = 0
    fps: float | None = None
    freezes: int = 0
    longest_gap_ms: float | None = None
    frame_jitter_ms: float | None = None
    values: dict[str, list[float]] = field(default_factory=dict)
    """Raw per-turn figures (:data:`SERIES`, plus ``abs_av_offset_ms``)."""
    points: list[tuple[float, str, float]] = field(default_factory=list)
    """``(t_s, figure, value)`` per measured turn, for plots over time."""
    fps_windows: list[tuple[float, float]] = field(default_factory=list)
    freezes_at: list[tuple[float, float]] = field(default_factory=list)
    """``(t_s, gap_ms)`` of each freeze: the last frame before the gap, and the gap."""
    frame_intervals_ms: list[float] = field(default_factory=list)
    server_errors: int = 0
    analysis_ms: float | None = None
    """How long reading the session's figures took the harness (a worker thread)."""

    def to_dict(self) -> dict[str, Any]:
        """The session's row in the JSON report (raw intervals left out)."""
        from cluster.bench.e2e_metrics import summary

        row = {k: getattr(self, k) for k in (
            "user", "started_s", "ended_s", "outcome", "status", "error", "retry_after_s",
            "probe", "setup_ms", "turns", "turn_ends", "lost_turns", "video_frames", "fps",
            "freezes", "longest_gap_ms", "frame_jitter_ms", "server_errors", "analysis_ms")}
        row.update({k: summary(v) for k, v in self.values.items()})
        return _finite(row)


def _finite(row: dict[str, Any]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else
                round(v, 2) if isinstance(v, float) else v) for k, v in row.items()}


# --- pure figures ---------------------------------------------------------------------------


def frame_figures(video_t: np.ndarray, origin: float, freeze_ms: float = FREEZE_MS,
                  window_s: float = FPS_WINDOW_S) -> dict[str, Any]:
    """Freezes (``(start s, gap ms)`` of each), longest gap, jitter and fps per window of
    decoded video arrivals (s); times out are seconds since ``origin``."""
    t = np.asarray(video_t, dtype=np.float64)
    gaps = np.diff(t) * 1000.0
    out: dict[str, Any] = {
        "intervals_ms": [float(g) for g in gaps], "freezes": int((gaps > freeze_ms).sum()),
        "longest_gap_ms": round(float(gaps.max()), 1) if len(gaps) else None,
        "frame_jitter_ms": round(float(gaps.std()), 2) if len(gaps) >= 2 else None,
        "freezes_at": [(round(float(t[i]) - origin, 2), round(float(gaps[i]), 1))
                       for i in np.flatnonzero(gaps > freeze_ms)],
        "fps_windows": []}
    if len(t) >= 2:
        start = t[0]
        while start + window_s <= t[-1] + 1e-9:
            n = int(((t >= start) & (t < start + window_s)).sum())
            out["fps_windows"].append((round(start - origin, 2), round(n / window_s, 2)))
            start += window_s
    return out


def lost_turns(turns: list[TurnLog], events: list[tuple[float, dict[str, Any]]], end: float
               ) -> tuple[int, int]:
    """``(lost, turn_ends)``: questions that never got a ``turn_end``, and how many
    ``turn_end`` events arrived.

    A typed question is answered by a ``turn_end`` whose ``user_text`` is its text, arriving
    after it was typed. A spoken question is answered by any other ``turn_end`` arriving
    between its first voiced sample and the next turn's start (``end`` for the last)."""
    ends = [(at, e) for at, e in events if e.get("type") == "turn_end"]
    used: set[int] = set()
    starts = [_start(t) for t in turns]
    lost = 0
    for i, turn in enumerate(turns):
        hi = starts[i + 1] if i + 1 < len(turns) else end
        if turn.typed_at is not None:
            want = turn.text.strip().casefold()
            j = _match(ends, used, turn.typed_at, math.inf,
                       lambda e, want=want: str(e.get("user_text", "")).strip().casefold()
                       == want)
            lost += j is None
        if turn.speech_start is not None:
            j = _match(ends, used, turn.speech_start, hi, lambda _e: True)
            lost += j is None
    return lost, len(ends)


def _start(turn: TurnLog) -> float:
    return turn.typed_at if turn.typed_at is not None else (turn.speech_start or 0.0)


def _match(ends: list[tuple[float, dict[str, Any]]], used: set[int], lo: float, hi: float,
           ok: Any) -> int | None:
    for j, (at, event) in enumerate(ends):
        if j not in used and lo <= at < hi and ok(event):
            used.add(j)
            return j
    return None


def expected_turn_ends(turns: list[TurnLog]) -> int:
    """``turn_end`` events the played turns should produce."""
    return sum(EXPECTED_TURN_ENDS.get(t.kind, 1) for t in turns)


def quick_latency(client: Client, turn: TurnLog) -> tuple[str, float] | None:
    """The turn's first-audio latency for the live progress display (the report uses
    :func:`analyse`): ``(figure, ms)`` or None when nothing was heard."""
    if turn.kind == "voice" and turn.speech_end is not None:
        name, since = "voice_to_first_audio_ms", turn.speech_end
    elif turn.kind == "text" and turn.typed_at is not None:
        name, since = "text_to_first_audio_ms", turn.typed_at
    else:
        return None
    at = first_above(np.asarray(client.audio_t[-2000:]), np.asarray(client.audio_rms[-2000:]),
                     SILENCE_RMS, since)
    return None if at is None else (name, (at - since) * 1000.0)


# --- the lifecycle --------------------------------------------------------------------------


@dataclass
class UserContext:
    """What every user of a run shares."""

    http: Any
    """An ``httpx.AsyncClient`` on the target's base URL."""
    audio: dict[str, Any]
    """The spoken questions (:func:`cluster.bench.e2e.voices`)."""
    origin: float
    """The run's start on the client clock (:func:`time.monotonic`)."""
    probe_url: str | None = None
    """``ws://host:port/v1/probe`` to probe before create; None skips the probe."""
    on_turn: Any = None
    """Called with ``(figure, ms)`` after each turn with a quick first-audio figure."""


async def run_user(ctx: UserContext, index: int, plan: UserPlan, stop: asyncio.Event
                   ) -> SessionResult:
    """One user's whole session; never raises for a server's fault (the outcome says it).
    Cancelled (the run's hard stop), it hangs up and returns its record, outcome ``cut``."""
    result = SessionResult(index, _rel(ctx))
    try:
        if ctx.probe_url is not None:
            result.probe = await _probe(ctx.probe_url)
        t0 = time.monotonic()
        created = await _create(ctx, result)
        if created is not None:
            await _converse(ctx, created, t0, plan, stop, result)
    except asyncio.CancelledError:  # the run's hard stop: hung up, figures not read
        result.outcome, result.error = "cut", "cut by the run's hard stop"
    except Exception as exc:  # a session's failure is a figure, never the run's crash
        result.outcome = "failed"
        result.error = exc.message if isinstance(exc, AvatarError) else repr(exc)[:300]
    result.ended_s = _rel(ctx)
    return result


def _rel(ctx: UserContext) -> float:
    return round(time.monotonic() - ctx.origin, 3)


async def _probe(url: str) -> dict[str, Any]:
    """RTT and jitter to the gateway's probe endpoint, or why there are none."""
    try:
        from cluster.placement.probe import probe_ws
    except ImportError:
        return {"skipped": "cluster.placement.probe is not installed"}
    try:
        found = await probe_ws(url, count=PROBE_COUNT, interval_ms=20.0, timeout_s=1.0,
                               keep_samples=False)
    except AvatarError as exc:
        return {"error": exc.message[:160]}
    rtt = found.rtt_ms
    return {"rtt_ms": None if rtt is None else rtt.p50, "jitter_ms": found.jitter_ms,
            "loss": found.loss}


async def _create(ctx: UserContext, result: SessionResult) -> SessionHTTP | None:
    """POST /v1/sessions; the session's HTTP client, or None when refused (the result says
    why)."""
    import httpx

    try:
        resp = await ctx.http.post("/v1/sessions", json={"video": True})
    except httpx.HTTPError as exc:
        result.error = f"POST /v1/sessions: {type(exc).__name__}: {exc}"[:300]
        return None
    result.status = resp.status_code
    if resp.status_code in (429, 503):
        result.outcome = "rejected"
        result.error = resp.text[:200]
        with contextlib.suppress(TypeError, ValueError):
            result.retry_after_s = float(resp.headers.get("retry-after"))
        return None
    if resp.status_code != 201:
        result.error = f"POST /v1/sessions answered {resp.status_code}: {resp.text[:200]}"
        return None
    body = resp.json()
    return SessionHTTP(ctx.http, str(body["session_id"]), body.get("token"))


async def _converse(ctx: UserContext, http: SessionHTTP, t0: float, plan: UserPlan,
                    stop: asyncio.Event, result: SessionResult) -> None:
    """WebRTC, the scripted turns and the hang-up; setup is timed from ``t0`` (the POST)."""
    client = Client()
    turns: list[TurnLog] = []
    try:
        result.setup_ms = round(await client.negotiate(http, http.sid, t0), 1)
        offset = await client.sync_clock()
        await _pause(stop, 1.0)  # the idle face, before anyone speaks
        for (kind, text, spoken), pause in zip(plan.turns, plan.pauses_s, strict=True):
            if stop.is_set() or await _pause(stop, pause):
                break
            turn = await play_turn(client, kind, text, spoken, ctx.audio)
            turns.append(turn)
            quick = quick_latency(client, turn)
            if quick is not None and ctx.on_turn is not None:
                ctx.on_turn(*quick)
        await _await_turn_ends(client, expected_turn_ends(turns))
        end = time.monotonic()
        rec = client.recording(turns, offset)
    finally:
        await client.close()
        with contextlib.suppress(Exception):
            await http.delete(f"/v1/sessions/{http.sid}")
    await asyncio.to_thread(_fill, result, rec, turns, end, ctx.origin)
    result.outcome = "ok"


async def _pause(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep ``seconds`` unless asked to stop; True when stopped."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
    return stop.is_set()


async def _await_turn_ends(client: Client, expected: int) -> None:
    deadline = time.monotonic() + TURN_END_WAIT_S
    while time.monotonic() < deadline:
        if sum(1 for _, e in client.events if e.get("type") == "turn_end") >= expected:
            return
        await asyncio.sleep(0.1)


def _fill(result: SessionResult, rec: Any, turns: list[TurnLog], end: float, origin: float
          ) -> None:
    """The session's figures from its recording (runs in a worker thread)."""
    t0 = time.perf_counter()
    figures, log = analyse(rec)
    result.turns = len(turns)
    result.lost_turns, result.turn_ends = lost_turns(turns, rec.events, end)
    result.fps = figures["fps"]
    result.video_frames = figures["video_frames"]
    frames = frame_figures(rec.video_t, origin)
    result.frame_intervals_ms = frames["intervals_ms"]
    result.freezes, result.longest_gap_ms = frames["freezes"], frames["longest_gap_ms"]
    result.frame_jitter_ms, result.fps_windows = frames["frame_jitter_ms"], frames["fps_windows"]
    result.freezes_at = frames["freezes_at"]
    result.server_errors = sum(1 for _, e in rec.events if e.get("type") == "error")
    values: dict[str, list[float]] = {k: [] for k in (*SERIES, "abs_av_offset_ms")}
    for turn, row in zip(turns, log, strict=True):
        at = round(_start(turn) - origin, 2)
        for key in SERIES:
            value = row.get(key)
            for v in value if isinstance(value, list) else [value]:
                if isinstance(v, int | float) and math.isfinite(v):
                    values[key].append(float(v))
                    result.points.append((at, key, float(v)))
                    if key == "av_offset_ms":
                        values["abs_av_offset_ms"].append(abs(float(v)))
    result.values = values
    result.analysis_ms = round((time.perf_counter() - t0) * 1000.0, 1)
