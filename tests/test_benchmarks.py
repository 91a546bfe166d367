import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn as nn

from maskdcpt.errors import ConfigError, MissingFileError
from maskdcpt.evaluation import lpips as lpips_module
from maskdcpt.evaluation.benchmarks import (BENCHMARKS, bayer_demosaic, evaluate_benchmark, find_benchmark,
                                            gaussian_noise, jpeg)
from maskdcpt.evaluation.evaluate import pair_images
from maskdcpt.evaluation.metrics import psnr
from maskdcpt.evaluation.restore import read_rgb


class Brighten(nn.Module):
    """A stand-in restorer that checks the release's padding: it only accepts multiples of its stride."""

    stride = 16

    def __init__(self):
        super().__init__()
        self.gain = nn.Parameter(torch.tensor(1.05))

    def forward(self, x):
        assert x.shape[-2] % 16 == 0 and x.shape[-1] % 16 == 0
        return x * self.gain


_RNG = np.random.default_rng(0)


def _image(h=40, w=52) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    g = 128 + 80 * np.sin(xx[..., None] / 5 + np.array([0, 1, 2])) * np.cos(yy[..., None] / 7)
    return np.clip(g + _RNG.normal(0, 5, g.shape), 0, 255).astype(np.uint8)


def _write(path: Path, bgr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), bgr)


def _pair(root: Path, lq: str, gt: str, lq_name: str, gt_name: str | None = None) -> None:
    clean = _image()
    _write(root / gt / (gt_name or lq_name), clean)
    _write(root / lq / lq_name, np.clip(clean.astype(int) * 0.7 + 20, 0, 255).astype(np.uint8))


@pytest.fixture()
def mini_5d(tmp_path):
    """Four of the five 5D sets in the layouts their publishers use; GoPro is missing."""
    root = tmp_path / "datasets"
    for name in ("rain-001.png", "rain-002.png"):  # Rain100L as released: rainy/rain-NNN, norain/norain-NNN
        _pair(root / "Rain100L", "rainy", "norain", name, "no" + name)
    for name in ("3096.png", "12084.png"):  # CBSD68 clean images only (the CBSD68-dataset repository's layout)
        _write(root / "denoise" / "CBSD68" / "original_png" / name, _image())
    _write(root / "denoise" / "CBSD68" / "noisy25" / "3096.png", _image())  # not used: LQ is made from GT
    _pair(root / "Dehaze" / "SOTS" / "outdoor", "hazy", "gt", "0001_0.8_0.2.jpg", "0001.png")
    _pair(root / "LOLdataset" / "eval15", "low", "high", "1.png")
    return root


def test_find_5d_by_published_layouts(mini_5d):
    tasks, missing = find_benchmark("5d", mini_5d)
    by_name = {t.name: t for t in tasks}
    assert sorted(by_name) == ["CBSD68-σ15", "CBSD68-σ25", "CBSD68-σ50", "LOL-v1", "Rain100L", "SOTS-outdoor"]
    assert by_name["Rain100L"].lq == mini_5d / "Rain100L" / "rainy"
    assert [(a.name, b.name) for a, b in pair_images(by_name["Rain100L"])] == [
        ("rain-001.png", "norain-001.png"), ("rain-002.png", "norain-002.png")]
    assert [(a.name, b.name) for a, b in pair_images(by_name["SOTS-outdoor"])] == [("0001_0.8_0.2.jpg", "0001.png")]
    assert by_name["CBSD68-σ25"].gt == mini_5d / "denoise" / "CBSD68" / "original_png"
    assert len(missing) == 1
    assert missing[0].startswith("GoPro (Deblur): not found under") and "a folder ending in GoPro/test, GOPRO_Large/test or GoPro_test (up to 6 levels below ROOT) holding input/ + target/ (or input/ + groundtruth/" in missing[0]


def test_noise_is_the_releases(mini_5d):
    gt, _ = read_rgb(mini_5d / "denoise" / "CBSD68" / "original_png" / "3096.png")
    lq = gaussian_noise(25)(gt)
    # the release: np.random.seed(0) before every image, normal(0, σ/255) on the HWC RGB float32 image, clip
    np.random.seed(0)
    expected = gt.permute(1, 2, 0).numpy().copy()
    expected += np.random.normal(0, 25 / 255.0, expected.shape)
    np.testing.assert_array_equal(lq.permute(1, 2, 0).numpy(), np.clip(expected, 0, 1))
    assert lq.dtype == torch.float32
    assert torch.equal(gaussian_noise(25)(gt), lq)  # the same noise every time
    assert float((lq - gt).std()) == pytest.approx(25 / 255, rel=0.1)


def test_jpeg_and_demosaic_synthesis():
    gt = torch.from_numpy(_image(32, 48)[..., ::-1].astype(np.float32) / 255).permute(2, 0, 1).contiguous()
    bgr = np.round(gt.permute(1, 2, 0).numpy()[..., ::-1] * 255).astype(np.uint8)
    decoded = cv2.imdecode(cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 50])[1], cv2.IMREAD_COLOR)
    np.testing.assert_array_equal(np.round(jpeg(50)(gt).permute(1, 2, 0).numpy() * 255)[..., ::-1], decoded)
    lq = np.round(bayer_demosaic(gt).permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    rgb = bgr[..., ::-1]
    # away from the borders the samples the mosaic kept come back in their own channels: blue at even/even,
    # red at odd/odd, green elsewhere (the colours are the GT's, not swapped)
    inner = (slice(2, -2), slice(2, -2))
    for rows, cols, channel in ((0, 0, 2), (1, 1, 0), (0, 1, 1), (1, 0, 1)):
        np.testing.assert_array_equal(lq[rows::2, cols::2, channel][inner], rgb[rows::2, cols::2, channel][inner])
    assert np.abs(lq.astype(int) - rgb).mean() < 20
    assert not np.array_equal(lq, rgb)


def test_evaluate_5d_prints_the_paper_table(mini_5d, tmp_path, monkeypatch):
    monkeypatch.delenv(lpips_module.ENV_VAR, raising=False)
    logged = []
    result, summary = evaluate_benchmark(Brighten(), "5d", mini_5d, out_dir=tmp_path / "out", progress=False,
                                         log=logged.append)
    columns = {c["task"]: c for c in summary["columns"]}
    assert list(columns) == ["Dehaze", "Derain", "Denoise", "Low-light"]  # the paper's order; Deblur missing
    assert columns["Denoise"]["sets"] == ["CBSD68-σ25"]
    assert summary["average"]["psnr"] == pytest.approx(np.mean([c["psnr"] for c in columns.values()]))
    assert [e["task"] for e in summary["extra"]] == ["CBSD68-σ15", "CBSD68-σ50"]
    # the input baseline is the LQ against its GT, with the same metric
    gt, _ = read_rgb(mini_5d / "Rain100L" / "norain" / "norain-001.png")
    lq, _ = read_rgb(mini_5d / "Rain100L" / "rainy" / "rain-001.png")
    row = next(r for r in result.images if r["task"] == "Rain100L" and r["image"] == "rain-001.png")
    assert row["input_psnr"] == pytest.approx(psnr(lq, gt))
    assert row["psnr"] == pytest.approx(psnr((lq * 1.05).clamp(0, 1), gt), abs=1e-4)
    noisy = next(r for r in result.images if r["task"] == "CBSD68-σ25" and r["image"] == "3096.png")
    clean, _ = read_rgb(mini_5d / "denoise" / "CBSD68" / "original_png" / "3096.png")
    assert noisy["input_psnr"] == pytest.approx(psnr(gaussian_noise(25)(clean), clean))

    table = logged[-1]
    assert table.splitlines()[0].startswith("5D all-in-one")
    assert "Average (4/5)" in table and "SOTS-outdoor" in table and "input (LQ)" in table
    restored_line = next(line for line in table.splitlines() if line.startswith("restored"))
    assert f"{summary['average']['psnr']:.2f}/{summary['average']['ssim']:.4f}" in restored_line
    assert any(line.startswith("missing: GoPro") for line in logged)
    saved = json.loads((tmp_path / "out" / "benchmark.json").read_text())
    assert saved["average"]["tasks"] == 4 and saved["missing"][0].startswith("GoPro")
    assert (tmp_path / "out" / "per_task.csv").is_file()


def test_12d_layouts_nested_sets_and_unpublished_tasks(tmp_path):
    root = tmp_path / "d"
    for seq in ("000", "001"):  # REDS: one folder per sequence, frames of the same names
        for frame in ("00000000.png", "00000001.png"):
            _pair(root / "REDS" / "val", f"val_blur/{seq}", f"val_sharp/{seq}", frame)
    _pair(root / "LOLv2" / "Real_captured" / "Test", "Low", "Normal", "low00690.png", "normal00690.png")
    for name in ("img_001.png", "img_002.png"):
        _write(root / "Urban100" / name, _image())
    tasks, missing = find_benchmark("12d", root)
    by_name = {t.name: t for t in tasks}
    assert sorted(by_name) == ["LOLv2-real", "REDS-val", "Urban100-mosaic", "Urban100-q50"]
    reds = pair_images(by_name["REDS-val"])
    assert len(reds) == 4 and all(a.relative_to(root / "REDS/val/val_blur") == b.relative_to(root / "REDS/val/val_sharp")
                                  for a, b in reds)
    assert [(a.name, b.name) for a, b in pair_images(by_name["LOLv2-real"])] == [("low00690.png", "normal00690.png")]
    bench = BENCHMARKS["12d"]
    assert len(bench.tasks) == 12 and "Gaussian deblur" in bench.tasks
    assert not any(s.task == "Gaussian deblur" for s in bench.sets)  # kernels not published: not run
    assert len(missing) == len(bench.sets) - 4

    result, summary = evaluate_benchmark(Brighten(), "12d", root, progress=False, log=lambda s: None)
    assert [c["task"] for c in summary["columns"]] == ["Low-light", "Motion deblur", "JPEG", "Demosaic"]
    assert "000/00000001.png" in {r["image"] for r in result.images}
    assert summary["average"]["of"] == 12


def test_benchmark_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown benchmark '7d'; known: 5d, 12d"):
        find_benchmark("7d", tmp_path)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        find_benchmark("5d", tmp_path / "nowhere")
    logged = []
    with pytest.raises(MissingFileError, match=r"no test set of benchmark 5d found under .* \(each is named above"):
        evaluate_benchmark(Brighten(), "5d", tmp_path, log=logged.append)
    # each missing set named once, in the log; the error itself is one line
    assert len(logged) == 7 and len(set(logged)) == 7 and logged[0].startswith("missing: SOTS-outdoor (Dehaze)")
    # a set whose folders exist but hold nothing is empty, not absent
    for sub in ("hazy", "gt"):
        (tmp_path / "SOTS" / "outdoor" / sub).mkdir(parents=True)
    _, missing = find_benchmark("5d", tmp_path)
    sots = tmp_path / "SOTS" / "outdoor"
    assert missing[0] == f"SOTS-outdoor (Dehaze): {sots / 'hazy'} and {sots / 'gt'} are empty (no .png/.jpg/.jpeg/.bmp/.tif/.tiff/.webp images)"
