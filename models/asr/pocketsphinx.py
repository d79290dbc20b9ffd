"""pocketsphinx 5 with its bundled US English model, in light mode.

Light mode runs only the first (tree) search pass: no flat-lexicon rescoring and no lattice
best-path search. It is the fallback recogniser: small, CPU-only, less accurate than Whisper.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from configs.schema import ASRConfig
from models.asr.base import Transcriber, TranscriptResult
from models.audio import to_int16
from models.errors import BackendError, BackendUnavailable, InputError

LIGHT_MODE: dict[str, Any] = {"fwdflat": False, "bestpath": False}


class PocketsphinxTranscriber(Transcriber):
    """pocketsphinx ``Decoder`` on the bundled en-us acoustic model, LM and dictionary.

    ``config.model`` may name another acoustic model directory (``hmm``). Extra
    ``decoder_options`` are passed to ``pocketsphinx.Decoder`` (e.g. ``beam=1e-40``).
    One decoder is not re-entrant: calls are serialised.
    """

    name = "pocketsphinx"
    sample_rate_hz = 16000

    def __init__(self, config: ASRConfig | None = None, **decoder_options: Any) -> None:
        try:
            import pocketsphinx
        except ImportError as exc:
            raise BackendUnavailable(
                "asr backend 'pocketsphinx' needs the pocketsphinx package: "
                "pip install pocketsphinx"
            ) from exc
        self.config = config or ASRConfig(backend="pocketsphinx")
        options: dict[str, Any] = {**LIGHT_MODE, "loglevel": "FATAL", "samprate": 16000}
        if self.config.model:
            options["hmm"] = self.config.model
        options.update(decoder_options)
        try:
            self._decoder = pocketsphinx.Decoder(**options)
        except Exception as exc:  # pocketsphinx raises RuntimeError/ValueError/KeyError
            raise BackendUnavailable(
                f"asr backend 'pocketsphinx': cannot create a decoder with {options}: {exc}"
            ) from exc
        self._lock = threading.Lock()

    def transcribe(self, audio: np.ndarray) -> TranscriptResult:
        """Decode one utterance: float32 mono 16 kHz in -1..1."""
        audio = np.asarray(audio, dtype=np.float32)
        if audio.ndim != 1:
            raise InputError(f"pocketsphinx expects mono audio, got shape {audio.shape}")
        if audio.size < self.sample_rate_hz // 10:
            return TranscriptResult("")
        pcm = to_int16(audio).tobytes()
        with self._lock:
            try:
                self._decoder.start_utt()
                self._decoder.process_raw(pcm, False, True)
                self._decoder.end_utt()
                hyp = self._decoder.hyp()
            except Exception as exc:
                raise BackendError(f"pocketsphinx decoding failed: {exc}") from exc
        text = hyp.hypstr.strip() if hyp is not None else ""
        return TranscriptResult(text)
