"""Image preprocessing on the host: decode, resize, centre crop, flip, scale to [-1, 1].

All functions take and return numpy arrays (H, W, C) so that they run inside
Grain workers without touching JAX.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def decode_image(data: bytes) -> np.ndarray:
    """Encoded image bytes (PNG, JPEG, ...) -> (H, W, 3) uint8 RGB."""
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"))


def resize_shorter_side(image: np.ndarray, size: int, resample=Image.BILINEAR) -> np.ndarray:
    """Resize so that the shorter side is `size` (aspect kept); a no-op when it already is."""
    h, w = image.shape[:2]
    if min(h, w) == size:
        return image
    scale = size / min(h, w)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    return np.asarray(Image.fromarray(image).resize((new_w, new_h), resample=resample))


def centre_crop(image: np.ndarray, size: int) -> np.ndarray:
    """Crop the central (size, size) window; the image must be at least that large."""
    h, w = image.shape[:2]
    if h < size or w < size:
        raise ValueError(f"cannot centre-crop {size}x{size} from an image of {h}x{w}")
    top, left = (h - size) // 2, (w - size) // 2
    return image[top:top + size, left:left + size]


def to_unit_range(image: np.ndarray) -> np.ndarray:
    """uint8 [0, 255] -> float32 [-1, 1] (the ToTensor + Normalize(0.5, 0.5) convention)."""
    return image.astype(np.float32) * (2.0 / 255.0) - 1.0


def from_unit_range(image) -> np.ndarray:
    """float [-1, 1] -> uint8 [0, 255] (clipped, rounded)."""
    return np.clip(np.round((np.asarray(image, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def flip_boxes(boxes: np.ndarray) -> np.ndarray:
    """Mirror normalised (x0, y0, x1, y1) boxes left-right; all-zero (padding) rows stay zero."""
    out = boxes.copy()
    valid = np.any(boxes != 0, axis=-1)
    out[valid, 0] = 1.0 - boxes[valid, 2]
    out[valid, 2] = 1.0 - boxes[valid, 0]
    return out


def preprocess_image(image: np.ndarray, resolution: int, flip: bool = False) -> np.ndarray:
    """uint8 (H, W, 3) -> float32 (resolution, resolution, 3) in [-1, 1]: resize, centre crop, optional flip."""
    image = centre_crop(resize_shorter_side(image, resolution), resolution)
    if flip:
        image = image[:, ::-1]
    return to_unit_range(image)
