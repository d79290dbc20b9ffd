"""Offline rendering of one spoken utterance: TTS audio, animator track and face frames.

The A/V contract (shared with :func:`models.render.video.write_mp4`): audio sample ``0`` is time
``0`` on the utterance's timeline, and video frame ``k`` shows time ``k * 1000 / fps`` ms. The
speech starts at ``lead_ms`` and is followed by ``tail_ms`` of silence; the audio is padded with
silence to cover exactly the ``N`` frames (``N / fps`` seconds), so both streams last as long.

The animator gets the same events the conductor sends in a live session (``speaking`` at the
speech start, one :class:`~models.frames.SpeechAudio` per TTS chunk with absolute phoneme times,
:class:`~models.frames.TurnEnd` and ``idle`` at its end), so a rendered file shows what a live
stream would.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from models.animate import Animator
from models.errors import BackendUnavailable, InputError
from models.frames import PhonemeTiming, SpeechAudio, StateChange, TurnEnd
from models.render.base import FaceRenderer
from models.tts.base import TTS

RENDER_BATCH = 32
"""Frames per renderer call (one avatar slot repeated)."""


@dataclass(frozen=True)
class Utterance:
    """A rendered utterance: audio and frames on one timeline starting at 0 (see module doc)."""

    text: str
    audio: np.ndarray
    """int16 (S,) mono; ``S = round(N * rate / fps)``."""
    rate: int
    frames: np.ndarray
    """uint8 (N, H, W, 3) RGB; frame ``k`` shows time ``k * 1000 / fps`` ms."""
    params: np.ndarray
    """float32 (N, NUM_PARAMS): the animator's parameters behind each frame."""
    fps: float
    phonemes: tuple[PhonemeTiming, ...]
    """Phonemes with ``start_ms`` on the utterance's timeline (the lead included)."""
    speech_start_ms: float
    speech_end_ms: float

    @property
    def duration_ms(self) -> float:
        return 1000.0 * len(self.frames) / self.fps

    @property
    def audio_ms(self) -> float:
        return 1000.0 * len(self.audio) / self.rate


def create_renderer(size_px: int = 256, device: str = "cpu") -> FaceRenderer:
    """The project's face renderer (:mod:`models.render.torch_renderer`) at ``size_px``."""
    try:
        from models.render.torch_renderer import TorchFaceRenderer
    except ImportError as exc:
        raise BackendUnavailable(f"the face renderer cannot be loaded: {exc}") from None
    return TorchFaceRenderer(size_px=size_px, device=device)


def frame_times_ms(n: int, fps: float) -> np.ndarray:
    """The time each of ``n`` frames shows, in ms: ``k * 1000 / fps``."""
    return np.arange(int(n), dtype=np.float64) * (1000.0 / fps)


def render_params(
    renderer: FaceRenderer,
    slot: int,
    params: np.ndarray,
    *,
    batch: int = RENDER_BATCH,
    on_progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Render one avatar for every row of ``params`` in batches: uint8 (N, H, W, 3)."""
    params = np.ascontiguousarray(params, dtype=np.float32)
    out: list[np.ndarray] = []
    for i in range(0, len(params), batch):
        rows = params[i : i + batch]
        out.append(np.asarray(renderer.render([slot] * len(rows), rows)))
        if on_progress is not None:
            on_progress(min(i + batch, len(params)), len(params))
    size = renderer.size_px
    return np.concatenate(out) if out else np.zeros((0, size, size, 3), np.uint8)


def render_utterance(
    text: str,
    *,
    renderer: FaceRenderer,
    slot: int,
    tts: TTS,
    fps: float = 25,
    seed: int = 0,
    lead_ms: float = 300.0,
    tail_ms: float = 500.0,
    on_progress: Callable[[int, int], None] | None = None,
) -> Utterance:
    """Speak ``text`` with ``tts`` and render avatar ``slot`` saying it at ``fps``.

    The speech starts at ``lead_ms``; frames cover the speech and ``tail_ms`` after it.
    ``on_progress(done, total)`` is called after each render batch."""
    if not text.strip():
        raise InputError("nothing to say: the text is empty")
    if lead_ms < 0 or tail_ms < 0:
        raise InputError(f"lead_ms and tail_ms must be >= 0, got {lead_ms} and {tail_ms}")
    chunks = list(tts.synthesize(text))
    if not chunks:
        raise InputError(f"the TTS produced no audio for {text!r}")
    rate = int(chunks[0].sample_rate_hz)
    speech = np.concatenate([c.pcm for c in chunks]).astype(np.int16)
    speech_ms = 1000.0 * len(speech) / rate

    animator = Animator(fps=fps, seed=seed)
    animator.on_event(StateChange("speaking", lead_ms))
    phonemes: list[PhonemeTiming] = []
    for i, chunk in enumerate(chunks):
        moved = tuple(PhonemeTiming(p.phoneme, lead_ms + p.start_ms, p.duration_ms)
                      for p in chunk.phonemes)
        phonemes.extend(moved)
        animator.on_event(SpeechAudio(chunk.pcm, rate, lead_ms + chunk.offset_ms, 0, i, moved))
    end_ms = lead_ms + speech_ms
    animator.on_event(TurnEnd(end_ms, 0, text))
    animator.on_event(StateChange("idle", end_ms))

    n = max(1, math.ceil((end_ms + tail_ms) * fps / 1000.0))
    params = animator.frames(0.0, n)
    frames = render_params(renderer, slot, params, on_progress=on_progress)

    audio = np.zeros(round(n * rate / fps), dtype=np.int16)
    at = round(lead_ms * rate / 1000.0)
    take = min(len(speech), len(audio) - at)
    audio[at : at + take] = speech[:take]
    return Utterance(text, audio, rate, frames, params, float(fps), tuple(phonemes),
                     float(lead_ms), float(end_ms))
