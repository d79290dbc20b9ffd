"""Fuzzing SDP offers: a real aiortc offer, mutated line by line, is answered or refused with
InputError (never another exception, never a hang), and every peer is closed afterwards with
no socket left open. The full answer gathers ICE candidates: real UDP sockets on this host."""

from __future__ import annotations

import asyncio
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deployments.media.peer import MediaPeer, parse_offer
from models.errors import InputError
from tests.fuzz.harness import Loop, light_session, real_offer
from tests.fuzz.strategies import FUZZ, mutated_offers

pytestmark = [pytest.mark.integration]

HEADER = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n"
UFRAG = "a=ice-ufrag:Ri1A\r\na=ice-pwd:eP6607SmiqKhnscMsHYW6c\r\n"
AUDIO = ("m=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=rtpmap:0 PCMU/8000\r\na=rtcp-mux\r\na=mid:0\r\n"
         "a=setup:actpass\r\n")
FOUND = {
    # Minimised from the fuzzer's crashes: aiortc raised these (named) exceptions, which
    # escaped MediaPeer.answer before every parser and negotiation failure became InputError.
    "parser_assertion_on_a_bad_candidate_address":
        "m=audio 9 UDP/TLS/RTP/SAVPF 96\r\na=candidate:d0 1 udp 2130706431 fd00:\x00 typ "
        "host\r\n",
    "parser_assertion_on_a_bad_rtcp_address": "m=audio 9 UDP/TLS/RTP/SAVPF 96\r\n"
                                             "a=rtcp:9 I\ufffd IP4 0.0.0.0\r\n",
    "parser_assertion_on_a_broken_m_line": "m=video 41073 UDPde3925-a5e4 84487574-bae3\r\n",
    "parser_assertion_on_a_payload_type_out_of_range": "m=audio 43160 UDP/TLS/RTP/SAVPF "
                                                       "9600\r\n",
    "parser_stopiteration_on_fmtp_without_rtpmap":
        "m=video 9 UDP/TLS/RTP/SAVPF 97 99\r\na=fmtp:99 packetization-mode=1\r\n",
    "parser_attributeerror_on_rtcp_without_value": "m=audio 9 UDP/TLS/RTP/SAVPF 96\r\n"
                                                  "a=rtcp\r\n",
    "negotiation_valueerror_on_an_unknown_media_kind_beside_audio":
        UFRAG + AUDIO + "m=audiovideo 9 UDP/TLS/RTP/SAVPF 97\r\n"
        "m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=setup:actpass\r\n",
    "negotiation_operationerror_on_two_sections_with_one_mid":
        UFRAG + ("m=video 9 UDP/TLS/RTP/SAVPF 99\r\na=mid:1\r\na=rtcp-mux\r\n"
                 "a=rtpmap:99 H264/90000\r\na=setup:actpass\r\n") * 2,
    "negotiation_valueerror_on_a_bundle_of_unknown_mids":
        "a=group:BUNDLE 0 1 2\r\n" + UFRAG + "m=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=rtcp-mux\r\n"
        "a=rtpmap:0 PCMU/8000\r\na=mid:1\r\na=setup:actpass\r\n",
}


def open_sockets() -> int:
    fds = "/proc/self/fd"
    count = 0
    for fd in os.listdir(fds):
        try:
            count += os.readlink(os.path.join(fds, fd)).startswith("socket:")
        except OSError:
            continue
    return count


@pytest.fixture(scope="module")
def offer() -> str:
    return real_offer()


@pytest.fixture(scope="module")
def env():
    loop = Loop()
    session = loop.run(light_session())
    sockets = open_sockets()
    yield loop, session, sockets
    loop.run(session.aclose())
    loop.close()


def answer_or_refuse(env, sdp: str) -> dict | None:
    """MediaPeer.answer like the renderer calls it: the peer is closed after a refusal, and
    here after an answer too, so each offer starts clean."""
    loop, session, _ = env
    peer = MediaPeer(session)
    try:
        return loop.run(peer.answer(sdp, "offer"))
    except InputError as exc:
        assert exc.message
        return None
    finally:
        loop.run(peer.close())
        assert peer.open_transports() == 0


def test_the_real_offer_is_answered_and_closing_the_peer_frees_its_transports(env, offer):
    loop, session, _ = env
    peer = MediaPeer(session)
    answer = loop.run(peer.answer(offer, "offer"))
    assert answer["type"] == "answer"
    assert "m=audio" in answer["sdp"] and "m=video" in answer["sdp"]
    assert peer.open_transports() >= 1
    loop.run(peer.close())
    assert peer.open_transports() == 0


@settings(FUZZ, max_examples=500)
@given(data=st.data())
def test_the_parser_layer_refuses_a_mutated_offer_only_with_input_error(offer, data):
    sdp = data.draw(mutated_offers(offer))
    try:
        parse_offer(sdp, "offer")
    except InputError as exc:
        assert exc.message and len(exc.message) < 400


@settings(FUZZ, max_examples=150)
@given(data=st.data())
def test_a_mutated_offer_is_answered_or_refused_with_input_error(env, offer, data):
    answer = answer_or_refuse(env, data.draw(mutated_offers(offer)))
    assert answer is None or answer["sdp"].startswith("v=0")


@pytest.mark.parametrize("name", sorted(FOUND))
def test_regression_offers_aiortc_rejects_with_stray_exceptions_get_input_error(env, name):
    loop, session, before = env
    peer = MediaPeer(session)
    with pytest.raises(InputError, match="createOffer"):
        loop.run(peer.answer(HEADER + FOUND[name], "offer"))
    loop.run(peer.close())
    loop.run(asyncio.sleep(0.1))
    assert peer.open_transports() == 0 and open_sockets() <= before


def test_no_socket_is_left_open_after_the_fuzzing(env):
    loop, _, before = env
    loop.run(asyncio.sleep(0.5))  # transports close on the next loop turns
    assert open_sockets() <= before


def test_regression_an_offer_without_fingerprints_is_refused_not_answered(env, offer):
    # aiortc answered it; DTLS then failed with an AssertionError in a task nobody awaited,
    # and the client waited for a connection that could never come.
    stripped = "\r\n".join(line for line in offer.split("\r\n")
                           if not line.startswith("a=fingerprint:"))
    with pytest.raises(InputError, match="fingerprint"):
        parse_offer(stripped, "offer")
    assert answer_or_refuse(env, stripped) is None
