"""Probe estimators on synthetic timestamps with known jitter, the echo wire format, the
WebSocket echo handler on an in-memory socket, and the impairment model the netns test uses."""

from __future__ import annotations

import asyncio
import json
import math
import random

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from cluster.placement.decide import MAX_PROBE_MS
from cluster.placement.impair import Impairment
from cluster.placement.probe import (
    EchoSample,
    ProbeResult,
    UdpEchoProtocol,
    echo_reply,
    mean_abs_delta,
    percentile,
    probe_udp,
    probe_ws,
    rfc3550_jitter,
    serve_probe_websocket,
    summarize,
)
from cluster.placement.probe_api import probe_router
from models.errors import InputError

pytestmark = pytest.mark.unit


# --- the jitter estimator -------------------------------------------------------------------


def test_constant_transit_has_no_jitter_whatever_the_clock_offset() -> None:
    assert rfc3550_jitter([1e12 + 7.5] * 50) == 0.0
    assert mean_abs_delta([3.0] * 50) == 0.0


def test_rfc3550_recurrence_converges_from_zero_at_one_sixteenth() -> None:
    # Transit alternates by 4 ms: every |D| is 4, so J_n = 4 (1 - (15/16)^n).
    transit = [10.0 if i % 2 else 6.0 for i in range(201)]
    for n in (1, 5, 16, 200):
        assert rfc3550_jitter(transit[: n + 1]) == pytest.approx(4.0 * (1 - (15 / 16) ** n))
    assert mean_abs_delta(transit) == pytest.approx(4.0)


def test_lost_packets_are_skipped_not_counted_as_zero_delta() -> None:
    assert rfc3550_jitter([0.0, None, 4.0]) == pytest.approx(4.0 / 16)
    assert mean_abs_delta([0.0, None, None, 4.0, 4.0]) == pytest.approx(2.0)
    assert rfc3550_jitter([None, 5.0]) == 0.0


@pytest.mark.parametrize("sigma", [1.0, 5.0, 15.0])
def test_normal_transit_gives_two_sigma_over_root_pi(sigma: float) -> None:
    rng = random.Random(7)
    transit = [1e12 + rng.gauss(100.0, sigma) for _ in range(20000)]
    expected = 2 * sigma / math.sqrt(math.pi)
    assert mean_abs_delta(transit) == pytest.approx(expected, rel=0.03)
    assert rfc3550_jitter(transit) == pytest.approx(expected, rel=0.3)


def test_expected_jitter_formula_matches_the_relay_draws() -> None:
    assert Impairment(40, 2).expected_jitter_ms() == pytest.approx(4 / math.sqrt(math.pi),
                                                                   rel=1e-3)
    assert Impairment(40, 6, distribution="uniform").expected_jitter_ms() == pytest.approx(4.0,
                                                                                          rel=1e-3)
    assert Impairment(40, 0).expected_jitter_ms() == 0.0
    clipped = Impairment(25, 15)  # 5 % of draws fall below 0 and leave at once
    assert clipped.expected_jitter_ms() < 2 * 15 / math.sqrt(math.pi) * 0.98
    rng = random.Random(3)
    for imp in (clipped, Impairment(10, 1), Impairment(5, 8, distribution="uniform")):
        draws = [imp.draw(rng) for _ in range(40000)]
        assert min(draws) >= 0.0
        assert mean_abs_delta(draws) == pytest.approx(imp.expected_jitter_ms(), rel=0.02)


def test_impairment_loss_and_median_delay() -> None:
    rng = random.Random(11)
    imp = Impairment(25, 15, loss=0.1)
    draws = [imp.draw(rng) for _ in range(20000)]
    kept = [d for d in draws if d is not None]
    assert 1 - len(kept) / len(draws) == pytest.approx(0.1, abs=0.01)
    assert percentile(kept, 50) == pytest.approx(25.0, abs=0.5)


@pytest.mark.parametrize(("kwargs", "word"), [
    ({"delay_ms": -1}, "delay_ms"), ({"jitter_ms": 1e9}, "jitter_ms"), ({"loss": 1.5}, "loss"),
    ({"distribution": "pareto"}, "distribution"),
])
def test_impairment_rejects_bad_parameters(kwargs: dict, word: str) -> None:
    with pytest.raises(InputError, match=word):
        Impairment(**kwargs)


# --- results --------------------------------------------------------------------------------


def _samples(rtts: list[float | None], server_offset_ms: float = 1e12) -> list[EchoSample]:
    out = []
    for seq, rtt in enumerate(rtts):
        sent = 100.0 + 20.0 * seq
        out.append(EchoSample(seq, sent, None if rtt is None else server_offset_ms + sent + 1.0,
                              None if rtt is None else sent + rtt))
    return out


def test_summary_of_samples() -> None:
    rtts: list[float | None] = [10.0, 12.0, None, 14.0, 30.0, None, 11.0, 13.0]
    result = summarize(list(reversed(_samples(rtts))), target="udp://x:1", transport="udp",
                       measured_at_s=1000.0)
    assert (result.count, result.received, result.loss) == (8, 6, 0.25)
    assert result.rtt_ms is not None
    assert result.rtt_ms.min == 10.0
    assert result.rtt_ms.p50 == pytest.approx(12.5)
    assert result.rtt_ms.p95 == pytest.approx(26.0)
    assert [s.seq for s in result.samples] == list(range(8))
    # Downlink transit = rtt - 1 ms (uplink); |D| over the received ones: 2, 2, 16, 19, 2.
    assert result.jitter_mad_ms == pytest.approx(41 / 5)
    assert result.uplink_jitter_ms == 0.0
    probe = result.to_probe()
    assert (probe.rtt_ms, probe.jitter_ms, probe.loss, probe.measured_at_s) == (
        12.5, result.jitter_ms, 0.25, 1000.0)
    back = ProbeResult.from_dict(json.loads(json.dumps(result.to_dict(samples=True))))
    assert back == result
    assert "samples" not in result.to_dict()


def test_a_silent_gateway_reads_as_unreachable() -> None:
    result = summarize(_samples([None] * 5), target="udp://x:1", transport="udp",
                       measured_at_s=5.0)
    assert (result.loss, result.rtt_ms, result.jitter_ms) == (1.0, None, 0.0)
    probe = result.to_probe()
    assert (probe.rtt_ms, probe.loss) == (MAX_PROBE_MS, 1.0)


def test_percentile_interpolates() -> None:
    assert percentile([3.0, 1.0, 2.0, 4.0], 50) == 2.5
    assert percentile([5.0], 95) == 5.0
    with pytest.raises(InputError):
        percentile([], 50)


# --- the echo server ------------------------------------------------------------------------


def test_echo_reply_and_its_errors() -> None:
    assert echo_reply(b'{"seq": 3, "t": 12.5, "pad": "  "}', 99.0) == {"seq": 3, "t": 12.5,
                                                                         "ts": 99.0}
    for message, word in [(b"nope", "not JSON"), (b'{"seq": -1, "t": 1}', "seq"),
                          (b'{"seq": true, "t": 1}', "seq"), (b'{"seq": 1}', '"t"'),
                          (b"[1, 2]", "seq"), (b"x" * 600, "at most")]:
        with pytest.raises(InputError, match=word):
            echo_reply(message, 0.0)


class _FakeTransport:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, tuple[str, int]]] = []

    def sendto(self, data: bytes, addr: tuple[str, int]) -> None:
        self.sent.append((data, addr))


def test_udp_echo_answers_padded_probes_only() -> None:
    proto = UdpEchoProtocol(clock=lambda: 1.5)
    transport = _FakeTransport()
    proto.connection_made(transport)  # type: ignore[arg-type]
    padded = json.dumps({"seq": 1, "t": 2.0, "pad": " " * 60}).encode()
    proto.datagram_received(padded, ("10.0.0.1", 5000))
    proto.datagram_received(b'{"seq": 2, "t": 2.0}', ("10.0.0.1", 5000))  # echo would be larger
    proto.datagram_received(b"garbage", ("10.0.0.1", 5000))
    assert [json.loads(d) for d, _ in transport.sent] == [{"seq": 1, "t": 2.0, "ts": 1500.0}]
    assert len(transport.sent[0][0]) <= len(padded)
    assert (proto.echoed, proto.dropped) == (1, 2)


class _FakeSocket:
    def __init__(self, messages: list[str], *, hang: bool = False) -> None:
        self.incoming, self.hang = list(messages), hang
        self.sent: list[dict] = []
        self.closed: int | None = None

    async def accept(self) -> None:
        pass

    async def receive_text(self) -> str:
        if not self.incoming:
            await asyncio.sleep(3600 if self.hang else 0)
            raise ConnectionError("client went away")
        return self.incoming.pop(0)

    async def send_text(self, data: str) -> None:
        self.sent.append(json.loads(data))

    async def close(self, code: int = 1000) -> None:
        self.closed = code


async def test_websocket_echo_handler_limits_and_errors() -> None:
    ws = _FakeSocket(['{"seq": 0, "t": 1}', "bad", '{"seq": 1, "t": 2}', '{"seq": 2, "t": 3}'])
    echoed = await serve_probe_websocket(ws, clock=lambda: 2.0, max_messages=3)
    assert echoed == 2 and ws.closed == 1000
    assert ws.sent[0] == {"seq": 0, "t": 1, "ts": 2000.0}
    assert "not JSON" in ws.sent[1]["error"]
    idle = _FakeSocket(['{"seq": 0, "t": 1}'], hang=True)
    assert await serve_probe_websocket(idle, idle_timeout_s=0.05) == 1
    assert idle.closed == 1000


def test_probe_router_echoes_over_websocket() -> None:
    app = FastAPI()
    app.include_router(probe_router(clock=lambda: 3.0))
    with TestClient(app).websocket_connect("/v1/probe") as ws:
        ws.send_text(json.dumps({"seq": 4, "t": 8.25}))
        assert ws.receive_json() == {"seq": 4, "t": 8.25, "ts": 3000.0}
        ws.send_text("{}")
        assert "seq" in ws.receive_json()["error"]


@pytest.mark.parametrize(("kwargs", "word"), [
    ({"count": 1}, "count"), ({"count": 10**6}, "count"), ({"interval_ms": 0.1}, "interval_ms"),
    ({"interval_ms": 5000}, "interval_ms"), ({"timeout_s": 0}, "timeout_s"),
])
async def test_probe_settings_are_validated_before_any_packet(kwargs: dict, word: str) -> None:
    with pytest.raises(InputError, match=word):
        await probe_udp("127.0.0.1", 9, **kwargs)
    with pytest.raises(InputError, match=word):
        await probe_ws("ws://127.0.0.1:9/v1/probe", **kwargs)


async def test_probe_ws_needs_a_websocket_url() -> None:
    with pytest.raises(InputError, match="ws://"):
        await probe_ws("http://127.0.0.1:9/v1/probe")
