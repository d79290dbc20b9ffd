"""The avatar's animator: phonemes and conversation events to per-frame face parameters.

Pure numpy, no rendering. :class:`Animator` is the per-session entry point; the renderer
consumes :data:`PARAMS`-ordered float32 vectors (:class:`AnimationFrame`).
"""

from models.animate.animator import Animator
from models.animate.nonverbal import classify_emotion
from models.animate.params import (
    MOUTH_PARAMS,
    NUM_PARAMS,
    PARAMS,
    RANGES,
    AnimationFrame,
    index,
    rest_vector,
)
from models.animate.track import LOOKAHEAD_MS, LipTrack
from models.animate.visemes import VISEMES, mouth_shape, phoneme_visemes, viseme_of

__all__ = [
    "LOOKAHEAD_MS",
    "MOUTH_PARAMS",
    "NUM_PARAMS",
    "PARAMS",
    "RANGES",
    "VISEMES",
    "AnimationFrame",
    "Animator",
    "LipTrack",
    "classify_emotion",
    "index",
    "mouth_shape",
    "phoneme_visemes",
    "rest_vector",
    "viseme_of",
]
