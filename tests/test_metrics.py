import math

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from maskdcpt.evaluation.metrics import (calculate_psnr, calculate_ssim, psnr, psnr_torch, rgb_to_y, ssim,
                                         ssim_torch, to_255_scale)


def _photo(h=48, w=40, seed=0):
    rng = np.random.default_rng(seed)
    # smooth structure + texture, like a small photo crop
    yy, xx = np.mgrid[0:h, 0:w]
    base = 120 + 60 * np.sin(xx / 5.0)[..., None] * np.cos(yy / 7.0)[..., None] * np.array([1.0, 0.6, 0.3])
    return np.clip(base + rng.normal(0, 12, (h, w, 3)), 0, 255).round().astype(np.uint8)


def test_psnr_known_values():
    img = _photo()
    img = np.clip(img, 0, 254)
    # a constant offset of one 8-bit level: MSE = 1 → 10·log10(255²) dB
    assert calculate_psnr(img + 1, img) == pytest.approx(48.1308036, abs=1e-6)
    assert calculate_psnr(img, img) == float("inf")
    # an error of 2 levels on a quarter of the pixels: MSE = 1
    other = img.astype(np.int64)
    other[: img.shape[0] // 2, : img.shape[1] // 2] += 2
    assert calculate_psnr(other, img) == pytest.approx(10 * math.log10(255 ** 2), abs=1e-9)


def test_psnr_crop_border_removes_the_frame():
    img = _photo()
    noisy = img.astype(np.float64)
    noisy[:4] += 50  # damage only the top 4 rows
    assert calculate_psnr(noisy, img, crop_border=4) == float("inf")
    assert calculate_psnr(noisy, img, crop_border=3) < 40


def test_y_channel_known_values():
    white = np.full((2, 2, 3), 255.0)
    black = np.zeros((2, 2, 3))
    assert np.allclose(rgb_to_y(white), 235.0)
    assert np.allclose(rgb_to_y(black), 16.0)
    # pure red in RGB order: 16 + 65.481
    red = np.zeros((1, 1, 3))
    red[..., 0] = 255
    assert rgb_to_y(red)[0, 0, 0] == pytest.approx(81.481)
    # on the [0, 1] scale the same luma divided by 255
    assert rgb_to_y(np.ones((1, 1, 3)), scale=1.0)[0, 0, 0] == pytest.approx(235 / 255)


def test_channel_order_only_matters_for_y():
    a, b = _photo(seed=1), _photo(seed=2)
    assert calculate_psnr(a, b) == calculate_psnr(a[..., ::-1], b[..., ::-1])
    y_rgb = calculate_psnr(a, b, test_y_channel=True, channel_order="rgb")
    y_bgr = calculate_psnr(a[..., ::-1], b[..., ::-1], test_y_channel=True, channel_order="bgr")
    assert y_rgb == pytest.approx(y_bgr, abs=1e-12)
    assert y_rgb != pytest.approx(calculate_psnr(a, b, test_y_channel=True, channel_order="bgr"), abs=1e-3)


def test_ssim_identical_is_one_and_drops_with_noise():
    a = _photo()
    assert calculate_ssim(a, a) == pytest.approx(1.0, abs=1e-12)
    rng = np.random.default_rng(3)
    b = np.clip(a + rng.normal(0, 20, a.shape), 0, 255)
    c = np.clip(a + rng.normal(0, 40, a.shape), 0, 255)
    assert 1.0 > calculate_ssim(b, a) > calculate_ssim(c, a) > 0


@pytest.mark.parametrize("y_channel", [False, True])
def test_ssim_matches_scikit_image(y_channel):
    """Both use an 11-tap Gaussian (σ 1.5, skimage truncates at 3.5σ → radius 5), population covariances,
    K1 0.01 / K2 0.03 and drop the 5-pixel frame; they differ only in float rounding."""
    a = _photo(64, 56, seed=4)
    b = np.clip(a.astype(np.int64) + np.random.default_rng(5).integers(-25, 26, a.shape), 0, 255).astype(np.uint8)
    ours = calculate_ssim(a, b, test_y_channel=y_channel, channel_order="rgb")
    if y_channel:
        ref = structural_similarity(rgb_to_y(a)[..., 0], rgb_to_y(b)[..., 0], gaussian_weights=True, sigma=1.5,
                                    use_sample_covariance=False, data_range=255)
    else:
        ref = structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                    data_range=255, channel_axis=-1)
    assert ours == pytest.approx(ref, abs=1e-6)
    assert ours < 0.95  # a real difference, not the trivial value


def test_float_entry_points_equal_255_scale_core():
    rng = np.random.default_rng(6)
    gt = rng.random((32, 24, 3))
    pred = np.clip(gt + rng.normal(0, 0.02, gt.shape), -0.1, 1.1)  # out-of-range values are clamped
    clamped = np.clip(pred, 0, 1)
    assert psnr(pred, gt) == pytest.approx(calculate_psnr(clamped * 255, gt * 255, channel_order="rgb"), abs=1e-12)
    assert ssim(pred, gt, y_channel=True) == pytest.approx(
        calculate_ssim(clamped * 255, gt * 255, test_y_channel=True, channel_order="rgb"), abs=1e-12)
    # the uint8 path rounds first: equal to the core on rounded images, different from the float path
    rounded = (np.round(clamped * 255), np.round(gt * 255))
    assert psnr(pred, gt, data_range="uint8") == pytest.approx(calculate_psnr(*rounded), abs=1e-12)
    assert psnr(pred, gt, data_range="uint8") != pytest.approx(psnr(pred, gt), abs=1e-4)
    # float PSNR is 10·log10(1/MSE) on [0, 1]
    assert psnr(pred, gt) == pytest.approx(10 * np.log10(1 / np.mean((clamped - gt) ** 2)), abs=1e-9)


def test_tensor_inputs_and_torch_batch_versions_agree_with_numpy():
    g = torch.Generator().manual_seed(7)
    gt = torch.rand(2, 3, 30, 26, generator=g)
    pred = (gt + 0.05 * torch.randn(gt.shape, generator=g)).clamp(0, 1)
    for y in (False, True):
        per_image = psnr(pred, gt, crop_border=2, y_channel=y)
        assert isinstance(per_image, list) and len(per_image) == 2
        np_first = psnr(pred[0].permute(1, 2, 0).numpy(), gt[0].permute(1, 2, 0).numpy(), crop_border=2, y_channel=y)
        assert per_image[0] == pytest.approx(np_first, abs=1e-5)
        torch.testing.assert_close(psnr_torch(pred, gt, 2, y), torch.tensor(per_image, dtype=torch.float64),
                                   rtol=0, atol=1e-9)
        torch.testing.assert_close(ssim_torch(pred, gt, 2, y),
                                   torch.tensor(ssim(pred, gt, crop_border=2, y_channel=y), dtype=torch.float64),
                                   rtol=0, atol=1e-9)


def test_to_255_scale_rounds_like_tensor2img():
    x = torch.tensor([0.0, 0.4 / 255, 1.6 / 255, 1.2, -0.3]).view(1, 1, 5).expand(3, 1, 5)
    assert to_255_scale(x, "uint8")[0, :, 0].tolist() == [0.0, 0.0, 2.0, 255.0, 0.0]  # clamp, ×255, round
    assert to_255_scale(x, "float")[0, 2, 0] == pytest.approx(1.6, abs=1e-4)  # no quantisation


def test_bad_inputs_raise_clear_errors():
    a = _photo()
    with pytest.raises(ValueError, match="shapes differ"):
        calculate_psnr(a, a[:-1])
    with pytest.raises(ValueError, match="data_range"):
        psnr(a / 255, a / 255, data_range="16bit")
    with pytest.raises(ValueError, match="at least 11"):
        calculate_ssim(a[:8, :8], a[:8, :8])
