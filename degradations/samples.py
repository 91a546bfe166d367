"""The colour photos that ship with scikit-image, read from disk (nothing is ever downloaded)."""
from __future__ import annotations

import os

import cv2
import numpy as np

# Colour photographs bundled in scikit-image's wheel (``skimage.data.data_dir``).
SAMPLE_PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png", "retina.jpg")


def sample_photo_dir() -> str:
    import skimage.data

    return skimage.data.data_dir


def sample_photos() -> list[tuple[str, np.ndarray]]:
    """(stem, H×W×3 uint8 RGB) for every bundled colour photo present on disk, in a fixed order."""
    folder = sample_photo_dir()
    photos = []
    for name in SAMPLE_PHOTOS:
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            image = read_rgb(path)
            if image is not None:
                photos.append((os.path.splitext(name)[0], image))
    if not photos:
        raise ValueError(f"no sample photos found in {folder}; pass an input folder instead")
    return photos


def read_rgb(path: str) -> np.ndarray | None:
    """An image file as H×W×3 uint8 RGB (gray and alpha are converted), or None if OpenCV cannot read it."""
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None:
        return None
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
