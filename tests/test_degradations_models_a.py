"""Model checks for noise, camera noise, the three blurs, JPEG, mosaic, low light and the Real-ESRGAN pipeline."""
from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from degradations import degrade, resolve
from degradations.camera import DEFAULT_RANGES as CAMERA_RANGES
from degradations.camera import (
    HIGHLIGHT_THRESHOLD,
    _apply_matrix,
    process,
    random_meta,
    unprocess,
)
from degradations.color import srgb_to_linear
from degradations.fields import coarse_shape, smooth_field
from degradations.gaussian_blur import GAUSSIAN_RANGES, random_kernel
from degradations.image import to_uint8
from degradations.jpeg import SAMPLING_420, SAMPLING_444, jpeg_compress
from degradations.kernels import apply_kernel, apply_kernels_dft, bessel_j1, disk_kernel, kernel_centroid, sinc_kernel
from degradations.lowlight import darken, darken_linear
from degradations.mosaic import DEMOSAIC_CODES, bayer_mask, bayer_rggb, demosaic
from degradations.motion_blur import linear_kernel, shake_trajectory, trajectory_kernel
from degradations.noise import add_gaussian_noise, add_poisson_noise, add_salt_pepper, poisson_counts
from degradations.rng import make_rng
from maskdcpt.evaluation.metrics import psnr

from conftest import photo_crop

CENTROID_TOLERANCE = 1e-3  # px: kernels are centred by construction, so only float rounding remains


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return photo_crop("astronaut", 120, 180, 96, 96)


def gray(value: float = 0.5, side: int = 128) -> np.ndarray:
    return np.full((side, side, 3), value, dtype=np.float32)


# ----------------------------------------------------------------------------- noise
@pytest.mark.parametrize("sigma", [5.0, 25.0, 50.0])
def test_gaussian_noise_has_the_sigma_asked(sigma):
    out = add_gaussian_noise(gray(side=256), sigma / 255.0, False, make_rng(0))
    measured = float((out - 0.5).std()) * 255.0
    assert abs(measured - sigma) / sigma < 0.02, measured


def test_registered_gaussian_noise_sigma_follows_the_level():
    for level, expected in ((0.0, 1.0), (0.5, 25.5), (1.0, 50.0)):
        sample = degrade(gray(side=256), "noise", level, seed=3, model_probs=[1, 0, 0], gray_prob=0.0)
        assert sample.params == {"model": "gaussian", "sigma": pytest.approx(expected), "gray": False}
        measured = float((sample.lq - 0.5).std()) * 255.0  # σ ≤ 50 at 0.5 stays clear of the clip at 0 and 1
        assert abs(measured - expected) / expected < 0.03, (level, measured)


def test_gray_noise_is_the_same_on_all_channels():
    out = add_gaussian_noise(gray(), 0.1, True, make_rng(1))
    assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 1], out[..., 2])
    assert not np.array_equal(out[..., 0], gray()[..., 0])


def test_poisson_noise_variance():
    # Real-ESRGAN Poisson: noise = scale·(Poisson(x·256)/256 − x) has variance scale²·x/256.
    for value, scale in ((0.5, 1.0), (0.02, 2.0)):  # 0.02·256 ≈ 5 counts exercises the exact-Poisson path
        out = add_poisson_noise(gray(value, 256), scale, False, make_rng(2))
        expected = scale**2 * value / 256.0
        assert abs(float((out - value).var()) / expected - 1.0) < 0.05, value
        assert abs(float((out - value).mean())) < 3 * math.sqrt(expected / out.size) + 1e-6


def test_poisson_counts_are_integers_where_exact_and_have_poisson_moments():
    lam = np.full((200, 200), 3.0, dtype=np.float32)
    counts = poisson_counts(lam, make_rng(3))
    assert np.array_equal(counts, np.round(counts)) and counts.min() >= 0
    assert abs(counts.mean() - 3.0) < 0.05 and abs(counts.var() - 3.0) < 0.1


def test_salt_and_pepper_fraction():
    out = add_salt_pepper(gray(side=256), 0.04, make_rng(4))
    salt = (out == 1.0).all(axis=2).mean()
    pepper = (out == 0.0).all(axis=2).mean()
    assert abs(salt - 0.02) < 0.003 and abs(pepper - 0.02) < 0.003
    assert ((out == 0.5).all(axis=2) | (out == 1.0).all(axis=2) | (out == 0.0).all(axis=2)).all()


# ----------------------------------------------------------------------------- camera noise
def _unclipped_midtones(image: np.ndarray, meta) -> np.ndarray:
    """Pixels that unprocessing neither clips (camera RGB inside (0, 1)) nor treats as highlights."""
    cam = _apply_matrix(srgb_to_linear(image), meta.rgb2cam)
    inside = ((cam > 1e-6) & (cam < 1.0)).all(axis=2)
    return inside & (cam.mean(axis=2) < HIGHLIGHT_THRESHOLD)


def test_unprocess_process_round_trip(photo):
    """process(unprocess(x)) == x to float32 precision (< 1e-5) wherever nothing was clipped.

    Two places lose information by design (Brooks et al.): camera-space values of saturated colours
    outside (0, 1) are clipped, and near-white highlights get a softened gain inversion so that they stay
    white. Those pixels are excluded from the strict bound and must be a small minority.
    """
    images = [photo, np.random.default_rng(0).random((64, 64, 3), dtype=np.float32) * 0.8 + 0.1]
    for image in images:
        for seed in range(5):
            meta = random_meta(make_rng(seed), CAMERA_RANGES)
            back = process(unprocess(image, meta), meta)
            error = np.abs(back - image).max(axis=2)
            strict = _unclipped_midtones(image, meta)
            assert strict.mean() > 0.9
            assert error[strict].max() < 1e-5, float(error[strict].max())


def test_unprocess_changes_the_image_and_gains_are_in_range():
    meta = random_meta(make_rng(9), CAMERA_RANGES)
    assert 1.9 <= meta.red_gain <= 2.4 and 1.5 <= meta.blue_gain <= 1.9
    assert np.allclose(np.sum(meta.rgb2cam, axis=1), 1.0)
    raw = unprocess(gray(0.5, 32), meta)
    # white balance is undone: a gray scene is greenish in raw (red and blue divided by their gains)
    assert raw[0, 0, 1] > raw[0, 0, 0] and raw[0, 0, 1] > raw[0, 0, 2]


def test_bayer_demosaic_of_a_constant_is_constant():
    flat = np.full((40, 40, 3), [0.2, 0.5, 0.7], dtype=np.float32)
    bayer = bayer_rggb(flat)
    assert bayer[0, 0] == pytest.approx(0.2) and bayer[0, 1] == pytest.approx(0.5) and bayer[1, 1] == pytest.approx(0.7)
    assert np.allclose(demosaic(bayer, "bilinear"), flat, atol=2e-5)


def test_camera_noise_shot_and_read_noise_model():
    small = gray(0.4, 32)
    spec = resolve("camera_noise")
    shots, residuals = [], []
    for seed in range(300):
        _, params = spec.fn(small.copy(), 0.5, make_rng(seed), dict(spec.ranges))
        shots.append(params["shot_noise"])
        residuals.append(math.log(params["read_noise"]) - 2.18 * math.log(params["shot_noise"]) - 1.20)
    assert np.allclose(shots, math.sqrt(1e-4 * 1.2e-2))  # level 0.5 is the geometric middle
    assert abs(np.mean(residuals)) < 0.05 and abs(np.std(residuals) - 0.26) < 0.03
    _, p0 = spec.fn(small.copy(), 0.0, make_rng(0), dict(spec.ranges))
    _, p1 = spec.fn(small.copy(), 1.0, make_rng(0), dict(spec.ranges))
    assert p0["shot_noise"] == pytest.approx(1e-4) and p1["shot_noise"] == pytest.approx(1.2e-2)


# ----------------------------------------------------------------------------- blur kernels
def _check_kernel(kernel: np.ndarray, what: str) -> None:
    assert kernel.ndim == 2 and kernel.shape[0] == kernel.shape[1] and kernel.shape[0] % 2 == 1, what
    assert abs(float(kernel.sum()) - 1.0) < 1e-5, what
    cx, cy = kernel_centroid(kernel)
    assert abs(cx) < CENTROID_TOLERANCE and abs(cy) < CENTROID_TOLERANCE, (what, cx, cy)


def test_motion_kernels_sum_to_one_and_are_centred():
    for seed in range(30):
        rng = make_rng(seed)
        for size in (9, 21, 41):
            _check_kernel(trajectory_kernel(shake_trajectory(rng), size), f"trajectory {seed} {size}")
        length, angle = float(rng.uniform(5, 35)), float(rng.uniform(0, 180))
        _check_kernel(linear_kernel(length, angle), f"linear {length} {angle}")


def test_linear_kernel_points_along_its_angle():
    horizontal = linear_kernel(15, 0.0)
    c = horizontal.shape[0] // 2
    assert horizontal[c].sum() > 0.99  # all weight on the middle row
    vertical = linear_kernel(15, 90.0)
    assert vertical[:, c].sum() > 0.99


def test_disk_and_realesrgan_kernels_sum_to_one_and_are_centred():
    for radius in (1.0, 2.7, 5.5, 10.0):
        kernel = disk_kernel(radius)
        _check_kernel(kernel, f"disk {radius}")
        # anti-aliased: the rim has partial weights, the inside is flat
        c = kernel.shape[0] // 2
        assert kernel[c, c] == pytest.approx(kernel.max())
    families = set()
    for seed in range(200):
        kernel, info = random_kernel(make_rng(seed), float(make_rng(seed + 1000).random()), GAUSSIAN_RANGES)
        families.add(info["family"])
        assert 7 <= kernel.shape[0] <= 21
        _check_kernel(kernel, str(info))
    assert {"iso", "aniso", "generalized_iso", "plateau_iso", "sinc"} <= families


def test_sinc_kernel_uses_a_correct_bessel_function():
    # J1 known values (Abramowitz & Stegun table 9.1): J1(1) = 0.4400505857, J1(5) = −0.3275791376
    assert bessel_j1(np.array([1.0, 5.0])) == pytest.approx([0.4400505857, -0.3275791376], abs=1e-9)
    _check_kernel(sinc_kernel(21, math.pi / 4), "sinc")


def test_apply_kernel_is_a_convolution_and_paths_agree(photo):
    rng = make_rng(5)
    asymmetric = rng.random((15, 15)).astype(np.float32)
    asymmetric /= asymmetric.sum()
    impulse = np.zeros((48, 48, 3), np.float32)
    impulse[24, 24] = 1.0
    response = apply_kernel(impulse, asymmetric)  # DFT path (15 > 11)
    assert np.allclose(response[17:32, 17:32, 1], asymmetric, atol=1e-6)
    small = asymmetric[4:11, 4:11] / asymmetric[4:11, 4:11].sum()
    response = apply_kernel(impulse, small)  # direct path
    assert np.allclose(response[21:28, 21:28, 0], small, atol=1e-6)
    # the DFT path equals OpenCV's filter2D (with the flip that makes it a convolution)
    reference = cv2.filter2D(photo, -1, asymmetric[::-1, ::-1].copy(), borderType=cv2.BORDER_REFLECT_101)
    assert np.abs(apply_kernel(photo, asymmetric) - reference).max() < 1e-5
    separable = np.outer(cv2.getGaussianKernel(17, 2.0), cv2.getGaussianKernel(17, 3.0)).astype(np.float32)
    reference = cv2.filter2D(photo, -1, separable[::-1, ::-1].copy(), borderType=cv2.BORDER_REFLECT_101)
    assert np.abs(apply_kernel(photo, separable) - reference).max() < 1e-5
    many = apply_kernels_dft(photo, [asymmetric, disk_kernel(3.0)])
    assert np.abs(many[0] - apply_kernel(photo, asymmetric)).max() < 1e-6
    with pytest.raises(ValueError, match="odd and square"):
        apply_kernel(photo, np.ones((4, 4), np.float32) / 16)


def test_blur_sizes_follow_the_level(photo):
    assert degrade(photo, "motion_blur", 0.0, seed=1, linear_prob=0.0).params["kernel_size"] == 9
    assert degrade(photo, "motion_blur", 1.0, seed=1, linear_prob=0.0).params["kernel_size"] == 41
    assert degrade(photo, "defocus_blur", 1.0, seed=1).params["radius"] == pytest.approx(10.0)
    sharp = degrade(photo, "gaussian_blur", 0.0, seed=2, sinc_prob=0.0, family_probs=[1, 0, 0, 0, 0, 0]).params
    assert sharp["sigma_x"] == pytest.approx(0.5) and sharp["family"] == "iso"  # the mildest blur, not none
    flat_top = degrade(photo, "gaussian_blur", 0.0, seed=2, sinc_prob=0.0, family_probs=[0, 0, 1, 0, 0, 0]).params
    assert flat_top["family"] == "generalized_iso" and flat_top["sigma_x"] == pytest.approx(1.0)


def test_depth_varying_defocus_stays_between_sharp_and_fully_blurred(photo):
    sample = degrade(photo, "defocus_blur", 1.0, seed=4, depth_varying_prob=1.0)
    assert sample.params["depth_varying"] is True
    full = apply_kernel(photo, disk_kernel(10.0))
    # every pixel blends blur layers of radius 0..10: blurred, but less than the full radius everywhere
    assert psnr(full, photo) < psnr(sample.lq, photo) < 60
    uniform = degrade(photo, "defocus_blur", 1.0, seed=4, depth_varying_prob=0.0)
    assert np.abs(uniform.lq - full).max() < 1e-6


# ----------------------------------------------------------------------------- JPEG
@pytest.mark.parametrize("quality, subsample", [(95, True), (50, False), (10, True)])
def test_jpeg_equals_opencv_decode_of_its_own_encode(photo, quality, subsample):
    rgb = to_uint8(photo)
    sampling = SAMPLING_420 if subsample else SAMPLING_444
    flags = [cv2.IMWRITE_JPEG_QUALITY, quality, cv2.IMWRITE_JPEG_SAMPLING_FACTOR, sampling]
    ok, buffer = cv2.imencode(".jpg", rgb[..., ::-1].copy(), flags)
    assert ok
    expected = cv2.imdecode(buffer, cv2.IMREAD_COLOR)[..., ::-1]
    out = jpeg_compress(photo, quality, subsample)
    assert np.array_equal(to_uint8(out), expected)


def test_registered_jpeg_quality_follows_the_level(photo):
    assert degrade(photo, "jpeg", 0.0, seed=0).params["quality"] == 95
    assert degrade(photo, "jpeg", 1.0, seed=0).params["quality"] == 10
    sample = degrade(photo, "jpeg", 0.5, seed=0, chroma_420_prob=1.0)
    assert sample.params == {"quality": 52, "chroma_subsampling": "420"}
    assert np.array_equal(to_uint8(sample.lq), to_uint8(jpeg_compress(photo, 52, True)))


# ----------------------------------------------------------------------------- mosaic
@pytest.mark.parametrize("method", list(DEMOSAIC_CODES))
def test_demosaic_keeps_the_bayer_samples(photo, method):
    image = to_uint8(photo).astype(np.float32) / 255.0  # on the 8-bit grid: every method's depth is exact
    bayer = bayer_rggb(image)
    out = demosaic(bayer, method)
    h, w = bayer.shape
    sites = np.tile(bayer_mask(), (h // 2, w // 2, 1))
    assert np.abs(out[sites] - bayer.ravel()).max() < 1e-6  # one sample per pixel, row-major
    assert np.abs(out - image).mean() < 0.03  # and it is a demosaic, not garbage


def test_bayer_pattern_is_rggb(photo):
    bayer = bayer_rggb(photo)
    assert bayer[0, 0] == photo[0, 0, 0] and bayer[0, 1] == photo[0, 1, 1]
    assert bayer[1, 0] == photo[1, 0, 1] and bayer[1, 1] == photo[1, 1, 2]


def test_mosaic_harshness_follows_the_level(photo):
    vng = degrade(photo, "mosaic", 0.0, seed=0, harsh_method_prob=[0.0, 0.0])
    assert vng.params == {"method": "vng", "sharpen_amount": 0.0}
    harsh = degrade(photo, "mosaic", 1.0, seed=0)
    assert harsh.params["method"] in ("bilinear", "edge_aware") and harsh.params["sharpen_amount"] == 1.5
    with pytest.raises(ValueError, match="unknown demosaic method"):
        demosaic(bayer_rggb(photo), "ahd")


# ----------------------------------------------------------------------------- low light
def test_darken_formula():
    out = darken(gray(0.5, 32), alpha=1.0, beta=0.5, gamma=2.0)
    assert np.allclose(out, 0.125)
    out = darken(gray(0.5, 32), alpha=0.9, beta=1.0, gamma=3.0)
    assert np.allclose(out, (0.9 * 0.5) ** 3)
    assert np.allclose(darken_linear(gray(0.5, 32), 0.9, 0.8, 2.0), (0.8 * (0.9 * 0.5) ** 2) ** 2.2, rtol=1e-5)


def test_low_light_gets_darker_with_level(photo):
    means = [np.mean([degrade(photo, "low_light", lv, seed=s).lq.mean() for s in range(4)]) for lv in (0, 0.5, 1)]
    assert means[0] > means[1] > means[2] and means[2] < 0.5 * photo.mean()
    params = degrade(photo, "low_light", 0.25, seed=1).params
    assert params["gamma"] == pytest.approx(1.5 + 3.5 * 0.25)
    assert 0.9 <= params["alpha"] <= 1.0 and 0.5 <= params["beta"] <= 1.0


# ----------------------------------------------------------------------------- Real-ESRGAN pipeline
def test_realesrgan_pipeline_stages_and_levels(photo):
    mild = degrade(photo, "downsample_noise_blur_jpeg", 0.0, seed=0)
    assert mild.params["final_scale"] == 1.0 and mild.params["jpeg1"]["quality"] == 95
    assert psnr(mild.lq, photo) > 30
    harsh = degrade(photo, "downsample_noise_blur_jpeg", 1.0, seed=0)
    for stage in ("blur1", "resize1", "noise1", "jpeg1", "resize2", "noise2", "jpeg2"):
        assert stage in harsh.params
    assert 1.0 <= harsh.params["final_scale"] <= 4.0
    assert 30 <= harsh.params["jpeg2"]["quality"] <= 95
    fixed = degrade(photo, "downsample_noise_blur_jpeg", 1.0, seed=0, final_scale=[4.0, 4.0])
    assert fixed.params["lr_size"] == [24, 24]  # 96 / 4


def test_overridden_ranges_are_read(photo):
    assert degrade(photo, "low_light", 0.7, seed=0, gamma=[2.0, 2.0]).params["gamma"] == 2.0
    camera = degrade(photo, "camera_noise", 0.7, seed=0, shot_noise=[1e-3, 1e-3])
    assert camera.params["shot_noise"] == pytest.approx(1e-3)
    assert degrade(photo, "defocus_blur", 0.3, seed=0, radius=[4.0, 4.0]).params["radius"] == 4.0
    assert degrade(photo, "jpeg", 0.3, seed=0, quality=[40, 40]).params["quality"] == 40
    assert degrade(photo, "mosaic", 0.3, seed=0, sharpen_amount=[0.0, 0.0]).params["sharpen_amount"] == 0.0
    noisy = degrade(photo, "noise", 1.0, seed=0, model_probs=[0, 0, 1], salt_pepper_amount=[0.1, 0.1])
    assert noisy.params == {"model": "salt_pepper", "amount": 0.1}
    quiet = degrade(photo, "downsample_noise_blur_jpeg", 1.0, seed=0, jpeg_quality=[95, 95])
    assert quiet.params["jpeg1"]["quality"] == 95 and quiet.params["jpeg2"]["quality"] == 95


def test_smooth_field_spans_the_unit_range_and_keeps_the_aspect():
    assert coarse_shape((100, 50), 4) == (4, 2) and coarse_shape((30, 300), 4) == (2, 4)
    coarse = make_rng(0).random((3, 5), dtype=np.float32)
    field = smooth_field(coarse, (40, 64))
    assert field.shape == (40, 64) and field.min() == 0.0 and field.max() == pytest.approx(1.0)
    assert smooth_field(coarse, (40, 64), margin=1e-3).max() < 1.0
