"""Speaking parameter tracks and a strip of rendered frames (for docs and benchmarks).

``python -m models.render.strip docs/avatar-strip.png`` renders the default avatar saying a
sentence (eSpeak phoneme timings -> :class:`~models.animate.Animator` -> renderer) and saves
a row of frames.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from configs.schema import TTSConfig
from models.animate.animator import Animator
from models.frames import PhonemeTiming

SENTENCE = "Hello, my name is Eileen. I am happy to meet you."


def speech_phonemes(text: str = SENTENCE) -> tuple[list[PhonemeTiming], float]:
    """eSpeak's phonemes for ``text`` (ms from the start of the utterance) and its length."""
    from models.tts.espeak import EspeakTTS

    chunks = list(EspeakTTS(TTSConfig(backend="espeak")).synthesize(text))
    phonemes = [p for c in chunks for p in c.phonemes]
    return phonemes, sum(c.duration_ms for c in chunks)


def speaking_tracks(sessions: int, frames: int, fps: int = 25, text: str = SENTENCE,
                    speech: tuple[list[PhonemeTiming], float] | None = None) -> np.ndarray:
    """``(frames, sessions, NUM_PARAMS)`` parameters: every session repeats ``text`` from its
    own offset with its own seed, so mouths, blinks and heads differ between sessions."""
    phonemes, length_ms = speech or speech_phonemes(text)
    span_ms = frames * 1000.0 / fps
    out = []
    for s in range(sessions):
        anim = Animator(fps, seed=s)
        anim.set_state("speaking", 0.0)
        offset = -(s * 173.0) % max(length_ms, 1.0)
        start = offset - length_ms
        while start < span_ms:
            anim.add_phonemes([PhonemeTiming(p.phoneme, p.start_ms + start, p.duration_ms)
                               for p in phonemes])
            start += length_ms + 300.0
        out.append(anim.frames(0.0, frames))
    return np.stack(out, axis=1)


def render_strip(count: int = 8, size_px: int = 512, text: str = SENTENCE) -> np.ndarray:
    """``count`` frames of the default avatar saying ``text``, cropped to the face and laid
    side by side: uint8 ``(h, count * w, 3)``."""
    from models.render.pack import load_pack
    from models.render.torch_renderer import TorchFaceRenderer

    renderer = TorchFaceRenderer(size_px, device="cpu")
    pack = load_pack("default")
    slot = renderer.add_avatar(pack)
    phonemes, length_ms = speech_phonemes(text)
    anim = Animator(25, seed=3)
    anim.set_state("speaking", 0.0)
    anim.add_phonemes(phonemes)
    # one frame from each stretch of the sentence, alternating its widest and most closed mouth
    track = anim.frames(0.0, int(length_ms / 40))
    jaw = track[:, 0] - track[:, 3]
    picks = []
    for k, part in enumerate(np.array_split(np.arange(len(track)), count)):
        picks.append(part[np.argmax(jaw[part]) if k % 2 == 0 else np.argmin(jaw[part])])
    params = track[picks]
    frames = renderer.render([slot] * count, params)
    lm = pack.landmarks[:, :2] * (size_px / pack.size_px)
    x0, x1 = int(lm[:, 0].min() - 0.1 * size_px), int(lm[:, 0].max() + 0.1 * size_px)
    y0, y1 = int(lm[:, 1].min() - 0.12 * size_px), int(lm[:, 1].max() + 0.03 * size_px)
    crop = frames[:, max(y0, 0):y1, max(x0, 0):x1]
    return np.concatenate(list(crop), axis=1)[::2, ::2].copy() if size_px > 256 else \
        np.concatenate(list(crop), axis=1)


def main(argv: list[str]) -> int:
    """Save the strip to ``argv[0]`` (default docs/avatar-strip.png)."""
    from PIL import Image

    path = Path(argv[0] if argv else "docs/avatar-strip.png")
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(render_strip())
    if path.suffix.lower() == ".png":  # a 256-colour palette keeps the docs image small
        image = image.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    image.save(path, optimize=True)
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
