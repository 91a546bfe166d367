"""Imports every implementation module so that all 19 types register."""
from . import (  # noqa: F401
    camera,
    defocus_blur,
    gaussian_blur,
    haze,
    jpeg,
    lowlight,
    mixed,
    moire,
    mosaic,
    motion_blur,
    noise,
    rain_streaks,
    raindrops,
    realesrgan,
    snow,
)
