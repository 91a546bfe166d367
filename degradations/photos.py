"""The photographs that ship inside scikit-image's wheel: the one list of them, for both packages.

``maskdcpt``'s default pre-training corpus takes the scenes; contact sheets, tests and the benchmark
degrade a few colour photos. Files are read from scikit-image's install folder only: none of its
fetchers (which may download) is called, so nothing is ever downloaded.
"""
from __future__ import annotations

import os

import numpy as np

from .image import read_rgb

# Natural photographs in scikit-image's data folder, colour and gray. Left out: synthetic patterns
# (chessboard, logo, phantom), an already blurred photo (clock_motion), binary silhouettes (horse), a
# colour wheel (color), microscopy (cell, ihc, microaneurysms), and page.png, whose malformed ICC
# profile makes libpng print a warning at every decode (text.png has text).
BUNDLED_PHOTOS = (
    "astronaut.png", "brick.png", "camera.png", "chelsea.png", "coffee.png", "coins.png", "grass.png",
    "gravel.png", "hubble_deep_field.jpg", "moon.png", "motorcycle_left.png", "motorcycle_right.png",
    "retina.jpg", "rocket.jpg", "text.png",
)
# The scenes: the default pre-training corpus (retina.jpg is a medical close-up, not a scene).
SCENE_PHOTOS = tuple(name for name in BUNDLED_PHOTOS if name != "retina.jpg")
# The colour photos that contact sheets, tests and the benchmark degrade, in the order they are shown
# (a sheet shows the first); each is one of BUNDLED_PHOTOS.
SAMPLE_PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png", "retina.jpg")


def photo_dir() -> str:
    """scikit-image's data folder (a path inside the installed package)."""
    import skimage.data

    return skimage.data.data_dir


def sample_photos() -> list[tuple[str, np.ndarray]]:
    """(stem, H×W×3 uint8 RGB) for every one of SAMPLE_PHOTOS present on disk, in their order."""
    folder = photo_dir()
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
