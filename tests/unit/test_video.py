"""Talking-head video: MP4 muxing on one clock, offline utterance rendering and
``avatarctl say --out reply.mp4``."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from models.animate import NUM_PARAMS, index
from models.errors import InputError
from models.render.base import FaceRenderer
from models.render.offline import render_utterance
from models.render.pack import AvatarPack
from models.render.video import AAC_RATE_HZ, read_mp4, write_mp4
from tests.fakes import FakeTTS

pytestmark = pytest.mark.unit

HAS_RENDERER = importlib.util.find_spec("models.render.torch_renderer") is not None


def _moving_frames(n: int, size: int = 64) -> np.ndarray:
    """Smooth frames whose brightness follows the frame number (survives H.264)."""
    yy, xx = np.mgrid[0:size, 0:size]
    frames = np.empty((n, size, size, 3), np.uint8)
    for k in range(n):
        frames[k, ..., 0] = (xx * 2 + k * 3) % 256
        frames[k, ..., 1] = 60 + 4 * k % 120
        frames[k, ..., 2] = yy * 2
    return frames


@pytest.mark.parametrize(("fps", "rate"), [(25, 22050), (30, 16000)])
def test_mp4_round_trip_keeps_frames_fps_and_audio_in_step(
        tmp_path: Path, fps: int, rate: int) -> None:
    n = 2 * fps + 7
    frames = _moving_frames(n)
    t = np.arange(round(n * rate / fps)) / rate
    audio = (9000 * np.sin(2 * np.pi * 330 * t)).astype(np.int16)
    path = write_mp4(tmp_path / "clip.mp4", frames, fps, audio, rate)

    media = read_mp4(path)
    assert media.frames.shape == frames.shape
    assert media.fps == pytest.approx(fps)
    assert media.rate == AAC_RATE_HZ
    assert abs(media.audio_ms - media.video_ms) <= 1000 / fps
    assert media.video_ms == pytest.approx(1000 * n / fps)
    assert np.abs(media.frames.astype(int) - frames).mean() < 4
    # the frames stay in order: brightness of the green channel follows the frame number
    assert np.corrcoef(media.frames[..., 1].mean(axis=(1, 2)), frames[..., 1].mean(axis=(1, 2))
                       )[0, 1] > 0.99
    # the tone survives AAC at its level, starting at time 0
    rms = np.sqrt(np.mean(media.audio[AAC_RATE_HZ // 10: -AAC_RATE_HZ // 10].astype(float) ** 2))
    assert rms == pytest.approx(9000 / np.sqrt(2), rel=0.1)


def test_mp4_audio_starts_with_the_video(tmp_path: Path) -> None:
    """A click at 1 s in the input is at 1 s in the file: no encoder delay is left in."""
    rate, fps = 16000, 25
    audio = np.zeros(2 * rate, np.int16)
    audio[rate: rate + 160] = 20000
    path = write_mp4(tmp_path / "click.mp4", _moving_frames(50), fps, audio, rate)
    media = read_mp4(path)
    click_ms = 1000 * np.argmax(np.abs(media.audio) > 5000) / media.rate
    assert click_ms == pytest.approx(1000, abs=5)


def test_write_mp4_rejects_odd_sizes_and_bad_audio(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="even"):
        write_mp4(tmp_path / "x.mp4", np.zeros((2, 63, 64, 3), np.uint8), 25,
                  np.zeros(100, np.int16), 16000)
    with pytest.raises(InputError, match="mono int16"):
        write_mp4(tmp_path / "x.mp4", np.zeros((2, 64, 64, 3), np.uint8), 25,
                  np.zeros((100, 2), np.int16), 16000)


class JawBrightnessRenderer(FaceRenderer):
    """Frames whose brightness is the jaw opening: enough to check which time a frame shows."""

    size_px, device = 32, "cpu"

    def __init__(self) -> None:
        self.calls: list[int] = []

    def add_avatar(self, pack: AvatarPack) -> int:
        return 0

    def render(self, avatar_slots: Sequence[int], params: np.ndarray) -> np.ndarray:
        self.calls.append(len(avatar_slots))
        level = (255 * params[:, index("jaw_open")]).astype(np.uint8)
        return np.broadcast_to(level[:, None, None, None], (len(params), 32, 32, 3)).copy()


def test_render_utterance_puts_audio_and_frames_on_one_timeline() -> None:
    renderer = JawBrightnessRenderer()
    fps = 25
    utt = render_utterance("hello there, how are you", renderer=renderer, slot=0,
                           tts=FakeTTS(), fps=fps, lead_ms=300, tail_ms=500)
    speech_ms = 10 * len("hello there, how are you")
    n = len(utt.frames)
    assert n == int(np.ceil((300 + speech_ms + 500) * fps / 1000))
    assert utt.params.shape == (n, NUM_PARAMS)
    assert len(utt.audio) == round(n * utt.rate / fps)
    assert utt.audio_ms == pytest.approx(utt.duration_ms)
    # the speech sits at lead_ms; silence before and after it
    voiced = np.flatnonzero(utt.audio)
    assert 1000 * voiced[0] / utt.rate == pytest.approx(300, abs=1)
    assert 1000 * voiced[-1] / utt.rate == pytest.approx(300 + speech_ms, abs=2)
    assert utt.phonemes[0].start_ms == pytest.approx(300)
    # frames in batches of at most 32, mouth opening only around the speech
    assert max(renderer.calls) <= 32 and sum(renderer.calls) == n
    t = np.arange(n) * 1000 / fps
    jaw = utt.frames[:, 0, 0, 0]
    assert jaw[t < 150].max() == 0 and jaw[t > 300 + speech_ms + 250].max() == 0
    assert jaw[(t > 350) & (t < 300 + speech_ms - 50)].min() > 50


@pytest.mark.slow
@pytest.mark.skipif(not HAS_RENDERER, reason="models.render.torch_renderer is not there yet")
def test_say_writes_a_playable_talking_head_mp4(tmp_path: Path) -> None:
    from cluster.cli import chat

    cli = typer.Typer()
    chat.register(cli)
    out = tmp_path / "reply.mp4"
    result = CliRunner().invoke(cli, ["say", "Our clinic opens at nine.", "--out", str(out),
                                      "--size", "256", "--fps", "25", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert {"frames", "fps", "video_ms", "render_ms"} <= summary.keys()
    media = read_mp4(out)
    assert len(media.frames) == summary["frames"] and media.fps == 25
    assert media.frames.shape[1:] == (256, 256, 3)
    assert abs(media.audio_ms - media.video_ms) <= 40
    assert media.video_ms == pytest.approx(summary["video_ms"], abs=1)
    # the face moves while it speaks: frames differ over time
    assert np.abs(np.diff(media.frames.astype(np.int16), axis=0)).mean(axis=(1, 2, 3)).max() > 1
    phonemes = json.loads(out.with_suffix(".phonemes.json").read_text())["phonemes"]
    assert phonemes and phonemes[0]["start_ms"] >= 300  # after the lead-in silence
