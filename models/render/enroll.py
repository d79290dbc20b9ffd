"""Enrollment: turn a photo into an avatar pack (square portrait + FaceMesh landmarks).

The crop is the one the shipped default pack was made with: a square of side 1.9 x the larger
side of the landmark bounding box, centred 5 % of the box height below its centre, resized with
Lanczos, landmarks detected again on the resized crop. ``enroll(skimage.data.astronaut(),
"default")`` reproduces ``configs/avatars/default``.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from models.errors import InputError
from models.render.landmarks import NO_FACE_HINT, LandmarkDetector
from models.render.pack import AvatarPack

CROP_SCALE = 1.9
CROP_SHIFT_DOWN = 0.05
"""Fraction of the landmark box height the crop centre sits below the box centre."""
MIN_SIDE_PX = 256
MAX_PIXELS = 40_000_000
MIN_FACE_PX = 80
YAW_WARN = 0.3
YAW_REFUSE = 0.6
LANDMARKS_DESCRIPTION = "mediapipe-facemesh-478 (refined), pixels of portrait.png; z in pixels"

Progress = Callable[[str, float], None]

# Ordered contours of the FaceMesh topology (same edges as mediapipe's face_mesh_connections).
FACE_OVAL = (10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378,
             400, 377, 152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54,
             103, 67, 109)
LIPS_OUTER = (61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 409, 270, 269, 267, 0, 37, 39,
              40, 185)
LIPS_INNER = (78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308, 415, 310, 311, 312, 13, 82, 81,
              80, 191)
RIGHT_EYE = (33, 7, 163, 144, 145, 153, 154, 155, 133, 173, 157, 158, 159, 160, 161, 246)
LEFT_EYE = (263, 249, 390, 373, 374, 380, 381, 382, 362, 398, 384, 385, 386, 387, 388, 466)
RIGHT_IRIS = (469, 470, 471, 472)
LEFT_IRIS = (474, 475, 476, 477)
CLOSED_CONTOURS = (FACE_OVAL, LIPS_OUTER, LIPS_INNER, RIGHT_EYE, LEFT_EYE, RIGHT_IRIS, LEFT_IRIS)
BROWS = ((46, 53, 52, 65, 55), (70, 63, 105, 66, 107), (276, 283, 282, 295, 285),
         (300, 293, 334, 296, 336))


def load_photo(photo: Path | str | np.ndarray) -> np.ndarray:
    """The photo as uint8 (H, W, 3) RGB, EXIF orientation applied; InputError if unusable."""
    if isinstance(photo, np.ndarray):
        image = photo
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] not in (3, 4):
            raise InputError(f"photo array must be uint8 (H, W, 3) RGB, got {image.dtype} "
                             f"{image.shape}")
        image = image[:, :, :3]
    else:
        image = _read_image(Path(photo))
    h, w = image.shape[:2]
    if h * w > MAX_PIXELS:
        raise InputError(f"photo is {w} x {h} ({h * w / 1e6:.0f} MP); downscale it to at most "
                         f"{MAX_PIXELS // 1_000_000} MP")
    if min(h, w) < MIN_SIDE_PX:
        raise InputError(f"photo is only {w} x {h} px; use one whose shorter side is at least "
                         f"{MIN_SIDE_PX} px")
    return np.ascontiguousarray(image)


def _read_image(path: Path) -> np.ndarray:
    from PIL import Image, ImageOps, UnidentifiedImageError

    if not path.is_file():
        raise InputError(f"photo {path} does not exist; pass the path of a PNG or JPEG file")
    try:
        with Image.open(path) as img:
            w, h = img.size
            if w * h > MAX_PIXELS:
                raise InputError(f"photo {path.name} is {w} x {h} ({w * h / 1e6:.0f} MP); "
                                 f"downscale it to at most {MAX_PIXELS // 1_000_000} MP")
            img = ImageOps.exif_transpose(img)
            return np.asarray(img.convert("RGB"))
    except (UnidentifiedImageError, Image.DecompressionBombError) as exc:
        raise InputError(f"{path.name} is not an image this tool can read ({exc}); "
                         "use a PNG or JPEG photo") from None
    except OSError as exc:
        raise InputError(f"cannot read photo {path.name}: {exc}; use a PNG or JPEG photo") \
            from None


def crop_box(landmarks: np.ndarray) -> tuple[int, int, int]:
    """``(x0, y0, side)`` in source pixels of the square portrait crop around a face."""
    x0, y0 = landmarks[:, 0].min(), landmarks[:, 1].min()
    x1, y1 = landmarks[:, 0].max(), landmarks[:, 1].max()
    side = round(CROP_SCALE * max(x1 - x0, y1 - y0))
    cx = (x0 + x1) / 2
    cy = (y0 + y1) / 2 + CROP_SHIFT_DOWN * (y1 - y0)
    return round(cx - side / 2), round(cy - side / 2), int(side)


def head_yaw(landmarks: np.ndarray) -> float:
    """Left/right asymmetry of the nose tip between the face edges: 0 frontal, +-1 profile."""
    nose, right_edge, left_edge = landmarks[1, 0], landmarks[234, 0], landmarks[454, 0]
    d_right, d_left = nose - right_edge, left_edge - nose
    total = abs(d_right) + abs(d_left)
    return 0.0 if total == 0 else float((d_right - d_left) / total)


def square_crop(image: np.ndarray, x0: int, y0: int, side: int) -> np.ndarray:
    """The square ``image[y0:y0+side, x0:x0+side]``, edge-padded where it leaves the image."""
    h, w = image.shape[:2]
    pad = max(0, -x0, -y0, x0 + side - w, y0 + side - h)
    if pad:
        image = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
    return image[y0 + pad:y0 + pad + side, x0 + pad:x0 + pad + side]


def enroll(photo: Path | str | np.ndarray, name: str, *, size_px: int = 512,
           source: str | None = None, progress: Progress | None = None) -> AvatarPack:
    """Make an avatar pack from a photo with one roughly frontal face.

    ``progress(step, fraction)`` is called as the steps go by. Raises InputError (with what to
    change) for unreadable, tiny or huge photos, no face, a face too small or turned too far.
    Non-fatal concerns are listed in ``pack.meta["warnings"]``.
    """
    from PIL import Image

    report = progress or (lambda _step, _fraction: None)
    label = source or (Path(photo).name if not isinstance(photo, np.ndarray) else "array")
    report("loading", 0.0)
    image = load_photo(photo)
    warnings: list[str] = []
    report("detecting", 0.15)
    with LandmarkDetector() as detector:
        found = detector.detect(image)
        if found is None:
            raise InputError(f"no face found in {label}; {NO_FACE_HINT}")
        if detector.last_faces > 1:
            warnings.append(f"{detector.last_faces} faces found; the largest one was used")
        face_px = float(np.ptp(found[:, 1]))
        if face_px < MIN_FACE_PX:
            raise InputError(f"the face in {label} is only {face_px:.0f} px tall; use a closer "
                             f"or larger photo (face at least {MIN_FACE_PX} px)")
        yaw = head_yaw(found)
        if abs(yaw) > YAW_REFUSE:
            raise InputError(f"the face in {label} is turned too far to the side "
                             f"(yaw asymmetry {yaw:+.2f}); use a frontal photo")
        if abs(yaw) > YAW_WARN:
            warnings.append(f"the face is turned to the side (yaw asymmetry {yaw:+.2f}); "
                            "a frontal photo animates better")
        report("cropping", 0.5)
        x0, y0, side = crop_box(found)
        if side < size_px / 3:
            warnings.append(f"the face crop is {side} px, upscaled to {size_px} px; "
                            "a larger photo gives a sharper avatar")
        crop = Image.fromarray(square_crop(image, x0, y0, side))
        portrait = np.asarray(crop.resize((size_px, size_px), Image.Resampling.LANCZOS))
        report("re-detecting", 0.6)
        landmarks = detector.detect(portrait)
    if landmarks is None:
        raise InputError(f"the face in {label} was lost after cropping; {NO_FACE_HINT}")
    meta = {"landmarks": LANDMARKS_DESCRIPTION, "source": label,
            "crop_in_source_px": [x0, y0, side],
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "yaw_asymmetry": round(yaw, 3), "warnings": warnings}
    report("done", 0.9)
    return AvatarPack(name, portrait, landmarks, meta)


def preview(pack: AvatarPack, size_px: int | None = None) -> np.ndarray:
    """The portrait with the face mesh drawn on it (points, oval, eyes, irises, brows, lips)."""
    from PIL import Image, ImageDraw

    size = size_px or pack.size_px
    scale = size / pack.size_px
    img = Image.fromarray(pack.portrait).resize((size, size), Image.Resampling.LANCZOS)
    draw = ImageDraw.Draw(img)
    pts = [(float(x) * scale, float(y) * scale) for x, y in pack.landmarks[:, :2]]
    dot = max(0.6, size / 512)
    for x, y in pts:
        draw.ellipse((x - dot, y - dot, x + dot, y + dot), fill=(170, 230, 255))
    width = max(1, round(size / 256))
    colours = {FACE_OVAL: (240, 240, 240), LIPS_OUTER: (255, 70, 90), LIPS_INNER: (255, 70, 90),
               RIGHT_EYE: (60, 220, 90), LEFT_EYE: (60, 220, 90), RIGHT_IRIS: (60, 160, 255),
               LEFT_IRIS: (60, 160, 255)}
    for contour in CLOSED_CONTOURS:
        draw.line([pts[i] for i in (*contour, contour[0])], fill=colours[contour], width=width,
                  joint="curve")
    for brow in BROWS:
        draw.line([pts[i] for i in brow], fill=(255, 200, 40), width=width, joint="curve")
    return np.asarray(img)
