import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn as nn

from maskdcpt.evaluation import lpips as lpips_module
from maskdcpt.evaluation.evaluate import EvalConfig, evaluate, load_tasks, pair_images
from maskdcpt.evaluation.metrics import psnr, ssim
from maskdcpt.evaluation.niqe import niqe
from maskdcpt.evaluation.restore import read_rgb, restore_image
from maskdcpt.models.checkpoint import load_restorer, save_restorer

from conftest import run_env

REPO = Path(__file__).resolve().parents[1]


class SmallDenoiser(nn.Module):
    """A real (untrained) residual conv net standing in for a backbone."""

    stride = 4

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 3, padding=1))

    def forward(self, x):
        return x + 0.05 * self.body(x)


def _write_pairs(folder: Path, names, size=(100, 104), seed=0, gt_names=None):
    rng = np.random.default_rng(seed)
    (folder / "LQ").mkdir(parents=True)
    (folder / "GT").mkdir(parents=True)
    yy, xx = np.mgrid[0:size[0], 0:size[1]]
    for i, name in enumerate(names):
        gt = 128 + 80 * np.sin(xx[..., None] / (4 + i) + np.array([0, 1, 2])) * np.cos(yy[..., None] / 6)
        gt = np.clip(gt + rng.normal(0, 8, gt.shape), 0, 255).astype(np.uint8)
        lq = np.clip(gt + rng.normal(0, 20, gt.shape), 0, 255).astype(np.uint8)
        cv2.imwrite(str(folder / "LQ" / name), lq)
        cv2.imwrite(str(folder / "GT" / (gt_names[i] if gt_names else name)), gt)


def test_evaluate_end_to_end_matches_direct_metrics(tmp_path, monkeypatch):
    monkeypatch.delenv(lpips_module.ENV_VAR, raising=False)
    _write_pairs(tmp_path / "sets" / "denoise", ["a.png", "b.png"], size=(100, 196), seed=1)
    _write_pairs(tmp_path / "sets" / "derain", ["c.png"], size=(64, 72), seed=2)  # < two 96x96 blocks: NIQE undefined
    spec = tmp_path / "sets" / "tasks.yaml"
    spec.write_text("tasks:\n  - {name: dn, lq: denoise/LQ, gt: denoise/GT}\n"
                    "  - {name: dr, lq: derain/LQ, gt: derain/GT}\n")
    model = SmallDenoiser()
    logged = []
    config = EvalConfig(crop_border=2, y_channel=True, data_range="uint8")
    result = evaluate(model, spec, out_dir=tmp_path / "out", config=config, progress=False, log=logged.append)

    # numbers equal the metrics computed directly
    expected = {}
    for task, folder in (("dn", "denoise"), ("dr", "derain")):
        for lq_path in sorted((tmp_path / "sets" / folder / "LQ").iterdir()):
            out = restore_image(model, read_rgb(lq_path)[0])
            gt = read_rgb(tmp_path / "sets" / folder / "GT" / lq_path.name)[0]
            kw = dict(crop_border=2, y_channel=True, data_range="uint8")
            lq = read_rgb(lq_path)[0]
            expected[(task, lq_path.name)] = (psnr(out, gt, **kw), ssim(out, gt, **kw), psnr(lq, gt, **kw),
                                              ssim(lq, gt, **kw))
    rows = {(r["task"], r["image"]): r for r in result.images}
    assert set(rows) == set(expected)
    for key, (p, s, p_in, s_in) in expected.items():
        assert rows[key]["psnr"] == pytest.approx(p, abs=1e-9) and rows[key]["ssim"] == pytest.approx(s, abs=1e-12)
        # the input baseline: the LQ image itself against GT, same metric settings, and the gain over it
        assert rows[key]["input_psnr"] == pytest.approx(p_in, abs=1e-9)
        assert rows[key]["input_ssim"] == pytest.approx(s_in, abs=1e-12)
        assert rows[key]["gain_psnr"] == pytest.approx(p - p_in, abs=1e-9)
    assert np.isnan(rows[("dr", "c.png")]["niqe"]) and np.isfinite(rows[("dn", "a.png")]["niqe"])
    dn = next(t for t in result.tasks if t["task"] == "dn")
    assert dn["count"] == 2 and dn["psnr"] == pytest.approx(np.mean([expected[("dn", n)][0] for n in "a.png b.png".split()]))
    assert result.overall["psnr"] == pytest.approx(np.mean([t["psnr"] for t in result.tasks]))
    assert result.pooled["ssim"] == pytest.approx(np.mean([v[1] for v in expected.values()]))

    # files
    with open(tmp_path / "out" / "per_image.csv") as f:
        csv_rows = list(csv.DictReader(f))
    assert [r["image"] for r in csv_rows] == ["a.png", "b.png", "c.png"]
    assert float(csv_rows[0]["psnr"]) == pytest.approx(expected[("dn", "a.png")][0], abs=1e-9)
    with open(tmp_path / "out" / "per_task.csv") as f:
        assert [r["task"] for r in csv.DictReader(f)] == ["dn", "dr", "overall (mean of tasks)", "all images"]
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["config"]["data_range"] == "uint8" and saved["images"][2]["niqe"] == "nan"
    assert saved["overall"]["psnr"] == pytest.approx(result.overall["psnr"])
    # one clear line says LPIPS is skipped, and the table is printed
    skip_lines = [line for entry in logged for line in entry.splitlines() if line.startswith("LPIPS skipped")]
    assert len(skip_lines) == 1 and lpips_module.ENV_VAR in skip_lines[0]
    table = logged[-2]
    assert table.splitlines()[0].split() == ["task", "images", "PSNR", "SSIM", "NIQE", "LQ", "PSNR", "LQ", "SSIM",
                                             "gain", "dB", "gain", "SSIM"] and "lpips" not in csv_rows[0]
    assert f"{result.overall['psnr']:.2f}" in table and f"{result.overall['input_psnr']:.2f}" in table
    assert f"{result.overall['gain_psnr']:+.2f}" in table
    assert list(csv_rows[0]) == ["task", "image", "psnr", "ssim", "niqe", "input_psnr", "input_ssim", "gain_psnr",
                                 "gain_ssim"]
    for line in table.splitlines()[2:]:  # a task the restorer made worse says so on its line
        if line.split()[0] in ("dn", "dr"):
            task = next(t for t in result.tasks if t["task"] == line.split()[0])
            assert line.endswith("<- worse than the input") == (task["gain_psnr"] < 0)
    assert logged[-1].startswith("NIQE undefined for 1 images")


def test_evaluate_with_lpips_weights(tmp_path):
    torch.manual_seed(0)
    lp = lpips_module.LPIPS("alex")
    state = {f"features.{k}": v for k, v in lp.features.state_dict().items()}
    state.update({f"lin{i}.weight": torch.rand_like(l.weight) for i, l in enumerate(lp.lins)})
    torch.save(state, tmp_path / "lpips.pth")
    _write_pairs(tmp_path / "set", ["a.png"], seed=3)
    result = evaluate(SmallDenoiser(), tmp_path / "set", progress=False, log=lambda s: None,
                      config=EvalConfig(lpips_weights=str(tmp_path / "lpips.pth"), compute_niqe=False))
    metric = lpips_module.load_lpips(tmp_path / "lpips.pth")
    out = restore_image(SmallDenoiser(), read_rgb(tmp_path / "set" / "LQ" / "a.png")[0])
    gt = read_rgb(tmp_path / "set" / "GT" / "a.png")[0]
    assert result.images[0]["lpips"] == pytest.approx(float(metric(out[None], gt[None])), rel=1e-5)
    assert "niqe" not in result.images[0] and not result.notes


def test_task_discovery_and_pairing(tmp_path):
    _write_pairs(tmp_path / "root" / "haze", ["0001_0.8_0.2.png", "0002_0.9_0.1.png"], size=(16, 16),
                 gt_names=["0001.png", "0002.png"])
    _write_pairs(tmp_path / "root" / "rain", ["x.png"], size=(16, 16))
    tasks = load_tasks(tmp_path / "root")
    assert [t.name for t in tasks] == ["haze", "rain"]
    pairs = pair_images(tasks[0])
    assert [(a.name, b.name) for a, b in pairs] == [("0001_0.8_0.2.png", "0001.png"), ("0002_0.9_0.1.png", "0002.png")]
    assert load_tasks(tmp_path / "root" / "rain")[0].lq == tmp_path / "root" / "rain" / "LQ"
    (tmp_path / "root" / "rain" / "LQ" / "y.png").write_bytes((tmp_path / "root" / "rain" / "LQ" / "x.png").read_bytes())
    with pytest.raises(ValueError, match="y.png"):
        pair_images(tasks[1])


@pytest.mark.parametrize("text,match", [
    ("tasks: []", "non-empty list"),
    ("tasks:\n  - {name: a, lq: LQ, gt: GT, sigma: 3}",
     r"unknown config key 'tasks\[0\].sigma'; valid keys in tasks\[0\]: name, lq, gt \(in .*t.yaml\)"),
    ("tasks:\n  - {name: a, lq: LQ}", r"missing config key 'tasks\[0\].gt'"),
    ("tasks:\n  - {name: a, lq: LQ, gt: GT}\n  - {name: a, lq: LQ, gt: GT}", r"tasks\[1\].name: .*'a' appears twice"),
    ("tasks:\n  - {name: a, lq: nowhere, gt: GT}", r"tasks\[0\].lq: lq folder .*nowhere.* \(in .*t.yaml\)"),
    ("tasks: [", "invalid YAML"),
])
def test_task_yaml_errors_name_the_problem(tmp_path, text, match):
    (tmp_path / "GT").mkdir()
    (tmp_path / "LQ").mkdir()
    spec = tmp_path / "t.yaml"
    spec.write_text(text)
    with pytest.raises(ValueError, match=match):
        load_tasks(spec)


@pytest.fixture(scope="module")
def tiny_restorer(tmp_path_factory):
    from maskdcpt.models import create_model

    folder = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    model = create_model("nafnet_tiny").eval()
    save_restorer(model, folder / "restorer.safetensors", "nafnet_tiny", {}, extra_metadata={"step": "10"})
    return model, folder


def test_save_and_load_restorer_round_trip(tiny_restorer, tmp_path):
    model, folder = tiny_restorer
    for source in (folder, folder / "restorer.safetensors"):
        loaded = load_restorer(source)
        assert not loaded.training
        for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
            assert k == k2 and torch.equal(a, b)
    x = torch.rand(1, 3, 37, 53)
    torch.testing.assert_close(restore_image(loaded, x), restore_image(model, x), rtol=0, atol=0)
    # a release-style .pth (params_ema wrapper) needs --arch
    torch.save({"params_ema": model.state_dict()}, tmp_path / "release.pth")
    with pytest.raises(ValueError, match="release.pth.*--arch"):
        load_restorer(tmp_path / "release.pth")
    from_pth = load_restorer(tmp_path / "release.pth", arch="nafnet_tiny")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), from_pth.state_dict().values()))


def test_load_restorer_errors_name_the_file(tiny_restorer, tmp_path):
    model, _ = tiny_restorer
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        load_restorer(tmp_path / "missing.safetensors")
    with pytest.raises(FileNotFoundError, match="restorer.safetensors"):
        load_restorer(tmp_path)  # a folder without restorer.safetensors
    (tmp_path / "corrupt.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="corrupt.safetensors"):
        load_restorer(tmp_path / "corrupt.safetensors")
    save_restorer(model, tmp_path / "unknown.safetensors", "no_such_net")
    with pytest.raises(ValueError, match="unknown.safetensors.*no_such_net"):
        load_restorer(tmp_path / "unknown.safetensors")
    with pytest.raises(ValueError, match="JSON"):
        save_restorer(model, tmp_path / "x.safetensors", "nafnet_tiny", {"bad": object()})


def _run_tool(*args):
    env = {**run_env(), "PYTHONPATH": str(REPO)}
    env.pop(lpips_module.ENV_VAR, None)
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_tools_restore_and_evaluate_as_subprocesses(tiny_restorer, tmp_path):
    model, folder = tiny_restorer
    _write_pairs(tmp_path / "set", ["p.png", "q.png"], size=(97, 197), seed=4)
    done = _run_tool("tools/restore.py", "--model", str(folder), "--tile", "64", "--overlap", "16",
                     str(tmp_path / "set" / "LQ"), str(tmp_path / "restored"))
    assert done.returncode == 0, done.stderr
    restored = cv2.imread(str(tmp_path / "restored" / "p.png"))
    assert restored.shape == (97, 197, 3)
    expected = restore_image(model, read_rgb(tmp_path / "set" / "LQ" / "p.png")[0], tile=64, overlap=16)
    expected = np.round(expected.permute(1, 2, 0).numpy() * 255)[..., ::-1]
    assert np.abs(restored.astype(float) - expected).max() <= 1  # same computation, 8-bit rounding apart

    done = _run_tool("tools/evaluate.py", "--model", str(folder / "restorer.safetensors"), "--data",
                     str(tmp_path / "set"), "--out", str(tmp_path / "eval"), "--device", "cpu")
    assert done.returncode == 0, done.stderr
    assert "LPIPS skipped" in done.stdout and "PSNR" in done.stdout
    saved = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert [r["image"] for r in saved["images"]] == ["p.png", "q.png"]
    direct = psnr(restore_image(model, read_rgb(tmp_path / "set" / "LQ" / "q.png")[0]),
                  read_rgb(tmp_path / "set" / "GT" / "q.png")[0])
    assert saved["images"][1]["psnr"] == pytest.approx(direct, abs=1e-6)
    assert saved["images"][1]["niqe"] == pytest.approx(
        niqe(restore_image(model, read_rgb(tmp_path / "set" / "LQ" / "q.png")[0])), abs=1e-6)



def _evaluate_tool():
    import importlib.util

    spec = importlib.util.spec_from_file_location("evaluate_tool", REPO / "tools" / "evaluate.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


def test_evaluate_tool_reports_a_missing_checkpoint(tmp_path, capsys):
    tool = _evaluate_tool()
    assert tool.main(["--model", str(tmp_path / "nope.safetensors"), "--data", str(tmp_path)]) == 2
    assert "nope.safetensors" in capsys.readouterr().err


def test_evaluate_tool_settings_file_then_flags_then_overrides(tmp_path, capsys):
    tool = _evaluate_tool()
    settings = tmp_path / "eval.yaml"
    settings.write_text("crop_border: 4\ny_channel: true\noverlap: 16\n")
    args = tool.build_parser().parse_args(["--model", "m", "--data", "d", "--config", str(settings), "--crop-border", "2",
                                           "--prior", "a folder: x", "--no-niqe", "tile=128"])
    assert tool.eval_config(args) == EvalConfig(crop_border=2, y_channel=True, overlap=16, tile=128,
                                                prior="a folder: x", compute_niqe=False)
    plain = tool.build_parser().parse_args(["--model", "m", "--data", "d"])
    assert tool.eval_config(plain) == EvalConfig()
    assert tool.main(["--model", "m", "--data", "d", "--config", str(settings), "y_chanel=true"]) == 2
    assert re.search(r"unknown config key 'y_chanel'; valid keys: crop_border, y_channel, .* \(in .*eval.yaml\)",
                     capsys.readouterr().err)


def test_evaluate_tool_benchmark_and_no_reference_modes(tiny_restorer, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(lpips_module.ENV_VAR, raising=False)
    _, folder = tiny_restorer
    tool = _evaluate_tool()
    _write_pairs(tmp_path / "data" / "Rain100L", ["1.png"], size=(40, 52), gt_names=None)
    (tmp_path / "data" / "Rain100L" / "LQ").rename(tmp_path / "data" / "Rain100L" / "input")
    (tmp_path / "data" / "Rain100L" / "GT").rename(tmp_path / "data" / "Rain100L" / "target")
    assert tool.main(["--model", str(folder), "--benchmark", "5d", "--datasets", str(tmp_path / "data"),
                      "--out", str(tmp_path / "bench"), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "missing: GoPro (Deblur)" in out and "Average (1/5)" in out and "Rain100L" in out
    assert json.loads((tmp_path / "bench" / "benchmark.json").read_text())["columns"][0]["task"] == "Derain"

    assert tool.main(["--no-reference", str(tmp_path / "data" / "Rain100L" / "target"), "--inputs",
                      str(tmp_path / "data" / "Rain100L" / "input"), "--out", str(tmp_path / "nr")]) == 0
    assert "PIQE" in capsys.readouterr().out and (tmp_path / "nr" / "no_reference.csv").is_file()


@pytest.mark.parametrize("argv,message", [
    (["--benchmark", "5d", "--datasets", "x"], "--model is needed with --benchmark"),
    (["--model", "m", "--benchmark", "5d"], "--benchmark needs --datasets ROOT"),
    (["--model", "m", "--data", "d", "--inputs", "i"], "--inputs goes with --no-reference"),
])
def test_evaluate_tool_mode_errors(argv, message, capsys):
    assert _evaluate_tool().main(argv) == 2
    assert message in capsys.readouterr().err
