"""The fuzz targets of ``scripts/fuzz.py``: each turns one fuzzer input (bytes) into a call on
a real part of the product and says whether the outcome kept the contract.

A target's :meth:`Target.run` returns the message of an expected refusal (``InputError``, an
HTTP 4xx) or ``None`` for an accepted input, and raises anything else: the runner counts that
as a crash. :class:`Hang` marks a call that ran past the target's time limit.
"""

from __future__ import annotations

import asyncio
import os
import struct
import tempfile
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

from models.errors import InputError

QUESTION = "Can I split my bill into monthly payments?"
SESSION_INPUTS = 1000
"""Inputs one fuzzed session takes before the target replaces it with a fresh one. A session's
animator keeps every state change (models/animate/nonverbal.py SmoothTimeline), so the cost
of a turn grows with the session's age; tens of thousands of turns on one session stall the
event loop for seconds (docs/fuzzing.md)."""


class Hang(Exception):
    """A call ran past the target's per-input time limit."""


class ContractBroken(Exception):
    """The call returned, but not as its contract says (a 500, a reply of an unknown kind)."""


class Target:
    """One fuzz target. Subclasses set the class attributes and implement :meth:`run`."""

    name = ""
    description = ""
    max_len = 4096
    timeout_s = 5.0

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self.background: list[str] = []
        """Failures of tasks nobody awaited (a turn's retrieval, an aiortc transport), which
        the loop would only log; the runner reports them with the input that was running."""
        self.loop.set_exception_handler(self._on_background_error)

    def _on_background_error(self, loop: asyncio.AbstractEventLoop,
                             context: dict[str, Any]) -> None:
        exc = context.get("exception")
        where = ""
        if exc is not None and exc.__traceback__ is not None:
            import traceback

            last = traceback.extract_tb(exc.__traceback__)[-1]
            where = f" at {last.filename.rsplit('/', 2)[-1]}:{last.lineno}"
        what = f"{type(exc).__name__}: {str(exc)[:160]}" if exc else context.get("message")
        self.background.append(f"{what}{where}")

    def setup(self) -> None:
        """Build what the target calls (models, sessions); runs once, before the first input."""

    def seeds(self) -> list[bytes]:
        """Valid inputs the fuzzer starts from and mutates."""
        return []

    def run(self, data: bytes) -> str | None:
        raise NotImplementedError

    def finish(self) -> dict[str, Any]:
        """Checks after the last input (no leaks, other sessions unaffected)."""
        return {}

    def call(self, coro: Any) -> Any:
        """Run ``coro`` on the target's loop, bounded by ``timeout_s``."""
        try:
            return self.loop.run_until_complete(asyncio.wait_for(coro, self.timeout_s))
        except TimeoutError:
            raise Hang(f"no answer within {self.timeout_s} s") from None


class Stack:
    """Real models, a renderer, a gateway and its HTTP app, built once per process."""

    def __init__(self) -> None:
        from configs import load_config
        from deployments.api import create_api
        from deployments.gateway import Gateway, LocalRendererClient
        from deployments.renderer import renderer_from_services
        from deployments.services import build_services
        from deployments.session_store import SQLiteSessionStore

        self.tmp = tempfile.mkdtemp(prefix="avatar-fuzz-")
        config = load_config("local", overrides={
            "models": {"knowledge": {"qdrant_path": os.path.join(self.tmp, "qdrant")}},
            "deployments": {"renderer": {"sessions_per_replica": 4}},
            "conversation": {"session_idle_timeout_s": 86400},
            # The fuzzer opens a session now and then; admission limits are not under test.
            "cluster": {"admission": {"sessions_per_minute_per_ip": 1e6, "burst": 1000}},
        })
        self.services = build_services(config)
        self.store = SQLiteSessionStore(os.path.join(self.tmp, "sessions.sqlite3"))
        self.renderer = renderer_from_services(self.services, self.store, replica_id="fz",
                                               video=False)
        self.gateway = Gateway(config, LocalRendererClient(self.renderer))
        self.app = create_api(self.gateway)

    async def open_session(self) -> str:
        info = await self.renderer.create_session(video=False)
        return str(info["session_id"])


class Survivor:
    """A session opened before the fuzzing that listens to its events throughout; afterwards it
    must still answer a typed question. ``ask`` sends that question (default: straight to the
    renderer) and returns its turn id."""

    def __init__(self, stack: Stack, loop: asyncio.AbstractEventLoop, sid: str | None = None,
                 ask: Callable[[str], Awaitable[int]] | None = None) -> None:
        self.stack, self.loop = stack, loop
        self.sid = sid or loop.run_until_complete(stack.open_session())
        self.ask = ask or (lambda text: stack.renderer.send_text(self.sid, text))
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.task = loop.create_task(self._listen())

    async def _listen(self) -> None:
        async for kind, data in self.stack.renderer.events(self.sid):
            self.events.append((kind, data))

    def check(self) -> dict[str, Any]:
        async def answer() -> dict[str, Any]:
            start = len(self.events)
            turn = await self.ask(QUESTION)
            while True:
                for kind, data in self.events[start:]:
                    if kind == "turn_end" and data.get("turn_id") == turn:
                        return data
                await asyncio.sleep(0.05)

        errors = [d for k, d in self.events if k in ("error", "closed")]
        end = self.loop.run_until_complete(asyncio.wait_for(answer(), 60.0))
        reply = str(end.get("reply", ""))
        return {"survivor_answered": bool(reply) and not end.get("interrupted"),
                "survivor_reply": reply[:80], "survivor_error_events": len(errors)}


class SdpParse(Target):
    """The pure parser layer: ``check_offer`` and aiortc's SDP parser (via ``parse_offer``)."""

    name = "sdp-parse"
    description = "check_offer + aiortc SessionDescription.parse on mutated real offers"
    max_len = 16384
    timeout_s = 2.0

    def seeds(self) -> list[bytes]:
        return [real_offer(self.loop).encode()]

    def run(self, data: bytes) -> str | None:
        from deployments.media.peer import parse_offer

        try:
            parse_offer(data.decode("utf-8", "replace"), "offer")
        except InputError as exc:
            return exc.message
        return None


class SdpPeer(Target):
    """The whole answer path: ``Renderer.connect`` (a MediaPeer, aiortc's
    setRemoteDescription, createAnswer, ICE gathering), closed again after each offer."""

    name = "sdp"
    description = "Renderer.connect -> MediaPeer.answer on mutated real offers (real aiortc)"
    max_len = 16384
    timeout_s = 10.0

    def setup(self) -> None:
        self.stack = Stack()
        self.sid = self.loop.run_until_complete(self.stack.open_session())
        self.fds = _open_fds()

    def seeds(self) -> list[bytes]:
        return [real_offer(self.loop).encode()]

    def run(self, data: bytes) -> str | None:
        session = self.stack.renderer.sessions[self.sid]
        try:
            self.call(self.stack.renderer.connect(self.sid, data.decode("utf-8", "replace")))
        except InputError as exc:
            return exc.message
        finally:
            if session.peer is not None:  # one peer per offer: close it before the next
                self.call(session.peer.close())
                session.peer = None
        return None

    def finish(self) -> dict[str, Any]:
        self.loop.run_until_complete(asyncio.sleep(0.5))  # transports close asynchronously
        return {"open_fds_before": self.fds, "open_fds_after": _open_fds()}


class DataChannel(Target):
    """``MediaPeer._on_message`` with any string or bytes: replies are accepted, pong or error."""

    name = "datachannel"
    description = "MediaPeer._on_message with arbitrary str/bytes on a live session"
    max_len = 12000
    timeout_s = 5.0
    REPLIES = frozenset({"accepted", "pong", "error"})

    def setup(self) -> None:
        import json

        from deployments.media.peer import CHANNEL_EVENTS, MediaPeer

        self.stack = Stack()
        self.survivor = Survivor(self.stack, self.loop)
        self.make_peer = MediaPeer
        self.peer: Any = None
        self.sent: list[str] = []
        self.inputs = self.sessions = 0
        self._connect()
        self.decode = json.loads
        self.events = frozenset(CHANNEL_EVENTS)  # the session's own events go out too

    def _connect(self) -> None:
        """A fresh session with a peer whose data channel records what it sends."""
        if self.peer is not None:
            self.loop.run_until_complete(self.peer.close())
            self.loop.run_until_complete(
                self.stack.renderer.close_session(self.peer.session.session_id))
        sid = self.loop.run_until_complete(self.stack.open_session())
        self.peer = self.make_peer(self.stack.renderer.sessions[sid])
        self.peer._channel = RecordingChannel(self.sent)
        self.sessions += 1

    def seeds(self) -> list[bytes]:
        return [b's{"type": "text", "text": "When are you open?"}', b's{"type": "interrupt"}',
                b's{"type": "ping", "t": 12.5}', b"b\x00\x01", b"n\x02" + b"1" * 20]

    def run(self, data: bytes) -> str | None:
        self.inputs += 1
        if self.inputs % SESSION_INPUTS == 0:
            self._connect()
        self.sent.clear()
        self.call(self.peer._on_message(self.message(data)))
        kinds = [self.decode(m).get("type") for m in self.sent]
        if any(k not in self.REPLIES and k not in self.events for k in kinds):
            raise ContractBroken(f"data channel replied {kinds}")
        errors = [self.decode(m)["message"] for m in self.sent if '"error"' in m[:20]]
        return errors[0] if errors else None

    @staticmethod
    def message(data: bytes) -> object:
        """The first byte picks the form: ``b`` raw bytes, ``n`` the rest nested in as many
        JSON levels as the second byte says (times 16), else the rest as text."""
        mode, rest = data[:1], data[1:]
        if mode == b"b":
            return rest
        if mode == b"n" and rest:
            depth = rest[0] * 16
            inner = rest[1:].decode("utf-8", "replace")
            return '{"type": "ping", "t": ' + "[" * depth + inner + "]" * depth + "}"
        return rest.decode("utf-8", "replace")

    def finish(self) -> dict[str, Any]:
        self.loop.run_until_complete(self.peer.close())
        return {"fuzzed_sessions": self.sessions, **self.survivor.check()}


class RecordingChannel:
    """An open data channel that keeps what the peer sends."""

    readyState = "open"

    def __init__(self, into: list[str]) -> None:
        self.into = into

    def send(self, message: str) -> None:
        self.into.append(message)


class Text(Target):
    """``Conductor.send_text`` of a live session with any unicode, bytes or other values."""

    name = "text"
    description = "Conductor.send_text with arbitrary unicode, control characters, bytes, huge"
    max_len = 8192
    timeout_s = 5.0

    def setup(self) -> None:
        self.stack = Stack()
        self.survivor = Survivor(self.stack, self.loop)
        self.sid: str | None = None
        self.inputs = self.sessions = 0
        self._open()
        self.limit = self.conductor.config.max_text_chars

    def _open(self) -> None:
        """A fresh session to type into (the previous one is closed)."""
        if self.sid is not None:
            self.loop.run_until_complete(self.stack.renderer.close_session(self.sid))
        self.sid = self.loop.run_until_complete(self.stack.open_session())
        self.conductor = self.stack.renderer.sessions[self.sid].conductor
        self.sessions += 1

    def seeds(self) -> list[bytes]:
        return [fdp_seed(b"\x00" + QUESTION.encode(), 0, 0), fdp_seed(b"\xff\xfeabc", 1, 0),
                fdp_seed(b"\x00 \t\n\x07", 0, 0)]

    def run(self, data: bytes) -> str | None:
        import atheris

        self.inputs += 1
        if self.inputs % SESSION_INPUTS == 0:
            self._open()
        fdp = atheris.FuzzedDataProvider(data)
        mode = fdp.ConsumeIntInRange(0, 3)
        repeat = fdp.PickValueInList([1, 1, 1, 2, self.limit, self.limit + 1, 100_000])
        value: object
        if mode == 0:
            value = fdp.ConsumeUnicode(fdp.remaining_bytes()) * repeat
        elif mode == 1:
            value = fdp.ConsumeBytes(fdp.remaining_bytes()) * repeat
        elif mode == 2:
            value = fdp.ConsumeUnicodeNoSurrogates(fdp.remaining_bytes())
        else:
            value = fdp.PickValueInList([None, 0, 1.5, ["a"], {"text": "a"}, b"", bytearray(b"x")])
        try:
            self.call(self.conductor.send_text(value))  # type: ignore[arg-type]
        except InputError as exc:
            return exc.message
        return None

    def finish(self) -> dict[str, Any]:
        return {"fuzzed_sessions": self.sessions, **self.survivor.check()}


class Audio(Target):
    """``validate_pcm`` and ``StreamingASRSession.feed`` (whisper + silero VAD) with arbitrary
    arrays, sample rates and timestamps."""

    name = "audio"
    description = "validate_pcm + StreamingASRSession.feed: any dtype, shape, NaN/inf, rate, pts"
    max_len = 8192
    timeout_s = 10.0
    DTYPES = ("<i2", ">i2", "<f4", "<f8", "<i4", "|u1", "|i1", "<f2", "<c8", "|b1", "<u2")
    RATES: tuple[object, ...] = (16000, 48000, 8000, 44100, 0, -16000, 12345, 16000.0,
                                 1 << 70, True, None, "16000", np.int64(24000), np.uint16(16000))
    PTS: tuple[object, ...] = (0.0, float("nan"), float("inf"), -float("inf"), 1e308,
                               -1e308, 1 << 1100, -5, None, "0", True, np.float32(3.5))

    def setup(self) -> None:
        from models.clock import MediaClock

        self.stack = Stack()
        self.asr = self.stack.services.asr
        self.allowed = self.stack.services.config.conversation.input_sample_rates_hz
        self.clock = MediaClock()
        self.session = self.loop.run_until_complete(self._open())
        self.fed = 0

    async def _open(self) -> Any:
        return self.asr.open_session(self.clock, allowed_rates=self.allowed, max_chunk_ms=1000)

    def seeds(self) -> list[bytes]:
        tone = (8000 * np.sin(np.arange(1600) / 5.0)).astype("<i2").tobytes()
        # dtype, ndim, rate, pick a listed pts, pts, repeat, as a list
        return [fdp_seed(tone, 0, 0, 0, 1, 0, 0, 0),
                fdp_seed(struct.pack("<4f", 0.1, float("nan"), 1.0, -1.0), 2, 0, 0, 1, 1, 0, 0)]

    def run(self, data: bytes) -> str | None:
        from models.audio import validate_pcm
        from models.frames import AudioChunk

        pcm, rate, pts = self.decode(data)
        try:
            validate_pcm(pcm, rate, self.allowed, 1000)  # type: ignore[arg-type]
        except InputError:
            pass
        try:
            self.call(self._feed(AudioChunk(pcm, rate, pts)))  # type: ignore[arg-type]
        except InputError as exc:
            return exc.message
        self.fed += 1
        if self.fed % 500 == 0:  # a fresh session now and then: bounded queued transcriptions
            self.call(self.session.aclose())
            self.session = self.loop.run_until_complete(self._open())
        return None

    async def _feed(self, chunk: Any) -> None:
        self.session.feed(chunk)
        await asyncio.sleep(0)  # let finished utterances move on

    def decode(self, data: bytes) -> tuple[object, object, object]:
        import atheris

        fdp = atheris.FuzzedDataProvider(data)
        dtype = np.dtype(fdp.PickValueInList(list(self.DTYPES)))
        ndim = fdp.PickValueInList([1, 1, 1, 0, 2, 3])
        rate = fdp.PickValueInList(list(self.RATES))
        pts = fdp.PickValueInList(list(self.PTS)) if fdp.ConsumeBool() else fdp.ConsumeFloat()
        repeat = fdp.PickValueInList([1, 1, 1, 100, 3000])
        as_list = fdp.ConsumeIntInRange(0, 15) == 15  # now and then not an array at all
        raw = fdp.ConsumeBytes(fdp.remaining_bytes())
        raw = raw[: len(raw) - len(raw) % dtype.itemsize] * repeat
        arr = np.frombuffer(raw, dtype=dtype)
        if ndim == 0:
            arr = np.asarray(arr[0] if arr.size else 0, dtype=dtype)
        elif ndim > 1:
            arr = arr[: arr.size - arr.size % ndim].reshape(-1, ndim)
        pcm: object = arr.tolist() if as_list else arr
        return pcm, rate, pts


async def make_offer() -> str:
    """A real offer from aiortc (audio sendrecv, video recvonly, a data channel, host
    candidates), as a browser would send it."""
    from aiortc import RTCConfiguration, RTCPeerConnection

    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("audio", direction="sendrecv")
    pc.addTransceiver("video", direction="recvonly")
    pc.createDataChannel("chat")
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    return sdp


def real_offer(loop: asyncio.AbstractEventLoop) -> str:
    """:func:`make_offer` on ``loop``."""
    return loop.run_until_complete(make_offer())


def fdp_seed(body: bytes, *choices: int) -> bytes:
    """A seed for a target that reads ``choices`` with FuzzedDataProvider's integer methods
    (which take bytes from the end of the input, first choice last) and then ``body``."""
    return body + bytes(reversed(choices))


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


TARGETS: dict[str, Callable[[], Target]] = {
    t.name: t for t in (SdpParse, SdpPeer, DataChannel, Text, Audio)
}
"""The targets by name; ``signalling`` lives in :mod:`fuzz_http` (imported by the runner)."""
