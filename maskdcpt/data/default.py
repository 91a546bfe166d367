"""The embedded default corpus: scikit-image's sample photographs, read from its install folder,
split once into photos to train on and photos held out for validation.

With no data configured, pre-training and fine-tuning train on ``TRAIN_PHOTOS`` and validate on
``HELD_OUT_PHOTOS``, so the default runs download nothing and are judged on photos they never saw.
Only files already on disk are used; none of scikit-image's fetchers (which may download) is called.
"""
from __future__ import annotations

import os

from degradations.photos import SCENE_PHOTOS as DEFAULT_PHOTOS
from degradations.photos import photo_dir as default_photo_dir

from .index import CorpusIndex

# Held out: a colour animal, a colour still life and a gray scene, so validation covers both kinds
# of photo the corpus has. The near-duplicate stereo pair motorcycle_left/right stays together on the
# training side: a split between them would leak.
HELD_OUT_PHOTOS = ("chelsea.png", "coffee.png", "coins.png")
TRAIN_PHOTOS = tuple(name for name in DEFAULT_PHOTOS if name not in HELD_OUT_PHOTOS)


def _index(names: tuple[str, ...], name: str) -> CorpusIndex:
    folder = default_photo_dir()
    present = [n for n in names if os.path.isfile(os.path.join(folder, n))]
    if not present:
        raise ValueError(f"no scikit-image sample photos found in {folder!r}; configure data.sources")
    return CorpusIndex.from_files(folder, present, name=name)


def default_index() -> CorpusIndex:
    """The training photos of the embedded corpus (never one of ``HELD_OUT_PHOTOS``)."""
    return _index(TRAIN_PHOTOS, "skimage-default")


def held_out_paths() -> list[str]:
    """Absolute paths of the held-out photos present on disk (what validation degrades by default)."""
    index = _index(HELD_OUT_PHOTOS, "skimage-held-out")
    return [index.path(i) for i in range(len(index))]
