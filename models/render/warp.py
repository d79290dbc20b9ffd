"""Per-avatar displacement fields: landmark motions per parameter, interpolated to dense fields.

Everything here runs once per avatar (at ``add_avatar`` time) in float32 numpy/torch on the CPU.
Each *basis* is one linear motion of the face (``jaw``, ``lip_close``, ``blink_left``, a degree of
head roll...). For a basis we move the MediaPipe landmarks (pixels of the render size), then
spread the motion to every pixel with normalised Gaussian interpolation over all 478 landmarks
(unmoved landmarks pin the rest of the face; far from the face the field fades to zero, so the
background stays still). Head pose and breathing are analytic fields under a soft head / body
mask. Fields are stored *backward* (where each output pixel samples the portrait), in the
normalised units of ``grid_sample`` (``align_corners=False``).

Lips and eyelids need a sharp seam (lips meet, lids close), which a smooth field cannot make:
around the mouth and each eye a :class:`Feature` holds two extra fields, one interpolated from
the landmarks above the opening only and one from those below it; per frame each pixel picks a
side from the warped opening (see :mod:`models.render.mouth`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from models.animate.params import NUM_PARAMS, index

# MediaPipe FaceMesh landmark groups (subject's left = image right) -------------------------
LIP_UPPER_INNER = [78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308]
LIP_LOWER_INNER = [78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308]
LIP_UPPER_OUTER = [61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291]
LIP_LOWER_OUTER = [61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291]
LIP_UPPER_MID = [76, 184, 74, 73, 72, 11, 302, 303, 304, 408, 306]
LIP_LOWER_MID = [77, 96, 89, 179, 86, 15, 316, 403, 319, 325, 307]
EYE_R_UPPER = [33, 246, 161, 160, 159, 158, 157, 173, 133]
EYE_R_LOWER = [33, 7, 163, 144, 145, 153, 154, 155, 133]
EYE_R_UPPER_RING = [247, 30, 29, 27, 28, 56, 190]
EYE_L_UPPER = [263, 466, 388, 387, 386, 385, 384, 398, 362]
EYE_L_LOWER = [263, 249, 390, 373, 374, 380, 381, 382, 362]
EYE_L_UPPER_RING = [467, 260, 259, 257, 258, 286, 414]
IRIS_R = list(range(468, 473))
IRIS_L = list(range(473, 478))
BROWS = [70, 63, 105, 66, 107, 55, 65, 52, 53, 46, 300, 293, 334, 296, 336, 285, 295, 282, 283, 276]
FACE_OVAL = [10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400,
             377, 152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67,
             109]
CHIN = 152

BASES: tuple[str, ...] = (
    "jaw", "jaw_lips", "lip_spread", "lip_round", "lip_close", "smile", "brow_raise",
    "blink_left", "blink_right", "gaze_x", "gaze_y", "head_yaw", "head_pitch", "head_roll",
    "breath",
)
"""The renderer's linear motions; :func:`basis_coefficients` maps parameters onto them."""
NUM_BASES = len(BASES)
_B = {n: i for i, n in enumerate(BASES)}
POSE_BASES = tuple(_B[n] for n in ("head_yaw", "head_pitch", "head_roll", "breath"))
_SMALL_SIGMA, _LARGE_SIGMA = 0.045, 0.11
"""Interpolation widths as fractions of the face height (chin to forehead)."""


def basis_coefficients(params: torch.Tensor) -> torch.Tensor:
    """``(B, NUM_PARAMS)`` animation parameters -> ``(B, NUM_BASES)`` basis weights.

    Linear except one product: the lower lip follows the jaw only as far as the lips are
    parted (``jaw_open * (1 - lip_close)``), so ``p b m`` close the lips even with the jaw down.
    """
    if params.shape[-1] != NUM_PARAMS:
        raise ValueError(f"expected {NUM_PARAMS} parameters per row, got {params.shape[-1]}")
    p = {name: params[:, index(name)] for name in (
        "jaw_open", "lip_spread", "lip_round", "lip_close", "smile", "brow_raise", "blink_left",
        "blink_right", "gaze_x", "gaze_y", "head_yaw", "head_pitch", "head_roll", "breath")}
    cols = [p["jaw_open"], p["jaw_open"] * (1.0 - p["lip_close"]), p["lip_spread"],
            p["lip_round"], p["lip_close"], p["smile"], p["brow_raise"], p["blink_left"],
            p["blink_right"], p["gaze_x"], p["gaze_y"], p["head_yaw"], p["head_pitch"],
            p["head_roll"], p["breath"]]
    return torch.stack(cols, dim=1)


@dataclass(frozen=True)
class Feature:
    """A seam region (mouth or eye) of one avatar at the render size.

    ``box`` is ``(y0, y1, x0, x1)``; ``delta_up`` / ``delta_low`` are ``(NUM_BASES, h*w*2)``
    corrections added to the global field on each side of the opening; ``upper`` / ``lower``
    ``(NUM_BASES + 1, w)`` give the opening's top and bottom edge per column (row 0 the
    portrait's, the rest per unit of basis weight); ``teeth_up`` / ``teeth_low`` ``(w,)`` are the
    heights of the portrait's own mouth interior that belong to the upper and lower jaw.
    """

    name: str
    box: tuple[int, int, int, int]
    delta_up: torch.Tensor
    delta_low: torch.Tensor
    upper: torch.Tensor
    lower: torch.Tensor
    teeth_up: torch.Tensor
    teeth_low: torch.Tensor
    shift: torch.Tensor
    """(NUM_BASES, 2) x, y translation of the whole feature per unit of head pose / breath,
    pixels (zero for the expression bases, whose motion the edge tables hold)."""
    is_mouth: bool


@dataclass(frozen=True)
class AvatarFields:
    """Everything the per-frame step needs for one avatar at one render size."""

    texture: torch.Tensor
    """float32 (1, 3, S, S) RGB in 0..255."""
    fields: torch.Tensor
    """float32 (NUM_BASES, S*S*2) backward displacement per unit basis weight (grid units)."""
    features: tuple[Feature, ...]


def _curve(lm: np.ndarray, ids: list[int], xs: np.ndarray) -> np.ndarray:
    pts = lm[ids, :2]
    order = np.argsort(pts[:, 0])
    return np.interp(xs, pts[order, 0], pts[order, 1])


def landmark_motions(lm: np.ndarray) -> np.ndarray:
    """Forward landmark displacement per basis: ``(NUM_BASES, 478, 2)`` pixels per unit weight
    (per degree for gaze and head pose; head pose and breath are analytic and left zero)."""
    n = len(lm)
    d = np.zeros((NUM_BASES, n, 2), np.float32)
    face_h = float(lm[CHIN, 1] - lm[10, 1])
    mouth_c = lm[[61, 291], :2].mean(0)
    half_w = float(lm[291, 0] - lm[61, 0]) / 2
    lips = sorted(set(LIP_UPPER_INNER + LIP_LOWER_INNER + LIP_UPPER_OUTER + LIP_LOWER_OUTER
                      + LIP_UPPER_MID + LIP_LOWER_MID))
    lower_lips = sorted(set(LIP_LOWER_INNER + LIP_LOWER_OUTER + LIP_LOWER_MID) - {61, 291, 78, 308,
                                                                                     76, 306, 77,
                                                                                     307})
    upper_lips = sorted(set(LIP_UPPER_INNER + LIP_UPPER_OUTER + LIP_UPPER_MID) - {61, 291, 78, 308,
                                                                                     76, 306, 77,
                                                                                     307})
    corners = [61, 291, 78, 308, 76, 306, 77, 307]
    # jaw: the chin and jaw line swing down, more the lower they sit below the mouth corners
    drop = 0.10 * face_h
    below = np.clip((lm[:, 1] - mouth_c[1]) / (lm[CHIN, 1] - mouth_c[1]), 0, 1)
    jaw_pts = [i for i in FACE_OVAL if lm[i, 1] > mouth_c[1]] + [i for i in range(n)
                                                                  if lm[i, 1] > lm[17, 1] + 2
                                                                  and abs(lm[i, 0] - mouth_c[0])
                                                                  < 1.3 * half_w]
    for i in set(jaw_pts):
        d[_B["jaw"], i, 1] = drop * (0.5 + 0.5 * below[i])
    # the lower lip rides the jaw only while the lips are apart
    for i in lower_lips:
        d[_B["jaw_lips"], i, 1] = drop
    for i in corners:
        d[_B["jaw_lips"], i, 1] = 0.3 * drop
    rel = (lm[:, 0] - mouth_c[0]) / half_w  # -1 at the left corner, +1 at the right
    for i in lips:
        d[_B["lip_spread"], i, 0] = 0.16 * half_w * rel[i]
        d[_B["lip_round"], i, 0] = -0.22 * half_w * rel[i]
        d[_B["smile"], i, 0] = 0.08 * half_w * rel[i]
        d[_B["smile"], i, 1] = -0.07 * half_w * rel[i] ** 2
    for i in upper_lips:
        d[_B["lip_round"], i, 1] = -0.03 * face_h * (1 - abs(rel[i]))
    for i in lower_lips:
        d[_B["lip_round"], i, 1] = 0.02 * face_h * (1 - abs(rel[i]))
    # lip_close: inner lips meet (upper 40% of the gap, lower 60%), outer lips follow
    xs_u = lm[LIP_UPPER_INNER, 0]
    gap_u = _curve(lm, LIP_LOWER_INNER, xs_u) - lm[LIP_UPPER_INNER, 1]
    gap_l = lm[LIP_LOWER_INNER, 1] - _curve(lm, LIP_UPPER_INNER, lm[LIP_LOWER_INNER, 0])
    for group, gaps, share in ((LIP_UPPER_INNER, gap_u, 0.4), (LIP_LOWER_INNER, gap_l, -0.6)):
        for i, g in zip(group, gaps, strict=True):
            d[_B["lip_close"], i, 1] = share * max(float(g), 0.0)
    for inner, outs in ((LIP_UPPER_INNER, (LIP_UPPER_MID, LIP_UPPER_OUTER)),
                        (LIP_LOWER_INNER, (LIP_LOWER_MID, LIP_LOWER_OUTER))):
        for k, i in enumerate(inner):
            for out, f in zip(outs, (0.85, 0.6), strict=True):
                if out[k] not in corners:
                    d[_B["lip_close"], out[k], 1] = f * d[_B["lip_close"], i, 1]
    for i in BROWS:
        d[_B["brow_raise"], i, 1] = -0.028 * face_h
    # blinks: the upper lid comes down onto the lower one
    for name, upper, lower, ring in (("blink_right", EYE_R_UPPER, EYE_R_LOWER, EYE_R_UPPER_RING),
                                     ("blink_left", EYE_L_UPPER, EYE_L_LOWER, EYE_L_UPPER_RING)):
        gaps = _curve(lm, lower, lm[upper, 0]) - lm[upper, 1]
        for i, g in zip(upper, gaps, strict=True):
            d[_B[name], i, 1] = 0.92 * g
        for i, g in zip(ring, gaps[1:-1], strict=True):
            d[_B[name], i, 1] = 0.6 * g
        gl = lm[lower, 1] - _curve(lm, upper, lm[lower, 0])
        for i, g in zip(lower, gl, strict=True):
            d[_B[name], i, 1] = -0.08 * g
    # gaze: irises move within the eye (per degree)
    eye_w = float(np.mean([lm[133, 0] - lm[33, 0], lm[263, 0] - lm[362, 0]]))
    per_deg = 0.45 * eye_w / 30.0
    for i in IRIS_R + IRIS_L:
        d[_B["gaze_x"], i, 0] = per_deg
        d[_B["gaze_y"], i, 1] = -0.6 * per_deg
    return d


def _interpolate(points: np.ndarray, values: np.ndarray, coords: np.ndarray, sigma: float,
                 floor: float) -> np.ndarray:
    """Normalised Gaussian interpolation of ``values`` (N, C) at ``coords`` (M, 2); fades to
    zero where the landmark weight sum drops below ``floor``."""
    pts = torch.from_numpy(points.astype(np.float32)).double()
    vals = torch.from_numpy(values.astype(np.float32)).double()
    # fit landmark weights so the interpolant passes (nearly) through the landmark values
    a = torch.exp(-torch.cdist(pts, pts).square() / (2 * sigma * sigma))
    a = a / (a.sum(1, keepdim=True) + floor)
    lam = 0.02
    lhs = a.T @ a + lam * torch.eye(len(pts), dtype=torch.float64)
    vals = torch.linalg.solve(lhs, a.T @ vals + lam * vals).float()
    pts = pts.float()
    out = torch.empty((len(coords), vals.shape[1]), dtype=torch.float32)
    c = torch.from_numpy(coords.astype(np.float32))
    for s in range(0, len(c), 16384):
        w = torch.exp(-torch.cdist(c[s:s + 16384], pts).square() / (2 * sigma * sigma))
        out[s:s + 16384] = (w @ vals) / (w.sum(1, keepdim=True) + floor)
    return out.numpy()


def _grid(h0: int, h1: int, w0: int, w1: int) -> np.ndarray:
    ys, xs = np.mgrid[h0:h1, w0:w1].astype(np.float32)
    return np.stack([xs.ravel(), ys.ravel()], 1)


def _pose_fields(lm: np.ndarray, size: int) -> np.ndarray:
    """Analytic backward fields (pixels) for yaw, pitch, roll (per degree) and breath."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    face_h = float(lm[CHIN, 1] - lm[10, 1])
    cx, cy = lm[FACE_OVAL, 0].mean(), lm[FACE_OVAL, 1].mean()
    ax = 0.5 * (lm[FACE_OVAL, 0].max() - lm[FACE_OVAL, 0].min()) * 1.45
    ay = 0.5 * face_h * 1.35
    r = np.sqrt(((xs - cx) / ax) ** 2 + ((ys - cy) / ay) ** 2)
    head = np.clip(1.6 - r, 0, 1) ** 2 * (3 - 2 * np.clip(1.6 - r, 0, 1))
    chin_y = lm[CHIN, 1]
    neck = np.clip((ys - chin_y) / (0.25 * face_h), 0, 1)
    head = head * (1 - neck) + head * neck * 0.3
    out = np.zeros((4, size, size, 2), np.float32)
    rad = np.pi / 180
    out[0, ..., 0] = -head * 0.55 * face_h * rad           # yaw: face slides sideways
    out[1, ..., 1] = head * 0.45 * face_h * rad            # pitch: chin up lifts the face
    px, py = cx, chin_y                                    # roll pivots at the neck
    out[2, ..., 0] = -head * (-(ys - py)) * rad
    out[2, ..., 1] = -head * (xs - px) * rad
    body = np.clip((ys - chin_y - 0.05 * face_h) / (0.3 * face_h), 0, 1)
    out[3, ..., 1] = body * 0.02 * face_h                  # breath: shoulders rise
    return out


def _feature(name: str, lm: np.ndarray, motions: np.ndarray, size: int, upper: list[int],
             lower: list[int], up_set: np.ndarray, sigma: float, floor: float,
             full: np.ndarray, is_mouth: bool, pad: tuple[float, float]) -> Feature:
    ids = upper + lower
    x0 = int(max(lm[ids, 0].min() - pad[0], 0))
    x1 = int(min(lm[ids, 0].max() + pad[0] + 1, size))
    y0 = int(max(lm[ids, 1].min() - pad[1], 0))
    y1 = int(min(lm[ids, 1].max() + pad[1] + 1, size))
    coords = _grid(y0, y1, x0, x1)
    h, w = y1 - y0, x1 - x0
    back = -motions.transpose(1, 0, 2).reshape(len(lm), -1)  # (N, K*2)
    skip = np.zeros(len(lm), bool)
    skip[IRIS_R + IRIS_L] = True
    up = _interpolate(lm[up_set & ~skip, :2], back[up_set & ~skip], coords, sigma, floor)
    low = _interpolate(lm[~up_set & ~skip, :2], back[~up_set & ~skip], coords, sigma, floor)
    glob = full[:, y0:y1, x0:x1].reshape(NUM_BASES, -1, 2).transpose(1, 0, 2).reshape(h * w, -1)
    # blend weight: 1 around the opening, 0 at the box edge
    cx, cy = lm[ids, 0].mean(), lm[ids, 1].mean()
    rx = (lm[ids, 0].max() - lm[ids, 0].min()) / 2 + 0.55 * pad[0]
    ry = (lm[ids, 1].max() - lm[ids, 1].min()) / 2 + 0.55 * pad[1]
    rr = np.sqrt(((coords[:, 0] - cx) / rx) ** 2 + ((coords[:, 1] - cy) / ry) ** 2)
    g = np.clip((1.6 - rr) / 0.6, 0, 1)[:, None]
    g = g * g * (3 - 2 * g)

    def to_delta(f: np.ndarray) -> torch.Tensor:
        dd = (g * (f - glob)).reshape(h * w, NUM_BASES, 2).transpose(1, 0, 2) * (2.0 / size)
        return torch.from_numpy(np.ascontiguousarray(dd.reshape(NUM_BASES, -1)))

    for k in (_B["gaze_x"], _B["gaze_y"], _B["head_yaw"], _B["head_pitch"], _B["head_roll"],
              _B["breath"]):
        up[:, 2 * k:2 * k + 2] = glob[:, 2 * k:2 * k + 2]
        low[:, 2 * k:2 * k + 2] = glob[:, 2 * k:2 * k + 2]
    cols = np.arange(x0, x1, dtype=np.float32) + 0.5
    shift = np.zeros((NUM_BASES, 2), np.float32)
    for k in POSE_BASES:
        shift[k] = motions[k, ids].mean(0)
    tables = []
    for group in (upper, lower):
        base = _curve(lm, group, cols) - y0
        per = [_curve(lm + motions[k] - shift[k], group, cols) - y0 - base
               for k in range(NUM_BASES)]
        tables.append(torch.from_numpy(np.stack([base, *per]).astype(np.float32)))
    mid = (tables[0][0] + tables[1][0]) / 2
    return Feature(name, (y0, y1, x0, x1), to_delta(up), to_delta(low), tables[0], tables[1],
                   (mid - tables[0][0]).clamp(min=0), (tables[1][0] - mid).clamp(min=0),
                   torch.from_numpy(shift), is_mouth)


def build_fields(portrait: np.ndarray, landmarks: np.ndarray, size: int) -> AvatarFields:
    """Precompute an avatar's texture, basis fields and seam features at ``size`` pixels."""
    from PIL import Image

    scale = size / portrait.shape[0]
    img = portrait if scale == 1 else np.asarray(
        Image.fromarray(portrait).resize((size, size), Image.Resampling.LANCZOS))
    lm = landmarks[:, :2].astype(np.float32) * scale
    lm3 = np.concatenate([lm, landmarks[:, 2:3] * scale], 1)
    motions = landmark_motions(lm3)[:, :, :2]
    face_h = float(lm[CHIN, 1] - lm[10, 1])
    step = 2 if size > 256 else 1  # smooth fields: interpolate on a coarser grid, upsample
    n = size // step
    coords = (_grid(0, n, 0, n) + 0.5) * step - 0.5
    back = -motions.transpose(1, 0, 2).reshape(len(lm), -1)
    small = _interpolate(lm, back, coords, _SMALL_SIGMA * face_h, 0.08)
    large = _interpolate(lm, back, coords[:, :], _LARGE_SIGMA * face_h, 0.3)
    small[:, 2 * _B["jaw"]:2 * _B["jaw"] + 2] = large[:, 2 * _B["jaw"]:2 * _B["jaw"] + 2]
    full_t = torch.from_numpy(small.reshape(n, n, NUM_BASES * 2)).permute(2, 0, 1)[None]
    if step > 1:
        full_t = torch.nn.functional.interpolate(full_t, size=(size, size), mode="bilinear",
                                                 align_corners=False)
    full = full_t[0].reshape(NUM_BASES, 2, size, size).permute(0, 2, 3, 1).numpy().copy()
    pose = _pose_fields(lm, size)
    for j, name in enumerate(("head_yaw", "head_pitch", "head_roll", "breath")):
        full[_B[name]] = pose[j]
        xi = np.clip(lm[:, 0].astype(int), 0, size - 1)
        yi = np.clip(lm[:, 1].astype(int), 0, size - 1)
        motions[_B[name]] = -pose[j][yi, xi]
    # seam features: which landmarks lie above each opening
    mouth_mid = (_curve(lm, LIP_UPPER_INNER, lm[:, 0]) + _curve(lm, LIP_LOWER_INNER, lm[:, 0])) / 2
    up_mouth = lm[:, 1] < mouth_mid
    up_mouth[LIP_UPPER_INNER + LIP_UPPER_MID + LIP_UPPER_OUTER] = True
    up_mouth[LIP_LOWER_INNER + LIP_LOWER_MID + LIP_LOWER_OUTER] = False
    feats = [_feature("mouth", lm, motions, size, LIP_UPPER_INNER, LIP_LOWER_INNER, up_mouth,
                      _SMALL_SIGMA * face_h, 0.08, full, True, (0.12 * face_h, 0.16 * face_h))]
    for name, upper, lower in (("eye_right", EYE_R_UPPER, EYE_R_LOWER),
                               ("eye_left", EYE_L_UPPER, EYE_L_LOWER)):
        mid = (_curve(lm, upper, lm[:, 0]) + _curve(lm, lower, lm[:, 0])) / 2
        up_eye = lm[:, 1] < mid
        up_eye[upper] = True
        up_eye[lower] = False
        feats.append(_feature(name, lm, motions, size, upper, lower, up_eye,
                              0.6 * _SMALL_SIGMA * face_h, 0.08, full, False,
                              (0.05 * face_h, 0.07 * face_h)))
    fields = torch.from_numpy(np.ascontiguousarray(full.reshape(NUM_BASES, -1) * (2.0 / size)))
    texture = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).float()[None]
    return AvatarFields(texture, fields, tuple(feats))
