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
import fractions
import json
import math
import os
import platform
import socket
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import AudioFrame

from cluster.bench.e2e_metrics import (
    TARGETS,
    Recording,
    TurnLog,
    analyse,
    check_targets,
    clock_offset,
    summary,
)
from cluster.bench.signals import SILENCE_RMS, mouth_box
from configs.schema import AppConfig
from deployments.media.peer import set_audio_prefetch
from deployments.timing import stage_latencies
from models.errors import BackendError, BackendUnavailable, InputError

Progress = Callable[[str], None]
RATE = 48000
CLIENT_AUDIO_PREFETCH_FRAMES = 2
"""Audio packets the client holds before decoding: 40 ms, what aiortc holds of video."""
FRAME = 960
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


def now() -> float:
    """The client's clock (seconds, monotonic)."""
    return time.monotonic()


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


class Microphone(MediaStreamTrack):
    """A capture device playing queued PCM (48 kHz mono int16) at real time, then silence.

    Sample ``k`` is "spoken" at ``start + k / RATE``; the frame holding it leaves at the end
    of that frame."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self.pcm = np.zeros(0, dtype=np.int16)
        self.sent = 0
        self.start: float | None = None
        self.max_lag_s = 0.0

    def say(self, pcm: np.ndarray) -> float:
        """Queue ``pcm`` to follow what is queued (never in the past); returns the time its
        first sample is spoken."""
        if self.start is None:
            raise BackendError("the microphone is not streaming yet (no connection)")
        due = int((now() - self.start) * RATE) + 1
        gap = max(0, due - (self.sent + len(self.pcm)))
        first = self.sent + len(self.pcm) + gap
        self.pcm = np.concatenate([self.pcm, np.zeros(gap, np.int16), pcm.astype(np.int16)])
        return self.start + first / RATE

    async def recv(self) -> AudioFrame:
        """The next 20 ms of the microphone, when its last sample has been spoken."""
        if self.start is None:
            self.start = now()
        leave = self.start + (self.sent + FRAME) / RATE
        if (wait := leave - now()) > 0:
            await asyncio.sleep(wait)
        self.max_lag_s = max(self.max_lag_s, now() - leave)
        chunk, self.pcm = self.pcm[:FRAME], self.pcm[FRAME:]
        chunk = np.pad(chunk, (0, FRAME - len(chunk)))
        frame = AudioFrame.from_ndarray(chunk.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate, frame.pts = RATE, self.sent
        frame.time_base = fractions.Fraction(1, RATE)
        self.sent += FRAME
        return frame


class Client:
    """The browser's side of one session: microphone out; audio, video and events in."""

    def __init__(self) -> None:
        # no ICE servers: aiortc would otherwise ask a public STUN server
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.mic = Microphone()
        self.http: Any = None
        """The session's HTTP calls with its token (:class:`SessionHTTP`), once connected."""
        self.pc.addTrack(self.mic)
        self.pc.addTransceiver("video", direction="recvonly")
        # Play audio as late as video (aiortc decodes a video frame when the next one starts
        # arriving, one interval later), as a player keeping its tracks in sync would.
        set_audio_prefetch(self.pc, CLIENT_AUDIO_PREFETCH_FRAMES)
        self.channel = self.pc.createDataChannel("events")
        self.opened = asyncio.Event()
        self.first_frame = asyncio.Event()
        self.channel.on("open", self.opened.set)
        self.channel.on("message", self._on_message)
        self.pc.on("track", self._on_track)
        self.events: list[tuple[float, dict[str, Any]]] = []
        self.audio_t: list[float] = []
        self.audio_wire_t: list[float] = []
        self.audio_rms: list[float] = []
        self.audio_energy: list[tuple[float, float]] = []
        self.video_t: list[float] = []
        self.video_wire_t: list[float] = []
        self.mouths: list[np.ndarray] = []
        self._wire: dict[str, dict[int, float]] = {"audio": {}, "video": {}}
        self._tasks: list[asyncio.Task[None]] = []

    def _on_message(self, message: object) -> None:
        with contextlib.suppress(ValueError, TypeError):
            self.events.append((now(), json.loads(str(message))))

    def _on_track(self, track: Any) -> None:
        receiver = next((t.receiver for t in self.pc.getTransceivers()
                         if t.receiver.track is track), None)
        if receiver is not None:
            self._watch_packets(receiver, self._wire[track.kind])
        self._tasks.append(asyncio.ensure_future(self._read(track)))

    @staticmethod
    def _watch_packets(receiver: Any, arrivals: dict[int, float]) -> None:
        """Note when the last RTP packet of each frame arrives, before aiortc's jitter buffer
        holds it (4 frames for audio, one frame for video). Keys are RTP timestamps counted
        from the first packet's, as aiortc numbers the decoded frames' ``pts``."""
        handle = receiver._handle_rtp_packet
        origin: list[int] = []

        async def noted(packet: Any, arrival_time_ms: int) -> None:
            if not origin:
                origin.append(packet.timestamp)
            arrivals[(packet.timestamp - origin[0]) % (1 << 32)] = now()
            await handle(packet, arrival_time_ms)

        receiver._handle_rtp_packet = noted

    async def _read(self, track: Any) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            at = now()
            wire = self._wire[track.kind].pop(frame.pts, math.nan)
            if track.kind == "audio":
                x = frame.to_ndarray().astype(np.float64).reshape(-1)
                half = len(x) // 2
                self.audio_energy.append((float(np.mean(x[:half] ** 2)),
                                          float(np.mean(x[half:] ** 2))))
                self.audio_t.append(at)
                self.audio_wire_t.append(wire)
                self.audio_rms.append(float(np.sqrt(np.mean(x * x))))
            else:
                plane = frame.planes[0]
                luma = np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)
                rows, cols = mouth_box(frame.height, frame.width)
                self.mouths.append(luma[rows, cols][::2, ::2].copy())
                self.video_t.append(at)
                self.video_wire_t.append(wire)
                self.first_frame.set()

    async def connect(self, http: Any) -> tuple[str, float]:
        """Start a session with video and connect to it; ``(session_id, setup_ms)`` where
        setup runs from the POST to the first decoded video frame."""
        t0 = now()
        body = await _post(http, "/v1/sessions", {"video": True})
        sid = str(body["session_id"])
        self.http = SessionHTTP(http, sid, body.get("token"))
        return sid, await self.negotiate(self.http, sid, t0)

    async def negotiate(self, http: Any, sid: str, t0: float) -> float:
        """Offer/answer for the created session ``sid`` and wait for its first video frame
        and the data channel; returns the setup time (ms) from ``t0`` to that frame."""
        await self.pc.setLocalDescription(await self.pc.createOffer())  # gathers ICE
        local = self.pc.localDescription
        answer = await _post(http, f"/v1/sessions/{sid}/offer",
                             {"sdp": local.sdp, "type": local.type})
        await self.pc.setRemoteDescription(RTCSessionDescription(answer["sdp"],
                                                                 answer["type"]))
        try:
            await asyncio.wait_for(self.first_frame.wait(), 20.0)
            setup_ms = (now() - t0) * 1000.0
            await asyncio.wait_for(self.opened.wait(), 10.0)
        except TimeoutError:
            raise BackendError("no video frame or data channel 20 s after the WebRTC answer; "
                               "is UDP between this machine and the renderer open?") from None
        return setup_ms

    async def sync_clock(self, pings: int = 10) -> float | None:
        """Client time minus the session's media time, from ``pings`` ping/pong pairs."""
        for i in range(pings):
            self.send({"type": "ping", "t": i})
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
        sent = {e.get("t"): at for at, e in self.events if e.get("type") == "ping_sent"}
        pongs = [(sent[e["t"]], at, float(e["pts_ms"])) for at, e in self.events
                 if e.get("type") == "pong" and e.get("t") in sent and "pts_ms" in e]
        return clock_offset(pongs)

    def send(self, message: dict[str, Any]) -> None:
        """A JSON message on the data channel (pings are noted with their time)."""
        if message.get("type") == "ping":
            self.events.append((now(), {"type": "ping_sent", "t": message["t"]}))
        self.channel.send(json.dumps(message))

    async def wait_loud(self, after: float, timeout_s: float) -> float | None:
        """Wait for an audible audio frame arriving at or after ``after``; its arrival."""
        deadline = now() + timeout_s
        seen = 0
        while True:
            for i in range(seen, len(self.audio_t)):
                if self.audio_t[i] >= after and self.audio_rms[i] > SILENCE_RMS:
                    return self.audio_t[i]
            seen = len(self.audio_t)
            if now() >= deadline:
                return None
            await asyncio.sleep(0.02)

    def last_loud(self) -> float | None:
        """Arrival of the latest audible audio frame (None before any)."""
        for t, r in zip(reversed(self.audio_t), reversed(self.audio_rms), strict=True):
            if r > SILENCE_RMS:
                return t
        return None

    async def wait_quiet(self, hold_s: float, timeout_s: float) -> bool:
        """Wait until the received audio has been silent for ``hold_s``."""
        deadline = now() + timeout_s
        while now() < deadline:
            loud = self.last_loud()
            if loud is None or now() - loud >= hold_s:
                return True
            await asyncio.sleep(0.02)
        return False

    def recording(self, turns: list[TurnLog], offset: float | None) -> Recording:
        """What was received, as arrays."""
        return Recording(
            np.asarray(self.audio_t), np.asarray(self.audio_wire_t),
            np.asarray(self.audio_rms), np.asarray(self.audio_energy).reshape(-1, 2),
            np.asarray(self.video_t), np.asarray(self.video_wire_t),
            np.stack(self.mouths) if self.mouths else np.zeros((0, 1, 1), np.uint8), turns,
            self.events, offset)

    async def close(self) -> None:
        await self.pc.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


class SessionHTTP:
    """The run's HTTP client for one session's calls: adds the session's token (``token``
    from ``POST /v1/sessions``) as ``Authorization: Bearer`` to every request."""

    def __init__(self, http: Any, sid: str, token: str | None) -> None:
        self.http, self.sid = http, sid
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}

    async def post(self, path: str, **kwargs: Any) -> Any:
        return await self.http.post(path, headers=self.headers, **kwargs)

    async def get(self, path: str, **kwargs: Any) -> Any:
        return await self.http.get(path, headers=self.headers, **kwargs)

    async def delete(self, path: str, **kwargs: Any) -> Any:
        return await self.http.delete(path, headers=self.headers, **kwargs)


async def _post(http: Any, path: str, body: dict[str, Any]) -> dict[str, Any]:
    resp = await http.post(path, json=body)
    if resp.status_code >= 300:
        raise BackendError(f"POST {path} answered {resp.status_code}: {resp.text[:200]}")
    return resp.json()


# --- the conversation -----------------------------------------------------------------------


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
