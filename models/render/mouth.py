"""Per-frame seams: lips that meet or part, eyelids that close, and the mouth interior.

For each :class:`~models.render.warp.Feature` (mouth, eyes) and a batch of basis weights, the
warped opening's top and bottom edges are computed per column; each pixel of the feature box then
takes the field of its side of the opening (so lips and lids meet along a sharp line). Inside the
mouth, the bands next to the lips show the portrait's own teeth, carried by the upper and lower
jaw; whatever opens beyond them is a synthesised cavity (dark throat, tongue, optional upper
teeth row), composited after sampling.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from models.render.warp import Feature

CAVITY_RGB = (52.0, 20.0, 22.0)
TONGUE_RGB = (150.0, 68.0, 74.0)
TEETH_RGB = (214.0, 206.0, 196.0)


def _soft(x: torch.Tensor) -> torch.Tensor:
    return (x + 0.5).clamp(0.0, 1.0)


def _translate(x: torch.Tensor, move: torch.Tensor) -> torch.Tensor:
    """``x`` (B, C, h, w) moved by ``move`` (B, 2) pixels (bilinear, zeros outside)."""
    _, _, h, w = x.shape
    ly = (torch.arange(h, device=x.device, dtype=x.dtype) + 0.5) * (2.0 / h) - 1.0
    lx = (torch.arange(w, device=x.device, dtype=x.dtype) + 0.5) * (2.0 / w) - 1.0
    gy, gx = torch.meshgrid(ly, lx, indexing="ij")
    scale = torch.tensor([2.0 / w, 2.0 / h], device=x.device, dtype=x.dtype)
    grid = torch.stack([gx, gy], -1)[None] - (move * scale)[:, None, None, :]
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def warp_feature(grid: torch.Tensor, coef: torch.Tensor, feat: Feature,
                 teeth_show: torch.Tensor, tongue_up: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Add the feature's side-of-opening correction to ``grid`` (B, S, S, 2) in place.

    Returns ``(alpha, rgb)`` of the synthesised mouth cavity, ``(B, 1, h, w)`` and
    ``(B, 3, h, w)``, to composite into the feature box after sampling (``None`` for eyes)."""
    y0, y1, x0, x1 = feat.box
    h, w = y1 - y0, x1 - x0
    dt = grid.dtype
    # the opening's edges per column, moved sideways with the head (linear resampling)
    move = coef @ feat.shift  # (B, 2) head translation of the feature, pixels
    pos = torch.arange(w, device=grid.device, dtype=dt)[None] - move[:, :1]
    pos = pos.clamp(0, w - 1)
    i0 = pos.floor().long()
    i1 = (i0 + 1).clamp(max=w - 1)
    f = pos - i0.to(dt)

    def shifted(table: torch.Tensor) -> torch.Tensor:
        return (table.gather(1, i0) * (1 - f) + table.gather(1, i1) * f)[:, None, :]

    dy = move[:, 1, None, None]
    top = shifted(torch.addmm(feat.upper[0:1], coef, feat.upper[1:])) + dy  # (B, 1, w)
    bottom = shifted(torch.addmm(feat.lower[0:1], coef, feat.lower[1:])) + dy
    rows = coef.shape[0]
    teeth_up = shifted(feat.teeth_up.expand(rows, w))
    teeth_low = shifted(feat.teeth_low.expand(rows, w))
    ys = (torch.arange(h, device=grid.device, dtype=dt) + 0.5)[None, :, None]
    a = ys - top
    b = bottom - ys
    above = a < b
    if feat.is_mouth:
        in_up = a < teeth_up
        in_low = b < teeth_low
        sel_up = (in_up & ~in_low) | (above & (in_up == in_low))
    else:
        sel_up = above
    d = torch.cat([(coef @ feat.delta_up).view(-1, h, w, 2),
                   (coef @ feat.delta_low).view(-1, h, w, 2)], 3).permute(0, 3, 1, 2)
    d_up, d_low = _translate(d, move).permute(0, 2, 3, 1).split(2, dim=3)
    grid[:, y0:y1, x0:x1] += torch.where(sel_up[..., None], d_up, d_low)
    if not feat.is_mouth:
        return None
    opening = (bottom - top).clamp(min=1e-3)
    alpha = (_soft(torch.minimum(a, b)) * (a - teeth_up).clamp(0.0, 1.0)
             * (b - teeth_low).clamp(0.0, 1.0))
    depth = (a / opening).clamp(0.0, 1.0)
    cavity = torch.tensor(CAVITY_RGB, device=grid.device, dtype=dt).view(1, 3, 1, 1)
    tongue = torch.tensor(TONGUE_RGB, device=grid.device, dtype=dt).view(1, 3, 1, 1)
    teeth = torch.tensor(TEETH_RGB, device=grid.device, dtype=dt).view(1, 3, 1, 1)
    shade = (0.55 + 0.45 * depth)[:, None]  # darker right under the upper teeth
    rgb = cavity * shade
    tongue_h = opening * (0.30 + 0.35 * tongue_up.view(-1, 1, 1))
    t_mix = (1.0 - b / tongue_h).clamp(0.0, 1.0)[:, None]
    rgb = rgb + (tongue - rgb) * t_mix
    band = (teeth_show.view(-1, 1, 1) * 0.45 * teeth_up.clamp(min=1.0) + 0.5)
    tooth = _soft(band - (a - teeth_up))[:, None] * (teeth_show.view(-1, 1, 1, 1) > 0)
    rgb = rgb + (teeth - rgb) * tooth * 0.9
    return alpha[:, None], rgb
