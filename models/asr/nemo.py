"""NVIDIA NeMo ASR on CUDA (the ``gpu`` extra): Parakeet / FastConformer models.

Nothing from NeMo or torch is imported at module level; the constructor imports
``nemo.collections.asr`` and raises :class:`BackendUnavailable` with what to install when NeMo
or a CUDA device is missing.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from configs.schema import ASRConfig
from models.asr.base import Transcriber, TranscriptResult
from models.errors import BackendError, BackendUnavailable, InputError

DEFAULT_MODEL = "nvidia/parakeet-tdt-0.6b-v2"


def _hypothesis_text(item: Any) -> str:
    """NeMo returns ``str``, ``Hypothesis`` (``.text``) or, for older RNNT models, a
    ``(best, all)`` pair of lists depending on version and decoder."""
    if isinstance(item, str):
        return item
    text = getattr(item, "text", None)
    if isinstance(text, str):
        return text
    raise BackendError(f"unexpected NeMo transcription output: {type(item).__name__}")


class NemoTranscriber(Transcriber):
    """A NeMo ``ASRModel`` (``config.model``: a pretrained name or a ``.nemo`` file path) on
    CUDA, in eval mode, transcribing one utterance per call from memory."""

    name = "nemo"
    sample_rate_hz = 16000

    def __init__(self, config: ASRConfig | None = None) -> None:
        config = config or ASRConfig(backend="nemo", device="cuda")
        try:  # NeMo first: without it, there is no need to pay for importing torch
            from nemo.collections.asr.models import ASRModel
        except ImportError as exc:
            raise BackendUnavailable(
                f"asr backend 'nemo' needs nemo_toolkit[asr] ({exc.name} is missing): "
                "pip install '.[gpu]'"
            ) from exc
        import torch  # a core dependency, and NeMo has loaded it already
        if config.device == "cpu":
            raise BackendUnavailable(
                "asr backend 'nemo' runs on CUDA only; set models.asr.device to 'cuda' or 'auto', "
                "or use the whisper backend on CPU"
            )
        if not torch.cuda.is_available():
            raise BackendUnavailable(
                "asr backend 'nemo' needs a CUDA GPU and none is visible; "
                "use the whisper backend on CPU"
            )
        name = config.model or DEFAULT_MODEL
        try:
            if name.endswith(".nemo") or Path(name).is_file():
                model = ASRModel.restore_from(name, map_location=torch.device("cuda"))
            else:
                model = ASRModel.from_pretrained(name, map_location=torch.device("cuda"))
        except Exception as exc:  # NeMo/HF raise many types for a missing or bad model
            raise BackendUnavailable(
                f"asr backend 'nemo': cannot load model {name!r}: {exc} "
                "(pre-download it into the Hugging Face cache or pass a .nemo path)"
            ) from exc
        model.eval()
        self.config = config
        self.model_name = name
        self._model = model
        self._torch = torch
        self._lock = threading.Lock()

    def transcribe(self, audio: np.ndarray) -> TranscriptResult:
        """Transcribe one utterance: float32 mono 16 kHz in -1..1."""
        audio = np.asarray(audio, dtype=np.float32)
        if audio.ndim != 1:
            raise InputError(f"nemo expects mono audio, got shape {audio.shape}")
        if audio.size < self.sample_rate_hz // 10:
            return TranscriptResult("")
        with self._lock, self._torch.inference_mode():
            try:
                output = self._model.transcribe([audio], batch_size=1, verbose=False)
            except Exception as exc:
                raise BackendError(f"nemo transcription failed: {exc}") from exc
        if isinstance(output, tuple):  # (best hypotheses, all hypotheses)
            output = output[0]
        if not output:
            return TranscriptResult("")
        return TranscriptResult(_hypothesis_text(output[0]).strip())
