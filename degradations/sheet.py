"""Contact sheets: a grid of labelled image tiles, one row per degradation type, columns of rising level."""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

LABEL_HEIGHT = 20  # px strip above each tile that carries its caption
FONT = cv2.FONT_HERSHEY_SIMPLEX


@dataclass
class Tile:
    """image: H×W×3 uint8 RGB (any size ≥ 1 px); caption: drawn above the tile."""

    image: np.ndarray
    caption: str


def centre_tile(image: np.ndarray, side: int) -> np.ndarray:
    """A side×side view of an RGB uint8 image at native resolution (centre crop), so that noise and
    compression artefacts stay visible; images smaller than ``side`` are scaled up (nearest)."""
    h, w = image.shape[:2]
    if h < side or w < side:
        scale = side / min(h, w)
        size = (max(side, round(w * scale)), max(side, round(h * scale)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_NEAREST)
        h, w = image.shape[:2]
    y, x = (h - side) // 2, (w - side) // 2
    return image[y : y + side, x : x + side]


def sheet_shape(rows: int, cols: int, side: int) -> tuple[int, int, int]:
    """(height, width, 3) of a sheet with rows×cols tiles of side px."""
    return rows * (side + LABEL_HEIGHT), cols * side, 3


def _fitting_scale(text: str, width: int, largest: float = 0.45) -> float:
    """The largest font scale ≤ ``largest`` at which ``text`` fits in ``width`` px (long names shrink)."""
    text_width = cv2.getTextSize(text, FONT, largest, 1)[0][0]
    return largest if text_width <= width else max(0.25, largest * width / text_width)


def contact_sheet(grid: list[list[Tile]], side: int = 192) -> np.ndarray:
    """Lay out ``grid`` (rows of tiles) as one uint8 RGB image of shape :func:`sheet_shape`."""
    if not grid or not grid[0]:
        raise ValueError("contact_sheet: the grid is empty")
    cols = max(len(row) for row in grid)
    sheet = np.full(sheet_shape(len(grid), cols, side), 255, dtype=np.uint8)
    for r, row in enumerate(grid):
        top = r * (side + LABEL_HEIGHT)
        for c, tile in enumerate(row):
            left = c * side
            sheet[top + LABEL_HEIGHT : top + LABEL_HEIGHT + side, left : left + side] = centre_tile(tile.image, side)
            scale = _fitting_scale(tile.caption, side - 12)
            cv2.putText(sheet, tile.caption, (left + 3, top + LABEL_HEIGHT - 6), FONT, scale, (0, 0, 0), 1, cv2.LINE_AA)
        # a thin rule between rows keeps the captions attached to their own row
        sheet[top, :] = 180
    return sheet
