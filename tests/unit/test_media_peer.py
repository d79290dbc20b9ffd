"""The media peer's receive tuning on real aiortc objects (no sockets are opened)."""

from __future__ import annotations

import pytest
from aiortc import RTCConfiguration, RTCPeerConnection

from deployments.media.peer import MIC_PREFETCH_FRAMES, set_audio_prefetch

pytestmark = pytest.mark.unit


async def test_audio_receivers_decode_after_one_packet_instead_of_four() -> None:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("audio", direction="sendrecv")
    pc.addTransceiver("video", direction="recvonly")
    try:
        # Fails if aiortc renames its receive buffer: the microphone would then wait 80 ms.
        assert set_audio_prefetch(pc, MIC_PREFETCH_FRAMES) == 1
        receiver = pc.getTransceivers()[0].receiver
        buffer = receiver._RTCRtpReceiver__jitter_buffer  # type: ignore[attr-defined]
        assert buffer._prefetch == MIC_PREFETCH_FRAMES == 1
        video = pc.getTransceivers()[1].receiver
        assert video._RTCRtpReceiver__jitter_buffer._prefetch == 0  # type: ignore[attr-defined]
    finally:
        await pc.close()
