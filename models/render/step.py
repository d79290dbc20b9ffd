"""One avatar's render step as a plain ``nn.Module``: the graph exported to ONNX / TensorRT.

:class:`RenderStep` computes exactly what :class:`~models.render.torch_renderer.TorchFaceRenderer`
computes for a batch of sessions that share one avatar, with the avatar's precomputed tensors as
buffers and the parameter batch as the only input, so the exported graph has one dynamic axis.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.animate.params import index
from models.render.mouth import warp_feature
from models.render.warp import AvatarFields, basis_coefficients

_TEETH, _TONGUE = index("teeth_show"), index("tongue_up")


class RenderStep(nn.Module):
    """``forward(params (B, 16) float32) -> frames (B, 3, S, S)`` in 0..255 for one avatar."""

    def __init__(self, fields: AvatarFields, size_px: int) -> None:
        super().__init__()
        self.size_px = size_px
        self.features = fields.features
        s = size_px
        lin = (torch.arange(s, dtype=torch.float32) + 0.5) * (2.0 / s) - 1.0
        gy, gx = torch.meshgrid(lin, lin, indexing="ij")
        self.register_buffer("base", torch.stack([gx, gy], -1))
        self.register_buffer("texture", fields.texture)
        self.register_buffer("fields", fields.fields)

    def forward(self, params: torch.Tensor) -> torch.Tensor:
        """Frames for a batch of parameter rows."""
        s = self.size_px
        coef = basis_coefficients(params.float()).to(self.fields.dtype)
        grid = self.base[None] + (coef @ self.fields).view(-1, s, s, 2)
        cavities = []
        for feat in self.features:
            cav = warp_feature(grid, coef, feat, params[:, _TEETH].to(grid.dtype),
                               params[:, _TONGUE].to(grid.dtype))
            if cav is not None:
                cavities.append((feat.box, cav))
        tex = self.texture.expand(params.shape[0], -1, -1, -1)
        out = F.grid_sample(tex, grid, mode="bilinear", padding_mode="border",
                            align_corners=False)
        for (y0, y1, x0, x1), (alpha, rgb) in cavities:
            region = out[:, :, y0:y1, x0:x1]
            out[:, :, y0:y1, x0:x1] = region + (rgb - region) * alpha
        return out

    def to(self, *args: object, **kwargs: object) -> RenderStep:  # type: ignore[override]
        """Move buffers and the feature tensors (held outside the buffer list)."""
        super().to(*args, **kwargs)
        ref = self.fields
        self.features = tuple(type(f)(**{
            k: (v.to(ref.device, ref.dtype) if isinstance(v, torch.Tensor) else v)
            for k, v in vars(f).items()}) for f in self.features)
        return self
