"""``avatarctl bench e2e``: one session end to end over real WebRTC, measured at the client.

An aiortc client (the browser's side: microphone track out, audio and video tracks and a
data channel in) holds one session against a running cluster (``--target``) or a local one
this benchmark starts (:func:`cluster.local.serve_app` on a free port, with private copies of
the knowledge and session stores). It plays a scripted conversation: questions from the
persona's ``eval/answerable.yaml`` spoken over the microphone at real time (piper voice,
synthesised before the clock starts), typed questions over the data channel, and barge-ins
(a typed question, then a spoken one while the avatar answers it). Each reply is heard for
:data:`LISTEN_S` and then stopped over the data channel, which keeps the run short.

The client decodes what the figures need and nothing more: the RMS of each audio frame and the
mouth region's luma of each video frame, with arrival times on one monotonic clock. The
figures (:func:`cluster.bench.e2e_metrics.analyse`) are read from those after the run. The
microphone models a capture device: the frame holding samples ``[k, k + 960)`` leaves
when its last sample has been "spoken", so the end of a question is known to the sample.
Session setup is timed on the conversation's session and on :data:`SETUP_REPEATS` - 1 fresh
ones after it. No turn starts after :data:`BUDGET_S`, so a run ends by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import socket
import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cluster.bench.client import (
    CLIENT_AUDIO_PREFETCH_FRAMES,
    RATE,
    Client,
    now,
)
from cluster.bench.e2e_metrics import (
    TARGETS,
    TurnLog,
    analyse,
    check_targets,
    summary,
)
from configs.schema import AppConfig
from deployments.timing import stage_latencies
from models.errors import BackendUnavailable, InputError

Progress = Callable[[str], None]
LISTEN_S = 4.0
"""How long each reply is heard before the client stops it."""
BARGE_AFTER_S = 1.2
"""How long the avatar talks before the client cuts in."""
REPLY_TIMEOUT_S = 10.0
BUDGET_S = 190.0
"""No turn starts later than this after the run began (cluster start included), so the run
ends within about 4 minutes even when every wait times out."""
SETUP_REPEATS = 3
KINDS = ("voice", "text", "voice", "barge")
DEFAULT_TARGET = "http://127.0.0.1:8000"


def script(questions: list[str], turns: int) -> list[tuple[str, str, str | None]]:
    """``(kind, question, spoken interruption or None)`` for ``turns`` turns, cycling through
    voice, text, voice, barge and through the questions."""
    out, q = [], 0
    for i in range(turns):
        kind = KINDS[i % len(KINDS)]
        first = questions[q % len(questions)]
        q += 1
        second = None
        if kind == "barge":
            second = questions[q % len(questions)]
            q += 1
        out.append((kind, first, second))
    return out


async def _hear_reply(client: Client, after: float) -> None:
    """Hear the reply to what the client said at ``after`` for :data:`LISTEN_S`, stop it and
    wait for quiet."""
    first = await client.wait_loud(after, REPLY_TIMEOUT_S)
    if first is not None:
        await asyncio.sleep(max(0.0, first + LISTEN_S - now()))
        loud = client.last_loud()
        if loud is not None and now() - loud < 0.3:  # still talking
            client.send({"type": "interrupt"})
    await client.wait_quiet(0.6, 5.0)


async def _speak(client: Client, turn: TurnLog, utt: Any) -> None:
    """Say ``utt`` into the microphone, note its voiced span and hear the reply."""
    start = client.mic.say(utt.pcm48)
    turn.speech_start = start + utt.voiced_start_ms / 1000.0
    turn.speech_end = start + utt.voiced_end_ms / 1000.0
    await asyncio.sleep(max(0.0, turn.speech_end - now()))
    await _hear_reply(client, turn.speech_end)


async def _play_turn(client: Client, kind: str, text: str, spoken: str | None,
                     audio: dict[str, Any]) -> TurnLog:
    """One scripted turn: a spoken question, a typed one, or a typed one cut off by speech."""
    turn = TurnLog(kind, text, spoken_text=spoken)
    if kind == "voice":
        await _speak(client, turn, audio[text])
    else:
        turn.typed_at = now()
        client.send({"type": "text", "text": text})
        if kind == "text":
            await _hear_reply(client, turn.typed_at)
        else:
            first = await client.wait_loud(turn.typed_at, REPLY_TIMEOUT_S)
            await asyncio.sleep(BARGE_AFTER_S if first is not None else 0.0)
            await _speak(client, turn, audio[spoken])
    await asyncio.sleep(0.4)
    turn.until = now()
    return turn


async def _conversation(url: str, plan: list[tuple[str, str, str | None]],
                        audio: dict[str, Any], deadline: float, say: Progress
                        ) -> dict[str, Any]:
    import httpx

    out: dict[str, Any] = {"setup_ms": [], "turns": [], "skipped": 0}
    async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(30.0)) as http:
        out["readyz"] = (await http.get("/readyz")).json()
        client = Client()
        sid = ""
        try:
            say("connecting")
            sid, setup_ms = await client.connect(http)
            out["setup_ms"].append(setup_ms)
            offset = await client.sync_clock()
            await asyncio.sleep(1.0)  # the idle face, before anyone speaks
            for i, (kind, text, spoken) in enumerate(plan):
                if now() > deadline:
                    out["skipped"] = len(plan) - i
                    break
                say(f"turn {i + 1}/{len(plan)} ({kind})")
                out["turns"].append(await _play_turn(client, kind, text, spoken, audio))
            out["recording"] = client.recording(out["turns"], offset)
            out["events"] = client.events
            out["mic_max_lag_ms"] = round(client.mic.max_lag_s * 1000.0, 1)
            info = (await client.http.get(f"/v1/sessions/{sid}")).json()
            out["server_media"] = info.get("media")
        finally:
            await client.close()
            if sid:
                await client.http.delete(f"/v1/sessions/{sid}")
        for i in range(SETUP_REPEATS - 1):  # more setups, each a fresh session
            if now() > deadline:
                break
            say(f"session setup {i + 2}/{SETUP_REPEATS}")
            extra = Client()
            sid = ""
            try:
                sid, setup_ms = await extra.connect(http)
                out["setup_ms"].append(setup_ms)
            finally:
                await extra.close()
                if sid:
                    await extra.http.delete(f"/v1/sessions/{sid}")
    return out


play_turn = _play_turn
"""Public name of :func:`_play_turn`: the load-test harness plays the same turns."""


# --- the run --------------------------------------------------------------------------------


def answers(url: str, timeout_s: float = 1.0) -> bool:
    """Does a cluster answer ``GET /healthz`` at ``url``?"""
    import httpx

    try:
        return httpx.get(f"{url}/healthz", timeout=timeout_s).status_code == 200
    except httpx.HTTPError:
        return False


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _voices(questions: list[str]) -> dict[str, Any]:
    """The questions in the piper voice at 48 kHz, with voiced bounds."""
    from types import SimpleNamespace

    from cluster.bench.pipeline import RATE_HZ, synthesise
    from models.audio import resample

    return {text: SimpleNamespace(pcm48=resample(u.pcm, RATE_HZ, RATE), voiced_start_ms=
                                  u.voiced_start_ms, voiced_end_ms=u.voiced_end_ms)
            for text, u in synthesise(questions).items()}


voices = _voices
"""Public name of :func:`_voices`: the load-test harness speaks the same questions."""


def server_marks(events: list[tuple[float, dict[str, Any]]]) -> dict[str, Any]:
    """Median per-stage latencies (ms) from the turns' own timing marks, voice and typed."""
    stages: dict[str, list[float]] = {}
    for _, event in events:
        if event.get("type") == "turn_end" and isinstance(event.get("marks_ms"), dict):
            for stage, ms in stage_latencies(event["marks_ms"]).items():
                stages.setdefault(stage, []).append(ms)
    return {k: summary(v)["p50"] for k, v in stages.items()} | {
        "turns": sum(1 for _, e in events if e.get("type") == "turn_end")}


def server_errors(events: list[tuple[float, dict[str, Any]]]) -> dict[str, int]:
    """How often the session reported each error message."""
    return dict(Counter(str(e.get("message")) for _, e in events if e.get("type") == "error"))


def run_e2e_bench(config: AppConfig, *, target: str | None = None, serve: bool = False,
                  turns: int = 8, progress: Progress | None = None) -> dict[str, Any]:
    """Play the scripted conversation against ``target`` (or a local cluster started here
    when ``serve``); returns the benchmark's JSON figures."""
    import aiortc

    from cluster.bench.scenario import load_eval

    say = progress or (lambda _msg: None)
    t_start = now()
    deadline = t_start + BUDGET_S
    if not 1 <= turns <= 40:
        raise InputError(f"--turns is {turns}; pick 1 to 40")
    answerable, _ = load_eval(config.persona)
    plan = script([t.text for t in answerable], turns)
    url = (target or DEFAULT_TARGET).rstrip("/")
    if not serve and not answers(url, 3.0):
        raise BackendUnavailable(f"nothing answers GET {url}/healthz; start the cluster "
                                 "(make run) or pass --serve")
    load_start = os.getloadavg()
    say("synthesising questions")
    audio = _voices(sorted({q for _, a, b in plan for q in (a, b) if q}))
    with contextlib.ExitStack() as stack:
        if serve:
            from cluster.bench.serve import _isolated
            from cluster.local import serve_app

            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="avatar-e2e-")))
            served, _ = _isolated(config, tmp, free_port(config.cluster.http_host))
            t0 = now()
            url = stack.enter_context(serve_app(served, progress=say))
            startup_s: float | None = now() - t0
        else:
            startup_s = None
        raw = asyncio.run(_conversation(url, plan, audio, deadline, say))
    figures, turn_log = analyse(raw["recording"])
    report: dict[str, Any] = {"session_setup_ms": summary(raw["setup_ms"]), **figures,
                              "server_marks_ms": server_marks(raw["events"]),
                              "server_errors": server_errors(raw["events"])}
    report["targets"] = {k: f"{op} {bound:g}" for k, (op, bound) in TARGETS.items()}
    report["met"] = check_targets(report)
    report["server_media"] = raw.get("server_media")
    report["setup"] = {
        "url": url, "started_cluster": serve, "startup_s": _round(startup_s),
        "profile": config.profile, "turns": len(raw["turns"]), "turns_skipped": raw["skipped"],
        "listen_s": LISTEN_S, "barge_after_s": BARGE_AFTER_S, "readyz": raw["readyz"],
        "mic_max_lag_ms": raw["mic_max_lag_ms"],
        "client_audio_prefetch_frames": CLIENT_AUDIO_PREFETCH_FRAMES, "cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)), "platform": platform.platform(),
        "machine": platform.machine(), "python": platform.python_version(),
        "aiortc": aiortc.__version__,
        "load_avg_at_start": [round(x, 2) for x in load_start],
        "load_avg_at_end": [round(x, 2) for x in os.getloadavg()],
        "asr": config.models.asr.backend, "llm": config.models.llm.backend,
        "tts": config.models.tts.backend, "render_fps": config.models.render.fps,
        "wall_s": round(now() - t_start, 1),
    }
    report["turn_log"] = turn_log
    return report


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)
