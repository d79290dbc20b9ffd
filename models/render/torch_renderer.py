"""The batched PyTorch face renderer: one ``grid_sample`` for every session on a device.

Per frame tick: basis weights from the parameters (``(B, 15)``), one matrix product per avatar
in the batch with its precomputed fields (``(15, S*S*2)``) plus the base grid, the seams of mouth
and eyes (:mod:`models.render.mouth`), a single batched ``grid_sample`` of the portraits, then
the mouth cavity composite. Nothing is compiled per batch size, so sessions join and leave
freely; adding an avatar only appends precomputed tensors.

CPU runs float32; CUDA runs float16 with channels_last textures by default.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from models.animate.params import NUM_PARAMS, clip_params, index
from models.errors import BackendUnavailable, InputError
from models.render.base import FaceRenderer
from models.render.mouth import warp_feature
from models.render.pack import AvatarPack
from models.render.warp import AvatarFields, basis_coefficients, build_fields

SIZES = (256, 512)
_TEETH, _TONGUE = index("teeth_show"), index("tongue_up")


def resolve_device(device: str) -> str:
    """``"auto"`` -> ``"cuda"`` when available else ``"cpu"``; checks explicit choices."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda"):
        raise InputError(f"unknown render device {device!r}; use auto, cpu or cuda")
    if device == "cuda" and not torch.cuda.is_available():
        raise BackendUnavailable("render device 'cuda' asked for but torch sees no CUDA GPU; "
                                 "use --device cpu or auto")
    return device


class TorchFaceRenderer(FaceRenderer):
    """Warp-based portrait animation at ``size_px`` (256 or 512) on ``device``.

    ``dtype`` defaults to float16 on CUDA and float32 on CPU. ``threads`` sets torch's CPU
    threads (default: all cores the process may use). ``engine_dir``: on CUDA, an avatar whose
    TensorRT engine ``<engine_dir>/<name>-<size>.engine`` exists (``scripts/build_tensorrt.py``)
    renders through it."""

    def __init__(self, size_px: int = 256, device: str = "auto",
                 dtype: torch.dtype | None = None, threads: int | None = None,
                 engine_dir: str | Path | None = None) -> None:
        if size_px not in SIZES:
            raise InputError(f"render size must be one of {SIZES} px, got {size_px}")
        self.size_px = int(size_px)
        self.device = resolve_device(device)
        self.dtype = dtype or (torch.float16 if self.device == "cuda" else torch.float32)
        if self.device == "cpu":
            torch.set_num_threads(threads or max(1, len(os.sched_getaffinity(0))))
        self._dev = torch.device(self.device)
        s = self.size_px
        lin = (torch.arange(s, dtype=torch.float32) + 0.5) * (2.0 / s) - 1.0
        gy, gx = torch.meshgrid(lin, lin, indexing="ij")
        self._base = torch.stack([gx, gy], -1).to(self._dev, self.dtype)  # (S, S, 2)
        self._avatars: list[AvatarFields] = []
        self._textures: list[torch.Tensor] = []
        self.names: list[str] = []
        self.engine_dir = Path(engine_dir) if engine_dir else None
        self._engines: dict[int, Callable[[torch.Tensor], torch.Tensor]] = {}

    def add_avatar(self, pack: AvatarPack) -> int:
        """Precompute the pack's fields at this size (about a second); returns its slot."""
        with torch.no_grad():
            af = build_fields(pack.portrait, pack.landmarks, self.size_px)
        moved = AvatarFields(
            texture=af.texture.to(self._dev, self.dtype),
            fields=af.fields.to(self._dev, self.dtype),
            features=tuple(dataclasses.replace(f, **{
                k: getattr(f, k).to(self._dev, self.dtype) for k in (
                    "delta_up", "delta_low", "upper", "lower", "teeth_up", "teeth_low",
                    "shift")})
                for f in af.features))
        tex = moved.texture
        if self.device == "cuda":
            tex = tex.contiguous(memory_format=torch.channels_last)
        self._avatars.append(moved)
        self._textures.append(tex)
        self.names.append(pack.name)
        slot = len(self._avatars) - 1
        if self.engine_dir is not None and self.device == "cuda":
            from models.render.trt import TrtStep, engine_path

            path = engine_path(self.engine_dir, pack.name, self.size_px)
            if path.exists():
                self._engines[slot] = TrtStep(path, self.size_px)
        return slot

    def _check(self, slots: Sequence[int], params: np.ndarray | torch.Tensor) -> None:
        if params.ndim != 2 or params.shape[1] != NUM_PARAMS:
            raise InputError(f"params must be (sessions, {NUM_PARAMS}), got {tuple(params.shape)}")
        if len(slots) != params.shape[0]:
            raise InputError(f"{len(slots)} avatar slots for {params.shape[0]} parameter rows")
        bad = [s for s in slots if not 0 <= int(s) < len(self._avatars)]
        if bad:
            raise InputError(f"unknown avatar slot(s) {bad}; add_avatar() returned "
                             f"0..{len(self._avatars) - 1}")

    @torch.no_grad()
    def render_tensor(self, avatar_slots: Sequence[int],
                      params: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Frames on the render device: ``(B, 3, S, S)`` in 0..255, this renderer's dtype."""
        self._check(avatar_slots, params)
        if isinstance(params, np.ndarray):
            params = torch.from_numpy(clip_params(params))
        p = params.to(self._dev, torch.float32)
        slots = [int(x) for x in avatar_slots]
        if not any(x in self._engines for x in slots):
            return self._warp(p, slots)
        s = self.size_px
        out = torch.empty((len(slots), 3, s, s), device=self._dev, dtype=self.dtype)
        rows = [i for i, x in enumerate(slots) if x not in self._engines]
        if rows:
            idx = torch.tensor(rows, device=self._dev)
            out[idx] = self._warp(p[idx], [slots[i] for i in rows])
        for slot in {x for x in slots if x in self._engines}:
            idx = torch.tensor([i for i, x in enumerate(slots) if x == slot], device=self._dev)
            out[idx] = self._engines[slot](p[idx]).to(self.dtype)
        return out

    def _warp(self, p: torch.Tensor, slots: list[int]) -> torch.Tensor:
        """The PyTorch step: fields, seams, one grid_sample, mouth cavities."""
        coef = basis_coefficients(p).to(self.dtype)
        b, s = p.shape[0], self.size_px
        grid = self._base.expand(b, s, s, 2).clone()
        groups: dict[int, list[int]] = {}
        for row, slot in enumerate(slots):
            groups.setdefault(slot, []).append(row)
        cavities = []
        for slot, rows in groups.items():
            av = self._avatars[slot]
            whole = len(rows) == b
            idx = None if whole else torch.tensor(rows, device=self._dev)
            c = coef if whole else coef[idx]
            g = grid if whole else grid[idx]
            g += (c @ av.fields).view(-1, s, s, 2)
            pr = p if whole else p[idx]
            for feat in av.features:
                cav = warp_feature(g, c, feat, pr[:, _TEETH].to(self.dtype),
                                   pr[:, _TONGUE].to(self.dtype))
                if cav is not None:
                    cavities.append((idx, feat.box, cav))
            if not whole:
                grid[idx] = g
        if len(groups) == 1:
            tex = self._textures[slots[0]].expand(b, -1, -1, -1)
        else:
            tex = torch.cat([self._textures[x] for x in slots])
        out = F.grid_sample(tex, grid, mode="bilinear", padding_mode="border",
                            align_corners=False)
        for idx, (y0, y1, x0, x1), (alpha, rgb) in cavities:
            if idx is None:
                region = out[:, :, y0:y1, x0:x1]
                out[:, :, y0:y1, x0:x1] = region + (rgb - region) * alpha
            else:
                region = out[idx, :, y0:y1, x0:x1]
                out[idx, :, y0:y1, x0:x1] = region + (rgb - region) * alpha
        return out

    def render(self, avatar_slots: Sequence[int], params: np.ndarray) -> np.ndarray:
        """uint8 ``(B, S, S, 3)`` RGB frames, one per row of ``params``."""
        out = self.render_tensor(avatar_slots, params)
        frames = out.clamp_(0, 255).round_().to(torch.uint8).permute(0, 2, 3, 1)
        return frames.contiguous().cpu().numpy()
