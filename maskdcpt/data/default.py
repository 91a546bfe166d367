"""The embedded default corpus: scikit-image's sample photographs, read from its install folder.

With no data configured, pre-training runs on these (colour and gray photos), so the default
run downloads nothing. Only files already on disk are used; none of scikit-image's fetchers
(which may download) is called.
"""
from __future__ import annotations

import os

from .index import CorpusIndex

# Natural photographs shipped inside the scikit-image wheel. Left out: synthetic patterns
# (chessboard, logo, phantom), an already blurred photo (clock_motion), binary silhouettes
# (horse), a colour wheel (color), microscopy/medical crops that are not scenes, and page.png,
# whose malformed ICC profile makes libpng print a warning at every decode (text.png has text).
DEFAULT_PHOTOS = (
    "astronaut.png", "brick.png", "camera.png", "chelsea.png", "coffee.png", "coins.png", "grass.png",
    "gravel.png", "hubble_deep_field.jpg", "moon.png", "motorcycle_left.png", "motorcycle_right.png",
    "rocket.jpg", "text.png",
)


def default_photo_dir() -> str:
    """scikit-image's bundled data folder (a path inside the installed package)."""
    import skimage

    return os.path.join(os.path.dirname(skimage.__file__), "data")


def default_index() -> CorpusIndex:
    """A clean-image index of the bundled photos that exist on disk."""
    folder = default_photo_dir()
    present = [name for name in DEFAULT_PHOTOS if os.path.isfile(os.path.join(folder, name))]
    if not present:
        raise ValueError(f"no scikit-image sample photos found in {folder!r}; configure data.sources")
    return CorpusIndex.from_files(folder, present, name="skimage-default")
