import numpy as np
import pytest
import torch

from maskdcpt.evaluation import piqe
from maskdcpt.evaluation.piqe import _gray_levels

from conftest import IQA_REFERENCE as REFERENCE, iqa_image as _rgb


@pytest.mark.parametrize("name", sorted(REFERENCE["images"]))
def test_pyiqa_convention_matches_pyiqa(name):
    # reference: pyiqa's create_metric('piqe') on the file (tests/data/iqa/make_reference.py)
    assert piqe(_rgb(name), convention="pyiqa") == pytest.approx(REFERENCE["images"][name]["piqe"], abs=0.5)


def test_matlab_convention_agrees_with_pyiqa_where_they_do_not_differ():
    # with a white maximum and sizes that are multiples of 16, only the grey weights differ (in the 4th digit)
    compared = 0
    for name, ref in REFERENCE["images"].items():
        img = _rgb(name)
        if _gray_levels(img, "matlab").max() == 255 and img.shape[0] % 16 == 0 and img.shape[1] % 16 == 0:
            assert piqe(img) == pytest.approx(ref["piqe"], abs=1.0), name
            compared += 1
    assert compared >= 3
    # a dark image is where they part: pyiqa stretches it to white first
    dark = _rgb("rocket_dark.png")
    assert abs(piqe(dark) - REFERENCE["images"]["rocket_dark.png"]["piqe"]) > 2


def test_piqe_orders_degradations():
    for convention in ("matlab", "pyiqa"):
        assert piqe(_rgb("chelsea.png"), convention) + 20 < piqe(_rgb("chelsea_blur2.png"), convention)
        assert piqe(_rgb("coffee.png"), convention) + 20 < piqe(_rgb("coffee_noise25.png"), convention)
        assert piqe(_rgb("astronaut.png"), convention) + 20 < piqe(_rgb("astronaut_jpeg10.png"), convention)


def test_matlab_pads_by_replicating_the_last_row_and_column():
    gray = _gray_levels(_rgb("chelsea_odd.png"), "matlab")  # 200 x 250
    padded = np.pad(gray, ((0, 8), (0, 6)), mode="edge")
    assert piqe(gray.astype(np.uint8)) == piqe(padded.astype(np.uint8))


def test_piqe_input_forms_and_limits():
    img = _rgb("astronaut.png")
    value = piqe(img)
    assert 0 <= value <= 100
    assert piqe(img.astype(np.float64) / 255) == pytest.approx(value, abs=1e-9)
    assert piqe(torch.from_numpy(img).permute(2, 0, 1) / 255.0) == pytest.approx(value, abs=1e-9)
    assert piqe(np.full((64, 64, 3), 90, np.uint8)) == 100.0  # no active block: MATLAB's "bad" score
    with pytest.raises(ValueError, match="convention must be one of"):
        piqe(img, convention="matlab2")
    with pytest.raises(ValueError, match=r"\(H, W, 3\) RGB or \(H, W\) grey"):
        piqe(np.zeros((16, 16, 4), np.uint8))
