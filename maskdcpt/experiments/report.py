"""The transfer experiment's results from its run folders: ``results.json``, the arms × tasks table (Markdown
and text, Δ against ``scratch``), and the held-out validation curves as a PNG.

Every number comes from what the trainers wrote: the fine-tuning run's ``val.jsonl`` (its last line, at the
last step: EMA weights on the held-out set) and the pre-training run's ``val.jsonl`` (the classifier's held-out
top-1); wall time from the arm's ``timing.json``.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

from ..config import to_dict
from .plan import TIMING_FILE, ArmPlan, ExperimentFolder, TransferConfig, plan_arms, run_finished


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def arm_result(plan: ArmPlan) -> dict[str, Any]:
    """One arm's entry of ``results.json``. Figures only once its fine-tuning has finished; the curve so far
    always."""
    steps = plan.steps
    finetune_val = read_jsonl(plan.finetune_dir / "val.jsonl")
    done = run_finished(plan.finetune_dir, steps["finetune"])
    status = "done" if done else ("unfinished" if plan.folder.exists() else "not started")
    result: dict[str, Any] = {"status": status, "about": plan.arm.about, "steps": steps,
                              "step": finetune_val[-1]["step"] if finetune_val else 0}
    if done and finetune_val:
        last = finetune_val[-1]
        for key in ("psnr", "ssim", "psnr_input", "ssim_input", "gain"):
            result[key] = last[key]
        result["per_task"] = last["per_task"]
    if plan.pretrain is not None:
        pretrain_val = read_jsonl(plan.pretrain_dir / "val.jsonl")
        if run_finished(plan.pretrain_dir, steps["pretrain"]) and pretrain_val:
            last = pretrain_val[-1]
            result["top1"] = last["top1"]
            for key in ("top1_unmasked", "knn_top1", "per_type", "rec_psnr_visible", "input_psnr_visible"):
                if key in last:
                    result[key] = last[key]
    timing_path = plan.folder / TIMING_FILE
    timing = json.loads(timing_path.read_text()) if timing_path.is_file() else {}
    result["wall_s"] = round(sum(timing.values()), 1)
    result["wall_s_by_phase"] = timing
    result["curve"] = [[line["step"], line["psnr"]] for line in finetune_val]
    result["run_dirs"] = {"pretrain": str(plan.pretrain_dir) if plan.pretrain is not None else None,
                          "finetune": str(plan.finetune_dir)}
    return result


def collect_results(cfg: TransferConfig, plans: dict[str, ArmPlan], statuses: dict[str, tuple[str, str]],
                    commands: Sequence[str]) -> dict[str, Any]:
    """``results.json``: the experiment, the input baseline (the held-out LQ's own PSNR/SSIM), the arms (with Δ
    against scratch where both are done) and the commands."""
    arms: dict[str, dict[str, Any]] = {}
    for name in cfg.arms:
        result = arm_result(plans[name])
        if result["status"] != "done" and name in statuses:
            result["status"], result["reason"] = statuses[name]
        arms[name] = result
    done = [a for a in arms.values() if a["status"] == "done"]
    tasks = list(done[0]["per_task"]) if done else []
    baseline = None
    if done:  # every arm validates on the very same held-out samples: any one gives the input's figures
        ref = done[0]
        baseline = {"psnr": ref["psnr_input"], "ssim": ref["ssim_input"],
                    "per_task": {t: {"psnr": v["psnr_input"], "ssim": v["ssim_input"]} for t, v in ref["per_task"].items()}}
    scratch = arms.get("scratch")
    if scratch is not None and scratch["status"] == "done":
        for arm in (a for a in done if a is not scratch):
            arm["delta_psnr"] = arm["psnr"] - scratch["psnr"]
            arm["delta_ssim"] = arm["ssim"] - scratch["ssim"]
            arm["delta_per_task"] = {t: arm["per_task"][t]["psnr"] - scratch["per_task"][t]["psnr"] for t in tasks}
    return {
        "experiment": {k: v for k, v in to_dict(cfg).items() if k != "launch"},
        "held_out": _describe_held_out(cfg),
        "tasks": tasks,
        "input": baseline,
        "arms": arms,
        "commands": {"experiment": list(commands), "arms": {n: plans[n].commands() for n in cfg.arms}},
        "written": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def _describe_held_out(cfg: TransferConfig) -> str:
    if cfg.val.paired:
        return "paired folders " + ", ".join(f"{p.name} ({p.lq})" for p in cfg.val.paired)
    crop = cfg.val.crop_size or cfg.crop_size
    source = cfg.val.photos or "the embedded held-out photos"
    return f"{cfg.val.samples_per_task} crops of {crop}² per task from {source} (val.seed {cfg.val.seed})"


# --------------------------------------------------------------------------------------------- tables


def _fmt(value: float | None, digits: int = 2, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _cell(arm: dict[str, Any], task: str | None) -> str:
    if arm["status"] != "done":
        return "—"
    if task is None:
        value, delta = arm["psnr"], arm.get("delta_psnr")
    else:
        value, delta = arm["per_task"][task]["psnr"], arm.get("delta_per_task", {}).get(task)
    return _fmt(value) + (f" ({_fmt(delta, signed=True)})" if delta is not None else "")


def _wall(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def table_rows(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the arms × tasks table: PSNR per task and averaged (Δ vs scratch in brackets), SSIM, the
    classifier's held-out top-1 (masked as in pre-training) and kNN top-1, steps P+F, wall time, state."""
    tasks = results["tasks"]
    header = ["arm", *tasks, "avg PSNR", "SSIM", "top-1", "kNN top-1", "steps P+F", "wall", "state"]
    rows = []
    baseline = results["input"]
    if baseline is not None:
        rows.append(["input", *(_fmt(baseline["per_task"][t]["psnr"]) for t in tasks), _fmt(baseline["psnr"]),
                     _fmt(baseline["ssim"], 4), "", "", "", "", ""])
    for name, arm in results["arms"].items():
        state = arm["status"] if arm["status"] == "done" else f"{arm['status']} at step {arm['step']}"
        if arm.get("reason"):
            state += f": {arm['reason']}"
        steps = arm["steps"]
        rows.append([
            name, *(_cell(arm, t) for t in tasks), _cell(arm, None),
            _fmt(arm.get("ssim"), 4) if arm["status"] == "done" else "—",
            _fmt(arm.get("top1"), 3) if "top1" in arm else "",
            _fmt(arm.get("knn_top1"), 3) if "knn_top1" in arm else "",
            f"{steps['pretrain']}+{steps['finetune']}", _wall(arm["wall_s"]), state,
        ])
    return header, rows


def text_table(results: dict[str, Any]) -> str:
    header, rows = table_rows(results)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown(results: dict[str, Any], curves: str | None) -> str:
    exp = results["experiment"]
    P, F = exp["pretrain_steps"], exp["finetune_steps"]
    header, rows = table_rows(results)
    lines = [
        "# Does pre-training help? Transfer experiment",
        "",
        f"Backbone `{exp['model']}`{' ' + json.dumps(exp['model_kwargs']) if exp['model_kwargs'] else ''}, "
        f"{exp['crop_size']}² crops, global batch {exp['batch_size']}, seed {exp['seed']}. Pre-trained arms: P = {P} "
        f"steps of pre-training, then F = {F} steps of fine-tuning; `scratch`: F steps from random initialisation; "
        f"`scratch_equal_total`: P + F = {P + F} steps from random initialisation (its cosine spans them all).",
        "",
        f"Held-out evaluation: the last validation of each fine-tuning run (EMA weights) on {results['held_out']}: "
        "PSNR in dB per task and averaged over tasks, with Δ against `scratch` in brackets; SSIM averaged over tasks. "
        "`input`: the degraded input's own figures. top-1 / kNN top-1: the pre-trained classifier and its pooled "
        "features on the held-out pre-training validation (masked as in pre-training, all types).",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
        *("| " + " | ".join(row) + " |" for row in rows),
        "",
    ]
    notes = []
    if "no_cls" in results["arms"]:
        notes.append("`no_cls` trains no classifier (loss.w_cls=0): its top-1 is that of an untrained head; its kNN "
                     "top-1 still measures the features.")
    if "scratch_equal_total" in results["arms"]:
        notes.append(f"`scratch_equal_total`'s curve is its whole run (steps 0–{P + F}); the others end at step {F}.")
    not_done = [n for n, a in results["arms"].items() if a["status"] != "done"]
    if not_done:
        notes.append(f"Not finished: {', '.join(not_done)} (state column); rerun the same command to resume them.")
    if notes:
        lines += [*(f"- {n}" for n in notes), ""]
    if curves:
        lines += [f"![Average held-out PSNR against fine-tuning step]({curves})", ""]
    lines += ["## Commands", "", "The experiment (rerunning it skips finished arms and resumes the others):", "",
              "```bash", *(results["commands"]["experiment"] or ["# (not recorded)"]), "```", "",
              "<details><summary>Each arm's runs as stand-alone commands</summary>", "", "```bash"]
    for name, commands in results["commands"]["arms"].items():
        lines += [f"# {name}", *commands, ""]
    lines[-1:] = ["```", "", "</details>", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------- curves


def plot_curves(results: dict[str, Any], path: Path) -> Path | None:
    """Average held-out PSNR against fine-tuning step, one line per arm (None when no arm has a curve)."""
    curves = {n: a["curve"] for n, a in results["arms"].items() if a["curve"]}
    if not curves:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    exp = results["experiment"]
    P, F = exp["pretrain_steps"], exp["finetune_steps"]
    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    for name, curve in curves.items():
        steps, psnr = zip(*curve)
        label = f"{name} (whole P+F = {P + F}-step run)" if name == "scratch_equal_total" else name
        style = "--" if name.startswith("scratch") else "-"
        ax.plot(steps, psnr, style, marker="o", markersize=3, label=label)
    if results["input"] is not None:
        ax.axhline(results["input"]["psnr"], color="gray", linestyle=":", label="input (degraded)")
    if "scratch_equal_total" in curves:
        ax.axvline(F, color="gray", linewidth=0.8, linestyle="-.", label=f"F = {F}")
    ax.set_xlabel("fine-tuning step")
    ax.set_ylabel("held-out PSNR, average over tasks (dB)")
    ax.set_title(f"{exp['model']}: fine-tuning from each arm's start (EMA weights)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------------------------- writing it


def write_report(out: str | Path, statuses: dict[str, tuple[str, str]] | None = None, echo: bool = True) -> dict[str, Any]:
    """``results.json``, ``report.md`` and ``curves.png`` of the experiment in ``out``, from its run folders;
    prints the table. Arms that have not finished are listed with their state (``statuses``: the job array's
    ``{arm: (status, reason)}`` where there is one, see ``cluster.arm_statuses``)."""
    folder = ExperimentFolder(out)
    cfg = folder.load()
    plans = plan_arms(cfg, folder.path)
    results = collect_results(cfg, plans, statuses or {}, folder.commands())
    curves = plot_curves(results, folder.path / "curves.png")
    (folder.path / "report.md").write_text(markdown(results, curves.name if curves else None))
    # last, and atomically: a complete results.json means the report is complete
    tmp = folder.path / "results.json.tmp"
    tmp.write_text(json.dumps(results, indent=2))
    os.replace(tmp, folder.path / "results.json")
    if echo:
        print(text_table(results), flush=True)
        print(f"\nwritten: {folder.path / 'results.json'}, {folder.path / 'report.md'}"
              + (f", {curves}" if curves else ""), flush=True)
    return results
