import csv
import json
import math
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from maskdcpt.errors import DataError

from maskdcpt.evaluation import lpips as lpips_module
from maskdcpt.evaluation import niqe, piqe
from maskdcpt.evaluation.no_reference import score_folder

DATA = Path(__file__).parent / "data" / "iqa"


@pytest.fixture()
def real_photos(tmp_path):
    """Restored outputs (the clean crops) and the degraded photos they came from, under the same names."""
    for name, degraded in (("chelsea.png", "chelsea_blur2.png"), ("coffee.png", "coffee_noise25.png")):
        (tmp_path / "out").mkdir(exist_ok=True)
        (tmp_path / "in").mkdir(exist_ok=True)
        shutil.copy(DATA / name, tmp_path / "out" / name)
        shutil.copy(DATA / degraded, tmp_path / "in" / name)
    small = cv2.imread(str(DATA / "rocket.png"))[:64, :64]  # too small for NIQE: NaN, noted
    cv2.imwrite(str(tmp_path / "out" / "small.png"), small)
    cv2.imwrite(str(tmp_path / "in" / "small.jpg"), small)  # matched by stem
    return tmp_path


def _rgb(path: Path) -> np.ndarray:
    return np.ascontiguousarray(cv2.imread(str(path))[..., ::-1])


def test_scores_outputs_and_inputs(real_photos, monkeypatch):
    monkeypatch.delenv(lpips_module.ENV_VAR, raising=False)
    logged = []
    result = score_folder(real_photos / "out", real_photos / "in", out_dir=real_photos / "res", progress=False,
                          log=logged.append)
    rows = {r["image"]: r for r in result.images}
    assert rows["chelsea.png"]["niqe"] == pytest.approx(niqe(_rgb(DATA / "chelsea.png")), abs=1e-6)
    assert rows["chelsea.png"]["piqe"] == pytest.approx(piqe(_rgb(DATA / "chelsea.png")), abs=1e-6)
    assert rows["coffee.png"]["input_piqe"] == pytest.approx(piqe(_rgb(DATA / "coffee_noise25.png")), abs=1e-6)
    assert rows["small.png"]["input"] == "small.jpg" and math.isnan(rows["small.png"]["niqe"])
    assert result.mean["niqe"] == pytest.approx(np.mean([rows[n]["niqe"] for n in ("chelsea.png", "coffee.png")]))
    assert "lpips_to_input" not in result.metrics
    assert any(line.startswith("LPIPS skipped") for line in logged)
    assert any(line.startswith("NIQE undefined for 1 outputs") for line in logged)
    table = logged[-1].splitlines()
    assert table[0].split() == ["images", "NIQE", "PIQE"]
    change = next(line for line in table if line.startswith("change")).split()
    assert float(change[1]) < 0 and float(change[2]) < 0  # the clean photos score better than the degraded
    with open(real_photos / "res" / "no_reference.csv") as f:
        csv_rows = list(csv.DictReader(f))
    assert [r["image"] for r in csv_rows] == ["chelsea.png", "coffee.png", "small.png", "mean"]
    saved = json.loads((real_photos / "res" / "no_reference.json").read_text())
    assert saved["images"][2]["niqe"] == "nan"


def test_lpips_to_input_when_weights_exist(real_photos, tmp_path):
    torch.manual_seed(0)
    lp = lpips_module.LPIPS("alex")
    state = {f"features.{k}": v for k, v in lp.features.state_dict().items()}
    state.update({f"lin{i}.weight": torch.rand_like(layer.weight) for i, layer in enumerate(lp.lins)})
    torch.save(state, tmp_path / "lpips.pth")
    (real_photos / "out" / "small.png").unlink()
    result = score_folder(real_photos / "out", real_photos / "in", lpips_weights=str(tmp_path / "lpips.pth"),
                          progress=False, log=lambda s: None, piqe_convention="pyiqa")
    metric = lpips_module.load_lpips(tmp_path / "lpips.pth")
    from maskdcpt.evaluation.restore import read_rgb

    out, inp = read_rgb(DATA / "chelsea.png")[0], read_rgb(DATA / "chelsea_blur2.png")[0]
    assert result.images[0]["lpips_to_input"] == pytest.approx(float(metric(out[None], inp[None])), rel=1e-5)
    assert result.images[0]["piqe"] == pytest.approx(piqe(_rgb(DATA / "chelsea.png"), convention="pyiqa"))


def test_outputs_only_and_errors(real_photos):
    result = score_folder(real_photos / "out", progress=False, log=lambda s: None)
    assert result.metrics == ["niqe", "piqe"] and len(result.images) == 3
    (real_photos / "out" / "extra.png").write_bytes((real_photos / "out" / "chelsea.png").read_bytes())
    with pytest.raises(DataError, match=r"no image in .*in has the name \(or stem\) of 1 of the 4 outputs: extra.png;"):
        score_folder(real_photos / "out", real_photos / "in", progress=False, log=lambda s: None)
    (real_photos / "empty").mkdir()
    with pytest.raises(DataError, match=r"no images \(.*\) in .*empty"):
        score_folder(real_photos / "empty", progress=False, log=lambda s: None)
