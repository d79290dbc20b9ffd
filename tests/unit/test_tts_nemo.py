"""The NeMo backend imports everywhere and fails loudly, with a fix, where it cannot run."""

from __future__ import annotations

import importlib.util

import pytest

from configs.schema import TTSConfig
from models.errors import BackendUnavailable
from models.tts import create_tts

pytestmark = pytest.mark.unit


def test_module_imports_without_nemo_or_cuda() -> None:
    module = importlib.import_module("models.tts.nemo")
    assert module.NemoTTS.name == "nemo"


@pytest.mark.skipif(
    importlib.util.find_spec("nemo") is not None, reason="nemo_toolkit is installed here"
)
def test_missing_nemo_toolkit_is_backend_unavailable_with_install_hint() -> None:
    with pytest.raises(BackendUnavailable, match=r"nemo_toolkit\[tts\]"):
        create_tts(TTSConfig(backend="nemo", device="cpu"))


def test_missing_gpu_is_backend_unavailable() -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is visible")
    with pytest.raises(BackendUnavailable, match="CUDA GPU"):
        create_tts(TTSConfig(backend="nemo", device="cuda"))
