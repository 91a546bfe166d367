"""docs/extending.md, performed: each example's code is read from the page and used as written, on a toy, without
touching a file of the project (modules go to tmp_path; what the page adds to a project file is added to a subclass
or a namespace here), and each extension shows where the page says it does."""
from __future__ import annotations

import csv
import dataclasses
import importlib
import json
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from maskdcpt.evaluation.registry import METRICS
from maskdcpt.losses import registry as loss_registry
from maskdcpt.models import registry as model_registry

from conftest import TINY_PRETRAIN, TINY_RUN, run_env

ROOT = Path(__file__).resolve().parents[1]
PAGE = (ROOT / "docs" / "extending.md").read_text()


def code_blocks(section: str, language: str) -> list[str]:
    """The ``language`` code blocks of the page's section ``## <section>``, in order."""
    body = PAGE.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(rf"```{language}\n(.*?)```", body, flags=re.S)


@pytest.fixture
def module_dir(tmp_path, monkeypatch):
    """A folder on sys.path for the example's modules; they are forgotten again afterwards."""
    folder = tmp_path / "modules"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    before = set(sys.modules)
    yield folder
    for name in set(sys.modules) - before:
        if getattr(sys.modules[name], "__file__", "") and str(folder) in sys.modules[name].__file__:
            del sys.modules[name]


def _write_pairs(folder: Path, names: list[str], seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for sub in ("LQ", "GT"):
        (folder / sub).mkdir(parents=True)
    for name in names:
        gt = rng.integers(40, 200, (48, 64, 3), dtype=np.uint8)
        lq = np.clip(gt.astype(int) + rng.integers(-25, 26, gt.shape), 0, 255).astype(np.uint8)
        cv2.imwrite(str(folder / "GT" / name), gt)
        cv2.imwrite(str(folder / "LQ" / name), lq)


# ------------------------------------------------------------------------------------------------ a metric
def test_a_metric_added_as_the_page_says_appears_in_the_evaluate_tools_table(module_dir, tmp_path, capsys, monkeypatch):
    (module_dir / "my_metrics.py").write_text(code_blocks("Add a metric", "python")[0])
    try:
        importlib.import_module("my_metrics")
        assert list(METRICS)[-1] == "mae"
        from maskdcpt.models import create_model
        from maskdcpt.models.checkpoint import save_restorer

        # a restorer whose head is zero restores nothing: its output is its input, so the MAE is the input's
        model = create_model("nafnet_tiny")
        model.zero_init_head()
        save_restorer(model, tmp_path / "identity.safetensors", "nafnet_tiny")
        _write_pairs(tmp_path / "set", ["a.png", "b.png"])
        spec = importlib.util.spec_from_file_location("evaluate_tool", ROOT / "tools" / "evaluate.py")
        tool = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(tool)
        monkeypatch.delenv("MASKDCPT_LPIPS_WEIGHTS", raising=False)
        assert tool.main(["--model", str(tmp_path / "identity.safetensors"), "--data", str(tmp_path / "set"),
                          "--out", str(tmp_path / "out"), "--no-niqe", "--device", "cpu"]) == 0
    finally:
        METRICS.pop("mae", None)
    header = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("task"))
    assert header.split()[-1] == "MAE"
    with open(tmp_path / "out" / "per_image.csv") as f:
        rows = {row["image"]: row for row in csv.DictReader(f)}
    for name, row in rows.items():
        lq, gt = (cv2.imread(str(tmp_path / "set" / sub / name)).astype(np.float64) for sub in ("LQ", "GT"))
        assert float(row["mae"]) == pytest.approx(np.abs(lq - gt).mean(), abs=1e-3)
        assert float(row["psnr"]) == pytest.approx(float(row["input_psnr"]), abs=1e-4)  # the identity, indeed
    assert "mae" in json.loads((tmp_path / "out" / "results.json").read_text())["overall"]


# ------------------------------------------------------------------------------------------------ a loss term
def test_a_loss_term_added_as_the_page_says_changes_the_total_loss(module_dir):
    from maskdcpt.training.distributed import DistInfo
    from maskdcpt.training.pretrain import PretrainTask, validate

    weight_field, term = code_blocks("Add a loss term", "python")
    # the page's two edits of maskdcpt/losses/registry.py: the weight, a field of LossConfig (here of a subclass,
    # with a PretrainConfig holding it), and the term, defined among the file's own names
    (module_dir / "toy_loss_config.py").write_text(
        "import dataclasses\n\nfrom maskdcpt.config import ranged\nfrom maskdcpt.losses import registry\n"
        "from maskdcpt.training import pretrain\n\n\n@dataclasses.dataclass\nclass LossConfig(registry.LossConfig):\n"
        f"{weight_field}\n\n@dataclasses.dataclass\nclass PretrainConfig(pretrain.PretrainConfig):\n"
        "    loss: LossConfig = dataclasses.field(default_factory=LossConfig)\n")
    toy = importlib.import_module("toy_loss_config")
    namespace = dict(vars(loss_registry))
    try:
        exec(term, namespace)
        assert list(loss_registry.LOSS_TERMS) == ["rec", "cls", "con", "tv"]
        from maskdcpt.config import load_config

        g = torch.Generator().manual_seed(1)
        batch = {"lq": torch.rand(4, 3, 32, 32, generator=g), "gt": torch.rand(4, 3, 32, 32, generator=g),
                 "type_id": torch.tensor([0, 1, 2, 3]), "index": torch.arange(4)}
        outputs = {}
        for weight in ("0", "0.05"):
            cfg = load_config(toy.PretrainConfig, None, [*TINY_PRETRAIN, f"loss.w_tv={weight}"])  # the page's override
            validate(cfg)
            torch.manual_seed(0)
            task = PretrainTask(cfg, DistInfo())
            outputs[weight] = task.step(task.forward_module, batch, 0).terms
    finally:
        loss_registry.LOSS_TERMS.pop("tv", None)
    off, on = ({k: float(v.detach()) for k, v in outputs[w].items()} for w in ("0", "0.05"))
    assert "loss/tv" not in off and on["loss/tv"] > 0
    for name in ("loss/rec", "loss/cls", "loss/con"):
        assert on[name] == off[name]  # the same model and batch: only the new term differs
    assert on["loss/total"] - off["loss/total"] == pytest.approx(0.05 * on["loss/tv"], rel=1e-5)


# ------------------------------------------------------------------------------------------------ a backbone
def test_the_package_imports_every_module_of_its_folder():
    import maskdcpt.models

    folder = Path(maskdcpt.models.__file__).parent
    assert {f"maskdcpt.models.{f.stem}" for f in folder.glob("*.py") if f.stem != "__init__"} <= set(sys.modules)
    registry_source = Path(model_registry.__file__).read_text()
    assert not re.search(r"^\s*from \. import|^\s*from \.(nafnet|restormer|promptir|swinir)", registry_source, re.M)
    assert {"nafnet_tiny", "restormer_tiny", "promptir_tiny", "swinir_tiny"} <= set(model_registry.list_models())


def test_a_backbone_added_as_the_page_says_pretrains_two_steps_and_finetunes_one(module_dir, tmp_path):
    from maskdcpt.models.checkpoint import load_restorer
    from maskdcpt.training.finetune import load_finetune_config, run_finetuning
    from maskdcpt.training.pretrain import load_pretrain_config, run_pretraining

    (module_dir / "toynet.py").write_text(code_blocks("Add a backbone", "python")[0])
    try:
        importlib.import_module("toynet")  # what the package does for a file in maskdcpt/models/
        assert "toynet" in model_registry.list_models()
        pre = load_pretrain_config(None, [*TINY_PRETRAIN, "model.name=toynet", "train.max_steps=2",
                                          f"run.output_dir={tmp_path}", "run.name=pre"])
        pre_metrics = run_pretraining(pre, resume=False)
        ft = load_finetune_config(None, [*TINY_RUN, "model.name=toynet", f"pretrained={tmp_path / 'pre'}",
                                         "train.max_steps=1", "train.image_every=0", f"run.output_dir={tmp_path}",
                                         "run.name=ft"])
        ft_metrics = run_finetuning(ft, resume=False)
        restorer = load_restorer(tmp_path / "ft")
        with torch.no_grad():
            out = restorer(torch.rand(1, 3, 20, 30))
    finally:
        model_registry._MODELS.pop("toynet", None)
        model_registry._CFGS.pop("toynet", None)
    assert pre_metrics["step"] == 2 and ft_metrics["step"] == 1
    assert (tmp_path / "pre" / "encoder.safetensors").is_file()
    assert type(restorer).__name__ == "ToyNet" and out.shape == (1, 3, 20, 30) and torch.isfinite(out).all()


# ------------------------------------------------------------------------------------------- a degradation type
def test_a_degradation_type_added_as_the_page_says_is_listed_and_classified(module_dir, tmp_path):
    from maskdcpt.training.distributed import DistInfo
    from maskdcpt.training.pretrain import PretrainTask, load_pretrain_config

    (module_dir / "my_vignette.py").write_text(code_blocks("Add a degradation type", "python")[0])
    engine = code_blocks("Add a degradation type", "yaml")[0]
    (tmp_path / "engine.yaml").write_text(engine)
    listed = subprocess.run([sys.executable, str(ROOT / "tools" / "degrade.py"), "--list", "--config",
                             str(tmp_path / "engine.yaml")], capture_output=True, text=True, check=True,
                            env={**run_env(), "PYTHONPATH": f"{module_dir}:{ROOT}"})
    assert listed.stdout.splitlines()[-1] == "19 vignette"

    indented = "".join(f"    {line}\n" for line in engine.splitlines())
    (tmp_path / "pretrain.yaml").write_text(f"data:\n  engine:\n{indented}")  # data.engine of a training config
    cfg = load_pretrain_config(tmp_path / "pretrain.yaml", ["model.name=nafnet_tiny"])
    task = PretrainTask(cfg, DistInfo())
    assert cfg.model.num_classes == 20 and task.class_names()[-1] == "vignette"
    assert task.model.classifier.fc.out_features == 20
    sample = cfg.data.engine.resolve("vignette")
    assert sample.id == 19 and dataclasses.asdict(cfg.data.engine.extra_types["vignette"])["params"] == {"strength": 0.8}
