"""A network lab in Linux network namespaces for tests of real network paths
(docs/placement-probes.md).

:func:`region_lab` builds one *client* namespace and one namespace per simulated region, each
region joined to the client by its own veth pair (``to-r<i>`` with 10.77.<i>.1 on the
client's side, ``to-client`` with 10.77.<i>.2 on the region's), runs a UDP probe echo server
in every region and impairs the region -> client direction with ``tc netem`` when the kernel
has ``sch_netem``, else with the user-space relay of :mod:`cluster.placement.impair` inside
the region's namespace. Traffic never leaves the
namespaces. Everything is a context manager that removes what it made (processes first, then
links and namespaces) even when the body raises; processes also exit by themselves after
``lifetime_s``. Needs root and iproute2.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import re
import select
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cluster.placement.impair import Impairment
from models.errors import BackendError, BackendUnavailable

PREFIX = "acp"
ECHO_PORT, RELAY_PORT = 9000, 9001
Mode = Literal["netem", "relay"]
_LAB_NUMBERS = itertools.count()


def _run(argv: Sequence[str], *, check: bool = True, timeout_s: float = 10.0
         ) -> subprocess.CompletedProcess[str]:
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout_s,
                              check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BackendError(f"{' '.join(argv)}: {exc}") from None
    if check and done.returncode:
        raise BackendError(f"{' '.join(argv)} failed: {done.stderr.strip() or done.returncode}")
    return done


def netns_unavailable_reason() -> str | None:
    """Why namespaces cannot be used here (not root, no iproute2, no netns), or None."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is missing"
    name = f"{PREFIX}{os.getpid()}-check"
    try:
        _run(["ip", "netns", "add", name])
    except BackendError as exc:
        return f"ip netns does not work here: {exc.message}"
    _run(["ip", "netns", "del", name], check=False)
    return None


@functools.cache
def netem_available() -> bool:
    """Whether the kernel has ``sch_netem`` (tried once, on the loopback of a scratch
    namespace)."""
    if shutil.which("tc") is None:
        return False
    with namespace(f"{PREFIX}{os.getpid()}-netem") as ns:
        done = _run(["ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", "lo", "root",
                     "netem", "delay", "1ms"], check=False)
    return done.returncode == 0


@functools.cache
def realtime_prefix() -> tuple[str, ...]:
    """``chrt -f 10`` where this host lets us run processes at real-time priority, else ():
    the lab's echo servers, relays and probes then are not preempted by other load on the
    machine, which would add its own jitter to the path under test."""
    if shutil.which("chrt") is None:
        return ()
    argv = ("chrt", "-f", "10")
    return argv if _run([*argv, "true"], check=False).returncode == 0 else ()


def remove_stale_namespaces() -> list[str]:
    """Delete namespaces this module left behind in runs whose process is gone (killed before
    its clean-up ran); returns their names."""
    listing = _run(["ip", "netns", "list"], check=False).stdout
    removed = []
    for name in re.findall(rf"^({PREFIX}(\d+)-\S+)", listing, flags=re.M):
        if not Path(f"/proc/{name[1]}").exists():
            _run(["ip", "netns", "del", name[0]], check=False)
            removed.append(name[0])
    return removed


@contextlib.contextmanager
def namespace(name: str) -> Iterator[str]:
    """A network namespace with its loopback up, deleted on exit."""
    _run(["ip", "netns", "add", name])
    try:
        _run(["ip", "-n", name, "link", "set", "lo", "up"])
        yield name
    finally:
        _run(["ip", "netns", "del", name], check=False)


@contextlib.contextmanager
def veth(ns_a: str, dev_a: str, addr_a: str, ns_b: str, dev_b: str, addr_b: str,
         prefix_len: int = 30) -> Iterator[None]:
    """A veth pair created directly inside two namespaces, addressed and up; removed on
    exit."""
    _run(["ip", "link", "add", dev_a, "netns", ns_a, "type", "veth", "peer", "name", dev_b,
          "netns", ns_b])
    try:
        for ns, dev, addr in ((ns_a, dev_a, addr_a), (ns_b, dev_b, addr_b)):
            _run(["ip", "-n", ns, "addr", "add", f"{addr}/{prefix_len}", "dev", dev])
            _run(["ip", "-n", ns, "link", "set", dev, "up"])
        yield
    finally:
        _run(["ip", "-n", ns_a, "link", "del", dev_a], check=False)


def apply_netem(ns: str, dev: str, impairment: Impairment) -> list[str]:
    """Impair the egress of ``dev`` with netem; returns the tc command used."""
    argv = ["tc", "qdisc", "replace", "dev", dev, "root", "netem",
            "delay", f"{impairment.delay_ms:g}ms"]
    if impairment.jitter_ms:
        argv.append(f"{impairment.jitter_ms:g}ms")
        if impairment.distribution == "normal":  # netem's own default is uniform
            argv += ["distribution", "normal"]
    if impairment.loss:
        argv += ["loss", f"{100.0 * impairment.loss:g}%"]
    _run(["ip", "netns", "exec", ns, *argv])
    return argv


class NsProcess:
    """A process started inside a namespace that prints a line starting with ``ready`` once
    it serves. :meth:`stop` ends it (SIGTERM, then SIGKILL)."""

    def __init__(self, ns: str, argv: Sequence[str], *, realtime: bool = False) -> None:
        self.argv = ["ip", "netns", "exec", ns, *(realtime_prefix() if realtime else ()), *argv]
        self._stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=self._stderr,
                                     start_new_session=True)
        self.ready_line = ""

    def wait_ready(self, deadline: float) -> str:
        """Block until the ``ready`` line (returned) or raise past ``deadline`` (monotonic)."""
        assert self.proc.stdout is not None
        fd, buf = self.proc.stdout.fileno(), b""
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise BackendUnavailable(f"{' '.join(self.argv)}: not ready in time")
            chunk = os.read(fd, 4096)
            if not chunk:
                self._stderr.seek(0)
                err = self._stderr.read().decode(errors="replace").strip()
                raise BackendUnavailable(f"{' '.join(self.argv)} exited: {err[-800:]}")
            buf += chunk
        self.ready_line = buf.split(b"\n", 1)[0].decode()
        if not self.ready_line.startswith("ready"):
            raise BackendUnavailable(f"{' '.join(self.argv)}: said {self.ready_line!r}")
        return self.ready_line

    def stop(self, timeout_s: float = 3.0) -> None:
        """Terminate, kill if it does not exit within ``timeout_s``, and reap."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout_s)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._stderr.close()


@dataclass(frozen=True, slots=True)
class SimulatedRegion:
    """A region of the lab: its name and the impairment of its path to the client."""

    name: str
    impairment: Impairment


@dataclass(frozen=True, slots=True)
class RegionPath:
    """Where the client reaches a region's probe echo, and how the path is impaired.

    ``log``: the relay's per-datagram delays (None with netem). ``base_port``: with the relay,
    the echo server's own port on the same address, reached without impairment, so a test can
    measure the path's base RTT (with netem the whole link is impaired: None)."""

    name: str
    namespace: str
    host: str
    port: int
    impairment: Impairment
    log: Path | None
    base_port: int | None


@dataclass(frozen=True, slots=True)
class Lab:
    """A running lab: the client's namespace, the impairment mode and the regions."""

    client_namespace: str
    mode: Mode
    regions: dict[str, RegionPath]
    realtime: bool
    pids: tuple[int, ...] = ()
    """The lab's echo servers and relays (all ended when the lab exits)."""

    def run_in_client(self, argv: Sequence[str], timeout_s: float = 60.0) -> str:
        """Run a command inside the client namespace (at real-time priority when the lab's
        processes have it); returns its stdout."""
        prefix = realtime_prefix() if self.realtime else ()
        return _run(["ip", "netns", "exec", self.client_namespace, *prefix, *argv],
                    timeout_s=timeout_s).stdout


@contextlib.contextmanager
def region_lab(regions: Sequence[SimulatedRegion], workdir: Path, *,
               mode: Mode | None = None, seed: int = 0, lifetime_s: float = 120.0,
               ready_timeout_s: float = 30.0, realtime: bool = True,
               python: str = sys.executable) -> Iterator[Lab]:
    """Build the lab (``mode`` None: netem when the kernel has it, else the relay), yield it,
    and remove everything on exit. ``realtime``: run the lab's processes at real-time
    priority where the host allows it (:func:`realtime_prefix`)."""
    if not 1 <= len(regions) <= 200:
        raise BackendError("a lab has between 1 and 200 regions")
    mode = mode or ("netem" if netem_available() else "relay")
    remove_stale_namespaces()
    tag = f"{PREFIX}{os.getpid()}-{next(_LAB_NUMBERS)}"
    life = ["--lifetime-s", f"{lifetime_s:g}"]
    with contextlib.ExitStack() as stack:
        client = stack.enter_context(namespace(f"{tag}-c"))
        started: list[NsProcess] = []
        paths: dict[str, RegionPath] = {}
        for i, region in enumerate(regions):
            ns = stack.enter_context(namespace(f"{tag}-r{i}"))
            near, far = f"10.77.{i}.1", f"10.77.{i}.2"
            stack.enter_context(veth(client, f"to-r{i}", near, ns, "to-client", far))
            log = None
            if mode == "netem":
                apply_netem(ns, "to-client", region.impairment)
                echo = [python, "-m", "cluster.placement.probe", "serve", f"{far}:{ECHO_PORT}"]
                port = ECHO_PORT
            else:
                echo = [python, "-m", "cluster.placement.probe", "serve", f"0.0.0.0:{ECHO_PORT}"]
                log = workdir / f"{region.name}.jsonl"
                imp = region.impairment
                started.append(NsProcess(ns, [
                    python, "-m", "cluster.placement.impair", "--listen", f"{far}:{RELAY_PORT}",
                    "--forward", f"127.0.0.1:{ECHO_PORT}", "--delay-ms", f"{imp.delay_ms:g}",
                    "--jitter-ms", f"{imp.jitter_ms:g}", "--loss", f"{imp.loss:g}",
                    "--distribution", imp.distribution, "--seed", str(seed + i),
                    "--log", str(log), *life], realtime=realtime))
                stack.callback(started[-1].stop)
                port = RELAY_PORT
            started.append(NsProcess(ns, [*echo, *life], realtime=realtime))
            stack.callback(started[-1].stop)
            paths[region.name] = RegionPath(region.name, ns, far, port, region.impairment, log,
                                            None if mode == "netem" else ECHO_PORT)
        deadline = time.monotonic() + ready_timeout_s
        for proc in started:  # they start in parallel; wait for all
            proc.wait_ready(deadline)
        yield Lab(client, mode, paths, realtime and bool(realtime_prefix()),
                  tuple(p.proc.pid for p in started))
