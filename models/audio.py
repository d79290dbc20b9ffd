"""Small pure helpers for int16 mono PCM: validation, conversion, resampling and level.

Audio arriving from a user is validated once at the edge (:func:`validate_pcm`), so the stages
behind it can assume int16, 1-D, a supported rate and a bounded length.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache
from math import gcd

import numpy as np
from scipy.signal import firwin, resample_poly

from models.errors import InputError

_INT16_SCALE = 32768.0


def validate_pcm(
    pcm: object,
    sample_rate_hz: int,
    allowed_rates: Iterable[int],
    max_ms: float,
) -> None:
    """Check that ``pcm`` is a usable chunk of int16 mono audio; raise :class:`InputError` if not.

    The message says what was wrong and what is accepted instead. Checks, in order: the type
    and dtype (int16; float input, even NaN-laden, is rejected as the wrong dtype), the shape
    (1-D mono), the sample rate (one of ``allowed_rates``), emptiness and the duration
    (at most ``max_ms``).
    """
    if not isinstance(pcm, np.ndarray):
        raise InputError(f"audio must be a numpy int16 array, got {type(pcm).__name__}")
    if pcm.dtype != np.int16:
        hint = ""
        if np.issubdtype(pcm.dtype, np.floating):
            if not np.all(np.isfinite(pcm)):
                hint = " (it also contains NaN or infinite values)"
            else:
                hint = " (convert float audio in -1..1 with models.audio.to_int16)"
        elif pcm.dtype.kind == "i" and pcm.dtype.itemsize == 2:
            hint = (f" in the wrong byte order ({pcm.dtype.str}); convert it with "
                    "pcm.astype(np.int16)")
        raise InputError(f"audio must be int16 PCM, got dtype {pcm.dtype}{hint}")
    if pcm.ndim != 1:
        raise InputError(
            f"audio must be mono (a 1-D array), got shape {pcm.shape}; mix channels down first"
        )
    rates = sorted(set(allowed_rates))
    if isinstance(sample_rate_hz, bool) or not isinstance(sample_rate_hz, int | np.integer):
        raise InputError(f"sample rate must be an integer in Hz, got {sample_rate_hz!r}")
    if sample_rate_hz not in rates:
        raise InputError(
            f"sample rate {sample_rate_hz} Hz is not supported; use one of "
            f"{', '.join(str(r) for r in rates)} Hz"
        )
    if pcm.size == 0:
        raise InputError("audio chunk is empty; send at least one sample")
    duration_ms = 1000.0 * pcm.size / sample_rate_hz
    if duration_ms > max_ms:
        raise InputError(
            f"audio chunk is {duration_ms:.0f} ms long; send chunks of at most {max_ms:.0f} ms"
        )


def to_float32(pcm: np.ndarray) -> np.ndarray:
    """int16 PCM to float32 in -1..1."""
    return pcm.astype(np.float32) / np.float32(_INT16_SCALE)


def to_int16(audio: np.ndarray) -> np.ndarray:
    """Float audio in -1..1 to int16 PCM, clipping out-of-range samples and zeroing NaN."""
    scaled = np.nan_to_num(np.asarray(audio, dtype=np.float32), nan=0.0) * _INT16_SCALE
    return np.clip(scaled, -32768, 32767).astype(np.int16)


@lru_cache(maxsize=64)
def _ratio(from_hz: int, to_hz: int) -> tuple[int, int]:
    g = gcd(from_hz, to_hz)
    return to_hz // g, from_hz // g


@lru_cache(maxsize=16)
def _filter(up: int, down: int) -> np.ndarray:
    """The low-pass FIR ``resample_poly`` would design (Kaiser, beta 5), designed once."""
    max_rate = max(up, down)
    taps = firwin(2 * 10 * max_rate + 1, 1.0 / max_rate, window=("kaiser", 5.0))
    taps = taps.astype(np.float32)
    taps.setflags(write=False)
    return taps


def _resample_poly(x: np.ndarray, up: int, down: int) -> np.ndarray:
    return resample_poly(x, up, down, window=_filter(up, down)).astype(np.float32, copy=False)


def resample(audio: np.ndarray, from_hz: int, to_hz: int) -> np.ndarray:
    """Resample mono audio with a polyphase filter (scipy ``resample_poly``).

    Float input stays float32; int16 input comes back as int16. The output has
    ``round(len(audio) * to_hz / from_hz)`` samples. Chunks are filtered independently, so
    resampling a stream chunk by chunk leaves tiny seams at chunk edges, which speech
    recognition and voice activity detection do not notice.
    """
    if from_hz <= 0 or to_hz <= 0:
        raise ValueError(f"sample rates must be positive, got {from_hz} -> {to_hz}")
    if from_hz == to_hz or audio.size == 0:
        return audio.copy()
    up, down = _ratio(int(from_hz), int(to_hz))
    is_int = audio.dtype == np.int16
    x = to_float32(audio) if is_int else audio.astype(np.float32, copy=False)
    y = _resample_poly(x, up, down)
    return to_int16(y) if is_int else y


def rms_dbfs(pcm: np.ndarray) -> float:
    """RMS level in dBFS (0 = full-scale square wave); ``-inf`` for silence or empty input.

    Accepts int16 PCM or float audio in -1..1.
    """
    if pcm.size == 0:
        return float("-inf")
    x = to_float32(pcm) if pcm.dtype == np.int16 else pcm.astype(np.float64, copy=False)
    rms = float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))
    if rms <= 0.0 or not np.isfinite(rms):
        return float("-inf")
    return 20.0 * float(np.log10(rms))


class StreamResampler:
    """Resample a stream chunk by chunk with the same result as resampling it all at once.

    A one-shot polyphase filter pads each chunk's edges with zeros, which leaves clicks at the
    seams and lets rounding drift the sample count. This keeps a few input samples of context
    on both sides and holds back the outputs whose filter window is not yet complete (about
    1 ms of delay); :meth:`flush` releases them at the end of the stream.
    """

    def __init__(self, from_hz: int, to_hz: int) -> None:
        if from_hz <= 0 or to_hz <= 0:
            raise ValueError(f"sample rates must be positive, got {from_hz} -> {to_hz}")
        self.from_hz = int(from_hz)
        self.to_hz = int(to_hz)
        self._up, self._down = _ratio(self.from_hz, self.to_hz)
        # resample_poly's filter spans 10 * max(up, down) taps each side at the upsampled rate.
        self._pad = -(-10 * max(self._up, self._down) // self._up) + 2
        self._buf = np.zeros(0, dtype=np.float32)
        self._buf_start = 0  # absolute input index of _buf[0]; always a multiple of _down
        self._out_pos = 0  # absolute index of the next output sample

    @property
    def passthrough(self) -> bool:
        return self.from_hz == self.to_hz

    def push(self, audio: np.ndarray) -> np.ndarray:
        """Add float32 input samples; return the output samples that are now complete."""
        x = np.asarray(audio, dtype=np.float32)
        if self.passthrough:
            return x.copy()
        self._buf = np.concatenate([self._buf, x])
        end_in = self._buf_start + len(self._buf)
        ready = ((end_in - self._pad) * self._up) // self._down + 1
        return self._emit(max(ready, self._out_pos))

    def flush(self) -> np.ndarray:
        """Return every remaining output sample, treating the stream as ended."""
        if self.passthrough:
            return np.zeros(0, dtype=np.float32)
        end_in = self._buf_start + len(self._buf)
        total = -(-end_in * self._up // self._down)
        return self._emit(total)

    def _emit(self, stop: int) -> np.ndarray:
        if stop <= self._out_pos or len(self._buf) == 0:
            return np.zeros(0, dtype=np.float32)
        y = _resample_poly(self._buf, self._up, self._down)
        first = self._buf_start * self._up // self._down
        out = y[self._out_pos - first : stop - first]
        self._out_pos += len(out)
        # Drop input no output will need again, keeping _buf_start a multiple of _down.
        keep_from = (self._out_pos * self._down) // self._up - self._pad
        keep_from = max(self._buf_start, (keep_from // self._down) * self._down)
        self._buf = self._buf[keep_from - self._buf_start :]
        self._buf_start = keep_from
        return out.copy()
