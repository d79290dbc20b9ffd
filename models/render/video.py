"""MP4 files with PyAV: H.264 video and AAC audio muxed on one clock, and a reader for checks.

The A/V contract of :func:`write_mp4`: video frame ``k`` is presented at ``k / fps`` seconds and
audio sample ``0`` at time ``0``, so both streams start together and a player keeps them in sync
from the container timestamps alone. The video stream's time base is ``1 / fps`` (frame ``k`` has
``pts = k``); the audio stream's is ``1 / AAC_RATE_HZ``. The AAC encoder's priming delay is
recorded by the MP4 muxer (edit list), so decoders drop it and the audio starts at 0.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import NamedTuple

import numpy as np

from models.errors import BackendError, InputError

AAC_RATE_HZ = 48_000
"""Audio is resampled to this rate for AAC (the rate every player and browser handles)."""
DEFAULT_CRF = 23
DEFAULT_PRESET = "veryfast"


class Mp4Media(NamedTuple):
    """What :func:`read_mp4` decodes: RGB frames, their rate, mono int16 audio and its rate."""

    frames: np.ndarray
    """uint8 (N, H, W, 3) RGB."""
    fps: float
    audio: np.ndarray
    """int16 (S,) mono."""
    rate: int

    @property
    def video_ms(self) -> float:
        return 1000.0 * len(self.frames) / self.fps

    @property
    def audio_ms(self) -> float:
        return 1000.0 * len(self.audio) / self.rate


def _fps_fraction(fps: float) -> Fraction:
    if not isinstance(fps, int | float | Fraction) or not 1 <= fps <= 240:
        raise InputError(f"video fps must be a number from 1 to 240, got {fps!r}")
    return Fraction(fps).limit_denominator(1001)


def _check_inputs(frames: np.ndarray, audio: np.ndarray, rate: int) -> tuple[np.ndarray, ...]:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[3] != 3 or frames.dtype != np.uint8 or not len(frames):
        raise InputError(f"frames must be uint8 (N, H, W, 3) RGB with N >= 1, got "
                         f"{frames.dtype} {frames.shape}")
    if frames.shape[1] % 2 or frames.shape[2] % 2:
        raise InputError(f"H.264 (yuv420p) needs even frame sides, got {frames.shape[1:3]}; "
                         "render at an even size such as 256 or 512")
    audio = np.asarray(audio)
    if audio.ndim != 1 or audio.dtype != np.int16:
        raise InputError(f"audio must be mono int16 (S,), got {audio.dtype} {audio.shape}")
    if not 8000 <= int(rate) <= 96_000:
        raise InputError(f"audio rate must be 8000..96000 Hz, got {rate}")
    return frames, audio


def write_mp4(
    path: str | Path,
    frames: np.ndarray,
    fps: float,
    audio: np.ndarray,
    rate: int,
    *,
    crf: int = DEFAULT_CRF,
    preset: str = DEFAULT_PRESET,
) -> Path:
    """Write ``frames`` (uint8 (N, H, W, 3) RGB at ``fps``) and ``audio`` (mono int16 at
    ``rate`` Hz) to an MP4: H.264 (libx264, yuv420p, ``crf``, ``preset``) and AAC at
    :data:`AAC_RATE_HZ`. Both streams start at time 0 (see the module's A/V contract);
    returns the path."""
    import av

    frames, audio = _check_inputs(frames, audio, rate)
    fps_q = _fps_fraction(fps)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = frames.shape[1:3]
    try:
        with av.open(str(path), mode="w", format="mp4",
                     options={"movflags": "+faststart"}) as container:
            video = container.add_stream("libx264", rate=fps_q)
            video.width, video.height, video.pix_fmt = width, height, "yuv420p"
            video.time_base = 1 / fps_q
            video.options = {"crf": str(int(crf)), "preset": preset}
            sound = container.add_stream("aac", rate=AAC_RATE_HZ, layout="mono")
            sound.time_base = Fraction(1, AAC_RATE_HZ)

            for k, rgb in enumerate(frames):
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
                frame.pts, frame.time_base = k, 1 / fps_q
                container.mux(video.encode(frame))
            container.mux(video.encode(None))

            # one input frame; the encoder's resampler converts it to 48 kHz fltp and cuts it
            # into AAC-sized frames with continuous timestamps from 0
            if len(audio):
                chunk = av.AudioFrame.from_ndarray(audio[None, :], format="s16", layout="mono")
                chunk.sample_rate, chunk.pts = int(rate), 0
                chunk.time_base = Fraction(1, int(rate))
                container.mux(sound.encode(chunk))
            container.mux(sound.encode(None))
    except av.FFmpegError as exc:
        raise BackendError(f"could not write {path}: {exc}", retryable=False) from None
    return path


def read_mp4(path: str | Path) -> Mp4Media:
    """Decode an MP4's first video and audio streams: RGB frames, fps, mono int16, rate."""
    import av

    path = Path(path)
    if not path.is_file():
        raise InputError(f"no such video file: {path}")
    try:
        with av.open(str(path)) as container:
            vstream = container.streams.video[0]
            fps = float(vstream.average_rate or vstream.guessed_rate or 0)
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(vstream)]
        with av.open(str(path)) as container:
            if not container.streams.audio:
                return Mp4Media(np.stack(frames), fps, np.zeros(0, np.int16), AAC_RATE_HZ)
            astream = container.streams.audio[0]
            rate = int(astream.rate)
            resampler = av.AudioResampler(format="s16", layout="mono", rate=rate)
            pcm = [r.to_ndarray().reshape(-1)
                   for f in container.decode(astream) for r in resampler.resample(f)]
            pcm += [r.to_ndarray().reshape(-1) for r in resampler.resample(None)]
            # the last AAC frame is padded; the stream's duration says where the audio ends
            keep = (round(float(astream.duration * astream.time_base) * rate)
                    if astream.duration and astream.time_base else None)
    except av.FFmpegError as exc:
        raise InputError(f"{path} is not a readable video: {exc}") from None
    audio = np.concatenate(pcm).astype(np.int16) if pcm else np.zeros(0, np.int16)
    audio = audio[:keep] if keep else audio
    return Mp4Media(np.stack(frames), fps, audio, rate)
