"""PCM helpers: validation messages, conversions, resampling and level."""

from __future__ import annotations

import numpy as np
import pytest

from models.audio import (
    StreamResampler,
    resample,
    rms_dbfs,
    to_float32,
    to_int16,
    validate_pcm,
)
from models.errors import InputError

pytestmark = pytest.mark.unit

RATES = (8000, 16000, 48000)


def tone(freq_hz: float, rate: int, ms: float, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(rate * ms / 1000)) / rate
    return (amp * np.sin(2 * np.pi * freq_hz * t)).astype(np.float32)


def test_valid_pcm_passes() -> None:
    validate_pcm(np.zeros(320, np.int16), 16000, RATES, max_ms=1000)


@pytest.mark.parametrize(
    ("pcm", "rate", "expected"),
    [
        (np.zeros(320, np.float32), 16000, "int16.*float32.*to_int16"),
        (np.full(320, np.nan, np.float32), 16000, "NaN"),
        (np.zeros((160, 2), np.int16), 16000, r"mono.*\(160, 2\)"),
        (np.zeros(320, np.int16), 22050, "22050 Hz is not supported.*8000, 16000, 48000"),
        (np.zeros(0, np.int16), 16000, "empty"),
        (np.zeros(32000, np.int16), 16000, "2000 ms.*at most 1000 ms"),
        ([0, 1, 2], 16000, "numpy int16 array, got list"),
        (np.zeros(320, np.int16), 16000.0, "integer"),
    ],
)
def test_bad_pcm_is_rejected_with_a_useful_message(
    pcm: object, rate: int, expected: str
) -> None:
    with pytest.raises(InputError, match=expected) as info:
        validate_pcm(pcm, rate, RATES, max_ms=1000)
    assert not info.value.retryable


def test_int16_float_round_trip_and_clipping() -> None:
    pcm = np.array([-32768, -1, 0, 1, 32767], np.int16)
    x = to_float32(pcm)
    assert x.dtype == np.float32 and x.min() == -1.0 and x.max() < 1.0
    np.testing.assert_array_equal(to_int16(x), pcm)
    clipped = to_int16(np.array([-3.0, 2.0, np.nan], np.float32))
    np.testing.assert_array_equal(clipped, [-32768, 32767, 0])


@pytest.mark.parametrize(("src", "dst"), [(48000, 16000), (44100, 16000), (8000, 16000)])
def test_resample_keeps_length_and_pitch(src: int, dst: int) -> None:
    x = tone(440.0, src, 1000)
    y = resample(x, src, dst)
    assert y.dtype == np.float32
    assert len(y) == dst
    spectrum = np.abs(np.fft.rfft(y))
    peak_hz = np.argmax(spectrum) * dst / len(y)
    assert abs(peak_hz - 440.0) <= 2.0
    assert abs(rms_dbfs(y) - rms_dbfs(x)) < 0.5


def test_resample_int16_stays_int16_and_same_rate_copies() -> None:
    pcm = to_int16(tone(300.0, 48000, 100))
    out = resample(pcm, 48000, 16000)
    assert out.dtype == np.int16 and len(out) == 1600
    same = resample(pcm, 48000, 48000)
    assert same is not pcm
    np.testing.assert_array_equal(same, pcm)


@pytest.mark.parametrize("src", [44100, 48000, 8000, 22050])
def test_stream_resampler_matches_one_shot(src: int) -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal(src).astype(np.float32) * 0.1
    stream = StreamResampler(src, 16000)
    pieces, i = [], 0
    while i < len(x):
        n = int(rng.integers(1, src // 25))
        pieces.append(stream.push(x[i : i + n]))
        i += n
    pieces.append(stream.flush())
    np.testing.assert_allclose(np.concatenate(pieces), resample(x, src, 16000), atol=1e-5)


def test_stream_resampler_delay_is_small() -> None:
    stream = StreamResampler(48000, 16000)
    out = stream.push(np.zeros(960, np.float32))  # 20 ms
    assert 300 <= len(out) <= 320


def test_rms_dbfs_levels() -> None:
    assert rms_dbfs(np.full(100, 32767, np.int16)) == pytest.approx(0.0, abs=0.01)
    assert rms_dbfs(tone(1000.0, 16000, 100, amp=1.0)) == pytest.approx(-3.01, abs=0.05)
    assert rms_dbfs(np.zeros(100, np.int16)) == float("-inf")
    assert rms_dbfs(np.zeros(0, np.int16)) == float("-inf")
