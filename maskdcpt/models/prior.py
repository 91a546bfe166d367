"""Generative priors as extra input channels.

A restorer can read, beside the degraded image, the output of a generative model for the same
scene (a GPT-4o-style restoration, a diffusion sample) as extra channels. The stem convolution
is widened from 3 to 3 + k input channels: its pre-trained weights stay on the first 3, the new
ones start at zero, so at step 0 the widened model computes exactly what the plain one did.

The widened model takes one tensor (B, 3 + k, H, W) = cat(lq, prior): a forward pre-hook routes
the first 3 channels through the backbone as usual (padding, global residual) and hands the
prior to the stem, padded the same way. State-dict names are unchanged; only the stem's weight
grows to (C, 3 + k, kh, kw).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

IMAGE_CHANNELS = 3


def stem_name(model: nn.Module) -> str:
    """The convolution reading the image, as the model's registry config names it (NAFNet ``intro``,
    Restormer/PromptIR ``patch_embed.proj``, SwinIR ``conv_first``)."""
    cfg = getattr(model, "default_cfg", None)
    if cfg is None:
        raise ValueError(f"{type(model).__name__} has no default_cfg naming its stem: build it with create_model(name)")
    stem = model.get_submodule(cfg.stem)
    if not isinstance(stem, nn.Conv2d) or stem.in_channels != IMAGE_CHANNELS:
        raise ValueError(f"{type(model).__name__}.{cfg.stem} is not a convolution over {IMAGE_CHANNELS} image channels")
    return cfg.stem


class PriorStem(nn.Conv2d):
    """A stem convolution over cat(image, prior); the prior arrives through ``self.prior``."""

    def __init__(self, conv: nn.Conv2d, extra_channels: int):
        super().__init__(
            conv.in_channels + extra_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
            conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode,
            device=conv.weight.device, dtype=conv.weight.dtype,
        )
        with torch.no_grad():
            self.weight.zero_()
            self.weight[:, : conv.in_channels] = conv.weight  # the new channels start at zero
            if conv.bias is not None:
                self.bias.copy_(conv.bias)
        self.image_channels = conv.in_channels
        self.prior: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if self.prior is None:
            raise RuntimeError("a prior-conditioned model needs its input as cat(lq, prior) along channels")
        prior = self.prior.to(dtype=x.dtype)
        ph, pw = x.shape[-2] - prior.shape[-2], x.shape[-1] - prior.shape[-1]
        if ph or pw:  # the backbone padded the image right/bottom; pad the prior alike
            prior = F.pad(prior, (0, pw, 0, ph), mode="reflect" if ph < prior.shape[-2] and pw < prior.shape[-1] else "replicate")
        return super().forward(torch.cat([x, prior], dim=1))


def _split_input(model: nn.Module, args: tuple) -> tuple:
    x, *rest = args
    stem: PriorStem = model.get_submodule(model.prior_stem_name)
    expected = IMAGE_CHANNELS + model.prior_channels
    if x.shape[1] != expected:
        raise ValueError(f"expected cat(lq, prior) with {expected} channels, got {x.shape[1]}")
    stem.prior = x[:, IMAGE_CHANNELS:]
    return (x[:, :IMAGE_CHANNELS], *rest)


def add_prior_channels(model: nn.Module, extra_channels: int) -> nn.Module:
    """Widen ``model``'s stem in place for ``extra_channels`` prior channels; returns the model."""
    if extra_channels <= 0:
        return model
    if getattr(model, "prior_channels", 0):
        raise ValueError("the model already takes prior channels")
    name = stem_name(model)
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, PriorStem(getattr(parent, attr), extra_channels))
    model.prior_channels = int(extra_channels)
    model.prior_stem_name = name
    model.register_forward_pre_hook(_split_input)
    return model


def widen_stem_weights(model: nn.Module, state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The loader's hook for widened stems: plain (3-channel) weights for a model with prior channels.

    The checkpoint's stem weight (C, 3, kh, kw) goes into the first 3 input channels of the model's
    current one (C, 3 + k, kh, kw); the prior channels keep what they hold (zero when fresh). Returns
    the state with that entry widened and the names that are new by design; a model without prior
    channels, or a checkpoint already widened, passes unchanged."""
    if not getattr(model, "prior_channels", 0):
        return state, []
    name = f"{model.prior_stem_name}.weight"
    own = model.state_dict()[name]
    plain = state.get(name)
    if plain is None or plain.shape == own.shape or plain.shape != (own.shape[0], IMAGE_CHANNELS, *own.shape[2:]):
        return state, []
    widened = own.clone()
    widened[:, :IMAGE_CHANNELS] = plain
    return {**state, name: widened}, [f"{name}[:, {IMAGE_CHANNELS}:] (prior channels, zero-initialised)"]
