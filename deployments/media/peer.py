"""One session's WebRTC peer on its renderer replica: media straight to and from the browser.

* Out: the avatar's voice (:class:`~deployments.media.tracks.AvatarAudioTrack` over an
  :class:`~deployments.media.timeline.AudioTimeline`) and face
  (:class:`~deployments.media.tracks.AvatarVideoTrack`), both paced by the session's media
  clock, so the browser's A/V sync follows the same timeline as the reply's phonemes.
* In: the microphone, decoded by aiortc (48 kHz), downmixed and fed to the session's ASR.
* A data channel carries typed text and barge-in from the client, and the session's events
  (transcripts, reply text, state, turn ends with timing marks) back, as JSON.

aiortc has no trickle ICE: :meth:`MediaPeer.answer` returns once ICE gathering is complete,
so the answer carries every candidate.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from deployments.live_session import LiveSession
from deployments.media.encode import EncoderPool, forward_keyframe_requests
from deployments.media.timeline import AudioTimeline
from deployments.media.tracks import AvatarAudioTrack, AvatarVideoTrack
from models.errors import AvatarError, BackendError, InputError
from models.frames import Interrupt, SpeechAudio

log = logging.getLogger(__name__)
MAX_SDP_CHARS = 32_000
MAX_MESSAGE_CHARS = 8_000
_SDP_LINE = re.compile(r"[a-z]=")
CHANNEL_EVENTS = ("transcript", "text_delta", "clause", "state", "interrupt", "turn_end",
                  "error", "closed")
"""Session events sent over the data channel (audio travels on the audio track)."""


def check_offer(sdp: object, kind: object) -> str:
    """The offer's SDP, or InputError saying what is wrong with it."""
    if kind != "offer":
        raise InputError(f"type must be 'offer', got {kind!r:.40}")
    if not isinstance(sdp, str) or not sdp.strip():
        raise InputError("sdp is empty; send the browser's RTCPeerConnection offer")
    if len(sdp) > MAX_SDP_CHARS:
        raise InputError(f"sdp is {len(sdp)} characters; offers longer than "
                         f"{MAX_SDP_CHARS} are refused")
    if not sdp.lstrip().startswith("v=0") or "\nm=" not in sdp.replace("\r\n", "\n"):
        raise InputError("sdp is not a session description (it must start with v=0 and have "
                         "at least one m= line)")
    return sdp


def parse_offer(sdp: object, kind: object) -> Any:
    """The offer parsed by aiortc's SDP parser, or InputError saying what is wrong with it.

    aiortc's parser reports malformed lines with whatever Python raises (ValueError,
    AssertionError, StopIteration, AttributeError...); every one of them becomes an
    InputError that names the offending line where it can."""
    from aiortc.sdp import SessionDescription

    text = check_offer(sdp, kind)
    for number, line in enumerate(text.splitlines(), 1):
        if line and not _SDP_LINE.match(line):
            raise InputError(f"sdp line {number} is not of the form <letter>=<value>: "
                             f"{line[:60]!r}; send the offer exactly as createOffer() made it")
    try:
        parsed = SessionDescription.parse(text)
    except Exception as exc:
        detail = str(exc)[:120] or "a malformed attribute"
        raise InputError(f"the offer could not be parsed ({type(exc).__name__}: {detail}); "
                         "send the offer exactly as createOffer() made it") from None
    for number, media in enumerate(parsed.media, 1):
        if media.dtls is None or not media.dtls.fingerprints:  # else DTLS fails later, unseen
            raise InputError(f"media section {number} ({media.kind}) has no a=fingerprint and "
                             "a=setup; send the offer exactly as createOffer() made it")
    return parsed


MIC_PREFETCH_FRAMES = 1
"""Microphone packets aiortc holds before decoding (its default is 4, 80 ms of Opus): speech
recognition needs the packets in order, not smoothed playout, so one is enough."""


def set_audio_prefetch(pc: Any, frames: int) -> int:
    """Make each audio receiver of ``pc`` decode after ``frames`` further packets instead of
    aiortc's 4. Returns how many receivers changed (0 on an aiortc without that buffer)."""
    from aiortc.jitterbuffer import JitterBuffer

    changed = 0
    for transceiver in pc.getTransceivers():
        receiver = transceiver.receiver
        name = "_RTCRtpReceiver__jitter_buffer"  # aiortc 1.16 keeps it private
        if transceiver.kind == "audio" and hasattr(receiver, name):
            old = getattr(receiver, name)
            setattr(receiver, name, JitterBuffer(capacity=old.capacity, prefetch=frames))
            changed += 1
    return changed


def negotiated_codec(sdp: str, kind: str) -> str | None:
    """The codec an SDP sends first for ``kind`` (e.g. ``VP8``): its m-line's first payload
    type, named by its rtpmap."""
    first: str | None = None
    for line in sdp.splitlines():
        if line.startswith(f"m={kind} "):
            parts = line.split()
            first = parts[3] if len(parts) > 3 else None
        elif first is not None and line.startswith(f"a=rtpmap:{first} "):
            return line.split(" ", 1)[1].split("/", 1)[0]
        elif first is not None and line.startswith("m="):
            return None
    return None


def mic_to_mono(frame: Any) -> tuple[np.ndarray, int]:
    """A decoded microphone frame as int16 mono samples and its rate."""
    samples = frame.to_ndarray()
    channels = len(frame.layout.channels)
    if frame.format.name != "s16":
        raise InputError(f"microphone frames must be s16, got {frame.format.name}")
    pcm = samples.reshape(-1, channels) if samples.shape[0] == 1 else samples.T
    mono = pcm.astype(np.int32).mean(axis=1) if channels > 1 else pcm[:, 0]
    return np.asarray(mono, dtype=np.int16), int(frame.sample_rate)


def _client_time(t: object) -> float | int | None:
    """A ping's ``t`` (the client's clock, echoed back): a finite number or absent."""
    if t is None or (isinstance(t, int) and not isinstance(t, bool) and abs(t) < 2**63):
        return t
    if isinstance(t, float) and math.isfinite(t):
        return t
    raise InputError(f"ping t must be a finite number (the client's clock in ms), got "
                     f"{type(t).__name__}")


class MediaPeer:
    """The WebRTC side of one session (created by the renderer for each offer)."""

    def __init__(self, session: LiveSession, ice_servers: Sequence[dict[str, Any]] = (),
                 fps: int = 25, encoders: EncoderPool | None = None) -> None:
        from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection

        self.session = session
        self.timeline = AudioTimeline()
        servers = [RTCIceServer(**s) for s in ice_servers]
        # An explicit list, even empty: None would make aiortc use a public STUN server.
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=servers))
        self.audio = AvatarAudioTrack(self.timeline, session.clock)
        self.video = AvatarVideoTrack(session.frame_near, session.clock, fps=fps)
        self._tasks: set[asyncio.Task[None]] = set()
        self._channel: Any = None
        self._encoders = encoders
        self.closed = asyncio.Event()
        self.mic_samples = 0
        self.pc.on("track", self._on_track)
        self.pc.on("datachannel", self._on_datachannel)
        self.pc.on("connectionstatechange", self._on_state)
        session.add_listener(self._on_session_event)

    async def answer(self, sdp: str, kind: str) -> dict[str, str]:
        """Apply the client's offer; return the complete answer (all ICE candidates).

        A malformed or inconsistent offer raises InputError; the caller closes the peer."""
        parse_offer(sdp, kind)
        try:
            kinds = await self._negotiate(sdp)
        except InputError:
            raise
        except OSError as exc:
            raise BackendError(f"ICE gathering failed on this renderer: {exc}") from None
        except Exception as exc:  # aiortc checks offers with asserts, ValueErrors, None access
            detail = str(exc)[:120] or "an inconsistent media section"
            raise InputError(f"the offer could not be applied ({type(exc).__name__}: "
                             f"{detail}); send the offer exactly as createOffer() made it"
                             ) from None
        local = self.pc.localDescription
        if self._encoders is not None and "video" in kinds and \
                negotiated_codec(local.sdp, "video") == "VP8":
            # VP8 in a worker process; any other codec stays with aiortc's own encoder.
            try:
                await self._encoders.start()
                self.video.encoder = self._encoders.open()
                forward_keyframe_requests(self.pc, self.video.encoder)
            except BackendError as exc:
                log.warning("encoding this session's video in-process: %s", exc)
        return {"sdp": local.sdp, "type": local.type}

    async def _negotiate(self, sdp: str) -> set[str]:
        """setRemoteDescription, our tracks, createAnswer, setLocalDescription (which waits for
        ICE gathering); returns the offer's media kinds."""
        from aiortc import RTCSessionDescription

        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        set_audio_prefetch(self.pc, MIC_PREFETCH_FRAMES)
        kinds = {t.kind for t in self.pc.getTransceivers()}
        if not kinds & {"audio", "video"}:
            raise InputError("the offer has no audio or video section; add recvonly audio and "
                             "video transceivers before creating it")
        # addTrack reuses the offer's transceiver of the same kind (recvonly -> sendrecv).
        if "audio" in kinds:
            self.pc.addTrack(self.audio)
        if "video" in kinds:
            self.pc.addTrack(self.video)
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        return kinds

    # --- in ---------------------------------------------------------------------------------

    def _on_track(self, track: Any) -> None:
        if track.kind == "audio":
            self._spawn(self._read_mic(track))

    async def _read_mic(self, track: Any) -> None:
        from aiortc.mediastreams import MediaStreamError

        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            pcm, rate = mic_to_mono(frame)
            try:
                self.session.feed_pcm16(pcm.astype("<i2").tobytes(), rate)
                self.mic_samples += len(pcm)
            except InputError as exc:
                self._send("error", {"message": exc.message})

    def _on_datachannel(self, channel: Any) -> None:
        self._channel = channel
        channel.on("message", lambda message: self._spawn(self._on_message(message)))

    async def _on_message(self, message: object) -> None:
        try:
            if not isinstance(message, str) or len(message) > MAX_MESSAGE_CHARS:
                raise InputError(f"data channel messages are JSON text of at most "
                                 f"{MAX_MESSAGE_CHARS} characters")
            try:
                data = json.loads(message)
            except (ValueError, RecursionError):  # also too deep, or a number of 4300+ digits
                raise InputError("data channel message is not JSON (or nested or numbered "
                                 'beyond what JSON decoding allows); send '
                                 '{"type": "text", "text": "..."}') from None
            kind = data.get("type") if isinstance(data, dict) else None
            if kind == "text":
                turn = await self.session.conductor.send_text(data.get("text"))
                self.session.touch()
                self._send("accepted", {"turn_id": turn})
            elif kind == "interrupt":
                await self.session.conductor.interrupt()
            elif kind == "ping":
                self._send("pong", {"t": _client_time(data.get("t")),
                                    "pts_ms": round(self.session.clock.now_ms(), 1)})
            else:
                raise InputError(f"unknown message type {kind!r:.40}; use text, interrupt or "
                                 "ping")
        except AvatarError as exc:
            self._send("error", {"message": exc.message})

    # --- out --------------------------------------------------------------------------------

    def _on_session_event(self, event: object, wire: tuple[str, dict[str, object]] | None) -> None:
        if isinstance(event, SpeechAudio):
            self.timeline.add(event)
        elif isinstance(event, Interrupt):
            self.timeline.interrupt(event.turn_id, event.pts_ms)
        if wire is not None and wire[0] in CHANNEL_EVENTS:
            self._send(*wire)

    def _send(self, kind: str, data: dict[str, object]) -> None:
        channel = self._channel
        if channel is not None and channel.readyState == "open":
            channel.send(json.dumps({"type": kind, **data}, separators=(",", ":")))

    def stats(self) -> dict[str, object]:
        """Media figures of this peer: frames sent and how late they left."""
        from deployments.timing import percentiles

        return {
            "connection": self.pc.connectionState, "mic_samples": self.mic_samples,
            "audio_frames_sent": self.audio.frames_sent,
            "video_frames_sent": self.video.frames_sent,
            "video_frames_skipped": self.video.skipped_frames,
            "audio_send_late_ms": percentiles(self.audio.late_ms, (50, 95, 99)),
            "video_send_late_ms": percentiles(self.video.late_ms, (50, 95, 99)),
            "video_encoder": "aiortc" if self.video.encoder is None
            else f"process {self.video.encoder.index}",
        }

    # --- lifecycle --------------------------------------------------------------------------

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _on_state(self) -> None:
        state = self.pc.connectionState
        if state in ("failed", "closed"):
            await self.close()

    async def close(self) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        self.session.remove_listener(self._on_session_event)
        self.audio.stop()
        self.video.stop()
        if self.video.encoder is not None:
            self.video.encoder.close()
        for task in list(self._tasks):
            task.cancel()
        try:
            await self.pc.close()
        except Exception:  # a half-applied offer can stop aiortc's close() midway
            for dtls in _transports(self.pc):
                with contextlib.suppress(Exception):
                    await dtls.stop()
                with contextlib.suppress(Exception):
                    await dtls.transport.stop()

    def open_transports(self) -> int:
        """ICE transports of this peer that gathered candidates and are not closed yet (each
        holds UDP sockets); 0 after :meth:`close`."""
        return sum(1 for dtls in _transports(self.pc) if dtls.transport.state != "closed"
                   and dtls.transport.iceGatherer.state != "new")


def _transports(pc: Any) -> list[Any]:
    """The DTLS transports of ``pc`` (media and data channel) that exist."""
    found = [t.receiver.transport for t in pc.getTransceivers()]
    if pc.sctp is not None:
        found.append(pc.sctp.transport)
    return [t for t in found if t is not None and getattr(t, "transport", None) is not None]

