"""The end-to-end WebRTC benchmark's pure figures: percentiles, onsets and stops on the
silence threshold, the A/V offset estimator, the mouth signal and the per-turn analysis of a
synthetic recording whose latencies and lag are known."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cluster.bench.e2e import script, server_errors, server_marks
from cluster.bench.e2e_metrics import (
    Recording,
    TurnLog,
    analyse,
    check_targets,
    clock_offset,
    summary,
)
from cluster.bench.signals import (
    SILENCE_RMS,
    best_lag,
    first_above,
    idle_threshold,
    intervals_ms,
    mouth_box,
    mouth_signal,
    rate_per_s,
    reply_offset,
    silent_from,
)

pytestmark = pytest.mark.unit
rng = np.random.default_rng(7)


def test_summary_reports_percentiles_and_count_and_skips_missing_values() -> None:
    s = summary([*range(1, 101), None, math.nan])
    assert s["n"] == 100
    assert s["p50"] == pytest.approx(50.5, abs=0.1)
    assert s["p95"] == pytest.approx(95.05, abs=0.1)
    assert s["p99"] == pytest.approx(99.01, abs=0.1)
    assert summary([None]) == {"p50": None, "p95": None, "p99": None, "n": 0}


def test_onset_is_the_first_frame_above_the_threshold_after_the_start() -> None:
    t = np.arange(100) * 0.02
    rms = np.zeros(100)
    rms[10] = 500.0  # before the start: ignored
    rms[40:] = 900.0
    assert first_above(t, rms, SILENCE_RMS, after=0.5) == pytest.approx(0.8)
    assert first_above(t, rms * 0, SILENCE_RMS, after=0.0) is None


def test_stop_needs_the_silence_to_last() -> None:
    t = np.arange(200) * 0.02
    rms = np.full(200, 800.0)
    rms[50:55] = 0.0  # a 100 ms pause between words is not a stop
    rms[80:] = 0.0  # the real stop at 1.6 s
    assert silent_from(t, rms, after=0.5) == pytest.approx(1.6)
    assert silent_from(t[:88], rms[:88], after=0.5) is None  # recording ends before 200 ms


def test_frame_intervals_and_rate() -> None:
    t = np.arange(0, 251) * 0.04
    t[100:] += 0.06  # one late frame
    gaps = intervals_ms(t)
    assert max(gaps) == pytest.approx(100.0)
    assert rate_per_s(t) == pytest.approx(250 / 10.06)


def _envelope(n_bins: int) -> np.ndarray:
    """A speech-like envelope: syllables of random length and loudness, 10 ms bins."""
    env = np.zeros(n_bins)
    i = 5
    while i < n_bins - 5:
        length = min(int(rng.integers(8, 25)), n_bins - i)
        env[i:i + length] = rng.uniform(0.3, 1.0) * np.hanning(length)
        i += length + int(rng.integers(2, 15))
    return env


@pytest.mark.parametrize("lag_ms", [-120.0, -40.0, 0.0, 30.0, 80.0, 160.0])
def test_best_lag_recovers_a_known_delay_of_the_video(lag_ms: float) -> None:
    env = _envelope(600)
    video = np.roll(env, int(lag_ms / 10)) + rng.normal(0, 0.03, 600)
    lag, corr = best_lag(env, video)
    assert lag == pytest.approx(lag_ms, abs=5.0)
    assert corr > 0.8


def test_best_lag_is_none_for_a_flat_signal() -> None:
    lag, corr = best_lag(_envelope(300), np.zeros(300))
    assert lag is None and corr == 0.0


def test_reply_offset_on_arrival_times_recovers_video_late_by_40_ms() -> None:
    """Audio frames arrive every 20 ms, video frames every 40 ms with jitter; the mouth
    follows the sound 40 ms later."""
    env = _envelope(400)  # 4 s, 10 ms bins
    level = np.interp(np.arange(0, 4, 0.01), np.arange(400) * 0.01, env)
    a_t = 10.0 + np.arange(0, 4, 0.01)
    v_t = 10.0 + np.arange(0, 4, 0.04) + rng.uniform(0, 0.004, 100)
    mouth = np.interp(v_t - 0.040, a_t, level)
    lag, corr = reply_offset(a_t, (level * 3000) ** 2, v_t, mouth, 10.0, 14.0)
    assert lag == pytest.approx(40.0, abs=8.0)
    assert corr > 0.7


def test_mouth_box_is_the_lower_middle_of_the_frame() -> None:
    rows, cols = mouth_box(256, 256)
    assert 110 < rows.start < rows.stop < 200
    assert cols.start > 64 and cols.stop < 192


def test_idle_threshold_sits_above_the_idle_spread() -> None:
    idle = rng.normal(2.0, 0.3, 500)
    assert idle_threshold(idle) > idle.max()
    assert idle_threshold([0.1, 0.1]) == 2.0  # never below the floor


# --- a synthetic recording --------------------------------------------------------------------

FACE = rng.integers(60, 200, (14, 16)).astype(np.uint8)


def _mouth(opening: float) -> np.ndarray:
    face = FACE.copy()
    rows = int(opening * 8 + 0.5)
    face[3:3 + rows, 3:13] = 20  # a dark mouth opening
    return face


class _Stream:
    """Audio (20 ms frames) and video (40 ms frames) as the client would record them."""

    def __init__(self, seconds: float, video_lag_s: float) -> None:
        self.a_t = np.arange(0, seconds, 0.02)
        self.level = np.zeros(len(self.a_t))
        self.v_t = np.arange(0, seconds, 0.04) + 0.001
        self.video_lag_s = video_lag_s

    def speak(self, start: float, stop: float) -> None:
        """The avatar talks (syllables) from ``start`` to ``stop``."""
        i, j = np.searchsorted(self.a_t, [start, stop])
        env = _envelope(j - i + 10)[5:5 + j - i]
        env[0] = max(env[0], 0.5)
        self.level[i:j] = np.maximum(env, 0.05) * 4000.0  # audible between syllables

    def recording(self, turns: list[TurnLog]) -> Recording:
        opening = np.interp(self.v_t - self.video_lag_s, self.a_t, self.level / 4000.0)
        mouths = np.stack([_mouth(o) for o in opening])
        energy = np.repeat((self.level ** 2)[:, None], 2, axis=1)
        return Recording(self.a_t, self.a_t - 0.08, self.level, energy, self.v_t,
                         self.v_t - 0.04, mouths, turns)


def test_analyse_recovers_latencies_stop_and_offset_of_a_scripted_run() -> None:
    s = _Stream(40.0, video_lag_s=0.02)
    turns = [
        # voice: speech ends at 5.0 s, the reply is heard at 5.6 s
        TurnLog("voice", "q1", speech_start=3.0, speech_end=5.0, until=12.0),
        # text: typed at 12.5 s, the reply is heard at 12.75 s
        TurnLog("text", "q2", typed_at=12.5, until=19.0),
        # barge: typed at 19.5, reply at 19.8; the user cuts in at 22.0, the reply stops at
        # 22.12; the user's question ends at 24.0, its reply is heard at 24.7
        TurnLog("barge", "q3", typed_at=19.5, speech_start=22.0, speech_end=24.0, until=32.0,
                spoken_text="q4"),
    ]
    s.speak(5.6, 9.6)
    s.speak(12.75, 16.75)
    s.speak(19.8, 22.12)
    s.speak(24.7, 28.7)
    rec = s.recording(turns)
    # the session's media clock started 2 s after the client's; the server saw the speech
    # end 150 ms after the client and had audio 300 ms later; it cut the reply 70 ms into
    # the interruption
    rec.clock_offset_s = 2.0
    rec.events = [(5.5, {"type": "turn_end", "marks_ms": {"speech_end": 3150.0,
                                                          "tts_first_audio": 3450.0}}),
                  (22.2, {"type": "interrupt", "turn_id": 3, "pts_ms": 20070.0})]
    figures, log = analyse(rec)
    assert figures["voice_to_first_audio_ms"]["n"] == 2
    assert log[0]["voice_to_first_audio_ms"] == pytest.approx(600, abs=21)
    assert log[2]["voice_to_first_audio_ms"] == pytest.approx(700, abs=21)
    assert log[1]["text_to_first_audio_ms"] == pytest.approx(250, abs=21)
    assert log[2]["text_to_first_audio_ms"] == pytest.approx(300, abs=21)
    assert log[2]["barge_in_stop_ms"] == pytest.approx(120, abs=21)
    # the mouth moves with the sound, one or two video frames after it starts
    assert 600 <= log[0]["voice_to_first_frame_ms"] <= 700
    assert figures["av_offset_ms"]["n"] == 4
    assert figures["av_offset_ms"]["p50"] == pytest.approx(20.0, abs=10.0)
    # on wire times the video is 40 ms earlier and the audio 80 ms: 40 ms more video lag
    assert figures["av_offset_wire_ms"]["p50"] == pytest.approx(60.0, abs=10.0)
    assert figures["client_receive_delay_ms"] == {"audio": 80.0, "video": 40.0}
    assert figures["fps"] == pytest.approx(25.0, abs=0.1)
    assert figures["mouth"]["idle_frames"] > 100
    assert log[0]["inbound_ms"] == pytest.approx(150.0)
    assert log[0]["server_ms"] == pytest.approx(300.0)
    assert log[0]["outbound_ms"] == pytest.approx(150.0, abs=21)
    assert log[2]["barge_in_detect_ms"] == pytest.approx(70.0)
    assert log[2]["barge_in_drain_ms"] == pytest.approx(50.0, abs=21)
    assert figures["voice_breakdown_ms"]["server"]["n"] == 1
    assert figures["barge_in_breakdown_ms"]["detect"]["p50"] == pytest.approx(70.0)


def test_clock_offset_uses_the_fastest_round_trip() -> None:
    # media clock = client clock - 100 s; the second pong was delayed on its way back
    pongs = [(100.0, 100.010, 4.0), (101.0, 101.300, 1010.0), (102.0, 102.004, 2001.0)]
    assert clock_offset(pongs) == pytest.approx(100.001)
    assert clock_offset([]) is None


def test_server_marks_and_errors_come_from_the_sessions_events() -> None:
    events = [(1.0, {"type": "turn_end", "marks_ms": {"speech_end": 1000.0, "asr_final": 1300.0,
                                                      "tts_first_audio": 1500.0}}),
              (2.0, {"type": "turn_end", "marks_ms": {"asr_final": 5000.0,
                                                      "tts_first_audio": 5200.0}}),
              (3.0, {"type": "error", "message": "the ASR deployment failed"}),
              (4.0, {"type": "error", "message": "the ASR deployment failed"})]
    marks = server_marks(events)
    assert marks["voice_to_first_audio"] == 500.0
    assert marks["text_to_first_audio"] == 200.0
    assert marks["turns"] == 2
    assert server_errors(events) == {"the ASR deployment failed": 2}


def test_a_barge_in_while_the_avatar_is_silent_is_not_counted_as_a_stop() -> None:
    s = _Stream(20.0, video_lag_s=0.0)
    s.speak(2.0, 3.0)  # the reply ended before the user spoke
    turns = [TurnLog("barge", "q", typed_at=1.5, speech_start=5.0, speech_end=6.0, until=15)]
    figures, log = analyse(s.recording(turns))
    assert log[0]["barge_in_stop_ms"] is None
    assert figures["barge_in_stop_ms"]["n"] == 0


def test_mouth_signal_grows_with_the_opening() -> None:
    values = mouth_signal(np.stack([_mouth(o) for o in (0.0, 0.5, 1.0)]), FACE)
    assert values[0] == 0.0 and values[0] < values[1] < values[2]


def test_targets_compare_each_figure_and_fail_unmeasured_ones() -> None:
    report = {"voice_to_first_audio_ms": {"p50": 450.0, "p95": 900.0},
              "text_to_first_audio_ms": {"p95": None}, "fps": 24.9,
              "frame_interval_ms": {"p99": 44.0}, "abs_av_offset_ms": {"p99": 31.0},
              "barge_in_stop_ms": {"p95": 150.0}, "session_setup_ms": {"p95": 1200.0}}
    met = check_targets(report)
    assert met == {"voice_to_first_audio_ms.p50": True, "voice_to_first_audio_ms.p95": False,
                   "text_to_first_audio_ms.p95": False, "fps": True,
                   "frame_interval_ms.p99": True, "abs_av_offset_ms.p99": False,
                   "barge_in_stop_ms.p95": True, "session_setup_ms.p95": True}


def test_the_script_cycles_kinds_and_questions() -> None:
    plan = script(["a", "b", "c"], 5)
    assert [k for k, _, _ in plan] == ["voice", "text", "voice", "barge", "voice"]
    assert plan[3] == ("barge", "a", "b")
    assert plan[4][1] == "c"
