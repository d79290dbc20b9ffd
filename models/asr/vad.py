"""Voice-activity detectors: Silero (ONNX from the silero-vad wheel), pocketsphinx and energy.

Each takes float32 16 kHz frames of :attr:`VoiceActivityDetector.frame_samples` (512) samples
and returns a speech probability in 0..1. Detectors are stateful per stream: make one per
session (``StreamingASR`` takes a factory).
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np

from configs.schema import VADConfig
from models.asr.base import VoiceActivityDetector
from models.audio import rms_dbfs, to_int16
from models.errors import BackendError, BackendUnavailable, InputError

SAMPLE_RATE_HZ = 16000


def _check_frame(frame: np.ndarray, frame_samples: int) -> np.ndarray:
    if frame.ndim != 1 or len(frame) != frame_samples:
        raise InputError(
            f"VAD frames must be 1-D with {frame_samples} samples at 16 kHz, "
            f"got shape {frame.shape}"
        )
    return np.asarray(frame, dtype=np.float32)


def silero_model_path() -> Path:
    """Path of ``silero_vad.onnx`` inside the installed silero-vad wheel (not imported: its
    package ``__init__`` pulls in torch)."""
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        raise BackendUnavailable(
            "vad backend 'silero' needs the silero-vad package: pip install silero-vad"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "silero_vad.onnx"
    if not path.is_file():
        raise BackendUnavailable(f"vad backend 'silero': model file missing at {path}")
    return path


class SileroVAD(VoiceActivityDetector):
    """Silero VAD v5+ run with onnxruntime on one thread.

    The model takes each 512-sample frame prefixed with the last 64 samples of the previous
    input (its context) plus a recurrent state of shape (2, 1, 128); both are kept here.
    """

    context_samples = 64

    def __init__(self, config: VADConfig | None = None, *, model_path: str | Path | None = None):
        import onnxruntime

        self.config = config or VADConfig()
        path = Path(model_path) if model_path is not None else silero_model_path()
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            self._session = onnxruntime.InferenceSession(
                str(path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise BackendUnavailable(f"vad backend 'silero': cannot load {path}: {exc}") from exc
        names = {i.name for i in self._session.get_inputs()}
        if names != {"input", "state", "sr"}:
            raise BackendUnavailable(
                f"vad backend 'silero': {path} has inputs {sorted(names)}; "
                "expected a v5+ model with input, state and sr"
            )
        self._sr = np.array(SAMPLE_RATE_HZ, dtype=np.int64)
        self.reset()

    def reset(self) -> None:
        self._state = np.zeros((2, 1, 128), dtype=np.float32)
        self._context = np.zeros((1, self.context_samples), dtype=np.float32)

    def speech_probability(self, frame: np.ndarray) -> float:
        x = _check_frame(frame, self.frame_samples)
        model_input = np.concatenate([self._context, x[np.newaxis, :]], axis=1)
        try:
            prob, state = self._session.run(
                None, {"input": model_input, "state": self._state, "sr": self._sr}
            )
        except Exception as exc:
            raise BackendError(f"silero VAD failed: {exc}") from exc
        self._state = state
        self._context = model_input[:, -self.context_samples :]
        return float(prob.reshape(-1)[0])


class PocketsphinxVAD(VoiceActivityDetector):
    """pocketsphinx's WebRTC-style VAD: 30 ms sub-frames, each speech or not.

    The probability of a 512-sample frame is the share of voiced sub-frames completed in it
    (sub-frames straddle frames; the remainder is carried over). ``mode`` 0..3 is the
    aggressiveness (3 rejects the most noise).
    """

    def __init__(self, config: VADConfig | None = None, *, mode: int = 2):
        import pocketsphinx

        if not 0 <= mode <= 3:
            raise InputError(f"pocketsphinx VAD mode must be 0..3, got {mode}")
        self.config = config or VADConfig()
        self._vad = pocketsphinx.Vad(mode, SAMPLE_RATE_HZ, 0.03)
        self._sub_samples = self._vad.frame_bytes // 2
        self.reset()

    def reset(self) -> None:
        self._carry = np.zeros(0, dtype=np.int16)
        self._last = 0.0

    def speech_probability(self, frame: np.ndarray) -> float:
        pcm = np.concatenate([self._carry, to_int16(_check_frame(frame, self.frame_samples))])
        n = len(pcm) // self._sub_samples
        if n == 0:
            self._carry = pcm
            return self._last
        voiced = 0
        for i in range(n):
            sub = pcm[i * self._sub_samples : (i + 1) * self._sub_samples]
            voiced += bool(self._vad.is_speech(sub.tobytes()))
        self._carry = pcm[n * self._sub_samples :]
        self._last = voiced / n
        return self._last


class EnergyVAD(VoiceActivityDetector):
    """A plain level detector: probability rises smoothly around ``threshold_dbfs``.

    With the default threshold of 0.5, a frame counts as speech when its RMS level exceeds
    ``threshold_dbfs``. No model; fooled by any loud noise.
    """

    def __init__(
        self, config: VADConfig | None = None, *, threshold_dbfs: float = -40.0,
        slope_db: float = 3.0,
    ):
        if slope_db <= 0:
            raise InputError(f"slope_db must be positive, got {slope_db}")
        self.config = config or VADConfig()
        self.threshold_dbfs = threshold_dbfs
        self.slope_db = slope_db

    def reset(self) -> None:
        """Stateless: nothing to reset."""

    def speech_probability(self, frame: np.ndarray) -> float:
        level = rms_dbfs(_check_frame(frame, self.frame_samples))
        if math.isinf(level):
            return 0.0
        z = (level - self.threshold_dbfs) / self.slope_db
        return 1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, z))))
