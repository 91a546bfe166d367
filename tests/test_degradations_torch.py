"""The batched torch path (degradations.torch_ops): equivalence with the CPU path where it is exact,
noise statistics, alignment, determinism, batch-composition independence and severity."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from degradations import degrade
from degradations.benchmark import benchmark_batch
from degradations.color import linear_to_display
from degradations.kernels import apply_kernel, gaussian_kernel
from degradations.lowlight import darken_linear
from degradations.mosaic import bayer_rggb, demosaic
from degradations.motion_blur import linear_kernel, shake_trajectory, trajectory_kernel
from degradations.rng import make_rng
from degradations.torch_ops import (
    TORCH_TYPES,
    conv_per_sample,
    darken_to_linear,
    degrade_batch,
    demosaic_bilinear,
)
from maskdcpt.evaluation.metrics import psnr

from conftest import photo_crop, texture as make_texture

BLUR_TYPES = ("motion_blur", "defocus_blur", "gaussian_blur")


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) → (1, 3, H, W)."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].contiguous()


def to_image(t: torch.Tensor) -> np.ndarray:
    return t.permute(1, 2, 0).cpu().numpy()


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """A 64×81 crop of a real photo (odd width), float32 in [0, 1]."""
    return photo_crop("chelsea", 100, 200, 64, 81)


@pytest.fixture(scope="module")
def texture() -> np.ndarray:
    """96×96 smooth random texture, contrast 0.18 around 0.5."""
    return make_texture(96, 1.5, seed=7)


# ----------------------------------------------------------------------------- exact equivalence
def test_conv_per_sample_equals_apply_kernel():
    """Mixed kernel sizes, asymmetric kernels (a flip would show), odd image size, reflect-101 border."""
    rng = np.random.default_rng(0)
    image = rng.random((33, 47, 3), dtype=np.float32)
    kernels = [
        gaussian_kernel(7, 2.0, 0.7, 0.4),
        linear_kernel(12.0, 30.0),
        trajectory_kernel(shake_trajectory(make_rng(3)), 21),
        np.array([[0, 0, 0], [0, 0, 1], [0, 0, 0]], np.float32),
    ]
    batch = to_tensor(image).repeat(len(kernels), 1, 1, 1)
    out = conv_per_sample(batch, kernels)
    for i, k in enumerate(kernels):
        np.testing.assert_allclose(to_image(out[i]), apply_kernel(image, k), atol=1e-5)
    # the one-hot kernel at (row 1, col 2) shifts content by one pixel: a true convolution, not a correlation
    np.testing.assert_allclose(to_image(out[3])[:, 1:], image[:, :-1], atol=1e-6)


def test_conv_per_sample_rejects_bad_kernels():
    x = torch.zeros((1, 3, 32, 32))
    with pytest.raises(ValueError, match="odd and square"):
        conv_per_sample(x, [np.ones((4, 4), np.float32)])
    with pytest.raises(ValueError, match="too large"):
        conv_per_sample(x, [np.ones((65, 65), np.float32)])


@pytest.mark.parametrize("name", BLUR_TYPES)
def test_blur_types_equal_cpu_path(photo, name):
    """Kernels come from the same draws as the CPU type, so same seed → same blur (within float rounding)."""
    seeds = list(range(8))  # defocus: seeds 2 and 6 … include depth-varying samples (checked below)
    levels = [0.0, 0.3, 0.6, 1.0] * 2
    batch = to_tensor(photo).repeat(len(seeds), 1, 1, 1)
    lq, params = degrade_batch(batch, [name] * len(seeds), levels, seeds)
    for i, (seed, level) in enumerate(zip(seeds, levels)):
        cpu = degrade(photo, name, level, seed=seed)
        np.testing.assert_allclose(to_image(lq[i]), cpu.lq, atol=1e-5)
        assert {k: v for k, v in params[i].items() if k != "type"} == cpu.params
    if name == "defocus_blur":
        assert {p["depth_varying"] for p in params} == {True, False}


def test_low_light_formula_equals_cpu_darkening(photo):
    alpha, beta, gamma = 0.93, 0.7, 3.1
    t = darken_to_linear(to_tensor(photo), torch.tensor([alpha]), torch.tensor([beta]), torch.tensor([gamma]))
    cpu_linear = darken_linear(photo, alpha, beta, gamma)
    np.testing.assert_allclose(to_image(t[0]), cpu_linear, rtol=1e-4, atol=1e-9)
    np.testing.assert_allclose(to_image(linear_to_display(t)[0]), linear_to_display(cpu_linear), atol=1e-5)


def test_low_light_with_negligible_noise_equals_cpu(photo):
    quiet = {"low_light": {"shot_noise": [1e-12, 1e-12], "read_noise": [1e-14, 1e-14]}}
    lq, params = degrade_batch(to_tensor(photo).repeat(3, 1, 1, 1), ["low_light"] * 3, [0.0, 0.5, 1.0], [1, 2, 3], quiet)
    for i, (level, seed) in enumerate(zip([0.0, 0.5, 1.0], [1, 2, 3])):
        cpu = degrade(photo, "low_light", level, seed=seed, **quiet["low_light"])
        np.testing.assert_allclose(to_image(lq[i]), cpu.lq, atol=2e-3)
        assert params[i]["gamma"] == cpu.params["gamma"] and params[i]["alpha"] == cpu.params["alpha"]


def test_demosaic_equals_cpu_bilinear_and_keeps_samples(photo):
    out = to_image(demosaic_bilinear(to_tensor(photo))[0])
    # OpenCV quantises to 16 bits: half a step is 7.6e-6
    np.testing.assert_allclose(out, demosaic(bayer_rggb(photo), "bilinear"), atol=1e-5)
    np.testing.assert_array_equal(out[0::2, 0::2, 0], photo[0::2, 0::2, 0])
    np.testing.assert_array_equal(out[1::2, 1::2, 2], photo[1::2, 1::2, 2])
    np.testing.assert_array_equal(out[0::2, 1::2, 1], photo[0::2, 1::2, 1])


def test_haze_close_to_cpu(photo):
    """Same draws; only the resampling of the coarse depth cues differs (torch vs OpenCV)."""
    lq, params = degrade_batch(to_tensor(photo).repeat(4, 1, 1, 1), ["haze"] * 4, [0.2, 0.5, 0.8, 1.0], [0, 1, 2, 3])
    for i, (level, seed) in enumerate(zip([0.2, 0.5, 0.8, 1.0], [0, 1, 2, 3])):
        cpu = degrade(photo, "haze", level, seed=seed)
        assert abs(float(np.abs(to_image(lq[i]) - cpu.lq).mean())) < 2e-3
        for key in ("beta", "airlight", "depth_cells", "depth_min", "depth_weights"):
            assert params[i][key] == cpu.params[key]


@pytest.mark.parametrize("name", ["noise", "low_light", "mosaic"])
def test_parameter_draws_follow_cpu(photo, name):
    """The parameter stream equals the CPU type's for the same seed (only pixel noise is drawn apart)."""
    _, params = degrade_batch(to_tensor(photo).repeat(6, 1, 1, 1), [name] * 6, [0.4] * 6, list(range(6)))
    for seed, p in enumerate(params):
        cpu = degrade(photo, name, 0.4, seed=seed).params
        if name == "mosaic":
            assert p["cpu_method"] == cpu["method"] and p["sharpen_amount"] == cpu["sharpen_amount"]
        else:
            assert {k: v for k, v in p.items() if k != "type"} == cpu


# ----------------------------------------------------------------------------- noise statistics
@pytest.mark.parametrize("gray", [False, True])
def test_gaussian_noise_sigma(gray):
    flat = torch.full((2, 3, 128, 128), 0.5)
    ranges = {"noise": {"model_probs": [1, 0, 0], "gray_prob": float(gray)}}
    lq, params = degrade_batch(flat, ["noise"] * 2, [0.5, 1.0], [11, 12], ranges)
    for i, p in enumerate(params):
        assert p["model"] == "gaussian" and p["gray"] is gray
        residual = lq[i] - 0.5
        measured = float(residual.std()) * 255.0
        assert abs(measured - p["sigma"]) < 0.03 * p["sigma"], (measured, p["sigma"])
        spread = float((residual - residual[0]).abs().max())
        assert (spread < 1e-6) if gray else (spread > 0.1)  # gray: one plane for all channels


def test_poisson_noise_statistics():
    """Mean-preserving shot noise with variance scale² · x / 256 on a flat image."""
    x = 0.4
    flat = torch.full((1, 3, 128, 128), x)
    ranges = {"noise": {"model_probs": [0, 1, 0], "gray_prob": 0.0}}
    lq, params = degrade_batch(flat, ["noise"], [0.3], [5], ranges)
    scale = params[0]["scale"]
    residual = lq[0] - x
    assert abs(float(residual.mean())) < 0.002
    expected = scale * (x / 256.0) ** 0.5
    assert abs(float(residual.std()) - expected) < 0.03 * expected


def test_salt_and_pepper_fraction():
    flat = torch.full((1, 3, 128, 128), 0.5)
    lq, params = degrade_batch(flat, ["noise"], [1.0], [2], {"noise": {"model_probs": [0, 0, 1]}})
    hit = (lq[0] != 0.5).all(dim=0).float().mean()
    assert abs(float(hit) - params[0]["amount"]) < 0.01
    assert set(torch.unique(lq[0]).tolist()) == {0.0, 0.5, 1.0}


# ----------------------------------------------------------------------------- generic invariants
def _mixed(texture, size=None):
    image = texture if size is None else texture[: size[0], : size[1]]
    names = list(TORCH_TYPES) * 2
    levels = [0.25 + 0.75 * (i % 2) for i in range(len(names))]  # 1.0: the largest kernels
    seeds = [(3, i) for i in range(len(names))]
    return to_tensor(image).repeat(len(names), 1, 1, 1), names, levels, seeds


@pytest.mark.parametrize("size", [(32, 33), (33, 37), (48, 65)])
def test_shape_range_and_determinism(texture, size):
    batch, names, levels, seeds = _mixed(texture, size)
    lq1, p1 = degrade_batch(batch, names, levels, seeds)
    lq2, p2 = degrade_batch(batch, names, torch.tensor(levels), seeds)
    assert lq1.shape == batch.shape and lq1.dtype == torch.float32
    assert float(lq1.min()) >= 0.0 and float(lq1.max()) <= 1.0
    assert torch.equal(lq1, lq2) and p1 == p2
    assert [p["type"] for p in p1] == names
    lq3, _ = degrade_batch(batch, names, levels, [(4, i) for i in range(len(names))])
    assert not torch.equal(lq1, lq3)


def test_batch_composition_independence(texture):
    """A sample's output is the same (bit for bit on CPU) alone as in a mixed batch, in any position."""
    batch, names, levels, seeds = _mixed(texture)
    lq, params = degrade_batch(batch, names, levels, seeds)
    order = list(range(len(names)))[::-1]
    lq_rev, _ = degrade_batch(batch[order], [names[i] for i in order], [levels[i] for i in order], [seeds[i] for i in order])
    for i in range(len(names)):
        alone, p = degrade_batch(batch[i : i + 1], [names[i]], [levels[i]], [seeds[i]])
        assert torch.equal(alone[0], lq[i]), names[i]
        assert p[0] == params[i]
        assert torch.equal(lq_rev[order.index(i)], lq[i]), names[i]


def _correlation_peak(a: np.ndarray, b: np.ndarray) -> tuple[int, int]:
    """Integer (dy, dx) maximising the circular cross-correlation of two zero-mean planes."""
    fa, fb = np.fft.fft2(a - a.mean()), np.fft.fft2(b - b.mean())
    corr = np.fft.ifft2(fa * np.conj(fb)).real
    dy, dx = np.unravel_index(int(np.argmax(corr)), corr.shape)
    h, w = corr.shape
    return (int(dy) if dy <= h // 2 else int(dy) - h, int(dx) if dx <= w // 2 else int(dx) - w)


def test_alignment_pointwise_types(texture):
    """Noise, low light, haze and mosaic move no content: the correlation peaks at zero offset."""
    batch, names, levels, seeds = _mixed(texture)
    lq, _ = degrade_batch(batch, names, levels, seeds)
    gt = texture.mean(axis=2)
    for i, name in enumerate(names):
        if name not in BLUR_TYPES:
            assert _correlation_peak(to_image(lq[i]).mean(axis=2), gt) == (0, 0), name
    assert _correlation_peak(np.roll(gt, 2, axis=1), gt) == (0, 2)  # the check sees a shift


@pytest.mark.parametrize("name", BLUR_TYPES)
def test_alignment_blurs_keep_impulse_centroid(name):
    """The blurred image of a single bright pixel has its centroid on that pixel (centred kernels).

    Depth-varying defocus is not a convolution (the radius changes across the image), so it is off here.
    """
    image = torch.full((6, 3, 95, 97), 0.2)
    image[:, :, 47, 48] = 1.0
    ranges = {"defocus_blur": {"depth_varying_prob": 0.0}} if name == "defocus_blur" else None
    lq, _ = degrade_batch(image, [name] * 6, [0.0, 0.2, 0.4, 0.6, 0.8, 1.0], list(range(6)), ranges)
    ys, xs = torch.meshgrid(torch.arange(95.0, dtype=torch.float64), torch.arange(97.0, dtype=torch.float64), indexing="ij")
    for i in range(6):
        response = lq[i, 0].double() - 0.2
        total = float(response.sum())
        assert abs(total - 0.8) < 3e-3  # kernels sum to 1 (float32 rounding of the 0.2 background)
        assert abs(float((response * ys).sum()) / total - 47) < 0.02
        assert abs(float((response * xs).sum()) / total - 48) < 0.02


@pytest.mark.parametrize("name", TORCH_TYPES)
def test_severity_rises_with_level(texture, name):
    seeds = [0, 1, 2, 3]
    batch = to_tensor(texture).repeat(len(seeds), 1, 1, 1)
    means = []
    for level in (0.1, 0.5, 1.0):
        lq, _ = degrade_batch(batch, [name] * len(seeds), [level] * len(seeds), seeds)
        means.append(np.mean([psnr(lq[i], batch[i]) for i in range(len(seeds))]))
    assert means[0] > means[1] > means[2], (name, means)


# ----------------------------------------------------------------------------- errors and isolation
def test_bad_inputs_raise():
    x = torch.rand((2, 3, 32, 32))
    with pytest.raises(ValueError, match=r"'jpeg' has no torch path; supported: noise"):
        degrade_batch(x, ["noise", "jpeg"], [0.5, 0.5], [0, 1])
    with pytest.raises(ValueError, match="one type, level and seed per image"):
        degrade_batch(x, ["noise"], [0.5], [0])
    with pytest.raises(ValueError, match="unknown key"):
        degrade_batch(x, ["noise", "noise"], [0.5, 0.5], [0, 1], {"noise": {"sigmaa": [1, 2]}})
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        degrade_batch(torch.rand((3, 32, 32)), ["noise"], [0.5], [0])
    with pytest.raises(ValueError):
        degrade_batch(x, ["noise", "noise"], [0.5, 1.5], [0, 1])


def test_degradations_import_without_torch():
    code = "import sys, degradations, degradations.types; degradations.resolve('haze'); print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu(texture):
    batch, names, levels, seeds = _mixed(texture)
    cpu, p_cpu = degrade_batch(batch, names, levels, seeds)
    gpu, p_gpu = degrade_batch(batch.cuda(), names, levels, seeds)
    assert gpu.device.type == "cuda"
    for i, name in enumerate(names):
        if name in BLUR_TYPES + ("haze", "mosaic"):  # no pixel noise: same result up to float rounding
            assert torch.allclose(gpu[i].cpu(), cpu[i], atol=1e-4), name
        assert p_gpu[i].keys() == p_cpu[i].keys()


def test_benchmark_batch_times_every_torch_type():
    result = benchmark_batch(size=32, batch=2, repeats=1)
    assert list(result) == list(TORCH_TYPES) and all(ms > 0 for ms in result.values())
