"""Validation in the loop and what it guards: the held-out split never meets training, validation numbers are
reproducible, the classification path learns a small task, and a restorer made from pre-trained weights starts no
worse than the identity."""
import json
import os

import cv2
import numpy as np
import pytest
import torch

from maskdcpt.data.default import HELD_OUT_PHOTOS, TRAIN_PHOTOS, default_index, held_out_paths
from maskdcpt.data.loader import build_train_loader
from maskdcpt.data.mixture import build_mixture
from maskdcpt.data.validation import ValTask, build_validation_set
from maskdcpt.losses import restoration_loss
from maskdcpt.training.distributed import DistInfo
from maskdcpt.training.finetune import FinetuneTask, load_finetune_config, run_finetuning
from maskdcpt.training.pretrain import PretrainTask, load_pretrain_config, run_pretraining

from conftest import TINY_RUN


def _thumbnail(path: str) -> np.ndarray:
    image = cv2.imread(path, cv2.IMREAD_GRAYSCALE).astype(np.float32) / 255
    return cv2.resize(image, (32, 32), interpolation=cv2.INTER_AREA)


def test_the_held_out_photos_never_meet_training():
    assert HELD_OUT_PHOTOS and not set(HELD_OUT_PHOTOS) & set(TRAIN_PHOTOS)
    held = {os.path.realpath(p) for p in held_out_paths()}
    assert len(held) == len(HELD_OUT_PHOTOS)
    # what the default training runs actually read: every source of their mixtures
    served = set()
    for data in (load_pretrain_config().data, load_finetune_config().data):
        for source in build_mixture(data, seed=0).dataset.sources:
            served |= {os.path.realpath(source.index.path(i)) for i in range(len(source.index))}
    index = default_index()
    assert served == {os.path.realpath(index.path(i)) for i in range(len(index))}
    assert not served & held
    # nor does a near-duplicate (another shot or a crop of the same scene) sit on the training side
    for h in held:
        distances = [float(np.abs(_thumbnail(h) - _thumbnail(t)).mean()) for t in served]
        assert min(distances) > 0.05, (h, min(distances))


def _val_set(seed=0, crop=48):
    cfg = load_pretrain_config(None, ["val.samples_per_task=3", f"val.crop_size={crop}", f"val.seed={seed}"])
    tasks = [ValTask(type=t) for t in ("noise", "haze", "jpeg")]
    return build_validation_set(cfg.val, tasks, cfg.data.engine, cfg.data.crop_size)


def test_the_validation_set_is_a_fixed_function_of_its_seed():
    a, b, other = _val_set(), _val_set(), _val_set(seed=1)
    assert len(a) == 9 and [s.type_id for s in a.samples] == [0] * 3 + [6] * 3 + [5] * 3
    for x, y in zip(a.samples, b.samples):
        assert torch.equal(x.lq, y.lq) and torch.equal(x.gt, y.gt) and x.level == y.level
    assert not torch.equal(a.samples[0].lq, other.samples[0].lq)
    assert all(0.2 <= s.level <= 1.0 for s in a.samples)
    # the held-out crops come from the held-out photos only: each GT crop is found in one of them
    photos = [cv2.cvtColor(cv2.imread(p), cv2.COLOR_BGR2RGB) for p in held_out_paths()]
    for s in a.samples[:3]:
        crop = (s.gt.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        # (matchTemplate sums in float: a perfect match is 0 up to rounding, another place is far off)
        assert min(cv2.minMaxLoc(cv2.matchTemplate(p, crop, cv2.TM_SQDIFF))[0] for p in photos) < 0.01 * crop.size


def test_validation_numbers_are_reproducible_across_tasks_and_calls():
    overrides = ["val.samples_per_task=2", "val.crop_size=32", "data.engine={types: [noise, haze, jpeg]}"]
    cfg = load_pretrain_config(None, overrides)
    torch.manual_seed(0)
    first = PretrainTask(cfg, DistInfo())
    second = PretrainTask(cfg, DistInfo())
    second.model.load_state_dict(first.model.state_dict())
    a, b = first.validate(0), first.validate(0)
    assert a == b == second.validate(0)
    assert set(a) >= {"top1", "top1_unmasked", "knn_top1", "per_type", "confusion", "rec_psnr_visible",
                      "rec_psnr_hidden", "input_psnr_visible"}
    # the zero-initialised head reconstructs the visible input exactly
    assert a["rec_psnr_visible"] == pytest.approx(a["input_psnr_visible"], abs=1e-3)
    assert np.asarray(a["confusion"]).sum() == 6


def test_the_classification_path_learns_three_clearly_different_types(tmp_path):
    """Masked NAFNet taps → sparse-aware classifier, the real data path, 3 types, 100 steps: held-out top-1
    must leave chance (1/3) far behind. Fails if taps, masking, normalisation, loss or rates break learning."""
    cfg = load_pretrain_config(None, [
        f"run.output_dir={tmp_path}", "run.name=three", "train.progress=false", "train.max_steps=100",
        "train.batch_size=32", "data.crop_size=32", "data.crops_per_image=4", "train.log_every=0",
        "optim.lr=2e-3", "optim.classifier_lr=5e-3",
        "train.image_every=0", "train.checkpoint_every=0", "val.every=100", "val.samples_per_task=8", "val.crop_size=64",
        "data.engine={types: [noise, low_light, motion_blur], level_range: [0.3, 1.0]}", "val.level_range=[0.3, 1.0]",
    ])
    run_pretraining(cfg, resume=False)
    lines = [json.loads(line) for line in (tmp_path / "three" / "val.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [0, 100]
    last = lines[-1]
    assert last["top1"] >= 0.8, last["per_type"]
    assert min(last["per_type"].values()) >= 0.5, last["per_type"]


def test_a_restorer_from_pretraining_starts_no_worse_than_the_identity(tmp_path):
    """Step 0 of fine-tuning from a (briefly) pre-trained run: held-out PSNR within 0.1 dB of the input's or
    better, averaged over the 5D tasks, and a first loss no higher than the identity-initialised scratch run's."""
    pre = load_pretrain_config(None, [f"run.output_dir={tmp_path}", "run.name=pre", *TINY_RUN, "train.max_steps=30",
                                      "train.log_every=0", "train.image_every=0", "val.every=0"])
    run_pretraining(pre, resume=False)
    common = [f"run.output_dir={tmp_path}", *TINY_RUN, "train.max_steps=1", "val.samples_per_task=3",
              "train.image_every=0"]
    ft = load_finetune_config(None, [*common, "run.name=ft", f"pretrained={tmp_path / 'pre'}"])
    run_finetuning(ft, resume=False)
    step0 = json.loads((tmp_path / "ft" / "val.jsonl").read_text().splitlines()[0])
    assert step0["step"] == 0
    assert step0["psnr"] >= step0["psnr_input"] - 0.1, step0["per_task"]

    scratch = load_finetune_config(None, [*common, "run.name=scratch"])
    batch = next(iter(build_train_loader(ft.data, seed=ft.train.seed, batch_size=ft.train.batch_size)))
    losses = {}
    for name, cfg in (("pretrained", ft), ("scratch", scratch)):
        task = FinetuneTask(cfg, DistInfo())
        with torch.no_grad():
            losses[name] = float(task.step(task.model, batch, 0).loss)
    identity = float(restoration_loss(batch["lq"], batch["gt"], scratch.loss)[0])  # the loss of the input itself
    assert losses["scratch"] == pytest.approx(identity, rel=1e-5)
    assert losses["pretrained"] <= losses["scratch"], losses
