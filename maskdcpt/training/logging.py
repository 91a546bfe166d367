"""What a user sees: the run's text log, TensorBoard scalars and images, and the image renderings they need."""
from __future__ import annotations

import io
import logging
import sys
import time
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
    """Rank-0 TensorBoard writer; every method is a no-op elsewhere. The event file is created at the first value
    written, so that a run that fails to start leaves no trace in its folder."""

    def __init__(self, log_dir: str | Path, enabled: bool = True):
        self.enabled = enabled
        self.log_dir = Path(log_dir)
        self.writer = None

    def _writer(self):
        if self.writer is None and self.enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(self.log_dir))
        return self.writer

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        if self._writer() is not None:
            for tag, value in values.items():
                self.writer.add_scalar(tag, float(value), step)

    def image(self, tag: str, image: np.ndarray, step: int, dataformats: str = "CHW") -> None:
        if self._writer() is not None:
            self.writer.add_image(tag, image, step, dataformats=dataformats)

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class RunLog:
    """``RUN/log.txt``: a run's story in plain text, so that it can be judged without TensorBoard.

    ``say`` prints a line and appends it; ``write`` only appends (progress lines under a progress bar). While open,
    the warnings of the project's loggers (``maskdcpt.*``, ``degradations.*``) and Python warnings go to the file
    too, and still to stderr. Appends: a resumed run continues the same file. ``path=None`` (ranks other than 0):
    ``say`` only prints, nothing is written.

    ``deferred=True``: lines are kept in memory until :meth:`commit` appends them to the file; closed before that,
    nothing is written (a start that fails leaves the run folder as it was).
    """

    LOGGERS = ("maskdcpt", "degradations", "py.warnings")

    def __init__(self, path: str | Path | None, deferred: bool = False):
        self.path = Path(path) if path is not None else None
        self._file = None
        self._to_file: logging.StreamHandler | None = None
        self._handlers: list[tuple[logging.Logger, logging.Handler]] = []
        self._levels: dict[str, int] = {}
        self._captured = False
        if self.path is None:
            return
        if deferred:
            self._file = io.StringIO()
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a", buffering=1)
        to_file = self._to_file = logging.StreamHandler(self._file)
        to_file.setLevel(logging.INFO)
        to_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S"))
        # A handler on our loggers stops Python's last-resort printing of their warnings; print them ourselves
        # unless the application configured logging (then its handlers on the root logger show them).
        to_console = None
        if not logging.getLogger().handlers:
            to_console = logging.StreamHandler(sys.stderr)
            to_console.setLevel(logging.WARNING)
        self._captured = not logging.getLogger("py.warnings").handlers
        if self._captured:
            logging.captureWarnings(True)
        for name in self.LOGGERS:
            logger = logging.getLogger(name)
            self._levels[name] = logger.level
            if logger.getEffectiveLevel() > logging.INFO:
                logger.setLevel(logging.INFO)
            for handler in (to_file, to_console):
                if handler is not None:
                    logger.addHandler(handler)
                    self._handlers.append((logger, handler))

    def write(self, text: str) -> None:
        """Append ``text`` (one or more lines) with a time stamp."""
        if self._file is not None:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            try:
                for line in str(text).splitlines() or [""]:
                    self._file.write(f"{stamp} {line}\n")
            except OSError as err:  # a full disk: the log is not worth stopping the run for (its checkpoint is)
                print(f"warning: cannot append to {self.path} ({err.strerror}); the log goes on only here",
                      file=sys.stderr)
                self._file = None

    def say(self, text: str) -> None:
        """Print ``text`` and append it."""
        print(text, flush=True)
        self.write(text)

    @property
    def committed(self) -> bool:
        return self._file is not None and not isinstance(self._file, io.StringIO)

    def commit(self) -> None:
        """A deferred log: append what was kept so far to the file, and write straight to it from now on."""
        if self._file is None or self.committed:
            return
        kept = self._file.getvalue()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", buffering=1)
        self._file.write(kept)
        self._to_file.setStream(self._file)

    def close(self) -> None:
        for logger, handler in self._handlers:
            logger.removeHandler(handler)
        for name, level in self._levels.items():
            logging.getLogger(name).setLevel(level)
        if self._captured:
            logging.captureWarnings(False)
        self._handlers, self._levels, self._captured = [], {}, False
        if self._file is not None:
            self._file.close()  # a deferred log never committed: its lines are dropped
            self._file = None

    def __enter__(self) -> "RunLog":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
