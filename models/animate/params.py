"""The per-frame animation parameter vector: what the renderer consumes.

One frame is a float32 vector with one entry per name in :data:`PARAMS`, always in that order;
a renderer batches them as ``(sessions, len(PARAMS))``. Units and ranges:

========================  ============  =========================================================
name                      range         meaning
========================  ============  =========================================================
``jaw_open``              [0, 1]        0 jaw at rest (teeth together), 1 widest open vowel
``lip_spread``            [0, 1]        mouth corners pulled apart (``i``, ``e``)
``lip_round``             [0, 1]        lips rounded and protruded (``u``, ``o``, ``w``)
``lip_close``             [0, 1]        1 lips touching (rest, ``p b m``), 0 lips fully parted
``teeth_show``            [0, 1]        visible upper teeth (``f v``, ``s``, spread vowels)
``tongue_up``             [0, 1]        tongue tip raised to the teeth / alveolar ridge
``smile``                 [-1, 1]       mouth corners up (positive) or down (negative)
``brow_raise``            [-1, 1]       brows raised (positive) or knitted down (negative)
``blink_left``            [0, 1]        left eyelid closure, 1 fully closed
``blink_right``           [0, 1]        right eyelid closure, 1 fully closed
``gaze_x``                [-30, 30] deg eye rotation, positive towards the image's right
``gaze_y``                [-30, 30] deg eye rotation, positive up
``head_yaw``              [-30, 30] deg head turn, positive towards the image's right
``head_pitch``            [-30, 30] deg head tilt, positive chin up (a nod dips negative)
``head_roll``             [-30, 30] deg head roll, positive clockwise in the image
``breath``                [0, 1]        breathing phase: 0 exhaled, 1 inhaled (shoulders up)
========================  ============  =========================================================

A gaze and head of all zeros look straight into the camera (eye contact with the user).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models.frames import AvatarState

PARAMS: tuple[str, ...] = (
    "jaw_open", "lip_spread", "lip_round", "lip_close", "teeth_show", "tongue_up",
    "smile", "brow_raise", "blink_left", "blink_right",
    "gaze_x", "gaze_y", "head_yaw", "head_pitch", "head_roll", "breath",
)
"""Names of the parameter vector's entries, in order."""

NUM_PARAMS = len(PARAMS)

MOUTH_PARAMS: tuple[str, ...] = PARAMS[:6]
"""The lip-sync subset, driven by phonemes; it is the first block of the vector."""

_INDEX = {name: i for i, name in enumerate(PARAMS)}

RANGES: dict[str, tuple[float, float]] = {
    **{name: (0.0, 1.0) for name in MOUTH_PARAMS},
    "smile": (-1.0, 1.0), "brow_raise": (-1.0, 1.0),
    "blink_left": (0.0, 1.0), "blink_right": (0.0, 1.0),
    **{name: (-30.0, 30.0) for name in ("gaze_x", "gaze_y", "head_yaw", "head_pitch", "head_roll")},
    "breath": (0.0, 1.0),
}
"""Inclusive ``(low, high)`` of every parameter; frames are clipped to these."""

LOW = np.array([RANGES[n][0] for n in PARAMS], dtype=np.float32)
HIGH = np.array([RANGES[n][1] for n in PARAMS], dtype=np.float32)

MOUTH_REST = np.array([0.0, 0.0, 0.0, 0.9, 0.0, 0.0], dtype=np.float32)
"""The closed, relaxed mouth (lips lightly together, jaw up) in :data:`MOUTH_PARAMS` order."""


def index(name: str) -> int:
    """Position of parameter ``name`` in the vector; raises ``KeyError`` naming the valid ones."""
    try:
        return _INDEX[name]
    except KeyError:
        known = ", ".join(PARAMS)
        raise KeyError(f"unknown animation parameter {name!r}; known: {known}") from None


def indices(*names: str) -> list[int]:
    """Positions of several parameters, in the order given."""
    return [index(n) for n in names]


def rest_vector() -> np.ndarray:
    """A neutral frame: mouth at rest, eyes open, looking at the user, head straight."""
    v = np.zeros(NUM_PARAMS, dtype=np.float32)
    v[: len(MOUTH_PARAMS)] = MOUTH_REST
    return v


def clip_params(values: np.ndarray) -> np.ndarray:
    """``values`` (``(..., NUM_PARAMS)``) clipped to :data:`RANGES`, as float32."""
    return np.clip(np.asarray(values, dtype=np.float32), LOW, HIGH)


@dataclass(frozen=True, slots=True)
class AnimationFrame:
    """One video frame's parameters at ``pts_ms`` on the session's media clock.

    ``params`` is float32 of shape ``(NUM_PARAMS,)`` in :data:`PARAMS` order; ``state`` is the
    avatar's conversational state at that time.
    """

    pts_ms: float
    params: np.ndarray
    state: AvatarState

    def __getitem__(self, name: str) -> float:
        """The value of parameter ``name``."""
        return float(self.params[index(name)])

    def as_dict(self) -> dict[str, float]:
        """``{name: value}`` for logging and JSON."""
        return {n: float(v) for n, v in zip(PARAMS, self.params, strict=True)}
