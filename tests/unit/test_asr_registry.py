"""Backend lookup for the ASR layer: names resolve, missing GPU stacks fail loudly."""

from __future__ import annotations

import importlib.util

import pytest

from configs.schema import ASRConfig
from models.asr import TRANSCRIBERS, create_streaming_asr, create_transcriber
from models.asr.base import TranscriptResult
from models.asr.stream import StreamingASR
from models.errors import BackendUnavailable, ConfigError
from models.registry import load_backend

pytestmark = pytest.mark.unit


def test_unknown_backend_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="allowed: nemo, pocketsphinx, whisper"):
        load_backend("asr", "kaldi", TRANSCRIBERS)


@pytest.mark.skipif(importlib.util.find_spec("nemo") is not None, reason="NeMo is installed")
def test_nemo_without_the_gpu_extra_says_what_to_install() -> None:
    with pytest.raises(BackendUnavailable, match=r"nemo_toolkit\[asr\].*\.\[gpu\]"):
        create_transcriber(ASRConfig(backend="nemo", device="cuda"))


def test_streaming_asr_uses_a_fresh_vad_per_session() -> None:
    class Echo:
        sample_rate_hz = 16000

        def transcribe(self, audio: object) -> TranscriptResult:
            return TranscriptResult("")

    asr = create_streaming_asr(ASRConfig(), transcriber=Echo())  # type: ignore[arg-type]
    assert isinstance(asr, StreamingASR)
    assert asr.vad_factory() is not asr.vad_factory()
