"""What a user sees: TensorBoard scalars and images, and the image renderings they need."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import cv2
import numpy as np
import torch


def image_grid(rows: Sequence[torch.Tensor], max_items: int = 4) -> np.ndarray:
    """Rows of (B, 3, H, W) images in [0, 1] → one (3, H', W') float array: a row per tensor,
    a column per sample (e.g. masked input / reconstruction / GT)."""
    rows = [r.detach().float().clamp(0, 1)[:max_items].cpu() for r in rows]
    n = min(r.shape[0] for r in rows)
    h, w = rows[0].shape[-2:]
    pad = 2
    grid = torch.ones(3, len(rows) * (h + pad) - pad, n * (w + pad) - pad)
    for i, r in enumerate(rows):
        for j in range(n):
            grid[:, i * (h + pad) : i * (h + pad) + h, j * (w + pad) : j * (w + pad) + w] = r[j]
    return grid.numpy()


def confusion_matrix(pred: np.ndarray, target: np.ndarray, num_classes: int) -> np.ndarray:
    """counts[t, p] of samples of true class t predicted as p."""
    counts = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(counts, (np.asarray(target, dtype=np.int64), np.asarray(pred, dtype=np.int64)), 1)
    return counts


def render_confusion(counts: np.ndarray, labels: Sequence[str], cell: int = 22) -> np.ndarray:
    """A row-normalised confusion matrix as an RGB uint8 picture with class labels and counts."""
    k = counts.shape[0]
    rows = counts.sum(axis=1, keepdims=True)
    frac = np.divide(counts, rows, out=np.zeros(counts.shape, dtype=np.float64), where=rows > 0)
    label_w = 8 + 7 * max((len(s) for s in labels), default=4)
    size_h, size_w = label_w + k * cell + 4, label_w + k * cell + 4
    img = np.full((size_h, size_w, 3), 255, np.uint8)
    heat = cv2.applyColorMap((frac * 255).astype(np.uint8), cv2.COLORMAP_VIRIDIS)[..., ::-1]
    font = cv2.FONT_HERSHEY_PLAIN
    for t in range(k):
        y = label_w + t * cell
        cv2.putText(img, labels[t], (2, y + cell - 7), font, 0.75, (0, 0, 0), 1, cv2.LINE_AA)
        for p in range(k):
            x = label_w + p * cell
            img[y : y + cell - 1, x : x + cell - 1] = heat[t, p]
            if counts[t, p]:
                colour = (0, 0, 0) if frac[t, p] > 0.5 else (255, 255, 255)
                cv2.putText(img, str(int(counts[t, p]))[:3], (x + 1, y + cell - 7), font, 0.7, colour, 1, cv2.LINE_AA)
    # column labels, written vertically along the top
    for p in range(k):
        text = np.full((cell, label_w, 3), 255, np.uint8)
        cv2.putText(text, labels[p], (2, cell - 7), font, 0.75, (0, 0, 0), 1, cv2.LINE_AA)
        # rotated a quarter turn counter-clockwise: the label reads upwards from the matrix
        img[0:label_w, label_w + p * cell : label_w + (p + 1) * cell] = np.rot90(text)
    cv2.putText(img, "rows: true type", (4, 16), font, 0.9, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, "columns: predicted", (4, 34), font, 0.9, (0, 0, 0), 1, cv2.LINE_AA)
    return img


class TensorBoardLogger:
    """Rank-0 TensorBoard writer; every method is a no-op elsewhere."""

    def __init__(self, log_dir: str | Path, enabled: bool = True):
        self.enabled = enabled
        self.writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(log_dir))

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        if self.writer is not None:
            for tag, value in values.items():
                self.writer.add_scalar(tag, float(value), step)

    def image(self, tag: str, image: np.ndarray, step: int, dataformats: str = "CHW") -> None:
        if self.writer is not None:
            self.writer.add_image(tag, image, step, dataformats=dataformats)

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
