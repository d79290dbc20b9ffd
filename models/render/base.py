"""The renderer interface: one batched step renders a frame for every session on a device.

Sessions join and leave by avatar slot; a step takes each session's animation parameter
vector (:data:`models.animate.params.PARAMS`) and returns one RGB frame per session.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np

from models.render.pack import AvatarPack


class FaceRenderer(ABC):
    size_px: int
    device: str

    @abstractmethod
    def add_avatar(self, pack: AvatarPack) -> int:
        """Precompute what the pack needs (displacement fields, textures); returns its slot.
        Adding an avatar never recompiles or stalls renders in flight."""

    @abstractmethod
    def render(self, avatar_slots: Sequence[int], params: np.ndarray) -> np.ndarray:
        """One frame per row of ``params`` (float32, (B, len(PARAMS))), for the avatar in the
        same position of ``avatar_slots``: uint8 (B, size_px, size_px, 3) RGB."""
