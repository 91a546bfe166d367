"""MaskDCPT: a masked backbone, the degradation classifier on its taps and a reconstruction head, in one forward.

One step: pad the LQ image to the mask patch multiple, draw a keep map per sample (or take the one given), run the
sparse-aware backbone on the masked input, classify the degradation from its taps and project the final features
to an image. Losses, optimisers and data live elsewhere; this module only computes.

The reconstruction is the restorer's own output on what the backbone saw: ``forward_head(features, visible
input)``, the output projection plus the global residual of the masked input. The projection therefore learns the
residual the dense restorer adds to its input in fine-tuning, and a restorer built from pre-trained weights starts
where pre-training left it (measured: without the residual, the transferred restorer outputs about GT + input, a
brightened image far below the input's own PSNR). Hidden pixels carry no input and no features (the sparse
semantics), so only visible pixels can be reconstructed: pre-training's default ``rec_region`` is ``visible``.
``residual=False`` gives the releases' analysis head (projection only).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from degradations import NUM_TYPES

from .classifier import DegradationClassifier
from .masking import pad_to_multiple, random_keep_map
from .registry import create_model

__all__ = ["MaskDCPT", "MaskDCPTOutput", "ReconstructionHead", "build_maskdcpt"]


@dataclass
class MaskDCPTOutput:
    """reconstruction (B, 3, H, W) at the input size; logits (B, K); features (B, D) the classifier's pooled vector
    (for a contrastive loss); keep (B, 1, h, w) in {0, 1}, the keep map used, on the patch grid of the padded input
    (h = ceil(H / patch_size)); patch_size the pixels per keep cell."""

    reconstruction: torch.Tensor
    logits: torch.Tensor
    features: torch.Tensor
    keep: torch.Tensor
    patch_size: int

    def visible_pixels(self) -> torch.Tensor:
        """The keep map at pixel resolution, cropped to the reconstruction: (B, 1, H, W) in {0, 1}."""
        h, w = self.reconstruction.shape[-2:]
        return _pixel_keep(self.keep, self.patch_size)[..., :h, :w]


class ReconstructionHead(nn.Module):
    """The backbone's own output projection, (B, C, H, W) → (B, 3, H, W), plus the visible input when ``residual``.

    It holds no parameters of its own (the projection stays in the backbone, so the whole pre-trained restorer
    transfers to fine-tuning); it keeps a reference to the backbone's ``forward_head`` without registering the
    backbone a second time.
    """

    def __init__(self, backbone: nn.Module, residual: bool = True):
        super().__init__()
        self._project = backbone.forward_head
        self.residual = residual

    def forward(self, feat: torch.Tensor, visible_input: torch.Tensor) -> torch.Tensor:
        """feat: the backbone's final features; visible_input (B, 3, H, W): the input with hidden pixels zeroed."""
        return self._project(feat, visible_input if self.residual else None)


class MaskDCPT(nn.Module):
    """Masked degradation-classification pre-training model.

    ``backbone``: a masked backbone (``create_model(name, masked=True)``); ``classifier``: takes its taps;
    ``head``: maps the final features to an image (default ``ReconstructionHead``). ``mask_ratio`` in [0, 1): the
    share of patches hidden (0 = the "no mask" ablation: all visible). ``patch_size``: pixels per mask cell, a
    multiple of the backbone's stride (default: the stride).
    """

    def __init__(
        self,
        backbone: nn.Module,
        classifier: nn.Module,
        head: nn.Module | None = None,
        mask_ratio: float = 0.5,
        patch_size: int | None = None,
        rec_residual: bool = True,
        sparse_classifier: bool = True,
    ):
        super().__init__()
        stride = int(backbone.stride)
        patch_size = stride if patch_size is None else int(patch_size)
        if patch_size <= 0 or patch_size % stride:
            raise ValueError(
                f"patch_size {patch_size} must be a positive multiple of the backbone stride {stride}: otherwise a "
                "bottleneck pixel covers visible and hidden pixels at once and hidden content leaks into visible features"
            )
        if not 0.0 <= mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must lie in [0, 1), got {mask_ratio}")
        if mask_ratio > 0 and not getattr(backbone, "masked", False):
            raise ValueError("the backbone was built dense (masked=False); masking needs create_model(name, masked=True)")
        self.backbone = backbone
        self.classifier = classifier
        self.head = head if head is not None else ReconstructionHead(backbone, residual=rec_residual)
        self.mask_ratio = float(mask_ratio)
        self.patch_size = patch_size
        # the classifier sees the keep map: statistics and pooling over visible positions only
        self.sparse_classifier = sparse_classifier

    def draw_keep(self, batch: int, grid: tuple[int, int], device: torch.device,
                  generator: torch.Generator | None = None) -> torch.Tensor:
        """A fresh keep map (B, 1, h, w), different per sample; all ones when ``mask_ratio`` is 0."""
        if self.mask_ratio == 0:
            return torch.ones(batch, 1, *grid, device=device)
        return random_keep_map(batch, grid, self.mask_ratio, generator=generator, device=device)

    def forward(self, lq: torch.Tensor, keep: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> MaskDCPTOutput:
        """lq (B, 3, H, W) in [0, 1], any size; keep (B, 1, ceil(H/P), ceil(W/P)) in {0, 1} or None to draw one."""
        batch = lq.shape[0]
        padded, (h, w) = pad_to_multiple(lq, self.patch_size)
        grid = (padded.shape[-2] // self.patch_size, padded.shape[-1] // self.patch_size)
        if keep is None:
            keep = self.draw_keep(batch, grid, lq.device, generator)
        elif tuple(keep.shape) != (batch, 1, *grid):
            raise ValueError(f"keep map must have shape ({batch}, 1, {grid[0]}, {grid[1]}) for input "
                             f"{tuple(lq.shape)} and patch size {self.patch_size}, got {tuple(keep.shape)}")
        keep = keep.to(device=lq.device, dtype=torch.float32)
        factor = self.patch_size // self.backbone.stride
        backbone_keep = keep if factor == 1 else F.interpolate(keep, scale_factor=factor, mode="nearest")
        if self.mask_ratio == 0 and bool((keep == 1).all()):
            backbone_keep = None  # nothing hidden: run the dense path (same function, fewer multiplies)
        feat, taps = self.backbone.forward_features(padded, backbone_keep)
        logits, pooled = self.classifier(taps, backbone_keep if self.sparse_classifier else None)
        visible = padded if backbone_keep is None else padded * _pixel_keep(keep, self.patch_size)
        reconstruction = self.head(feat, visible)[..., :h, :w]
        return MaskDCPTOutput(reconstruction, logits, pooled, keep, self.patch_size)


def _pixel_keep(keep: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, 1, h, w) patch keep map → (B, 1, h·P, w·P) at pixel resolution."""
    return keep.repeat_interleave(patch_size, dim=2).repeat_interleave(patch_size, dim=3)


def build_maskdcpt(
    model_name: str,
    num_classes: int = NUM_TYPES,  # the degradation registry's built-in types (the pre-training passes its engine's)
    mask_ratio: float = 0.5,
    patch_size: int | None = None,
    rec_residual: bool = True,
    classifier_norm: str = "batch",
    classifier_blocks: int = 2,
    sparse_classifier: bool = True,
    **overrides,
) -> MaskDCPT:
    """A masked ``model_name`` backbone (constructor ``overrides`` applied), a classifier on its taps (``"batch"``
    or the release's ``"layer"`` norm, see :mod:`.classifier`; ``classifier_blocks`` bottlenecks per level, the
    releases' 2) and the default reconstruction head."""
    backbone = create_model(model_name, masked=True, **overrides)
    classifier = DegradationClassifier(backbone.tap_dims, num_classes=num_classes, num_res_blocks=classifier_blocks,
                                       tap_downsample=backbone.tap_downsample, norm=classifier_norm)
    return MaskDCPT(backbone, classifier, mask_ratio=mask_ratio, patch_size=patch_size, rec_residual=rec_residual,
                    sparse_classifier=sparse_classifier)
