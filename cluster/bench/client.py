"""The browser's side of one session for benchmarks and load tests: an aiortc client.

:class:`Client` holds one session over real WebRTC: a :class:`Microphone` track out, the
avatar's audio and video tracks and the data channel in. It decodes what the figures need and
nothing more (the RMS of each audio frame, the mouth region's luma of each video frame) with
arrival times on one monotonic clock (:func:`now`). :class:`SessionHTTP` makes the session's
HTTP calls with its token.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import json
import math
import time
from typing import Any

import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import AudioFrame

from cluster.bench.e2e_metrics import Recording, TurnLog, clock_offset
from cluster.bench.signals import SILENCE_RMS, mouth_box
from deployments.media.peer import set_audio_prefetch
from models.errors import BackendError

RATE = 48000
CLIENT_AUDIO_PREFETCH_FRAMES = 2
"""Audio packets the client holds before decoding: 40 ms, what aiortc holds of video."""
FRAME = 960

def now() -> float:
    """The client's clock (seconds, monotonic)."""
    return time.monotonic()


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
