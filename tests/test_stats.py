"""The statistics behind every interval the project reports, on numbers worked out by hand."""
from __future__ import annotations

import math

import numpy as np
import pytest

from maskdcpt.evaluation.stats import bootstrap_interval, paired_difference, summarize, t_interval

T_975_DF2 = 4.302652729911275  # Student's t, 97.5 % quantile, 2 degrees of freedom (tables)
T_975_DF4 = 2.7764451051977987


def test_summary_over_seeds_is_the_t_interval_of_the_mean():
    s = summarize([1.0, 2.0, 3.0])
    assert s["n"] == 3 and s["mean"] == 2.0 and s["sd"] == pytest.approx(1.0)
    half = T_975_DF2 * 1.0 / math.sqrt(3)  # 2.4841...
    assert s["ci"] == pytest.approx([2.0 - half, 2.0 + half])
    assert s["values"] == [1.0, 2.0, 3.0]
    # five values: sd of (2, 4, 4, 4, 6) is sqrt(2)
    lo, hi = t_interval([2, 4, 4, 4, 6])
    assert (lo + hi) / 2 == pytest.approx(4.0) and (hi - lo) / 2 == pytest.approx(T_975_DF4 * math.sqrt(2) / math.sqrt(5))
    # one seed: a mean, no spread, no interval
    one = summarize([0.7])
    assert one["mean"] == 0.7 and one["sd"] is None and one["ci"] is None
    with pytest.raises(ValueError):
        summarize([])


def test_paired_differences_remove_what_the_seed_does_to_both_arms():
    # the seed moves both arms by up to 1 dB; the arm's effect is a steady +0.2 dB
    scratch = {0: 19.0, 1: 20.0, 2: 18.5}
    arm = {0: 19.2, 1: 20.2, 2: 18.7}
    d = paired_difference(arm, scratch)
    assert d["keys"] == [0, 1, 2] and d["mean"] == pytest.approx(0.2)
    assert d["sd"] == pytest.approx(0.0, abs=1e-12) and d["ci"] == pytest.approx([0.2, 0.2])
    assert d["excludes_zero"]
    # unpaired, the same numbers overlap: the seed's spread hides the effect
    a, b = summarize(list(arm.values())), summarize(list(scratch.values()))
    assert a["ci"][0] < b["mean"] < a["ci"][1]
    # differences (0.5, -0.1, 0.2): mean 0.2, sd 0.3, interval includes 0
    d = paired_difference({0: 1.5, 1: 0.9, 2: 1.2}, {0: 1.0, 1: 1.0, 2: 1.0})
    assert d["mean"] == pytest.approx(0.2) and d["sd"] == pytest.approx(0.3)
    assert d["ci"] == pytest.approx([0.2 - T_975_DF2 * 0.3 / math.sqrt(3), 0.2 + T_975_DF2 * 0.3 / math.sqrt(3)])
    assert not d["excludes_zero"]
    # below zero excludes zero too; only shared seeds pair; none shared: None
    d = paired_difference({0: 0.0, 1: -1.0, 2: -0.5, 7: 9.0}, {0: 1.0, 1: 0.1, 2: 0.4})
    assert d["keys"] == [0, 1, 2] and d["ci"][1] < 0 and d["excludes_zero"]
    assert paired_difference({0: 1.0}, {1: 1.0}) is None
    single = paired_difference({0: 1.0}, {0: 0.5})
    assert single["mean"] == 0.5 and single["ci"] is None and not single["excludes_zero"]


def test_bootstrap_keeps_each_task_and_matches_the_normal_interval_on_many_samples():
    # every value of a task alike: every resample gives the same mean of task means, 15
    values = [10.0] * 5 + [20.0] * 3
    groups = [0] * 5 + [1] * 3
    assert bootstrap_interval(values, groups) == pytest.approx((15.0, 15.0))
    # ungrouped, the same values vary with how many of each a resample draws
    lo, hi = bootstrap_interval(values)
    assert lo < 13.75 < hi and hi - lo > 3
    # many samples: close to mean ± 1.96 σ/√n
    x = np.random.default_rng(1).normal(5.0, 2.0, 4000)
    lo, hi = bootstrap_interval(x)
    half = 1.959964 * x.std(ddof=1) / math.sqrt(x.size)
    assert lo == pytest.approx(x.mean() - half, abs=0.01) and hi == pytest.approx(x.mean() + half, abs=0.01)
    # a 0/1 accuracy of 30 %: its interval holds it, within the binomial's spread
    correct = [1] * 30 + [0] * 70
    lo, hi = bootstrap_interval(correct)
    assert lo < 0.3 < hi and (hi - lo) / 2 == pytest.approx(1.96 * math.sqrt(0.3 * 0.7 / 100), abs=0.015)
    # deterministic for a seed, different for another
    assert bootstrap_interval(x[:50], seed=3) == bootstrap_interval(x[:50], seed=3) != bootstrap_interval(x[:50], seed=4)
    with pytest.raises(ValueError):
        bootstrap_interval([1.0, 2.0], [0])


def test_validations_carry_bootstrap_intervals_over_the_held_out_crops(tmp_path):
    """val.jsonl: PSNR and gain (per task and averaged), the classifier's top-1 and the reconstruction's PSNR each
    with a 95 % interval over the crops that holds the figure; at step 0 the restorer is the identity, so its gain
    is 0 with no spread at all."""
    import json

    from maskdcpt.training.finetune import load_finetune_config, run_finetuning
    from maskdcpt.training.pretrain import load_pretrain_config, run_pretraining

    tiny = [f"run.output_dir={tmp_path}", "train.progress=false", "train.threads=1", "data.crop_size=32",
            "data.crops_per_image=2", "train.batch_size=4", "train.max_steps=2", "train.log_every=0",
            "train.image_every=0", "train.checkpoint_every=0", "val.samples_per_task=4", "val.crop_size=32"]
    run_finetuning(load_finetune_config(None, [*tiny, "run.name=ft", "val.every=2"]), resume=False)
    lines = [json.loads(line) for line in (tmp_path / "ft" / "val.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [0, 2]
    assert lines[0]["gain_ci95"] == [0.0, 0.0] and lines[0]["psnr_ci95"][0] < lines[0]["psnr_ci95"][1]
    for line in lines:
        for where in (line, *line["per_task"].values()):
            assert where["psnr_ci95"][0] <= where["psnr"] <= where["psnr_ci95"][1]
            gain = where["psnr"] - where["psnr_input"]
            assert where["gain_ci95"][0] - 1e-9 <= gain <= where["gain_ci95"][1] + 1e-9
    run_pretraining(load_pretrain_config(None, [*tiny, "run.name=pre", "val.every=2",
                                                "data.engine={types: [noise, haze, jpeg]}"]), resume=False)
    last = json.loads((tmp_path / "pre" / "val.jsonl").read_text().splitlines()[-1])
    lo, hi = last["top1_ci95"]
    assert 0 <= lo <= last["top1"] <= hi <= 1
    lo, hi = last["rec_psnr_visible_ci95"]
    assert lo < last["rec_psnr_visible"] < hi  # the mean of the crops' PSNRs lies inside their bootstrap interval
