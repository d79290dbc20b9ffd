"""Network probes: how a client measures RTT, jitter and loss to each region's gateway before
it asks for a session (docs/placement-probes.md).

Server side: :class:`UdpEchoProtocol` (``start_udp_echo``) and :func:`serve_probe_websocket`
(mounted at ``/v1/probe`` by :mod:`cluster.placement.probe_api`) echo each probe with the
server's receive time. Client side: :func:`probe_udp` and :func:`probe_ws` send ``count``
probes every ``interval_ms`` and summarise the echoes in a :class:`ProbeResult`, which
:meth:`ProbeResult.to_probe` turns into the scheduler's :class:`~cluster.placement.model.Probe`.

Wire format (UDP datagram or WebSocket text message), JSON: the client sends
``{"seq": n, "t": client_ms}`` and the server answers ``{"seq": n, "t": client_ms, "ts":
server_ms}``. Over UDP the request carries a ``"pad"`` string and the server answers only when
its reply is no larger than the request, so the echo cannot amplify a spoofed flood.

Jitter is RFC 3550 interarrival jitter of the *downlink* (server -> client, the direction the
avatar's media takes): the transit of echo i is ``received_i - ts_i``, ``D(i-1,i)`` the change
of transit between consecutive echoes and ``J += (|D| - J) / 16``. The two clocks need not be
synchronised: their offset cancels in ``D``. The UDP client reads its receive times from the
kernel's per-packet stamps (``SO_TIMESTAMPNS``) where it can, so its own scheduling delays do
not count as jitter.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from cluster.placement.probe_stats import (
    EchoSample,
    ProbeResult,
    RttStats,
    mean_abs_delta,
    percentile,
    rfc3550_jitter,
    summarize,
)
from models.errors import BackendError, BackendUnavailable, InputError

__all__ = [
    "EchoSample",
    "ProbeResult",
    "ProbeSocket",
    "RttStats",
    "UdpEchoProtocol",
    "echo_reply",
    "enable_kernel_timestamps",
    "mean_abs_delta",
    "percentile",
    "probe_udp",
    "probe_ws",
    "recv_stamped",
    "rfc3550_jitter",
    "serve_probe_websocket",
    "start_udp_echo",
    "summarize",
    "validate_probe_args",
]

MIN_COUNT, MAX_COUNT = 2, 2000
MIN_INTERVAL_MS, MAX_INTERVAL_MS = 1.0, 1000.0
MAX_TIMEOUT_S = 30.0
MAX_MESSAGE_BYTES = 512
UDP_REQUEST_BYTES = 128
"""A UDP probe is padded to this size: larger than any echo, so the server always answers."""

Clock = Callable[[], float]


# --- server side ---------------------------------------------------------------------------


def echo_reply(message: bytes | str, server_ms: float) -> dict[str, Any]:
    """The echo of one probe message; raises :class:`InputError` for a malformed one."""
    if len(message) > MAX_MESSAGE_BYTES:
        raise InputError(f"probe message is {len(message)} bytes; send at most "
                         f"{MAX_MESSAGE_BYTES}")
    try:
        data = json.loads(message)
    except (ValueError, UnicodeDecodeError):
        raise InputError('probe message is not JSON; send {"seq": <int>, "t": <ms>}') from None
    seq, sent = (data.get("seq"), data.get("t")) if isinstance(data, dict) else (None, None)
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        raise InputError(f'probe "seq" must be an integer >= 0, got {seq!r}')
    if not isinstance(sent, int | float) or isinstance(sent, bool) or not math.isfinite(sent):
        raise InputError(f'probe "t" must be the client send time in ms, got {sent!r}')
    return {"seq": seq, "t": sent, "ts": server_ms}


class UdpEchoProtocol(asyncio.DatagramProtocol):
    """Echo each probe datagram with the server's time (``clock()`` seconds -> ms) read just
    before the echo is sent, so that ``ts`` marks the start of the downlink: a late wake-up of
    this process shows in the uplink figures, not in the downlink jitter. Malformed probes and
    probes smaller than their echo are dropped silently."""

    def __init__(self, clock: Clock = time.time) -> None:
        self.clock = clock
        self.transport: asyncio.DatagramTransport | None = None
        self.echoed = 0
        self.dropped = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        server_ms = self.clock() * 1000.0
        try:
            reply = json.dumps(echo_reply(data, server_ms)).encode()
        except InputError:
            self.dropped += 1
            return
        if len(reply) > len(data) or self.transport is None:
            self.dropped += 1  # never send more than was received
            return
        self.transport.sendto(reply, addr)
        self.echoed += 1


async def start_udp_echo(host: str = "0.0.0.0", port: int = 0, *, clock: Clock = time.time
                         ) -> tuple[asyncio.DatagramTransport, UdpEchoProtocol]:
    """Serve UDP probes on ``host:port`` (0: any free port; read it from
    ``transport.get_extra_info("sockname")``). Close the transport to stop."""
    loop = asyncio.get_running_loop()
    try:
        transport, protocol = await loop.create_datagram_endpoint(
            lambda: UdpEchoProtocol(clock), local_addr=(host, port))
    except OSError as exc:
        raise BackendUnavailable(f"cannot serve UDP probes on {host}:{port}: {exc}; choose a "
                                 "free port and an address of this host") from None
    return transport, protocol


class ProbeSocket(Protocol):
    """The part of a WebSocket the echo handler uses (Starlette's ``WebSocket`` fits)."""

    async def accept(self) -> None: ...
    async def receive_text(self) -> str: ...
    async def send_text(self, data: str) -> None: ...
    async def close(self, code: int = 1000) -> None: ...


async def serve_probe_websocket(ws: ProbeSocket, *, clock: Clock = time.time,
                                max_messages: int = MAX_COUNT, idle_timeout_s: float = 10.0
                                ) -> int:
    """Echo probes on an accepted-here WebSocket until the client goes quiet for
    ``idle_timeout_s`` or has sent ``max_messages``; a malformed probe gets ``{"error": ...}``.
    Returns the number of probes echoed; a client disconnect propagates (the framework's
    exception)."""
    await ws.accept()
    echoed = 0
    for _ in range(max_messages):
        try:
            message = await asyncio.wait_for(ws.receive_text(), idle_timeout_s)
        except TimeoutError:
            break
        server_ms = clock() * 1000.0
        try:
            await ws.send_text(json.dumps(echo_reply(message, server_ms)))
            echoed += 1
        except InputError as exc:
            await ws.send_text(json.dumps({"error": exc.message}))
    await ws.close(1000)
    return echoed


# --- client side ---------------------------------------------------------------------------


def validate_probe_args(count: int, interval_ms: float, timeout_s: float) -> None:
    """Raise :class:`InputError` saying which probe setting to change."""
    if not isinstance(count, int) or not MIN_COUNT <= count <= MAX_COUNT:
        raise InputError(f"probe count must be an integer between {MIN_COUNT} and {MAX_COUNT} "
                         f"(jitter needs at least two echoes), got {count!r}")
    if not isinstance(interval_ms, int | float) or not (
            MIN_INTERVAL_MS <= interval_ms <= MAX_INTERVAL_MS):
        raise InputError(f"probe interval_ms must be between {MIN_INTERVAL_MS:g} and "
                         f"{MAX_INTERVAL_MS:g} ms, got {interval_ms!r}")
    if not isinstance(timeout_s, int | float) or not 0 < timeout_s <= MAX_TIMEOUT_S:
        raise InputError(f"probe timeout_s must be > 0 and <= {MAX_TIMEOUT_S:g} s, got "
                         f"{timeout_s!r}")


class _Collector:
    """Send times and echoes of one probe run, keyed by sequence number."""

    def __init__(self, count: int, clock: Clock) -> None:
        self.clock = clock
        self.sent: dict[int, float] = {}
        self.echo: dict[int, tuple[float, float]] = {}
        self.count = count
        self.all_back = asyncio.Event()

    def request(self, seq: int) -> dict[str, Any]:
        now = self.clock() * 1000.0
        self.sent[seq] = now
        return {"seq": seq, "t": now}

    def received(self, message: bytes | str, received_ms: float) -> None:
        try:
            data = json.loads(message)
            seq, server_ms = int(data["seq"]), float(data["ts"])
        except (ValueError, TypeError, KeyError, UnicodeDecodeError):
            return
        if seq in self.sent and seq not in self.echo:
            self.echo[seq] = (server_ms, received_ms)
            if len(self.echo) == self.count:
                self.all_back.set()

    def samples(self) -> list[EchoSample]:
        out = []
        for seq, sent in self.sent.items():
            server_ms, received_ms = self.echo.get(seq, (None, None))
            out.append(EchoSample(seq, sent, server_ms, received_ms))
        return out


async def _run(collector: _Collector, send: Callable[[dict[str, Any]], Any],
               interval_ms: float, timeout_s: float) -> None:
    """Send on a fixed schedule (not waiting for echoes), then wait for the stragglers."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    for seq in range(collector.count):
        delay = start + seq * interval_ms / 1000.0 - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        result = send(collector.request(seq))
        if asyncio.iscoroutine(result):
            await result
    try:
        await asyncio.wait_for(collector.all_back.wait(), timeout_s)
    except TimeoutError:
        pass


_SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux's value (x86-64, arm64)


def enable_kernel_timestamps(sock: socket.socket) -> bool:
    """Ask the kernel to stamp each datagram ``sock`` receives (``SO_TIMESTAMPNS``, on
    CLOCK_REALTIME = :func:`time.time`): the stamp is taken when the packet arrives, not when
    this process gets round to reading it. False where the platform has no such option."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
    except OSError:
        return False
    return True


def recv_stamped(sock: socket.socket, bufsize: int = 65536) -> tuple[bytes, Any, int | None]:
    """One datagram, its sender and its kernel receive time in ns since the epoch (None when
    it carries no stamp). Raises :class:`BlockingIOError` when none is waiting."""
    data, ancdata, _flags, addr = sock.recvmsg(bufsize, socket.CMSG_SPACE(16))
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == _SO_TIMESTAMPNS and len(payload) >= 16:
            sec, nsec = struct.unpack("qq", payload[:16])
            return data, addr, sec * 1_000_000_000 + nsec
    return data, addr, None


async def probe_udp(host: str, port: int, count: int = 50, interval_ms: float = 20.0,
                    timeout_s: float = 1.0, *, clock: Clock | None = None,
                    wall_clock: Clock = time.time, keep_samples: bool = True) -> ProbeResult:
    """Send ``count`` UDP probes to ``host:port`` every ``interval_ms`` and wait up to
    ``timeout_s`` after the last for the echoes; an echo later than that counts as lost.

    ``clock`` None: send times from :func:`time.time` and receive times from the kernel's
    stamps where it gives them (so a busy client does not add its own scheduling delay to the
    figures); a given clock (seconds) is used for both instead."""
    validate_probe_args(count, interval_ms, timeout_s)
    loop = asyncio.get_running_loop()
    read_clock = clock or time.time
    collector = _Collector(count, read_clock)
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise BackendUnavailable(f"cannot probe udp://{host}:{port}: {exc}") from None
    try:
        sock.setblocking(False)
        sock.connect(address)
    except OSError as exc:
        sock.close()
        raise BackendUnavailable(f"cannot probe udp://{host}:{port}: {exc}") from None
    if clock is None:
        enable_kernel_timestamps(sock)

    def readable() -> None:
        while True:
            try:
                data, _, stamp_ns = recv_stamped(sock, 2048)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # ICMP unreachable: that probe counts as lost
                continue
            received = stamp_ns / 1e6 if stamp_ns is not None else read_clock() * 1000.0
            collector.received(data, received)

    def send(request: dict[str, Any]) -> None:
        text = json.dumps(request)
        request["pad"] = " " * max(0, UDP_REQUEST_BYTES - len(text) - 10)
        with contextlib.suppress(OSError):  # a refused or full socket: the probe is lost
            sock.send(json.dumps(request).encode())

    loop.add_reader(sock.fileno(), readable)
    try:
        await _run(collector, send, interval_ms, timeout_s)
    finally:
        loop.remove_reader(sock.fileno())
        sock.close()
    return summarize(collector.samples(), target=f"udp://{host}:{port}", transport="udp",
                     measured_at_s=wall_clock(), keep_samples=keep_samples)


async def probe_ws(url: str, count: int = 50, interval_ms: float = 20.0,
                   timeout_s: float = 1.0, *, clock: Clock = time.time,
                   wall_clock: Clock = time.time, keep_samples: bool = True) -> ProbeResult:
    """Probe a gateway's ``/v1/probe`` WebSocket (``ws://`` or ``wss://`` URL). Over TCP a
    lost packet is retransmitted, so loss shows up as RTT and jitter, rarely as loss."""
    validate_probe_args(count, interval_ms, timeout_s)
    if not url.startswith(("ws://", "wss://")):
        raise InputError(f"probe url must start with ws:// or wss://, got {url!r}")
    from websockets.asyncio.client import connect
    from websockets.exceptions import WebSocketException

    collector = _Collector(count, clock)
    try:
        ws = await asyncio.wait_for(connect(url, open_timeout=None), timeout_s)
    except (OSError, TimeoutError, WebSocketException) as exc:
        raise BackendUnavailable(f"cannot open probe websocket {url}: {exc!r}") from None

    async def receive() -> None:
        async for message in ws:
            collector.received(message, collector.clock() * 1000.0)

    reader = asyncio.create_task(receive())
    try:
        await _run(collector, lambda request: ws.send(json.dumps(request)), interval_ms,
                   timeout_s)
    except WebSocketException as exc:
        raise BackendError(f"probe websocket {url} failed: {exc!r}") from None
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, WebSocketException):
            await reader
        await ws.close()
    return summarize(collector.samples(), target=url, transport="ws",
                     measured_at_s=wall_clock(), keep_samples=keep_samples)


# --- command line --------------------------------------------------------------------------


def _host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


async def _serve(host: str, port: int, lifetime_s: float | None) -> None:
    transport, _ = await start_udp_echo(host, port)
    bound = transport.get_extra_info("sockname")
    print(f"ready udp {bound[0]}:{bound[1]}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), lifetime_s)
    transport.close()


async def _probe_all(args: argparse.Namespace) -> None:
    for host, port in args.targets:  # one after the other: probes do not disturb each other
        result = await probe_udp(host, port, args.count, args.interval_ms, args.timeout_s)
        print(json.dumps(result.to_dict(samples=args.samples)), flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """``serve HOST:PORT``: a UDP probe echo server (prints ``ready udp HOST:PORT``);
    ``udp HOST:PORT...``: probe each target in turn and print one JSON result per line."""
    parser = argparse.ArgumentParser(prog="python -m cluster.placement.probe")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve UDP probes")
    serve.add_argument("listen", type=_host_port)
    serve.add_argument("--lifetime-s", type=float, default=None, help="exit after this long")
    udp = sub.add_parser("udp", help="probe UDP echo servers")
    udp.add_argument("targets", type=_host_port, nargs="+")
    udp.add_argument("--count", type=int, default=50)
    udp.add_argument("--interval-ms", type=float, default=20.0)
    udp.add_argument("--timeout-s", type=float, default=1.0)
    udp.add_argument("--samples", action="store_true", help="include every echo's timestamps")
    args = parser.parse_args(argv)
    try:
        if args.command == "serve":
            asyncio.run(_serve(*args.listen, args.lifetime_s))
        else:
            asyncio.run(_probe_all(args))
    except (InputError, BackendUnavailable) as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
