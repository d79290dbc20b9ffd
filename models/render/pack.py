"""Avatar packs: a square portrait and its face geometry.

A pack is a folder ``configs/avatars/NAME/`` (or any path) holding::

    portrait.png    square RGB portrait (512 x 512 for the shipped one)
    landmarks.npy   float32 (478, 3): MediaPipe FaceMesh points (refined), x and y in pixels
                    of portrait.png, z in the same pixel scale (negative = towards the camera)
    pack.json       name, size_px, source and licence of the portrait, and how it was made
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from models.errors import ConfigError

AVATAR_DIR = Path(__file__).resolve().parents[2] / "configs" / "avatars"
NUM_LANDMARKS = 478


@dataclass(frozen=True)
class AvatarPack:
    name: str
    portrait: np.ndarray
    """uint8 (S, S, 3) RGB."""
    landmarks: np.ndarray
    """float32 (478, 3) in portrait pixels."""
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def size_px(self) -> int:
        return int(self.portrait.shape[0])

    def __post_init__(self) -> None:
        p, lm = self.portrait, self.landmarks
        if p.ndim != 3 or p.shape[2] != 3 or p.shape[0] != p.shape[1] or p.dtype != np.uint8:
            raise ConfigError(f"avatar {self.name!r}: portrait must be square uint8 RGB, "
                              f"got {p.dtype} {p.shape}")
        if lm.shape != (NUM_LANDMARKS, 3):
            raise ConfigError(f"avatar {self.name!r}: landmarks must be ({NUM_LANDMARKS}, 3), "
                              f"got {lm.shape}")


def pack_dir(name_or_path: str | Path) -> Path:
    path = Path(name_or_path)
    if path.is_dir():
        return path
    folder = AVATAR_DIR / str(name_or_path)
    if not folder.is_dir():
        known = sorted(p.name for p in AVATAR_DIR.iterdir() if (p / "pack.json").exists()) \
            if AVATAR_DIR.is_dir() else []
        raise ConfigError(f"unknown avatar {name_or_path!r}; known avatars: {', '.join(known)} "
                          "(make one with `avatarctl avatar enroll PHOTO --name NAME`)")
    return folder


def load_pack(name_or_path: str | Path) -> AvatarPack:
    """Load a pack by name (``configs/avatars/NAME``) or folder path."""
    from PIL import Image

    folder = pack_dir(name_or_path)
    try:
        meta = json.loads((folder / "pack.json").read_text())
        portrait = np.asarray(Image.open(folder / "portrait.png").convert("RGB"))
        landmarks = np.load(folder / "landmarks.npy").astype(np.float32)
    except FileNotFoundError as exc:
        raise ConfigError(f"avatar pack {folder} is incomplete: {exc.filename} is missing") \
            from None
    except (ValueError, OSError) as exc:
        raise ConfigError(f"avatar pack {folder} is unreadable: {exc}") from None
    return AvatarPack(str(meta.get("name", folder.name)), portrait, landmarks, meta)


def save_pack(pack: AvatarPack, folder: Path) -> Path:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pack.portrait).save(folder / "portrait.png", optimize=True)
    np.save(folder / "landmarks.npy", pack.landmarks.astype(np.float32))
    meta = {**pack.meta, "name": pack.name, "size_px": pack.size_px}
    (folder / "pack.json").write_text(json.dumps(meta, indent=1) + "\n")
    return folder
