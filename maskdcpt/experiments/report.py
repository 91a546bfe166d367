"""The transfer experiment's results from its run folders: ``results.json``, the tables (Markdown and text) and the
held-out validation curves as a PNG.

Every number comes from what the trainers wrote: each fine-tuning run's ``val.jsonl`` (its last line, at the last
step: EMA weights on the held-out set) and each pre-training run's ``val.jsonl`` (the classifier's held-out top-1);
wall time from each (arm, seed)'s ``timing.json``. Over seeds, each arm gets the mean, the standard deviation and a
95 % t-interval; against ``scratch`` and ``scratch_equal_total`` the differences are paired by seed
(:mod:`maskdcpt.evaluation.stats`), and a difference whose interval excludes zero is marked.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

from ..config import to_dict
from ..evaluation.stats import LEVEL, paired_difference, summarize
from .plan import (TIMING_FILE, ArmPlan, ExperimentFolder, TransferConfig, member_name, plan_arms, run_finished,
                   unseen_tasks)

# The arms every other arm is compared with, seed by seed.
BASELINES = ("scratch", "scratch_equal_total")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# --------------------------------------------------------------------------------------------- one run


def arm_result(plan: ArmPlan) -> dict[str, Any]:
    """One (arm, seed)'s result (its ``metrics.json``): per fine-tuning the last held-out validation once it has
    finished and the curve so far; the pre-trained classifier's figures; wall time."""
    steps = plan.steps
    finetunes = {}
    for name, ft in plan.finetunes.items():
        val = read_jsonl(ft.dir / "val.jsonl")
        done = run_finished(ft.dir, ft.steps)
        entry: dict[str, Any] = {"status": "done" if done else ("unfinished" if ft.dir.exists() else "not started"),
                                 "step": val[-1]["step"] if val else 0}
        if done and val:
            last = val[-1]
            for key in ("psnr", "ssim", "psnr_input", "ssim_input", "gain", "psnr_ci95", "gain_ci95", "per_task"):
                if key in last:
                    entry[key] = last[key]
        entry["curve"] = [[line["step"], line["psnr"]] for line in val]
        entry["run_dir"] = str(ft.dir)
        finetunes[name] = entry
    states = {f["status"] for f in finetunes.values()}
    status = "done" if states == {"done"} else ("not started" if states == {"not started"} and not plan.folder.exists()
                                                 else "unfinished")
    result: dict[str, Any] = {"arm": plan.name, "seed": plan.seed, "status": status, "about": plan.arm.about,
                              "steps": steps, "step": min(f["step"] for f in finetunes.values()),
                              "finetunes": finetunes}
    if plan.pretrain is not None:
        pretrain_val = read_jsonl(plan.pretrain_dir / "val.jsonl")
        if run_finished(plan.pretrain_dir, steps["pretrain"]) and pretrain_val:
            last = pretrain_val[-1]
            for key in ("top1", "top1_ci95", "top1_unmasked", "knn_top1", "per_type", "rec_psnr_visible",
                        "input_psnr_visible"):
                if key in last:
                    result[key] = last[key]
        result["pretrain_dir"] = str(plan.pretrain_dir)
    timing_path = plan.folder / TIMING_FILE
    timing = json.loads(timing_path.read_text()) if timing_path.is_file() else {}
    result["wall_s"] = round(sum(timing.values()), 1)
    result["wall_s_by_phase"] = timing
    return result


# --------------------------------------------------------------------------------------------- over seeds


def _task_figures(run: dict[str, Any], tasks: Sequence[str]) -> float:
    return sum(run["per_task"][t]["psnr"] for t in tasks) / len(tasks)


def _finetune_summary(name: str, plans: dict[tuple[str, int], ArmPlan], runs: dict[tuple[str, int], dict],
                      cfg: TransferConfig) -> dict[str, Any]:
    """One fine-tuning's figures over seeds: per arm the summaries, the paired differences against the baselines,
    the mean curve; the input's own figures; which tasks fine-tuning never trained on."""
    done = {key: r["finetunes"][name] for key, r in runs.items() if r["finetunes"][name]["status"] == "done"}
    any_plan = next(iter(plans.values()))
    unseen = unseen_tasks(any_plan.finetunes[name].config)
    tasks = list(next(iter(done.values()))["per_task"]) if done else []
    seen = [t for t in tasks if t not in unseen]
    out: dict[str, Any] = {"tasks": tasks, "unseen_tasks": [t for t in tasks if t in unseen], "input": None, "arms": {}}
    if not done:
        return out
    ref = next(iter(done.values()))  # every run validates on the very same held-out samples
    out["input"] = {"psnr": ref["psnr_input"], "ssim": ref["ssim_input"],
                    "per_task": {t: {"psnr": v["psnr_input"], "ssim": v["ssim_input"]} for t, v in ref["per_task"].items()}}
    if unseen:
        for group, names in (("seen_psnr", seen), ("unseen_psnr", out["unseen_tasks"])):
            out["input"][group] = sum(ref["per_task"][t]["psnr_input"] for t in names) / len(names)

    def figures(arm: str) -> dict[str, dict[Any, float]]:
        """{figure: {seed: value}} of the arm's finished runs."""
        by_seed = {seed: r for (a, seed), r in done.items() if a == arm}
        figs: dict[str, dict[Any, float]] = {
            "psnr": {s: r["psnr"] for s, r in by_seed.items()},
            "ssim": {s: r["ssim"] for s, r in by_seed.items()},
            "gain": {s: r["psnr"] - r["psnr_input"] for s, r in by_seed.items()},
        }
        for t in tasks:
            figs[f"task:{t}"] = {s: r["per_task"][t]["psnr"] for s, r in by_seed.items()}
        if unseen:
            figs["seen_psnr"] = {s: _task_figures(r, seen) for s, r in by_seed.items()}
            figs["unseen_psnr"] = {s: _task_figures(r, out["unseen_tasks"]) for s, r in by_seed.items()}
        return figs

    all_figures = {arm: figures(arm) for arm in cfg.arms}
    for arm in cfg.arms:
        figs = all_figures[arm]
        if not figs["psnr"]:
            out["arms"][arm] = {"n": 0}
            continue
        entry: dict[str, Any] = {"n": len(figs["psnr"]), "seeds": list(figs["psnr"])}
        for key in ("psnr", "ssim", "gain", "seen_psnr", "unseen_psnr"):
            if key in figs:
                entry[key] = summarize(list(figs[key].values()))
        entry["per_task"] = {t: summarize(list(figs[f"task:{t}"].values())) for t in tasks}
        entry["below_input"] = [t for t in tasks
                                if entry["per_task"][t]["mean"] <= out["input"]["per_task"][t]["psnr"]]
        entry["vs"] = {}
        for base in BASELINES:
            if base == arm or base not in all_figures or not all_figures[base]["psnr"]:
                continue
            other = all_figures[base]
            vs = {key: paired_difference(figs[key], other[key]) for key in ("psnr", "ssim", "seen_psnr", "unseen_psnr")
                  if key in figs}
            vs["per_task"] = {t: paired_difference(figs[f"task:{t}"], other[f"task:{t}"]) for t in tasks}
            entry["vs"][base] = vs
        entry["curve"] = _mean_curve([r["curve"] for (a, _), r in done.items() if a == arm])
        out["arms"][arm] = entry
    return out


def _mean_curve(curves: list[list[list[float]]]) -> dict[str, Any]:
    """The mean validation curve over seeds at the steps every seed validated, with its t-interval per step."""
    steps = sorted(set.intersection(*(set(step for step, _ in c) for c in curves)))
    at = [dict((step, psnr) for step, psnr in c) for c in curves]
    means, bands = [], []
    for step in steps:
        s = summarize([c[step] for c in at])
        means.append(s["mean"])
        bands.append(s["ci"])
    return {"step": steps, "mean": means, "ci": bands if len(curves) > 1 else None}


def _across_finetunes(finetunes: dict[str, dict[str, Any]], runs: dict[tuple[str, int], dict],
                      cfg: TransferConfig) -> dict[str, Any] | None:
    """With several fine-tunings (the amortised regime): per arm the mean over them of the average PSNR, per seed,
    and its paired differences; None with one fine-tuning."""
    if len(finetunes) < 2:
        return None
    per_arm: dict[str, dict[Any, float]] = {}
    for arm in cfg.arms:
        values = {}
        for seed in cfg.seeds_of(arm):
            run = runs.get((arm, seed))
            if run is not None and all(f["status"] == "done" for f in run["finetunes"].values()):
                values[seed] = sum(f["psnr"] for f in run["finetunes"].values()) / len(run["finetunes"])
        per_arm[arm] = values
    out: dict[str, Any] = {}
    for arm, values in per_arm.items():
        if not values:
            continue
        out[arm] = {"psnr": summarize(list(values.values())),
                    "vs": {b: paired_difference(values, per_arm[b]) for b in BASELINES
                           if b != arm and per_arm.get(b)}}
    return out


def collect_results(cfg: TransferConfig, plans: dict[tuple[str, int], ArmPlan], statuses: dict[str, tuple[str, str]],
                    commands: Sequence[str]) -> dict[str, Any]:
    """``results.json``: the experiment; per arm its runs (one per seed) and pre-training figures over seeds; per
    fine-tuning the figures over seeds, paired differences and mean curves; the commands."""
    runs = {}
    for key, plan in plans.items():
        run = arm_result(plan)
        member = member_name(*key)
        if run["status"] != "done" and member in statuses:
            run["status"], run["reason"] = statuses[member]
        runs[key] = run
    arms: dict[str, dict[str, Any]] = {}
    for arm in cfg.arms:
        mine = {seed: runs[arm, seed] for seed in cfg.seeds_of(arm)}
        first = next(iter(mine.values()))
        states = [r["status"] for r in mine.values()]
        entry: dict[str, Any] = {
            "status": "done" if set(states) == {"done"} else next(s for s in states if s != "done"),
            "about": first["about"], "steps": first["steps"], "seeds": list(mine),
            "step": min(r["step"] for r in mine.values()),
            "seeds_done": [s for s, r in mine.items() if r["status"] == "done"],
            "wall_s": round(sum(r["wall_s"] for r in mine.values()), 1),
            "runs": {str(s): r for s, r in mine.items()},
        }
        reasons = [f"seed {s}: {r['reason']}" for s, r in mine.items() if r.get("reason")]
        if reasons:
            entry["reason"] = "; ".join(reasons)
        for key in ("top1", "knn_top1", "top1_unmasked"):
            values = [r[key] for r in mine.values() if key in r]
            if values:
                entry[key] = summarize(values)
        arms[arm] = entry
    finetunes = {name: _finetune_summary(name, plans, runs, cfg) for name in cfg.finetune_names}
    return {
        "experiment": {k: v for k, v in to_dict(cfg).items() if k != "launch"},
        "held_out": _describe_held_out(cfg),
        "level": LEVEL,
        "seeds": cfg.all_seeds,
        "arms": arms,
        "finetunes": finetunes,
        "across_finetunes": _across_finetunes(finetunes, runs, cfg),
        "commands": {"experiment": list(commands),
                     "runs": {member_name(*key): plan.commands() for key, plan in plans.items()}},
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


def _with_interval(summary: dict[str, Any] | None, digits: int = 2, signed: bool = False, mark: bool = False) -> str:
    """``mean [lo, hi]`` (just the mean with one seed); ``mark``: bold when the interval excludes zero."""
    if not summary:
        return "—"
    text = _fmt(summary["mean"], digits, signed)
    if summary.get("ci"):
        lo, hi = summary["ci"]
        text += f" [{_fmt(lo, digits, signed)}, {_fmt(hi, digits, signed)}]"
    if mark and summary.get("excludes_zero"):
        text = f"**{text}**"
    return text


def _wall(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def _state(arm: dict[str, Any]) -> str:
    if arm["status"] == "done":
        return "done"
    state = f"{len(arm['seeds_done'])}/{len(arm['seeds'])} seeds done; {arm['status']} at step {arm['step']}"
    return state + (f": {arm['reason']}" if arm.get("reason") else "")


def table_rows(results: dict[str, Any], finetune: str) -> tuple[list[str], list[list[str]]]:
    """Header and rows of one fine-tuning's table: average PSNR (mean [95 % interval] over seeds), the paired
    differences against the baselines, PSNR per task (mean; ↓ below the input), SSIM, the classifier's held-out
    top-1 and kNN top-1, steps, wall time over all seeds, state."""
    ft = results["finetunes"][finetune]
    tasks, unseen = ft["tasks"], ft["unseen_tasks"]
    groups = ["trained tasks", "unseen tasks"] if unseen else []
    header = ["arm", "seeds", "avg PSNR", *groups, *(f"Δ vs {b}" for b in BASELINES if b in results["arms"]),
              *(f"{t} (unseen)" if t in unseen else t for t in tasks), "SSIM", "top-1", "kNN top-1", "steps P+F",
              "wall", "state"]
    rows = []
    baseline = ft["input"]
    if baseline is not None:
        rows.append(["input", "", _fmt(baseline["psnr"]),
                     *([_fmt(baseline["seen_psnr"]), _fmt(baseline["unseen_psnr"])] if unseen else []),
                     *("" for b in BASELINES if b in results["arms"]),
                     *(_fmt(baseline["per_task"][t]["psnr"]) for t in tasks), _fmt(baseline["ssim"], 4),
                     "", "", "", "", ""])
    for name, arm in results["arms"].items():
        fig = ft["arms"].get(name, {"n": 0})
        steps = arm["steps"]
        if fig["n"]:
            cells = [_with_interval(fig["psnr"]),
                     *([_with_interval(fig["seen_psnr"]), _with_interval(fig["unseen_psnr"])] if unseen else []),
                     *(_with_interval(fig["vs"][b]["psnr"], signed=True, mark=True) if b in fig["vs"] else ""
                       for b in BASELINES if b in results["arms"]),
                     *(_fmt(fig["per_task"][t]["mean"]) + (" ↓" if t in fig["below_input"] else "") for t in tasks),
                     _fmt(fig["ssim"]["mean"], 4)]
        else:
            cells = ["—"] * (2 + len(groups) + sum(b in results["arms"] for b in BASELINES) + len(tasks))
        rows.append([name, str(fig["n"]), *cells,
                     _fmt(arm["top1"]["mean"], 3) if "top1" in arm else "",
                     _fmt(arm["knn_top1"]["mean"], 3) if "knn_top1" in arm else "",
                     f"{steps['pretrain']}+{steps['finetune']}", _wall(arm["wall_s"]), _state(arm)])
    return header, rows


def paired_rows(results: dict[str, Any], finetune: str, base: str) -> tuple[list[str], list[list[str]]]:
    """Per task, each arm's paired difference against ``base`` (mean [95 % interval] over seeds, bold where it
    excludes zero)."""
    ft = results["finetunes"][finetune]
    header = ["arm", "average", *ft["tasks"]]
    rows = []
    for name, fig in ft["arms"].items():
        vs = fig.get("vs", {}).get(base) if fig.get("n") else None
        if vs is None:
            continue
        rows.append([name, _with_interval(vs["psnr"], signed=True, mark=True),
                     *(_with_interval(vs["per_task"][t], signed=True, mark=True) for t in ft["tasks"])])
    return header, rows


def _markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|",
            *("| " + " | ".join(row) + " |" for row in rows)]


def text_table(results: dict[str, Any]) -> str:
    parts = []
    for name in results["finetunes"]:
        header, rows = table_rows(results, name)
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in [header, *rows]]
        lines.insert(1, "  ".join("-" * w for w in widths))
        title = [f"fine-tuning {name!r}:"] if len(results["finetunes"]) > 1 else []
        parts.append("\n".join([*title, *lines]))
    return "\n\n".join(parts)


def markdown(results: dict[str, Any], curves: str | None) -> str:
    exp = results["experiment"]
    P, F = exp["pretrain_steps"], exp["finetune_steps"]
    seeds = results["seeds"]
    K = len(results["finetunes"])
    equal_total = F + round(P / K)
    lines = [
        "# Does pre-training help? Transfer experiment",
        "",
        f"Backbone `{exp['model']}`{' ' + json.dumps(exp['model_kwargs']) if exp['model_kwargs'] else ''}, "
        f"{exp['crop_size']}² crops, global batch {exp['batch_size']}, seeds {', '.join(map(str, seeds))} (each arm "
        f"once per seed: initialisation, data order, masks). Pre-trained arms: P = {P} steps of pre-training, then "
        f"F = {F} steps of fine-tuning; `scratch`: F steps from random initialisation; `scratch_equal_total`: "
        f"{equal_total} steps from random initialisation (P{'/' + str(K) if K > 1 else ''} + F: the same compute"
        f"{', the pre-training shared by the ' + str(K) + ' fine-tunings' if K > 1 else ''}; its cosine spans them "
        "all)." + (f" Fine-tuning trains on {len(exp['finetune_photos'])} photos only "
                   f"({', '.join(exp['finetune_photos'])}); pre-training on all the training photos."
                   if exp.get("finetune_photos") else ""),
        "",
        f"Held-out evaluation: the last validation of each fine-tuning run (EMA weights) on {results['held_out']}: "
        "PSNR in dB per task and averaged over tasks, each the mean over seeds; the average with its 95 % t-interval "
        "over seeds in brackets. Δ: the difference to `scratch` / `scratch_equal_total` paired by seed, mean [95 % "
        "interval]; **bold** where the interval excludes zero. ↓: the mean over seeds is below the input's own "
        "PSNR. top-1 / kNN top-1: the pre-trained classifier and its pooled features on the held-out pre-training "
        "validation (masked as in pre-training, all types; mean over seeds).",
        "",
    ]
    for name, ft in results["finetunes"].items():
        if K > 1:
            lines += [f"## Fine-tuning `{name}`", ""]
        if ft["unseen_tasks"]:
            lines += [f"Unseen tasks (types this fine-tuning never trains on): {', '.join(ft['unseen_tasks'])}.", ""]
        lines += [*_markdown_table(*table_rows(results, name)), ""]
        for base in BASELINES:
            header, rows = paired_rows(results, name, base)
            if rows:
                lines += [f"Per task, paired by seed, against `{base}` (dB):", "", *_markdown_table(header, rows), ""]
    across = results.get("across_finetunes")
    if across:
        lines += [f"## All {K} fine-tunings together", "",
                  "The mean over the fine-tunings of each one's average PSNR, per seed; Δ paired by seed.", ""]
        header = ["arm", "mean avg PSNR", *(f"Δ vs {b}" for b in BASELINES)]
        rows = [[arm, _with_interval(v["psnr"]),
                 *(_with_interval(v["vs"].get(b), signed=True, mark=True) if v["vs"].get(b) else "" for b in BASELINES)]
                for arm, v in across.items()]
        lines += [*_markdown_table(header, rows), ""]
    notes = []
    if len(seeds) < 2:
        notes.append("One seed: no interval; a difference of a few tenths of a dB may be the seed's doing.")
    if "no_cls" in results["arms"]:
        notes.append("`no_cls` trains no classifier (loss.w_cls=0): its top-1 is that of an untrained head; its kNN "
                     "top-1 still measures the features.")
    if "scratch_equal_total" in results["arms"]:
        notes.append(f"`scratch_equal_total`'s curve is its whole run (steps 0–{equal_total}); the others end at "
                     f"step {F}.")
    not_done = [n for n, a in results["arms"].items() if a["status"] != "done"]
    if not_done:
        notes.append(f"Not finished: {', '.join(not_done)} (state column); rerun the same command to resume them.")
    if notes:
        lines += [*(f"- {n}" for n in notes), ""]
    if curves:
        lines += [f"![Average held-out PSNR against fine-tuning step]({curves})", ""]
    lines += ["## Commands", "", "The experiment (rerunning it skips finished runs and resumes the others):", "",
              "```bash", *(results["commands"]["experiment"] or ["# (not recorded)"]), "```", "",
              "<details><summary>Each run as a stand-alone command</summary>", "", "```bash"]
    for name, commands in results["commands"]["runs"].items():
        lines += [f"# {name}", *commands, ""]
    lines[-1:] = ["```", "", "</details>", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------- curves


def plot_curves(results: dict[str, Any], path: Path) -> Path | None:
    """Average held-out PSNR against fine-tuning step: per arm the mean over seeds with its 95 % band, one panel
    per fine-tuning (None when no arm has finished a run)."""
    panels = {n: ft for n, ft in results["finetunes"].items() if any(a.get("n") for a in ft["arms"].values())}
    if not panels:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    exp = results["experiment"]
    F = exp["finetune_steps"]
    fig, axes = plt.subplots(1, len(panels), figsize=(8 * len(panels), 5), dpi=120, squeeze=False)
    for ax, (name, ft) in zip(axes[0], panels.items()):
        for arm, entry in ft["arms"].items():
            if not entry.get("n"):
                continue
            curve = entry["curve"]
            label = f"{arm} (n = {entry['n']})" + (" (whole run)" if arm == "scratch_equal_total" else "")
            style = "--" if arm.startswith("scratch") else "-"
            line, = ax.plot(curve["step"], curve["mean"], style, marker="o", markersize=3, label=label)
            if curve["ci"]:
                lo, hi = zip(*curve["ci"])
                ax.fill_between(curve["step"], lo, hi, color=line.get_color(), alpha=0.15, linewidth=0)
        if ft["input"] is not None:
            ax.axhline(ft["input"]["psnr"], color="gray", linestyle=":", label="input (degraded)")
        if "scratch_equal_total" in ft["arms"]:
            ax.axvline(F, color="gray", linewidth=0.8, linestyle="-.", label=f"F = {F}")
        ax.set_xlabel("fine-tuning step")
        ax.set_ylabel("held-out PSNR, average over tasks (dB)")
        title = f"{exp['model']}: mean over seeds, 95 % band (EMA weights)"
        ax.set_title(title if len(panels) == 1 else f"{name}: {title}", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------------------------- writing it


def write_report(out: str | Path, statuses: dict[str, tuple[str, str]] | None = None, echo: bool = True) -> dict[str, Any]:
    """``results.json``, ``report.md`` and ``curves.png`` of the experiment in ``out``, from its run folders;
    prints the table. Runs that have not finished are listed with their state (``statuses``: the job array's
    ``{member: (status, reason)}`` where there is one, see ``cluster.arm_statuses``)."""
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
