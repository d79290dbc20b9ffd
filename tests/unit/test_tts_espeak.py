"""eSpeak NG specifics: one process-wide engine shared safely, voices, rate, determinism."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterable

import pytest

from configs.schema import TTSConfig
from models.errors import ConfigError
from models.frames import TTSChunk
from models.tts.espeak import EspeakTTS

pytestmark = pytest.mark.unit

TEXT = "Your appointment is confirmed for Tuesday at ten."


@pytest.fixture(scope="module")
def espeak() -> EspeakTTS:
    return EspeakTTS(TTSConfig())


Signature = tuple[tuple[str, ...], int]


@pytest.fixture(scope="module")
def reference(espeak: EspeakTTS) -> Signature:
    return _signature(espeak.synthesize(TEXT))


def _signature(chunks: Iterable[TTSChunk]) -> Signature:
    """Phoneme sequence and audio length (espeak's timing jitters slightly from run to run)."""
    chunks = list(chunks)
    names = tuple(p.phoneme for c in chunks for p in c.phonemes)
    return names, sum(len(c.pcm) for c in chunks)


def _same(got: Signature, want: Signature) -> bool:
    return got[0] == want[0] and abs(got[1] - want[1]) < 0.02 * want[1]


def test_defaults(espeak: EspeakTTS, reference: Signature) -> None:
    assert espeak.sample_rate_hz == 22050
    assert espeak.voice == "en-us"
    assert not espeak.reentrant
    assert _same(_signature(espeak.synthesize(TEXT)), reference)
    assert "t" in reference[0] and "uː" in reference[0]


async def test_concurrent_streams_give_the_same_audio_as_one_alone(
    espeak: EspeakTTS, reference: Signature
) -> None:
    async def collect() -> list[TTSChunk]:
        return [c async for c in espeak.stream(TEXT)]

    runs = await asyncio.gather(*(collect() for _ in range(3)))
    for run in runs:
        assert _same(_signature(run), reference)


def test_separate_instances_in_threads_do_not_corrupt_each_other(reference: Signature) -> None:
    """The library is process-global: two instances share it through the module lock."""
    fast = EspeakTTS(TTSConfig(rate_wpm=300))
    slow = EspeakTTS(TTSConfig(rate_wpm=175))
    fast_ref = _signature(fast.synthesize(TEXT))
    results: dict[str, list[Signature]] = {"fast": [], "slow": []}

    def worker(name: str, tts: EspeakTTS) -> None:
        for _ in range(5):
            results[name].append(_signature(tts.synthesize(TEXT)))

    threads = [threading.Thread(target=worker, args=("fast", fast)),
               threading.Thread(target=worker, args=("slow", slow))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(results["fast"]) == len(results["slow"]) == 5
    assert all(_same(got, fast_ref) for got in results["fast"])
    assert all(_same(got, reference) for got in results["slow"])
    assert fast_ref[1] < 0.8 * reference[1]


def test_rate_changes_speaking_speed() -> None:
    durations = {}
    for wpm in (120, 350):
        tts = EspeakTTS(TTSConfig(rate_wpm=wpm))
        durations[wpm] = sum(c.duration_ms for c in tts.synthesize(TEXT))
    assert durations[350] < 0.6 * durations[120]


def test_other_voice_and_unknown_voice(reference: Signature) -> None:
    british = EspeakTTS(TTSConfig(voice="en-gb"))
    assert _signature(british.synthesize(TEXT))[0] != reference[0]
    with pytest.raises(ConfigError, match="no voice 'xx-nope'"):
        EspeakTTS(TTSConfig(voice="xx-nope"))
    # a failed voice change leaves working engines untouched
    assert _same(_signature(EspeakTTS(TTSConfig()).synthesize(TEXT)), reference)


def test_first_chunk_goes_out_early_then_chunks_are_full(espeak: EspeakTTS) -> None:
    """The first chunk is whatever is ready (possibly a few ms); later ones are chunk_ms long,
    so a consumer is not flooded with tiny pieces."""
    chunks = list(espeak.synthesize(TEXT + " " + TEXT))
    assert 0 < chunks[0].duration_ms <= 200.0 + 1e-6
    assert all(c.duration_ms == pytest.approx(200.0, abs=0.05) for c in chunks[1:-1])
