"""A user-space UDP impairment relay: what ``tc qdisc ... netem delay D J distribution normal
loss L`` does to a link, for kernels without ``sch_netem``.

``python -m cluster.placement.impair --listen 10.0.0.2:9001 --forward 127.0.0.1:9000
--delay-ms 25 --jitter-ms 15 --loss 0.1`` relays each client's datagrams to ``--forward`` (one
upstream socket per client, like a NAT) and the answers back. Datagrams in the impaired
direction (``--direction``, default ``down``: forward target -> client, like netem on the
server's egress) are dropped with probability ``loss`` and otherwise sent after a delay drawn
per datagram, as netem draws it: ``normal`` = N(delay, jitter^2), ``uniform`` = U(delay +-
jitter), clipped at 0. Like netem without a rate limit, each datagram leaves at its own time,
so jitter larger than the spacing reorders them. A datagram's delay counts from the kernel's
receive stamp, and the timers run on ``select()`` (microseconds) rather than epoll
(milliseconds). ``--log`` writes one JSON line per impaired datagram, ``{"n", "seq",
"delay_ms", "held_ms"}``: the delay drawn and the time it was really held (arrival to send;
both null when dropped; ``seq`` read from a probe's JSON), so a test can compare what a probe
measured with what was applied.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import random
import selectors
import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, TextIO

from cluster.placement.probe import enable_kernel_timestamps, recv_stamped
from models.errors import BackendUnavailable, InputError

Distribution = Literal["normal", "uniform"]
Direction = Literal["down", "up", "both"]
MAX_DELAY_MS = 10_000.0


@dataclass(frozen=True, slots=True)
class Impairment:
    """netem's delay, jitter, distribution and loss for one direction of one link."""

    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    loss: float = 0.0
    distribution: Distribution = "normal"

    def __post_init__(self) -> None:
        for key, top in (("delay_ms", MAX_DELAY_MS), ("jitter_ms", MAX_DELAY_MS), ("loss", 1.0)):
            value = getattr(self, key)
            if not isinstance(value, int | float) or not 0.0 <= value <= top:
                raise InputError(f"impairment {key} must be between 0 and {top:g}, got "
                                 f"{value!r}")
        if self.distribution not in ("normal", "uniform"):
            raise InputError(f"impairment distribution must be 'normal' or 'uniform', got "
                             f"{self.distribution!r}")

    def draw(self, rng: random.Random) -> float | None:
        """One datagram's delay in ms, or None when it is lost."""
        if self.loss and rng.random() < self.loss:
            return None
        if not self.jitter_ms:
            return self.delay_ms
        if self.distribution == "normal":
            return max(0.0, rng.gauss(self.delay_ms, self.jitter_ms))
        return max(0.0, rng.uniform(self.delay_ms - self.jitter_ms,
                                    self.delay_ms + self.jitter_ms))

    def cdf(self, x_ms: float) -> float:
        """P(delay <= x) of a delivered datagram (the clipping at 0 puts a mass at 0)."""
        if x_ms < 0:
            return 0.0
        d, j = self.delay_ms, self.jitter_ms
        if not j:
            return 1.0 if x_ms >= d else 0.0
        if self.distribution == "normal":
            return 0.5 * (1.0 + math.erf((x_ms - d) / (j * math.sqrt(2.0))))
        return min(1.0, max(0.0, (x_ms - d + j) / (2.0 * j)))

    def expected_jitter_ms(self, steps: int = 4000) -> float:
        """What RFC 3550 jitter converges to under this impairment: ``E|d_i - d_(i-1)|`` for
        independent delays, ``2 * integral F(x) (1 - F(x)) dx`` (Gini's mean difference).
        Unclipped normal: ``2 * jitter / sqrt(pi)`` (1.128 jitter); uniform: ``2/3 jitter``."""
        j = self.jitter_ms
        if not j:
            return 0.0
        spread = 8.0 * j if self.distribution == "normal" else j
        lo, hi = max(0.0, self.delay_ms - spread), self.delay_ms + spread
        h = (hi - lo) / steps
        values = [(f := self.cdf(lo + k * h)) * (1.0 - f) for k in range(steps + 1)]
        return 2.0 * h * (sum(values) - 0.5 * (values[0] + values[-1]))


class ImpairRelay:
    """The relay, in the running event loop: ``await start()`` binds ``listen`` and returns
    the bound address; ``close()`` stops it. ``log`` (a text file) gets one JSON line per
    impaired datagram."""

    def __init__(self, listen: tuple[str, int], forward: tuple[str, int],
                 impairment: Impairment, *, direction: Direction = "down",
                 seed: int | None = None, log: TextIO | None = None,
                 max_clients: int = 64) -> None:
        if direction not in ("down", "up", "both"):
            raise InputError(f"direction must be 'down', 'up' or 'both', got {direction!r}")
        self.listen, self.forward, self.impairment = listen, forward, impairment
        self.direction, self.log, self.max_clients = direction, log, max_clients
        self.rng = random.Random(seed)
        self.applied: list[float | None] = []
        self._sock: socket.socket | None = None
        self._upstream: dict[tuple[str, int], socket.socket] = {}
        self._pending: set[asyncio.TimerHandle] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> tuple[str, int]:
        """Bind the listening socket and start relaying."""
        self._loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.bind(self.listen)
        except OSError as exc:
            sock.close()
            raise BackendUnavailable(f"relay cannot listen on {self.listen}: {exc}") from None
        sock.setblocking(False)
        enable_kernel_timestamps(sock)
        self._sock = sock
        self._loop.add_reader(sock.fileno(), self._from_clients)
        return sock.getsockname()

    def close(self) -> None:
        """Stop relaying; datagrams still delayed are dropped."""
        for handle in self._pending:
            handle.cancel()
        self._pending.clear()
        for sock in [self._sock, *self._upstream.values()]:
            if sock is not None and self._loop is not None:
                self._loop.remove_reader(sock.fileno())
                sock.close()
        self._sock, self._upstream = None, {}

    def _from_clients(self) -> None:
        assert self._sock is not None
        while True:
            try:
                data, addr, stamp_ns = recv_stamped(self._sock)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue
            up = self._upstream.get(addr)
            if up is None:
                if len(self._upstream) >= self.max_clients:
                    continue
                up = self._upstream[addr] = self._connect(addr)
            self._relay(data, up.send, self.direction != "down", stamp_ns)

    def _connect(self, client: tuple[str, int]) -> socket.socket:
        assert self._loop is not None
        up = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        up.setblocking(False)
        up.connect(self.forward)
        enable_kernel_timestamps(up)
        down = self._sock

        def from_server() -> None:
            while True:
                try:
                    data, _, stamp_ns = recv_stamped(up)
                except (BlockingIOError, InterruptedError):
                    return
                except OSError:  # ICMP unreachable from the forward target
                    continue
                self._relay(data, lambda d: down.sendto(d, client) if down else None,
                            self.direction != "up", stamp_ns)

        self._loop.add_reader(up.fileno(), from_server)
        return up

    def _relay(self, data: bytes, send: Callable[[bytes], object], impaired: bool,
               stamp_ns: int | None) -> None:
        """Send now, drop, or hold until the datagram's arrival (the kernel's stamp when there
        is one) plus its drawn delay."""
        assert self._loop is not None
        if not impaired:
            self._send(send, data)
            return
        delay = self.impairment.draw(self.rng)
        self.applied.append(delay)
        n = len(self.applied) - 1
        if delay is None:
            self._log(n, data, None, None)
            return
        now_ns = time.time_ns()
        arrived_ns = now_ns if stamp_ns is None else min(stamp_ns, now_ns)
        handle: asyncio.TimerHandle

        def fire() -> None:
            self._pending.discard(handle)
            self._send(send, data)
            self._log(n, data, delay, (time.time_ns() - arrived_ns) / 1e6)

        due = self._loop.time() + (delay - (now_ns - arrived_ns) / 1e6) / 1000.0
        handle = self._loop.call_at(due, fire)
        self._pending.add(handle)

    def _log(self, n: int, data: bytes, delay: float | None, held: float | None) -> None:
        if self.log is not None:
            self.log.write(json.dumps({"n": n, "seq": _seq(data), "delay_ms": delay,
                                       "held_ms": held}) + "\n")

    @staticmethod
    def _send(send: Callable[[bytes], object], data: bytes) -> None:
        with contextlib.suppress(OSError):  # a full or refused socket loses the datagram
            send(data)


def _seq(data: bytes) -> int | None:
    """The ``seq`` of a probe datagram, None for anything else."""
    try:
        seq = json.loads(data).get("seq")
    except (ValueError, UnicodeDecodeError, AttributeError):
        return None
    return seq if isinstance(seq, int) else None


def _precise_loop() -> asyncio.AbstractEventLoop:
    return asyncio.SelectorEventLoop(selectors.SelectSelector())


def _host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


async def _run(args: argparse.Namespace, log: TextIO | None) -> None:
    impairment = Impairment(args.delay_ms, args.jitter_ms, args.loss, args.distribution)
    relay = ImpairRelay(args.listen, args.forward, impairment, direction=args.direction,
                        seed=args.seed, log=log)
    host, port = await relay.start()
    print(f"ready relay {host}:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), args.lifetime_s)
    relay.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the relay until SIGTERM/SIGINT or ``--lifetime-s``."""
    parser = argparse.ArgumentParser(prog="python -m cluster.placement.impair",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", type=_host_port, required=True, help="HOST:PORT to bind")
    parser.add_argument("--forward", type=_host_port, required=True, help="HOST:PORT to relay to")
    parser.add_argument("--delay-ms", type=float, default=0.0)
    parser.add_argument("--jitter-ms", type=float, default=0.0)
    parser.add_argument("--loss", type=float, default=0.0, help="fraction 0..1")
    parser.add_argument("--distribution", choices=["normal", "uniform"], default="normal")
    parser.add_argument("--direction", choices=["down", "up", "both"], default="down")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--log", default=None, help="JSON lines of applied delays")
    parser.add_argument("--lifetime-s", type=float, default=None, help="exit after this long")
    args = parser.parse_args(argv)
    try:
        with contextlib.ExitStack() as stack:
            log = (stack.enter_context(open(args.log, "w", buffering=1, encoding="utf-8"))
                   if args.log else None)
            # select() sleeps to the microsecond; epoll (asyncio's default) to the millisecond,
            # which would add up to 1 ms to every delay.
            with asyncio.Runner(loop_factory=_precise_loop) as runner:
                runner.run(_run(args, log))
    except (InputError, BackendUnavailable) as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
