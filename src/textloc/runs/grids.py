"""Image grids: the one place that lays result images out for a person to look at.

Why: localize (source | patched | target), bench edit (source | methods, captioned), finetune (samples) and the
embedded model's evaluation each built their own grid. :func:`image_grid` covers them all: rows of images
(``None`` leaves a cell blank), every cell as large as the largest image, images upscaled by an integer
``scale`` with nearest-neighbour (tiny renders stay crisp), and optional labels: one header per column, or
one caption per cell.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont

__all__ = ["image_grid", "chunk"]


def _font(size: int = 12) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def chunk(images: Sequence[Image.Image], cols: int) -> list[list[Image.Image]]:
    """A flat list as rows of ``cols`` images (the last row may be shorter), for :func:`image_grid`."""
    if cols < 1:
        raise ValueError(f"Expected cols >= 1, but got {cols}")
    return [list(images[i : i + cols]) for i in range(0, len(images), cols)]


def auto_scale(images: Sequence[Image.Image | None], height: int = 96) -> int:
    """The integer upscale that makes the tallest image at least ``height`` px (1 for large images)."""
    tallest = max((im.height for im in images if im is not None), default=height)
    return max(1, math.ceil(height / max(1, tallest)))


def image_grid(rows: Sequence[Sequence[Image.Image | None]], *,
               labels: Sequence[str] | Sequence[Sequence[str]] | None = None, scale: int = 1, pad: int = 0,
               label_height: int = 16, background: str = "white") -> Image.Image:
    r"""Rows of images as one RGB image.

    Args:
        rows: the images, row by row; rows may differ in length; ``None`` is a blank cell.
        labels: either one header per column (a list of str, drawn once above the grid) or one caption per
            cell (a list of lists of str, the shape of ``rows``, drawn above each cell).
        scale: integer nearest-neighbour upscale of every image.
        pad: pixels between cells and around the grid.
        label_height: height of a header or caption strip.
    """
    cells = [im for row in rows for im in row if im is not None]
    if not cells:
        raise ValueError("Expected at least one image, but got none")
    if scale < 1:
        raise ValueError(f"Expected an integer scale >= 1, but got {scale}")
    per_cell = labels is not None and len(labels) > 0 and not isinstance(labels[0], str)
    if per_cell and (len(labels) != len(rows) or any(len(lr) != len(r) for lr, r in zip(labels, rows, strict=True))):
        raise ValueError("Expected one caption per image (labels shaped like rows)")
    n_cols = max(len(row) for row in rows)
    cell_w = max(im.width for im in cells) * scale
    cell_h = max(im.height for im in cells) * scale
    header = label_height if labels is not None and not per_cell else 0
    caption = label_height if per_cell else 0
    width = n_cols * cell_w + (n_cols + 1) * pad
    height = header + len(rows) * (cell_h + caption) + (len(rows) + 1) * pad
    grid = Image.new("RGB", (width, height), background)
    draw = ImageDraw.Draw(grid)
    font = _font()
    if header:
        for c, text in enumerate(labels):  # type: ignore[arg-type]
            draw.text((pad + c * (cell_w + pad) + 4, 2), str(text), fill="black", font=font)
    for r, row in enumerate(rows):
        y = header + pad + r * (cell_h + caption + pad)
        for c, image in enumerate(row):
            x = pad + c * (cell_w + pad)
            if per_cell:
                draw.text((x + 2, y + 2), str(labels[r][c]), fill="black", font=font)  # type: ignore[index]
            if image is None:
                continue
            shown = image.convert("RGB")
            if scale != 1:
                shown = shown.resize((shown.width * scale, shown.height * scale), Image.NEAREST)
            grid.paste(shown, (x, y + caption))
    return grid
