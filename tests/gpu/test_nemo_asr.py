"""NeMo ASR on CUDA: skipped where NeMo or a GPU is missing."""

from __future__ import annotations

import importlib.util
import os

import pytest

from configs.schema import ASRConfig
from models.asr.metrics import wer
from models.audio import to_float32

pytestmark = pytest.mark.gpu

if importlib.util.find_spec("nemo") is None or importlib.util.find_spec("torch") is None:
    pytest.skip("nemo_toolkit[asr] is not installed", allow_module_level=True)

import torch  # noqa: E402

if not torch.cuda.is_available():
    pytest.skip("no CUDA device", allow_module_level=True)

from models.asr.nemo import NemoTranscriber  # noqa: E402
from models.errors import BackendUnavailable  # noqa: E402
from tests.speech import speak  # noqa: E402

QUESTION = "What time does the clinic open on Saturday?"


@pytest.fixture(scope="module")
def nemo() -> NemoTranscriber:
    model = os.environ.get("AVATAR_NEMO_ASR_MODEL")  # a .nemo path or a cached model name
    try:
        return NemoTranscriber(ASRConfig(backend="nemo", device="cuda", model=model))
    except BackendUnavailable as exc:
        pytest.skip(f"NeMo ASR model not available offline: {exc}")


def test_transcribes_a_question(nemo: NemoTranscriber) -> None:
    text = nemo.transcribe(to_float32(speak(QUESTION))).text
    assert wer(QUESTION, text) <= 0.2, text


def test_cpu_device_is_refused() -> None:
    with pytest.raises(BackendUnavailable, match="CUDA only"):
        NemoTranscriber(ASRConfig(backend="nemo", device="cpu"))
