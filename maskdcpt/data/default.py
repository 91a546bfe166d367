"""The embedded default corpus: scikit-image's sample photographs, read from its install folder.

With no data configured, pre-training runs on these (colour and gray photos), so the default
run downloads nothing. Only files already on disk are used; none of scikit-image's fetchers
(which may download) is called.
"""
from __future__ import annotations

import os

from degradations.photos import SCENE_PHOTOS as DEFAULT_PHOTOS
from degradations.photos import photo_dir as default_photo_dir

from .index import CorpusIndex


def default_index() -> CorpusIndex:
    """A clean-image index of the bundled photos that exist on disk."""
    folder = default_photo_dir()
    present = [name for name in DEFAULT_PHOTOS if os.path.isfile(os.path.join(folder, name))]
    if not present:
        raise ValueError(f"no scikit-image sample photos found in {folder!r}; configure data.sources")
    return CorpusIndex.from_files(folder, present, name="skimage-default")
