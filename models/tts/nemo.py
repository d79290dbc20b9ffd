"""NeMo FastPitch + HiFi-GAN on a GPU (the ``gpu`` extra: ``nemo_toolkit[tts]``).

FastPitch predicts a duration (in spectrogram frames) for every input token; those durations give
the phoneme timings exactly, since the vocoder turns each frame into a fixed number of samples.
Synthesis runs sentence by sentence. NeMo and torch are imported in the constructor only, so this
module imports on machines without them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from configs.schema import TTSConfig
from models.errors import BackendError, BackendUnavailable
from models.frames import PhonemeTiming
from models.tts.base import SentenceTTS
from models.tts.phonemes import (
    float_to_int16,
    merge_pauses,
    samples_to_ms,
    token_to_ipa,
)

DEFAULT_SPECTROGRAM_MODEL = "tts_en_fastpitch"
DEFAULT_VOCODER = "tts_en_hifigan"


def parse_voice(voice: str | None) -> tuple[str, str]:
    """``config.voice`` as ``(fastpitch, vocoder)``: ``"FASTPITCH[+VOCODER]"``, each a pretrained
    model name or a ``.nemo`` file path; None = the NGC English defaults."""
    if not voice:
        return DEFAULT_SPECTROGRAM_MODEL, DEFAULT_VOCODER
    spec, _, vocoder = voice.partition("+")
    return spec.strip() or DEFAULT_SPECTROGRAM_MODEL, vocoder.strip() or DEFAULT_VOCODER


def durations_to_timings(
    symbols: list[str], frames: list[int], samples_per_frame: float, sample_rate_hz: int,
    offset_samples: int = 0,
) -> list[PhonemeTiming]:
    """Per-token frame counts as IPA phoneme timings starting at ``offset_samples``."""
    timings: list[PhonemeTiming] = []
    cursor = float(offset_samples)
    for symbol, count in zip(symbols, frames, strict=True):
        length = count * samples_per_frame
        timings.append(PhonemeTiming(
            token_to_ipa(symbol), samples_to_ms(cursor, sample_rate_hz),
            samples_to_ms(length, sample_rate_hz),
        ))
        cursor += length
    return merge_pauses(timings)


class NemoTTS(SentenceTTS):
    """FastPitch + HiFi-GAN. ``config.device`` cuda/auto needs a GPU; cpu runs (slowly) on CPU."""

    name = "nemo"
    reentrant = False

    def __init__(self, config: TTSConfig) -> None:
        super().__init__(config)
        try:
            import torch
        except ImportError as exc:
            raise BackendUnavailable("nemo backend needs torch") from exc
        if config.device == "cpu":
            self._device = "cpu"
        elif torch.cuda.is_available():
            self._device = "cuda"
        else:
            raise BackendUnavailable(
                "nemo TTS needs a CUDA GPU and none is visible; use the espeak or piper backend "
                "on this machine (or set models.tts.device: cpu to run it slowly on CPU)"
            )
        try:
            from nemo.collections.tts.models import FastPitchModel, HifiGanModel
        except ImportError as exc:
            raise BackendUnavailable(
                "nemo TTS needs nemo_toolkit[tts]; install it with `pip install '.[gpu]'` "
                f"({exc.name} is missing)"
            ) from exc
        self._torch = torch
        spec_ref, vocoder_ref = parse_voice(config.voice)
        self._spec = self._load(FastPitchModel, spec_ref)
        self._vocoder = self._load(HifiGanModel, vocoder_ref)
        self.sample_rate_hz = int(self._vocoder.sample_rate)
        self._pace = 1.0 / config.length_scale

    def _load(self, cls: Any, ref: str) -> Any:
        try:
            if ref.endswith(".nemo"):
                model = cls.restore_from(ref, map_location=self._device)
            else:
                model = cls.from_pretrained(model_name=ref, map_location=self._device)
        except Exception as exc:
            raise BackendUnavailable(
                f"nemo could not load {cls.__name__} {ref!r} ({exc}); with HF_HUB_OFFLINE=1 the "
                "model must already be in the NeMo cache, or give a .nemo file path in "
                "models.tts.voice as FASTPITCH.nemo+HIFIGAN.nemo"
            ) from exc
        return model.eval().to(self._device)

    def _sentence(
        self, sentence: str, offset_samples: int
    ) -> tuple[np.ndarray, list[PhonemeTiming]]:
        torch = self._torch
        try:
            with torch.inference_mode():
                tokens = self._spec.parse(sentence)
                outputs = self._spec(
                    text=tokens, durs=None, pitch=None, speaker=None, pace=self._pace
                )
                # NeMo >= 1.15 returns (spect, dec_lens, durs, ...); older (spect, durs, ...)
                spect = outputs[0]
                durations = outputs[2] if outputs[1].dim() == 1 else outputs[1]
                audio = self._vocoder.convert_spectrogram_to_audio(spec=spect)
        except Exception as exc:
            raise BackendError(f"nemo synthesis failed: {exc}") from exc
        wave = audio[0].float().cpu().numpy()
        frames = ((durations[0].float() / self._pace) + 0.5).floor().long().cpu().tolist()
        total_frames = max(1, sum(frames))
        samples_per_frame = len(wave) / total_frames
        vocab = self._spec.vocab.tokens
        symbols = [vocab[int(i)] for i in tokens[0].cpu().tolist()]
        timings = durations_to_timings(
            symbols, frames, samples_per_frame, self.sample_rate_hz, offset_samples
        )
        return float_to_int16(wave), timings
