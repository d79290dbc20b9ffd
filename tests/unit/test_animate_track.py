"""Lip-sync track: visemes, coarticulation, closure, rest, streaming and interrupts."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from models.animate.params import MOUTH_PARAMS, MOUTH_REST
from models.animate.track import LOOKAHEAD_MS, LipTrack
from models.animate.visemes import (
    FALLBACK,
    VISEMES,
    mouth_shape,
    phoneme_visemes,
    viseme_of,
)
from models.frames import PhonemeTiming

pytestmark = pytest.mark.unit

FIXTURE = Path(__file__).parents[1] / "fixtures" / "espeak_phonemes.json"
JAW, CLOSE = MOUTH_PARAMS.index("jaw_open"), MOUTH_PARAMS.index("lip_close")


def utterances(offset_ms: float = 0.0) -> list[list[PhonemeTiming]]:
    """Real espeak-ng phoneme timings (golden fixture), shifted onto a media clock."""
    data = json.loads(FIXTURE.read_text(encoding="utf-8"))
    return [[PhonemeTiming(p, s + offset_ms, d) for p, s, d in u["phonemes"]]
            for u in data["utterances"]]


def track_of(phonemes: list[PhonemeTiming]) -> LipTrack:
    track = LipTrack()
    track.append(phonemes)
    return track


def at_rest(mouth: np.ndarray, tol: float = 0.05) -> bool:
    return bool(np.all(np.abs(mouth - MOUTH_REST) <= tol))


# visemes ------------------------------------------------------------------------------------

def test_phoneme_classes() -> None:
    assert viseme_of("m") == viseme_of("p") == viseme_of("b") == "PP"
    assert viseme_of("f") == "FF" and viseme_of("ð") == "TH" and viseme_of("ɡ") == "kk"
    assert viseme_of("dʒ") == "CH" and viseme_of("tʃ") == "CH"  # affricates are one sound
    assert viseme_of("ɑː") == "aa"  # length mark ignored
    assert viseme_of("ˈiː") == "I"  # stress mark ignored
    assert viseme_of("_") == "sil" and viseme_of("") == "sil"
    assert [v for v, _ in phoneme_visemes("aɪ")] == ["aa", "I"]
    assert [v for v, _ in phoneme_visemes("oʊ")] == ["O", "U"]
    assert [v for v, _ in phoneme_visemes("əl")] == ["E", "nn"]
    shares = [s for _, s in phoneme_visemes("aɪ")]
    assert shares[0] > shares[1] and sum(shares) == pytest.approx(1.0)


@pytest.mark.parametrize("symbol", ["Q", "😀", "ʘ", "123", "a\u0303\u0330", "\x00", "ːː"])
def test_unknown_symbols_never_crash(symbol: str) -> None:
    visemes = phoneme_visemes(symbol)
    assert visemes and all(v in VISEMES for v, _ in visemes)
    track = track_of([PhonemeTiming(symbol, 0.0, 100.0)])
    assert np.isfinite(track.frames(-100, 20, 30)).all()
    assert viseme_of("ʘ") == FALLBACK  # a click: nobody's viseme, a neutral half-open mouth


def test_open_vowels_open_the_jaw_more_than_closed_ones() -> None:
    assert mouth_shape("aa")[JAW] > mouth_shape("E")[JAW] > mouth_shape("I")[JAW]
    assert mouth_shape("O")[JAW] > mouth_shape("U")[JAW]
    jaw = {}
    for vowel in ("ɑː", "æ", "iː", "uː"):
        track = track_of([PhonemeTiming("h", 0, 60), PhonemeTiming(vowel, 60, 150),
                          PhonemeTiming("t", 210, 60)])
        jaw[vowel] = track.sample(135)[JAW]
    assert min(jaw["ɑː"], jaw["æ"]) > max(jaw["iː"], jaw["uː"]) + 0.3


# the track on real espeak sequences -----------------------------------------------------------

@pytest.mark.parametrize("fps", [25, 30])
def test_bilabials_close_the_lips_even_when_short(fps: int) -> None:
    step = 1000.0 / fps
    checked = 0
    for phonemes in utterances():
        track = track_of(phonemes)
        for p in phonemes:
            if viseme_of(p.phoneme) != "PP":
                continue
            for phase in np.linspace(0.0, step, 4, endpoint=False):
                # frames of a stream whose clock is not aligned with the phoneme
                grid = np.arange(-20, 300) * step + phase
                end = p.start_ms + p.duration_ms
                near = grid[(grid >= p.start_ms - step) & (grid <= end + step)]
                assert track.sample_many(near)[:, CLOSE].max() >= 0.97, (p, fps, phase)
            checked += 1
    assert checked >= 8  # the fixture holds short ones too ("p" of 33 ms)


def test_mouth_rests_in_long_pauses_and_after_speech() -> None:
    for phonemes in utterances():
        track = track_of(phonemes)
        for p in phonemes:
            if p.phoneme == "_" and p.duration_ms > 150:
                t = np.arange(p.start_ms + 60, p.start_ms + p.duration_ms - 60, 5.0)
                assert at_rest(track.sample_many(t)), p
        last = max(p.start_ms + p.duration_ms for p in phonemes if p.phoneme != "_")
        assert at_rest(track.sample_many(last + np.arange(120, 1000, 10.0)), tol=0.01)
    # no pause phoneme at all: still closes after the last sound
    track = track_of([PhonemeTiming("h", 0, 50), PhonemeTiming("aɪ", 50, 200)])
    assert track.sample(150)[JAW] > 0.4
    assert at_rest(track.sample(250 + 120), tol=0.01)


def test_open_vowel_peaks_inside_its_interval() -> None:
    step = 1000.0 / 30
    checked = 0
    for phonemes in utterances():
        track = track_of(phonemes)
        for i in range(1, len(phonemes) - 1):
            p = phonemes[i]
            if viseme_of(p.phoneme) != "aa":
                continue
            after = phonemes[i + 1]
            t = np.arange(phonemes[i - 1].start_ms, after.start_ms + after.duration_ms, 1.0)
            peak = t[track.sample_many(t)[:, JAW].argmax()]
            assert p.start_ms - step <= peak <= p.start_ms + p.duration_ms + step, (p, peak)
            checked += 1
    assert checked >= 8


@pytest.mark.parametrize("fps", [25, 30])
def test_no_jitter(fps: int) -> None:
    for phonemes in utterances():
        track = track_of(phonemes)
        end = phonemes[-1].start_ms + phonemes[-1].duration_ms
        n = int((end + 300) * fps / 1000)
        frames = track.frames(-100, n, fps)
        step = np.abs(np.diff(frames, axis=0)).max(axis=0)
        # a syllable's jaw opening may take most of one 40 ms frame, never more than that
        assert step[JAW] <= 0.8, step
        assert (np.delete(step, CLOSE) <= 0.8).all(), step  # lip closure is the fastest gesture
        # smooth: no more turning points than there are viseme segments, in any parameter
        turns = (np.diff(np.sign(np.diff(frames, axis=0)), axis=0) != 0).sum(axis=0)
        assert (turns <= len(track)).all(), turns
        # continuous: frame-to-frame change shrinks as the frame rate grows
        fine = np.abs(np.diff(track.frames(-100, 8 * n, 8 * fps), axis=0)).max()
        assert fine <= 0.25


def test_streaming_append_matches_batch_beyond_lookahead() -> None:
    phonemes = utterances()[1]
    batch = track_of(phonemes)
    live = LipTrack()
    times = np.arange(-200, 5200, 1000 / 30)
    chunks = [phonemes[i : i + 7] for i in range(0, len(phonemes), 7)]
    for chunk in chunks:
        before = live.sample_many(times)
        live.append(chunk)
        after = live.sample_many(times)
        # only frames within the lookahead before the new phonemes may change
        final = times < chunk[0].start_ms - LOOKAHEAD_MS
        np.testing.assert_array_equal(before[final], after[final])
    np.testing.assert_allclose(live.sample_many(times), batch.sample_many(times), atol=1e-6)


def test_interrupt_returns_to_rest_and_keeps_the_past() -> None:
    phonemes = utterances()[0]
    track = track_of(phonemes)
    times = np.arange(0, 4000, 1000 / 30)
    before = track.sample_many(times)
    cut = 1300.0  # mid-word, mouth open
    assert not at_rest(track.sample(cut))
    track.interrupt(cut)
    after = track.sample_many(times)
    np.testing.assert_array_equal(before[times <= cut], after[times <= cut])
    assert at_rest(after[times >= cut + 130], tol=0.01)
    assert np.abs(np.diff(after[times > cut - 100, JAW])).max() <= 0.35
    assert np.all(np.diff(after[times >= cut + 40, JAW]) <= 1e-6)  # closes, no rebound
    # the next turn speaks normally again
    track.append([PhonemeTiming("ɑː", 3000, 200)])
    assert track.sample(3100)[JAW] > 0.6


def test_sampling_cost_of_ten_seconds_at_30_fps() -> None:
    track = LipTrack()
    offset = 0.0
    while track.end_ms < 10_000:
        for phonemes in utterances(offset):
            track.append(phonemes)
            offset = track.end_ms
    track.frames(0, 300, 30)
    runs = 20
    t0 = time.perf_counter()
    for _ in range(runs):
        frames = track.frames(0, 300, 30)
    ms = 1000 * (time.perf_counter() - t0) / runs
    print(f"\nlip track: 10 s at 30 fps ({len(track)} segments) sampled in {ms:.2f} ms")
    assert frames.shape == (300, 6) and frames.dtype == np.float32
