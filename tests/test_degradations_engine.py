"""Generic checks over every registered degradation type (whatever ``all_types()`` returns) and the engine."""
from __future__ import annotations

import json
import random
import subprocess
import sys
import hashlib

import numpy as np
import pytest

from degradations import DegradationEngine, EngineConfig, TYPE_IDS, TYPE_NAMES, all_types, degrade, resolve
from degradations.rng import make_rng
from maskdcpt.evaluation.metrics import psnr

from conftest import photo_crop, texture as make_texture

TYPES = [t.name for t in all_types()]
LEVELS = (0.0, 0.5, 1.0)
SEEDS = range(5)


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """An 80×80 crop of a real photo (cat fur and whiskers: fine texture and edges), float32 in [0, 1]."""
    return photo_crop("chelsea", 100, 200, 80, 80)


@pytest.fixture(scope="module")
def texture() -> np.ndarray:
    """128×128 textured image: white noise smoothed by σ = 1 px (a narrow autocorrelation), contrast 0.18."""
    return make_texture(128, 1.0, seed=123, gray=0.75)


def test_registry_covers_table_in_id_order():
    assert TYPES, "no type registered"
    assert [resolve(n).id for n in TYPES] == sorted(TYPE_IDS[n] for n in TYPES)
    for name in TYPES:
        assert resolve(TYPE_IDS[name]).name == name


@pytest.mark.parametrize("name", TYPES)
def test_level_zero_still_changes_the_image(name, photo):
    """The lowest level is the mildest degradation, never none: an unchanged image would carry a label no classifier
    can learn (Real-ESRGAN's σ 0.2 and a sinc cut-off of π both sample to the identity kernel)."""
    reference = np.round(photo * 255)
    for seed in range(12):
        out = np.round(degrade(photo, name, 0.0, seed=seed).lq * 255)
        assert np.abs(out - reference).max() >= 1, f"{name} at level 0, seed {seed} left the image unchanged"


@pytest.mark.parametrize("name", TYPES)
def test_shape_dtype_range_and_json_params(name, photo):
    spec = resolve(name)
    for level in LEVELS:
        out, params = spec.fn(photo.copy(), level, make_rng(1), dict(spec.ranges))
        assert out.shape == photo.shape, name
        assert out.dtype == np.float32, f"{name} returned {out.dtype}"
        assert np.isfinite(out).all(), name
        assert json.loads(json.dumps(params)) == params, f"{name}: params are not JSON-serialisable"
        sample = degrade(photo, name, level, seed=1)
        assert sample.lq.dtype == np.float32 and sample.lq.min() >= 0.0 and sample.lq.max() <= 1.0
        assert np.array_equal(sample.gt, photo), f"{name} modified the clean image"
        assert not np.array_equal(sample.lq, photo), f"{name} at level {level} left the image unchanged"


@pytest.mark.parametrize("name", TYPES)
def test_severity_rises_with_level(name, photo):
    means = [np.mean([psnr(degrade(photo, name, level, seed=s).lq, photo) for s in SEEDS]) for level in LEVELS]
    assert means[0] > means[1] > means[2], f"{name}: mean PSNR by level {LEVELS} = {np.round(means, 2)}"


@pytest.mark.parametrize("name", TYPES)
def test_same_seed_same_sample(name, photo):
    a = degrade(photo, name, 0.6, seed=(7, 1, 2))
    b = degrade(photo, name, 0.6, seed=(7, 1, 2))
    assert np.array_equal(a.lq, b.lq) and a.params == b.params
    assert a.type_name == name and a.type_id == TYPE_IDS[name]


def _correlation_window(clean: np.ndarray, degraded: np.ndarray, radius: int) -> np.ndarray:
    """Circular cross-correlation of the luma of two images for offsets in [−radius, radius]²; [r, r] is 0."""
    luma = np.array([0.299, 0.587, 0.114])
    a = clean @ luma
    b = degraded @ luma
    a, b = a - a.mean(), b - b.mean()
    corr = np.fft.ifft2(np.conj(np.fft.fft2(a)) * np.fft.fft2(b)).real
    corr = np.fft.fftshift(corr)
    c = np.array(corr.shape) // 2
    return corr[c[0] - radius : c[0] + radius + 1, c[1] - radius : c[1] + radius + 1]


# Forcing these (default-range) switches turns a composite's blur away from motion, so that the peak test applies.
NON_MOTION_OVERRIDES = {"defocus_prob": 1.0, "motion_prob": 0.0, "linear_prob": 1.0}


def _non_motion_overrides(name: str) -> dict | None:
    """Overrides that make ``name`` free of shake kernels, {} if it has none, None if it cannot be made so."""
    ranges = resolve(name).ranges
    if name == "motion_blur":
        return {"linear_prob": 1.0}  # straight kernels are symmetric: the peak test applies
    overrides = {k: v for k, v in NON_MOTION_OVERRIDES.items() if k in ranges and k != "linear_prob"}
    return None if name == "blur_jpeg" else overrides


@pytest.mark.parametrize("name", TYPES)
def test_content_is_not_shifted(name, texture):
    """The correlation of input and output peaks at zero offset and its centroid lies within 0.3 px of it.

    The centroid is taken over the part of the correlation above half its peak (the rest is the random
    background of a finite image, relatively strong where a type dims or covers the texture). A centred
    camera-shake kernel is asymmetric: the correlation then peaks at the kernel's mode, not its centroid,
    so shake kernels are tested exactly by their impulse response in
    ``test_motion_blur_impulse_response_is_centred``, composites here run with their non-motion blur, and a
    type that always shakes is held to its estimated kernel's centroid averaged over seeds.
    """
    overrides = _non_motion_overrides(name)
    if overrides is None:
        _check_mean_effective_kernel_is_centred(name)
        return
    radius = 8
    offsets = np.arange(-radius, radius + 1)
    for seed in range(3):
        out = degrade(texture, name, 0.3, seed=seed, **overrides).lq  # 0.3: dark + blurred + noisy still has signal
        window = _correlation_window(texture, out, radius)
        core = np.clip(window - 0.5 * window.max(), 0, None)
        total = core.sum()
        centroid = (float((core.sum(1) * offsets).sum() / total), float((core.sum(0) * offsets).sum() / total))
        assert abs(centroid[0]) < 0.3 and abs(centroid[1]) < 0.3, f"{name} seed {seed}: centroid {centroid}"
        # the peak is at zero offset (within the flat top that wide symmetric blurs give it)
        peak = np.subtract(np.unravel_index(np.argmax(window), window.shape), radius)
        assert window[radius, radius] >= 0.95 * window.max(), f"{name} seed {seed}: correlation peaks at {peak}"


def _effective_kernel(clean: np.ndarray, degraded: np.ndarray, radius: int) -> np.ndarray:
    """The linear kernel that best maps the clean luma to the degraded luma (regularised Wiener estimate),
    for offsets in [−radius, radius]²; Hann-windowed against the images' borders."""
    luma = np.array([0.299, 0.587, 0.114])
    a, b = clean @ luma, degraded @ luma
    window = np.outer(np.hanning(a.shape[0]), np.hanning(a.shape[1]))
    fa, fb = np.fft.fft2((a - a.mean()) * window), np.fft.fft2((b - b.mean()) * window)
    power = np.abs(fa) ** 2
    kernel = np.fft.fftshift(np.fft.ifft2(fb * np.conj(fa) / (power + 1e-2 * power.mean())).real)
    c = np.array(kernel.shape) // 2
    return kernel[c[0] - radius : c[0] + radius + 1, c[1] - radius : c[1] + radius + 1]


def _check_mean_effective_kernel_is_centred(name: str, shift: int = 0) -> None:
    """For a type that always blurs with a shake kernel: the centroid of its estimated kernel, averaged over
    8 seeds (each seed's estimate is noisy, a shift is systematic), lies within 0.35 px of zero."""
    rng = np.random.default_rng(123)
    white = np.clip((rng.random((128, 128, 1)) * 0.75 + rng.random((128, 128, 3)) * 0.25) * 1.25, 0, 1)
    white = white.astype(np.float32)
    radius = 24
    offsets = np.arange(-radius, radius + 1)
    centroids = []
    for seed in range(8):
        out = np.roll(degrade(white, name, 0.5, seed=seed).lq, shift, axis=1)
        kernel = _effective_kernel(white, out, radius)
        core = np.clip(kernel - 0.05 * kernel.max(), 0, None)
        centroids.append(((core.sum(1) * offsets).sum() / core.sum(), (core.sum(0) * offsets).sum() / core.sum()))
    mean = np.mean(centroids, axis=0)
    assert np.abs(mean).max() < 0.35, f"{name}: mean kernel centroid {mean} (shift {shift})"


def test_effective_kernel_check_detects_a_one_pixel_shift():
    with pytest.raises(AssertionError, match="mean kernel centroid"):
        _check_mean_effective_kernel_is_centred("motion_blur", shift=1)


def _impulse_response_centroid(name: str, seed: int, shift: int = 0) -> tuple[float, float]:
    """Centroid of the response to 16 impulses on a gray background (difference of two runs, same seed)."""
    side, spacing = 192, 48
    background = np.full((side, side, 3), 0.4, np.float32)
    impulses = background.copy()
    sites = np.arange(spacing // 2, side, spacing)
    impulses[np.ix_(sites, sites)] += 0.4
    a = degrade(background, name, 0.5, seed=seed).lq
    b = degrade(impulses, name, 0.5, seed=seed).lq
    diff = np.roll(b - a, shift, axis=1).mean(axis=2)
    half = spacing // 2 - 1
    response = sum(diff[y - half : y + half + 1, x - half : x + half + 1] for y in sites for x in sites)
    offsets = np.arange(-half, half + 1)
    total = response.sum()
    return float((response.sum(1) * offsets).sum() / total), float((response.sum(0) * offsets).sum() / total)


def test_motion_blur_impulse_response_is_centred():
    """motion_blur is linear, so its response to impulses is its kernel: the centroid must be 0 (and a
    one-pixel roll of the output must read as one pixel, so the check has teeth)."""
    for seed in range(6):
        cy, cx = _impulse_response_centroid("motion_blur", seed)
        assert abs(cy) < 0.01 and abs(cx) < 0.01, (seed, cy, cx)
    cy, cx = _impulse_response_centroid("motion_blur", 0, shift=1)
    assert abs(cx - 1.0) < 0.01


def test_alignment_check_detects_a_one_pixel_shift(texture):
    shifted = np.roll(texture, 1, axis=1)
    window = _correlation_window(texture, shifted, 4)
    assert np.subtract(np.unravel_index(np.argmax(window), window.shape), 4).tolist() == [0, 1]


def test_no_global_rng_is_touched(photo):
    np.random.seed(5)
    random.seed(5)
    np_state, py_state = np.random.get_state(), random.getstate()
    engine = DegradationEngine(EngineConfig(types=TYPES))
    for i, name in enumerate(TYPES):
        engine.apply(photo, name, 0.7, seed=i)
    for i in range(5):
        engine.sample(photo, seed=(0, 0, i))
    after = np.random.get_state()
    assert all(np.array_equal(x, y) if isinstance(x, np.ndarray) else x == y for x, y in zip(np_state, after))
    assert random.getstate() == py_state


def test_engine_respects_weights():
    engine = DegradationEngine(EngineConfig(types=["noise", "jpeg"], weights={"noise": 3.0, "jpeg": 1.0}))
    names = [engine.draw((0, 0, i))[0] for i in range(4000)]
    share = names.count("noise") / len(names)
    assert abs(share - 0.75) < 0.03, share
    zero = DegradationEngine(EngineConfig(types=["noise", "jpeg"], weights={"jpeg": 0.0}))
    assert {zero.draw(i)[0] for i in range(200)} == {"noise"}


def test_engine_level_range_and_labels(photo):
    engine = DegradationEngine(EngineConfig(types=["jpeg"], level_range=(0.2, 0.4)))
    for i in range(20):
        sample = engine.sample(photo, seed=(1, 2, i))
        assert sample.type_name == "jpeg" and sample.type_id == TYPE_IDS["jpeg"]
        assert 0.2 <= sample.level <= 0.4


def test_engine_sample_is_deterministic(photo):
    engine = DegradationEngine(EngineConfig(types=TYPES))
    a, b = engine.sample(photo, seed=(3, 4, 5)), engine.sample(photo, seed=(3, 4, 5))
    assert a.type_name == b.type_name and a.level == b.level and np.array_equal(a.lq, b.lq)


_FRESH_PROCESS = """
import hashlib, sys
import numpy as np
from degradations import degrade
rng = np.random.default_rng(0)
image = rng.random((48, 48, 3), dtype=np.float32)
for name in sys.argv[1:]:
    print(name, hashlib.sha256(degrade(image, name, 0.7, seed=(1, 2, 3)).lq.tobytes()).hexdigest())
"""


def test_determinism_across_processes():
    wanted = ("noise", "camera_noise", "motion_blur", "gaussian_blur", "downsample_noise_blur_jpeg")
    names = [n for n in wanted if n in TYPES]
    result = subprocess.run([sys.executable, "-c", _FRESH_PROCESS, *names], capture_output=True, text=True, check=True)
    image = np.random.default_rng(0).random((48, 48, 3), dtype=np.float32)
    expected = [f"{n} {hashlib.sha256(degrade(image, n, 0.7, seed=(1, 2, 3)).lq.tobytes()).hexdigest()}" for n in names]
    assert result.stdout.split("\n")[: len(names)] == expected


@pytest.mark.parametrize(
    "image, fragment",
    [
        (np.zeros((64, 64), np.float32), "H×W×3"),
        (np.zeros((64, 64, 4), np.float32), "H×W×3"),
        (np.full((64, 64, 3), np.nan, np.float32), "NaN"),
        (np.full((64, 64, 3), 2.0, np.float32), "[0, 1]"),
        (np.zeros((16, 64, 3), np.float32), "minimum"),
    ],
)
def test_bad_images_raise(image, fragment):
    with pytest.raises(ValueError, match=__import__("re").escape(fragment)):
        degrade(image, TYPES[0], 0.5)


def test_bad_type_level_and_config_raise(photo):
    with pytest.raises(ValueError, match="unknown degradation type 'blurry'"):
        degrade(photo, "blurry", 0.5)
    with pytest.raises(ValueError, match="unknown degradation type id 19"):
        degrade(photo, 19, 0.5)
    for level in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="level must lie in"):
            degrade(photo, TYPES[0], level)
    name = TYPES[0]
    valid = sorted(resolve(name).ranges)
    with pytest.raises(ValueError, match=f"unknown key 'no_such_knob'; valid keys: {', '.join(valid)}"):
        EngineConfig(types=[name], params={name: {"no_such_knob": 1}})
    with pytest.raises(ValueError, match="unknown key"):
        degrade(photo, name, 0.5, no_such_knob=3)


def test_every_name_in_table():
    assert len(TYPE_NAMES) == 19 and TYPE_NAMES[18] == "downsample_noise_blur_jpeg"


@pytest.mark.parametrize("name", TYPES)
def test_smallest_and_odd_sizes(name):
    rng = np.random.default_rng(4)
    for shape in ((32, 32, 3), (33, 47, 3)):
        image = rng.random(shape, dtype=np.float32)
        for level in (0.0, 1.0):
            out = degrade(image, name, level, seed=2).lq
            assert out.shape == shape and np.isfinite(out).all(), (name, shape, level)
