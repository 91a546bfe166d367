"""Imports every implementation module so that all 19 types register."""
from . import (  # noqa: F401
    blur,
    camera,
    haze,
    jpeg,
    lowlight,
    mixed,
    moire,
    mosaic,
    noise,
    rain,
    realesrgan,
    snow,
)
