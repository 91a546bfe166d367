"""Export the backbone of a pre-training run: the weights fine-tuning loads."""
from __future__ import annotations

from pathlib import Path

import yaml

from ..errors import CheckpointError, MissingFileError
from ..io import save_weights
from ..models.checkpoint import ENCODER_FORMAT, RESTORER_FILENAME
from .checkpoint import load_state


def export_encoder(run_dir: str | Path, out: str | Path, checkpoint: str | Path | None = None) -> tuple[Path, int]:
    """Read ``run_dir/config.yaml`` and its last (or the given) checkpoint; write the
    ``backbone.*`` weights, without the prefix, to ``out`` as safetensors."""
    from .pretrain import load_pretrain_config

    run_dir = Path(run_dir)
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise MissingFileError(f"{str(run_dir)!r} is not a pre-training run folder: no config.yaml")
    if (run_dir / RESTORER_FILENAME).is_file() or _is_finetuning_config(config_path):
        raise CheckpointError(
            f"{run_dir} is a fine-tuning run, not a pre-training run: it has no encoder to export. Its restorer is "
            f"{run_dir / RESTORER_FILENAME} (written when it finishes); to fine-tune on from it, give that file to "
            "tools/finetune.py --pretrained")
    cfg = load_pretrain_config(config_path)
    ckpt = Path(checkpoint) if checkpoint else run_dir / "checkpoints" / "last.ckpt"
    if not ckpt.is_file():
        raise MissingFileError(f"no checkpoint at {str(ckpt)!r}")
    full = load_state(ckpt)
    state = full["model"]
    backbone = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    if not backbone:
        raise CheckpointError(f"checkpoint {str(ckpt)!r} holds no backbone.* weights")
    meta = {"format": ENCODER_FORMAT, "model_name": cfg.model.name, "model_kwargs": cfg.model.kwargs,
            "step": int(full["step"])}
    out = Path(out)
    save_weights(backbone, out, meta)
    return out, len(backbone)


def _is_finetuning_config(path: Path) -> bool:
    """A fine-tuning run's config.yaml: it names what it started from (``pretrained``) and has no losses."""
    try:
        saved = yaml.safe_load(path.read_text())
    except yaml.YAMLError:
        return False  # the config loader names the damage
    return isinstance(saved, dict) and "pretrained" in saved and "loss" not in saved


if __name__ == "__main__":  # python -m maskdcpt.training.export: say where the command is instead of doing nothing
    raise SystemExit(f"error: {__spec__.name} is a library module; run python tools/export_encoder.py --help "
                     "(python -m maskdcpt lists every tool)")
