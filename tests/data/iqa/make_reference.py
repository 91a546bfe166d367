"""Rebuild the test images of tests/data/iqa and their reference NIQE / PIQE / imresize values.

The images are crops of public-domain / CC0 photographs that ship with scikit-image (chelsea and coffee: CC0;
astronaut: NASA, public domain; rocket: SpaceX, public domain), some degraded, stored as 8-bit PNG.

The reference numbers come from the implementations the field reports with, run once in a scratch
environment, never installed with the project:

* NIQE: BasicSR's ``calculate_niqe(img_bgr, crop_border, input_order='HWC', convert_to='y')`` and its
  ``imresize`` (XPixelGroup/BasicSR, commit 8d56e3a, on PYTHONPATH);
* PIQE: pyiqa's ``create_metric('piqe')`` on the image file (pyiqa 0.1.16 from PyPI).

    python tests/data/iqa/make_reference.py images      # (re)write the PNGs (needs scikit-image, OpenCV)
    PYTHONPATH=BASICSR_CHECKOUT python tests/data/iqa/make_reference.py values   # write reference.json
"""
from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import cv2
import numpy as np

HERE = Path(__file__).resolve().parent
CROP = (slice(0, 192), slice(0, 288))


def _crop(img: np.ndarray, top: int, left: int, h: int = 192, w: int = 288) -> np.ndarray:
    return np.ascontiguousarray(img[top:top + h, left:left + w])


def make_images() -> None:
    import skimage.data

    chelsea = _crop(skimage.data.chelsea(), 40, 100)
    coffee = _crop(skimage.data.coffee(), 80, 150)
    astronaut = _crop(skimage.data.astronaut(), 20, 100)
    rocket = _crop(skimage.data.rocket(), 150, 200)
    rng = np.random.default_rng(2024)
    images = {
        "chelsea.png": chelsea,
        "coffee.png": coffee,
        "astronaut.png": astronaut,
        "rocket.png": rocket,
        "chelsea_blur2.png": cv2.GaussianBlur(chelsea, (0, 0), 2.0),
        "coffee_noise25.png": np.clip(np.round(coffee + rng.normal(0, 25, coffee.shape)), 0, 255).astype(np.uint8),
        "astronaut_jpeg10.png": cv2.imdecode(cv2.imencode(".jpg", astronaut[..., ::-1],
                                                          [cv2.IMWRITE_JPEG_QUALITY, 10])[1], cv2.IMREAD_COLOR)[..., ::-1],
        "rocket_dark.png": np.round(rocket * 0.25).astype(np.uint8),  # low light: grey maximum far below 255
        "chelsea_odd.png": _crop(skimage.data.chelsea(), 30, 150, 200, 250),  # sizes not multiples of 16 or 96
    }
    for name, rgb in images.items():
        cv2.imwrite(str(HERE / name), np.ascontiguousarray(rgb[..., ::-1]), [cv2.IMWRITE_PNG_COMPRESSION, 9])


def resize_input() -> np.ndarray:
    """The small deterministic array whose MATLAB-style resizes are stored (rows 11, columns 13)."""
    i, j = np.mgrid[0:11, 0:13]
    return ((i * 7 + j * j * 3) % 17) / 16.0


def make_values() -> None:
    import torch
    import pyiqa
    from basicsr.metrics.niqe import calculate_niqe
    from basicsr.utils.matlab_functions import imresize

    piqe_metric = pyiqa.create_metric("piqe", device="cpu")
    values = {"source": {"niqe": "BasicSR 8d56e3a calculate_niqe(convert_to='y')",
                         "piqe": f"pyiqa {pyiqa.__version__} create_metric('piqe')",
                         "imresize": "BasicSR 8d56e3a basicsr.utils.matlab_functions.imresize(antialiasing=True)"},
              "images": {}}
    for path in sorted(HERE.glob("*.png")):
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            entry = {"niqe": calculate_niqe(bgr, 0, input_order="HWC", convert_to="y"),
                     "niqe_crop4": calculate_niqe(bgr, 4, input_order="HWC", convert_to="y")}
        entry["piqe"] = float(piqe_metric(str(path)).item())
        values["images"][path.name] = entry
    x = resize_input()
    values["imresize"] = {str(s): imresize(x, s, antialiasing=True).tolist() for s in (0.5, 2, 0.3)}
    (HERE / "reference.json").write_text(json.dumps(values, indent=1) + "\n")
    print(json.dumps(values["images"], indent=1))


if __name__ == "__main__":
    {"images": make_images, "values": make_values}[sys.argv[1]]()
