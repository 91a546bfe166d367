"""LPIPS (Zhang et al., 2018), computed only from weights already on disk — nothing is ever downloaded.

Scale: a distance ≥ 0, lower is more similar, 0 for identical images; restorations in the MaskDCPT tables
score about 0.01–0.3 against their GT (AlexNet variant, ``pyiqa.create_metric('lpips')``'s default).

The metric: both images, mapped from [0, 1] to [−1, 1] and normalised by the fixed per-channel shift
(−0.030, −0.088, −0.188) and scale (0.458, 0.448, 0.450), go through the convolutional trunk of AlexNet
(features after ReLU 1–5) or VGG-16 (relu1_2, relu2_2, relu3_3, relu4_3, relu5_3). Each feature map is
unit-normalised along channels, the squared difference is weighted per channel by a learned non-negative
1×1 linear layer, averaged over space and summed over the five layers.

Weights: ONE file (``.pth`` read weights-only, or ``.safetensors``) given as an argument or by the environment
variable ``MASKDCPT_LPIPS_WEIGHTS``, holding

* the backbone as torchvision names it (``features.N.weight`` / ``.bias``; a full torchvision state_dict is
  fine, the classifier is ignored) or as the ``lpips`` package names it (``net.sliceK.N.weight``), and
* the five linear layers as ``linI.weight`` or ``linI.model.1.weight`` (I = 0…4), each (1, C, 1, 1).

The architecture (AlexNet or VGG-16) is read from the first convolution's kernel size (11 or 3).
:func:`combine_weights` builds such a file from torchvision's backbone file and the ``lpips`` package's
linear-layer file.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Mapping

import torch
import torch.nn as nn

from ..errors import CheckpointError

ENV_VAR = "MASKDCPT_LPIPS_WEIGHTS"

# (end index of each slice in torchvision's `features`, channels of each tapped layer)
_TAPS = {
    "alex": ((2, 5, 8, 10, 12), (64, 192, 384, 256, 256)),
    "vgg": ((4, 9, 16, 23, 30), (64, 128, 256, 512, 512)),
}
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)


class LPIPS(nn.Module):
    """LPIPS distance; ``forward(x, y)`` takes two (B, 3, H, W) images in [0, 1] and returns (B,) distances."""

    def __init__(self, net: str = "alex"):
        super().__init__()
        import torchvision

        if net not in _TAPS:
            raise ValueError(f"LPIPS net must be one of {sorted(_TAPS)}, got {net!r}")
        self.net_name = net
        # Build on the meta device and materialise only the convolutional trunk: the classifier heads
        # (58M / 124M parameters) are never used, and initialising them costs seconds.
        with torch.device("meta"):
            full = torchvision.models.alexnet(weights=None) if net == "alex" else torchvision.models.vgg16(weights=None)
        ends, channels = _TAPS[net]
        self.features = full.features[: ends[-1]].to_empty(device="cpu")
        for layer in self.features:
            if isinstance(layer, nn.Conv2d):
                layer.reset_parameters()  # defined values until real weights are loaded
        self.tap_ends = ends
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in channels)
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False).eval()

    def _taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = ((x * 2 - 1) - self.shift) / self.scale
        outs, start = [], 0
        for end in self.tap_ends:
            x = self.features[start:end](x)
            outs.append(x)
            start = end
        return outs

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.shape != y.shape or x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"LPIPS expects two (B, 3, H, W) images of one shape, got {tuple(x.shape)} and "
                             f"{tuple(y.shape)}")
        total = torch.zeros(x.shape[0], device=x.device, dtype=x.dtype)
        for fx, fy, lin in zip(self._taps(x), self._taps(y), self.lins):
            fx = fx / (fx.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            fy = fy / (fy.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            total = total + lin((fx - fy) ** 2).mean(dim=(1, 2, 3))
        return total


def weights_path(path: str | os.PathLike | None = None) -> Path | None:
    """The configured weights file: ``path`` if given, else ``$MASKDCPT_LPIPS_WEIGHTS``, else None."""
    chosen = path if path is not None else os.environ.get(ENV_VAR) or None
    return Path(chosen) if chosen is not None else None


def unavailable_reason(path: str | os.PathLike | None = None) -> str | None:
    """Why LPIPS cannot run (one sentence), or None when the weights file exists."""
    chosen = weights_path(path)
    if chosen is None:
        return f"no weights configured (set {ENV_VAR} or pass a weights file; nothing is downloaded)"
    if not chosen.is_file():
        return f"weights file {chosen} does not exist"
    return None


def available(path: str | os.PathLike | None = None) -> bool:
    return unavailable_reason(path) is None


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    from ..io import read_state_dict

    return read_state_dict(path)[0]


def _to_model_keys(state: Mapping[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """Map torchvision / lpips-package key names onto :class:`LPIPS`'s (``features.N.*``, ``lins.I.weight``)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if m := re.fullmatch(r"(?:net\.)?features\.(\d+)\.(weight|bias)", key):
            out[f"features.{m[1]}.{m[2]}"] = value
        elif m := re.fullmatch(r"net\.slice\d\.(\d+)\.(weight|bias)", key):
            out[f"features.{m[1]}.{m[2]}"] = value
        elif m := re.fullmatch(r"lins\.(\d)\.weight|lin(\d)(?:\.model\.1)?\.weight", key):
            out[f"lins.{m[1] or m[2]}.weight"] = value
    if "features.0.weight" not in out:
        raise CheckpointError(f"{path}: no LPIPS backbone weights (features.0.weight or net.slice1.0.weight) in the file")
    return out


def load_lpips(path: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> LPIPS:
    """Build LPIPS from the configured weights file; raises ValueError naming the file if it is missing or does
    not hold a complete LPIPS (backbone + five linear layers)."""
    reason = unavailable_reason(path)
    if reason is not None:
        raise CheckpointError(f"LPIPS unavailable: {reason}")
    file = weights_path(path)
    state = _to_model_keys(_read_tensors(file), file)
    kernel = state["features.0.weight"].shape[-1]
    net = {11: "alex", 3: "vgg"}.get(kernel)
    if net is None:
        raise CheckpointError(f"{file}: first convolution has a {kernel}x{kernel} kernel; expected AlexNet (11) or VGG (3)")
    model = LPIPS(net)
    own = model.state_dict()
    missing = sorted(k for k in own if k not in state)
    wrong = sorted(k for k in own if k in state and state[k].shape != own[k].shape)
    if missing or wrong:
        raise CheckpointError(f"{file}: incomplete LPIPS-{net} weights; missing {missing[:8]}, wrong shape {wrong[:8]}")
    model.load_state_dict({k: state[k] for k in own})
    return model.to(device)


def combine_weights(backbone_path: str | os.PathLike, lins_path: str | os.PathLike,
                    out: str | os.PathLike) -> Path:
    """Write one LPIPS weights file (``.safetensors``) from a torchvision backbone checkpoint and the ``lpips``
    package's linear layers (e.g. ``alexnet-owt-7be5be79.pth`` + ``lpips/weights/v0.1/alex.pth``)."""
    from ..io import save_weights

    state = _to_model_keys(_read_tensors(Path(backbone_path)) | _read_tensors(Path(lins_path)), Path(backbone_path))
    return save_weights(state, out, metadata={"format": "maskdcpt-lpips"})
