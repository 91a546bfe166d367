import os

import cv2
import numpy as np
import pytest
import torch

from maskdcpt.evaluation.imresize import imresize, resize_matrix
from maskdcpt.evaluation.niqe import (DEFAULT_PRISTINE_PATH, PristineModel, fit_aggd, fit_pristine_model,
                                     load_pristine_model, niqe, to_luma)

from conftest import IQA_DATA as DATA, IQA_REFERENCE as REFERENCE, iqa_image as _rgb


@pytest.mark.parametrize("name", sorted(REFERENCE["images"]))
def test_niqe_matches_basicsr_on_stored_images(name):
    # reference: BasicSR's calculate_niqe(img, crop_border, convert_to='y') (tests/data/iqa/make_reference.py)
    img = _rgb(name)
    assert niqe(img) == pytest.approx(REFERENCE["images"][name]["niqe"], abs=0.02)
    assert niqe(img, crop_border=4) == pytest.approx(REFERENCE["images"][name]["niqe_crop4"], abs=0.02)


@pytest.mark.skipif(not os.environ.get("MASKDCPT_NIQE_BABOON"),
                    reason="set MASKDCPT_NIQE_BABOON to BasicSR's test_scripts/data/baboon.png (not shipped: its "
                           "copyright status is unknown)")
def test_niqe_of_basicsr_check_image():
    img = cv2.imread(os.environ["MASKDCPT_NIQE_BABOON"], cv2.IMREAD_COLOR)[..., ::-1]
    assert niqe(img) == pytest.approx(5.72957, abs=1e-4)  # MATLAB R2021a and BasicSR: 5.7296


def test_niqe_orders_degradations():
    assert niqe(_rgb("chelsea.png")) + 4 < niqe(_rgb("chelsea_blur2.png"))
    assert niqe(_rgb("coffee.png")) + 4 < niqe(_rgb("coffee_noise25.png"))
    assert niqe(_rgb("astronaut.png")) + 1 < niqe(_rgb("astronaut_jpeg10.png"))


def test_niqe_input_forms_agree():
    img = _rgb("chelsea_odd.png")
    value = niqe(img)
    assert niqe(img.astype(np.float64) / 255) == value
    assert niqe(torch.from_numpy(img).permute(2, 0, 1).float() / 255) == pytest.approx(value, abs=1e-9)
    assert niqe(img.astype(np.uint16) * 257) == value
    gray = np.round(to_luma(img)).astype(np.uint8)
    assert niqe(gray) == value  # the luma is what is scored
    assert to_luma(np.ones((2, 2, 3))).tolist() == [[235.0, 235.0], [235.0, 235.0]]


def test_niqe_needs_two_blocks_and_contrast():
    img = _rgb("chelsea.png")
    assert np.isfinite(niqe(img[:96, :192]))
    for small in (img[:96, :96], img[:96, :191], img[:191, :191]):
        with pytest.raises(ValueError, match=r"at least two whole 96x96 blocks .*got \d+x\d+ with 1"):
            niqe(small)
    with pytest.raises(ValueError, match="crop_border=1"):
        niqe(img[:98, :193], crop_border=1)
    with pytest.raises(ValueError, match="fewer than two are left"):
        niqe(np.full((96, 192, 3), 128, np.uint8))
    with pytest.raises(ValueError, match="crop_border must be >= 0"):
        niqe(img, crop_border=-1)


def test_aggd_fit_recovers_known_shapes():
    rng = np.random.default_rng(0)
    alpha, beta_l, beta_r = fit_aggd(rng.normal(0, 1, 200_000))
    # a Gaussian is a GGD with α = 2 and scale β = σ·√2
    assert alpha == pytest.approx(2.0, abs=0.05)
    assert beta_l == pytest.approx(np.sqrt(2), rel=0.02) and beta_r == pytest.approx(np.sqrt(2), rel=0.02)
    alpha, beta_l, beta_r = fit_aggd(rng.laplace(0, 1, 200_000))
    assert alpha == pytest.approx(1.0, abs=0.05)  # Laplace: α = 1, β = b
    assert beta_l == pytest.approx(1.0, rel=0.03)
    x = rng.normal(0, 1, 100_000)
    x[x > 0] *= 3
    _, beta_l, beta_r = fit_aggd(x)
    assert beta_r / beta_l == pytest.approx(3.0, rel=0.05)
    # no negative values: MATLAB's min over NaNs takes the first shape, 0.2, and β_l is NaN
    alpha, beta_l, beta_r = fit_aggd(np.abs(rng.normal(0, 1, 1000)))
    assert alpha == pytest.approx(0.2) and np.isnan(beta_l) and np.isfinite(beta_r)


def test_shipped_model_is_the_published_one():
    model = load_pristine_model()
    assert DEFAULT_PRISTINE_PATH.name == "niqe_pris_params.npz"
    assert (DEFAULT_PRISTINE_PATH.parent / "NOTICE").is_file()
    assert (DEFAULT_PRISTINE_PATH.parent / "LICENSE-BasicSR-Apache-2.0.txt").is_file()
    assert model.mu.shape == (36,) and model.cov.shape == (36, 36)
    assert model.mu[:2] == pytest.approx([2.60131368, 0.90570272])  # first values of MATLAB's mu_prisparam
    np.testing.assert_allclose(model.cov, model.cov.T)


def test_fit_save_and_load_an_own_model(tmp_path):
    images = [_rgb(n) for n in ("chelsea.png", "coffee.png", "astronaut.png", "rocket.png", "chelsea_odd.png")]
    model = fit_pristine_model(images, sharpness_fraction=0.0)  # every block: enough for a 36-d covariance
    assert np.all(np.linalg.eigvalsh(model.cov) > -1e-8)
    model.save(tmp_path / "own.npz")
    loaded = load_pristine_model(tmp_path / "own.npz")
    np.testing.assert_array_equal(loaded.mu, model.mu)
    assert niqe(images[0], model=loaded) == niqe(images[0], model=model)
    assert niqe(images[0], model=model) != pytest.approx(niqe(images[0]), abs=0.1)  # another scale
    with pytest.raises(ValueError, match="only .* sharp blocks"):
        fit_pristine_model(images[:1])


def test_pristine_model_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        load_pristine_model(tmp_path / "nope.npz")
    np.savez(tmp_path / "bad.npz", mu=np.zeros(3))
    with pytest.raises(ValueError, match="bad.npz"):
        load_pristine_model(tmp_path / "bad.npz")
    np.savez(tmp_path / "short.npz", mu=np.zeros(3), cov=np.eye(3))
    with pytest.raises(ValueError, match=r"short.npz: expected a mean of 36"):
        load_pristine_model(tmp_path / "short.npz")
    assert isinstance(load_pristine_model(), PristineModel)


@pytest.mark.parametrize("scale", ["0.5", "2", "0.3"])
def test_imresize_matches_matlab_reference(scale):
    i, j = np.mgrid[0:11, 0:13]
    x = ((i * 7 + j * j * 3) % 17) / 16.0
    expected = np.array(REFERENCE["imresize"][scale])
    out = imresize(x, float(scale))
    assert out.shape == expected.shape
    np.testing.assert_allclose(out, expected, atol=1e-5)  # the reference computes in float32


def test_imresize_properties():
    assert imresize(np.zeros((7, 9)), 0.5).shape == (4, 5)  # ceil, as MATLAB
    np.testing.assert_allclose(imresize(np.full((10, 12, 3), 0.3), 0.5), 0.3)
    np.testing.assert_allclose(resize_matrix(17, 0.5).sum(axis=1), 1.0)
    # the antialiased kernel reproduces a linear ramp away from the borders: output k samples input 2k − ½
    ramp = np.tile(np.arange(40, dtype=np.float64), (8, 1))
    out = imresize(ramp, 0.5)
    np.testing.assert_allclose(out[:, 3:-3], np.tile(np.arange(40)[::2] + 0.5, (4, 1))[:, 3:-3], atol=1e-12)
    u8 = imresize(np.full((6, 6), 200, np.uint8), 0.5)
    assert u8.dtype == np.uint8 and (u8 == 200).all()
    with pytest.raises(ValueError, match="scale > 0"):
        resize_matrix(5, 0)


def test_score_command(tmp_path, capsys):
    from maskdcpt.evaluation.niqe import _main

    _main(["score", str(DATA / "chelsea.png"), "--crop-border", "4"])
    assert capsys.readouterr().out == f"{DATA / 'chelsea.png'}\t{niqe(_rgb('chelsea.png'), crop_border=4):.4f}\n"
    (tmp_path / "bad.png").write_bytes(b"")
    with pytest.raises(ValueError, match="cannot read image .*bad.png: empty"):
        _main(["score", str(tmp_path / "bad.png")])
