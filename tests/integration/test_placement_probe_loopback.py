"""Probes over real sockets on 127.0.0.1: the UDP echo, the user-space impairment relay in
between, and the gateway's ``/v1/probe`` WebSocket served by uvicorn."""

from __future__ import annotations

import asyncio
import socket
import sys
import time
from collections.abc import AsyncIterator

import pytest
import uvicorn
from fastapi import FastAPI

from cluster.placement.impair import Impairment, ImpairRelay
from cluster.placement.probe import (
    enable_kernel_timestamps,
    probe_udp,
    probe_ws,
    recv_stamped,
    start_udp_echo,
)
from cluster.placement.probe_api import probe_router
from models.errors import BackendUnavailable

pytestmark = pytest.mark.integration


@pytest.fixture
async def echo() -> AsyncIterator[tuple[str, int]]:
    transport, _ = await start_udp_echo("127.0.0.1", 0)
    yield transport.get_extra_info("sockname")
    transport.close()


async def test_loopback_udp_probe(echo: tuple[str, int]) -> None:
    result = await probe_udp(*echo, count=40, interval_ms=5)
    assert (result.count, result.received, result.loss) == (40, 40, 0.0)
    assert result.rtt_ms is not None
    assert 0.0 < result.rtt_ms.min <= result.rtt_ms.p50 <= result.rtt_ms.p95 < 20.0
    assert result.jitter_ms < 5.0
    assert abs(result.measured_at_s - time.time()) < 5.0
    assert result.to_probe().loss == 0.0


async def test_a_port_without_echo_is_all_loss() -> None:
    transport, _ = await start_udp_echo("127.0.0.1", 0)  # take a free port, then free it
    port = transport.get_extra_info("sockname")[1]
    transport.close()
    result = await probe_udp("127.0.0.1", port, count=5, interval_ms=2, timeout_s=0.2)
    assert (result.received, result.loss, result.rtt_ms) == (0, 1.0, None)


async def test_relay_delay_and_loss_are_what_the_probe_measures(echo: tuple[str, int]) -> None:
    relay = ImpairRelay(("127.0.0.1", 0), echo, Impairment(30.0, 0.0, loss=0.25), seed=5)
    host, port = await relay.start()
    try:
        result = await probe_udp(host, port, count=80, interval_ms=5, timeout_s=0.5)
    finally:
        relay.close()
    dropped = sum(d is None for d in relay.applied)
    assert len(relay.applied) == 80 and dropped > 5
    assert result.loss == pytest.approx(dropped / 80)
    assert result.rtt_ms is not None
    assert 30.0 <= result.rtt_ms.p50 <= 34.0  # plus the loopback and the timer slack (<= 1 ms)


@pytest.fixture
async def gateway() -> AsyncIterator[str]:
    app = FastAPI()
    app.include_router(probe_router())
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                                           lifespan="off"))
    task = asyncio.create_task(server.serve())
    for _ in range(200):
        if server.started:
            break
        await asyncio.sleep(0.025)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"ws://127.0.0.1:{port}/v1/probe"
    server.should_exit = True
    await asyncio.wait_for(task, 10)


async def test_websocket_probe_against_the_gateway_route(gateway: str) -> None:
    result = await probe_ws(gateway, count=30, interval_ms=5)
    assert (result.transport, result.received, result.loss) == ("ws", 30, 0.0)
    assert result.rtt_ms is not None and result.rtt_ms.p50 < 20.0
    assert result.to_probe().rtt_ms == result.rtt_ms.p50


async def test_websocket_probe_to_nothing_is_unavailable(gateway: str) -> None:
    dead = gateway.rsplit(":", 1)[0] + ":9/v1/probe"
    with pytest.raises(BackendUnavailable, match="cannot open"):
        await probe_ws(dead, count=3, timeout_s=2.0)


def test_kernel_receive_stamps_on_linux() -> None:
    if not sys.platform.startswith("linux"):
        pytest.skip("SO_TIMESTAMPNS is Linux's")
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with rx, tx:
        rx.bind(("127.0.0.1", 0))
        assert enable_kernel_timestamps(rx)
        # Linux switches arrival stamping on a moment after the first socket asks (until
        # then it stamps at the read): the probe's first echo may carry a late stamp.
        stamps = []
        for _ in range(20):
            before = time.time_ns()
            tx.sendto(b"hello", rx.getsockname())
            time.sleep(0.05)  # the stamp is the arrival, not this late read
            read_at = time.time_ns()
            data, _, stamp_ns = recv_stamped(rx)
            assert data == b"hello" and stamp_ns is not None
            stamps.append(before <= stamp_ns <= read_at - 25_000_000)
    assert any(stamps), stamps
