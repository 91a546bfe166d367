import cv2
import numpy as np
import pytest
import skimage.data
import torch

from maskdcpt.evaluation.niqe import (DEFAULT_PRISTINE_PATH, PRISTINE_SAMPLE_IMAGES, fit_aggd, fit_pristine_model,
                                     load_pristine_model, niqe, sample_pristine_images, to_luma)


@pytest.fixture(scope="module")
def coffee():
    # held out of the pristine fit (not in PRISTINE_SAMPLE_IMAGES)
    assert "coffee.png" not in PRISTINE_SAMPLE_IMAGES
    return skimage.data.coffee().astype(np.float64)[:288, :384] / 255.0


def test_aggd_fit_recovers_known_shapes():
    rng = np.random.default_rng(0)
    alpha, beta_l, beta_r = fit_aggd(rng.normal(0, 1, 200_000))
    # a Gaussian is a GGD with α = 2 and scale β = σ·√2
    assert alpha == pytest.approx(2.0, abs=0.05)
    assert beta_l == pytest.approx(np.sqrt(2), rel=0.02) and beta_r == pytest.approx(np.sqrt(2), rel=0.02)
    alpha, beta_l, beta_r = fit_aggd(rng.laplace(0, 1, 200_000))
    assert alpha == pytest.approx(1.0, abs=0.05)  # Laplace: α = 1, β = b
    assert beta_l == pytest.approx(1.0, rel=0.03)
    # asymmetry: a wider right side gives β_r > β_l
    x = rng.normal(0, 1, 100_000)
    x[x > 0] *= 3
    _, beta_l, beta_r = fit_aggd(x)
    assert beta_r / beta_l == pytest.approx(3.0, rel=0.05)


def test_niqe_worse_for_blur_and_noise(coffee):
    clean = niqe(coffee)
    blur_mild = niqe(cv2.GaussianBlur(coffee, (0, 0), 1.5))
    blur_strong = niqe(cv2.GaussianBlur(coffee, (0, 0), 3.0))
    rng = np.random.default_rng(1)
    noise_mild = niqe(np.clip(coffee + rng.normal(0, 10 / 255, coffee.shape), 0, 1))
    noise_strong = niqe(np.clip(coffee + rng.normal(0, 30 / 255, coffee.shape), 0, 1))
    assert clean < blur_mild < blur_strong
    assert clean < noise_mild < noise_strong
    assert blur_mild > clean + 2 and noise_mild > clean + 2  # clearly, not by a rounding margin


def test_niqe_deterministic_and_input_forms_agree(coffee):
    a = niqe(coffee)
    assert niqe(coffee) == a
    uint8 = np.round(coffee * 255).astype(np.uint8)
    assert niqe(uint8) == pytest.approx(a, abs=1e-9)  # the luma is rounded, so 8-bit input gives the same
    assert niqe(torch.from_numpy(coffee).permute(2, 0, 1)) == pytest.approx(a, abs=1e-9)
    assert to_luma(np.ones((2, 2, 3))).tolist() == [[235.0, 235.0], [235.0, 235.0]]


def test_shipped_model_is_the_deterministic_fit_of_the_sample_photos():
    shipped = load_pristine_model()
    assert DEFAULT_PRISTINE_PATH.is_file()
    refit = fit_pristine_model(sample_pristine_images())
    np.testing.assert_allclose(refit.mu, shipped.mu, rtol=1e-10)
    np.testing.assert_allclose(refit.cov, shipped.cov, rtol=1e-8, atol=1e-12)
    assert np.all(np.linalg.eigvalsh(shipped.cov) > -1e-10)  # a covariance: symmetric PSD


def test_niqe_errors(tmp_path, coffee):
    with pytest.raises(ValueError, match="at least 96x96"):
        niqe(coffee[:64, :64])
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        load_pristine_model(tmp_path / "nope.npz")
    bad = tmp_path / "bad.npz"
    np.savez(bad, mu=np.zeros(3))
    with pytest.raises(ValueError, match="bad.npz"):
        load_pristine_model(bad)


def test_score_command_reads_gray_files_as_gray(tmp_path, coffee, capsys):
    from maskdcpt.evaluation.niqe import _main

    gray = np.round(coffee[..., 1] * 255).astype(np.uint8)
    cv2.imwrite(str(tmp_path / "g.png"), gray)
    _main(["score", str(tmp_path / "g.png")])
    assert capsys.readouterr().out == f"{tmp_path / 'g.png'}\t{niqe(gray):.4f}\n"
    (tmp_path / "bad.png").write_bytes(b"")
    with pytest.raises(ValueError, match="cannot read image .*bad.png: empty"):
        _main(["score", str(tmp_path / "bad.png")])
