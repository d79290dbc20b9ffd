"""A real WebRTC call into a renderer (aiortc on both ends, UDP on this machine): a spoken
question over the microphone track gets a spoken, lip-moving answer on the audio and video
tracks; typed text and barge-in work over the data channel; hang-up frees everything."""

from __future__ import annotations

import asyncio
import fractions
import json

import numpy as np
import pytest

aiortc = pytest.importorskip("aiortc")

from aiortc import RTCPeerConnection, RTCSessionDescription  # noqa: E402
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack  # noqa: E402
from av import AudioFrame  # noqa: E402

from configs import load_config  # noqa: E402
from deployments.renderer import renderer_from_services  # noqa: E402
from deployments.services import build_services  # noqa: E402
from deployments.session_store import SQLiteSessionStore  # noqa: E402
from models.audio import resample  # noqa: E402
from tests.speech import silence, speak  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.slow]
RATE = 48000


class Microphone(MediaStreamTrack):
    """Plays PCM (48 kHz mono int16) at real time, then silence."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self.pcm = np.zeros(0, dtype=np.int16)
        self.pos = 0
        self.sent = 0
        self.start: float | None = None

    def say(self, pcm: np.ndarray) -> None:
        self.pcm = np.concatenate([self.pcm[self.pos:], pcm])
        self.pos = 0

    async def recv(self) -> AudioFrame:
        loop = asyncio.get_running_loop()
        if self.start is None:
            self.start = loop.time()
        wait = self.start + self.sent / RATE - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)
        chunk = self.pcm[self.pos:self.pos + 960]
        self.pos += len(chunk)
        chunk = np.pad(chunk, (0, 960 - len(chunk)))
        frame = AudioFrame.from_ndarray(chunk.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = RATE
        frame.pts = self.sent
        frame.time_base = fractions.Fraction(1, RATE)
        self.sent += 960
        return frame


class Client:
    """The browser's side: sends the microphone, receives audio, video and events."""

    def __init__(self) -> None:
        self.pc = RTCPeerConnection()
        self.mic = Microphone()
        self.pc.addTrack(self.mic)
        self.pc.addTransceiver("video", direction="recvonly")
        self.channel = self.pc.createDataChannel("events")
        self.events: list[dict] = []
        self.audio_rms: list[float] = []
        self.frames: list[np.ndarray] = []
        self.tasks: list[asyncio.Task] = []
        self.opened = asyncio.Event()
        self.channel.on("open", self.opened.set)
        self.channel.on("message", lambda m: self.events.append(json.loads(m)))
        self.pc.on("track", self._on_track)

    def _on_track(self, track) -> None:
        self.tasks.append(asyncio.ensure_future(self._read(track)))

    async def _read(self, track) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            if track.kind == "audio":
                samples = frame.to_ndarray().astype(np.float32)
                self.audio_rms.append(float(np.sqrt(np.mean(samples ** 2))))
            else:
                self.frames.append(frame.to_ndarray(format="rgb24"))

    async def wait_for(self, kind: str, timeout_s: float = 40.0, after: int = 0) -> dict:
        async def poll() -> dict:
            while True:
                for event in self.events[after:]:
                    if event["type"] == kind:
                        return event
                await asyncio.sleep(0.05)

        return await asyncio.wait_for(poll(), timeout_s)

    async def close(self) -> None:
        await self.pc.close()
        for task in self.tasks:
            task.cancel()


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    qdrant = tmp_path_factory.mktemp("qdrant")
    cfg = load_config("local", overrides={"models": {"knowledge": {"qdrant_path": str(qdrant)}}})
    built = build_services(cfg)
    yield built
    asyncio.run(built.aclose())


async def test_a_webrtc_call_hears_the_question_and_shows_and_speaks_the_answer(services,
                                                                                tmp_path):
    store = SQLiteSessionStore(tmp_path / "sessions.sqlite3")
    renderer = renderer_from_services(services, store, replica_id="r1")
    sid = (await renderer.create_session(video=True))["session_id"]
    client = Client()
    try:
        offer = await client.pc.createOffer()
        await client.pc.setLocalDescription(offer)
        answer = await renderer.connect(sid, client.pc.localDescription.sdp, "offer")
        await client.pc.setRemoteDescription(RTCSessionDescription(**answer))
        await asyncio.wait_for(client.opened.wait(), 20)

        question = resample(np.concatenate([silence(300), speak("Where can I park?"),
                                            silence(900)]), 16000, RATE)
        client.mic.say(question.astype(np.int16))
        transcript = await client.wait_for("transcript")
        assert "park" in transcript["text"].lower()
        end = await client.wait_for("turn_end")
        assert "park" in end["reply"].lower() and not end["interrupted"]
        await asyncio.sleep(1.5)  # let the reply play out on the audio track
        assert max(client.audio_rms) > 300, "no speech reached the client's audio track"
        assert len(client.frames) >= 25, "the video track did not keep streaming"
        assert client.frames[-1].shape[2] == 3
        moving = [np.abs(a.astype(int) - b.astype(int)).mean()
                  for a, b in zip(client.frames, client.frames[1:], strict=False)]
        assert max(moving) > 0.5, "the face never moved"

        # Typed text over the data channel; then barge-in stops the reply.
        seen = len(client.events)
        client.channel.send(json.dumps({"type": "text", "text": "What should I bring to my "
                                        "first appointment and how early should I arrive?"}))
        await client.wait_for("accepted", after=seen)
        await client.wait_for("clause", after=seen)
        client.channel.send(json.dumps({"type": "interrupt"}))
        await client.wait_for("interrupt", after=seen)
        client.channel.send("not json")
        error = await client.wait_for("error", after=seen)
        assert "JSON" in error["message"]
    finally:
        await client.close()
    await asyncio.sleep(0.5)
    peer = renderer.sessions[sid].peer
    assert peer.closed.is_set() or peer.pc.connectionState in ("closed", "failed")
    await renderer.close_session(sid)
    assert renderer.sessions == {}
    await renderer.aclose()
    store.close()


async def test_a_malformed_offer_is_refused_and_the_session_goes_on(services, tmp_path):
    from models.errors import InputError

    store = SQLiteSessionStore(tmp_path / "sessions.sqlite3")
    renderer = renderer_from_services(services, store, replica_id="r1", video=False)
    sid = (await renderer.create_session(video=False))["session_id"]
    for sdp, words in [("", "empty"), ("hello", "v=0"), ("v=0\r\no=- 1 1 IN IP4 0\r\n", "m=")]:
        with pytest.raises(InputError, match=words):
            await renderer.connect(sid, sdp, "offer")
    with pytest.raises(InputError, match="offer"):
        await renderer.connect(sid, "v=0\r\nm=audio 9 UDP 0\r\n", "answer")
    assert await renderer.send_text(sid, "Hello") >= 1
    await renderer.aclose()
    store.close()


async def test_video_encoded_in_a_worker_process_reaches_the_client(services, tmp_path):
    config = services.config.model_copy(update={"cluster": services.config.cluster.model_copy(
        update={"webrtc": services.config.cluster.webrtc.model_copy(
            update={"encoder_processes": 1})})})
    store = SQLiteSessionStore(tmp_path / "sessions.sqlite3")
    renderer = renderer_from_services(services, store, replica_id="r1", config=config)
    sid = (await renderer.create_session(video=True))["session_id"]
    client = Client()
    try:
        offer = await client.pc.createOffer()
        await client.pc.setLocalDescription(offer)
        answer = await renderer.connect(sid, client.pc.localDescription.sdp, "offer")
        await client.pc.setRemoteDescription(RTCSessionDescription(**answer))
        await asyncio.wait_for(client.opened.wait(), 20)
        assert renderer.stats()["encoder_processes"] == [1]
        client.channel.send(json.dumps({"type": "text", "text": "Where can I park?"}))
        await client.wait_for("turn_end")
        await asyncio.sleep(1.0)
        assert len(client.frames) >= 25, "no video decoded from the encoder process"
        moving = [np.abs(a.astype(int) - b.astype(int)).mean()
                  for a, b in zip(client.frames, client.frames[1:], strict=False)]
        assert max(moving) > 0.5, "the face never moved"
        encoder = renderer.sessions[sid].peer.video.encoder
        assert encoder is not None and encoder.frames >= len(client.frames)
    finally:
        await client.close()
    await renderer.close_session(sid)
    assert renderer.stats()["encoder_processes"] == [0]
    await renderer.aclose()
    store.close()
