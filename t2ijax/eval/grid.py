"""Image grids with the prompt written under each image (PIL default font)."""

from __future__ import annotations

import os
import textwrap
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def to_uint8(image) -> np.ndarray:
    """(H, W, 3) uint8 or float in [-1, 1] -> uint8."""
    image = np.asarray(image)
    if np.issubdtype(image.dtype, np.floating):
        return np.clip(np.round((image + 1.0) * 127.5), 0, 255).astype(np.uint8)
    return image.astype(np.uint8)


def save_grid(images, captions: Sequence[str], path: str, cols: int = 4, *, min_tile: int = 128,
              max_lines: int = 8, pad: int = 4) -> str:
    """Write a PNG grid of `images` with each caption wrapped under its image; returns `path`.

    Small images are upscaled (nearest) to at least `min_tile` pixels so the text fits.
    """
    if len(images) != len(captions):
        raise ValueError(f"{len(images)} images but {len(captions)} captions")
    if not len(images):
        raise ValueError("save_grid needs at least one image")
    if cols <= 0:
        raise ValueError(f"cols must be positive, got {cols}")
    tiles = [Image.fromarray(to_uint8(img)) for img in images]
    w, h = tiles[0].size
    scale = max(1, -(-min_tile // w))
    tw, th = w * scale, h * scale
    font = ImageFont.load_default()
    char_w = max(1, font.getbbox("x")[2])
    line_h = font.getbbox("Ag")[3] + 2
    wrapped = []
    for caption in captions:
        lines = textwrap.wrap(str(caption), width=max(8, (tw - 2 * pad) // char_w)) or [""]
        if len(lines) > max_lines:
            lines = lines[:max_lines - 1] + [lines[max_lines - 1][: max(0, (tw - 2 * pad) // char_w - 3)] + "..."]
        wrapped.append(lines)
    text_h = max(len(lines) for lines in wrapped) * line_h + 2 * pad
    rows = -(-len(tiles) // cols)
    ncols = min(cols, len(tiles))
    canvas = Image.new("RGB", (ncols * (tw + pad) + pad, rows * (th + text_h + pad) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    for k, (tile, lines) in enumerate(zip(tiles, wrapped)):
        if tile.size != (w, h):
            raise ValueError(f"all images must have the same size; image {k} is {tile.size}, image 0 is {(w, h)}")
        x = pad + (k % cols) * (tw + pad)
        y = pad + (k // cols) * (th + text_h + pad)
        canvas.paste(tile.resize((tw, th), Image.NEAREST), (x, y))
        for j, line in enumerate(lines):
            draw.text((x + pad, y + th + pad + j * line_h), line, fill="black", font=font)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    canvas.save(path, format="PNG")
    return path
