"""Restoring images of any size with a dense restorer: stride padding, and overlapping tiles for big images.

Tiling keeps memory bounded by the tile size. Tiles overlap by ``overlap`` pixels and are blended with a
window that, on each side shared with another tile, is 0 for the first ``overlap // 4`` pixels, rises as a
raised cosine over the middle of the overlap and is 1 after it; sides on the image border keep weight 1.
Outputs are the weighted sum divided by the summed weights, so the weights sum to one everywhere.

Why the zero margin: a tile's output is wrong only near its interior edges, within the network's receptive
field radius r of them. Discarding the first ``overlap // 4`` pixels means that for a **local** network with
r ≤ overlap // 4 every pixel that carries weight is computed with its full context, so tiled output equals
untiled output up to float rounding of the blend. Networks with global operations (NAFNet's channel attention
pools the whole input; Restormer's transposed attention; PromptIR's prompts) see different statistics per
tile, so there tiling is an approximation, usually close for tiles much larger than the structures in the image.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
import cv2
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError, DataError, MissingFileError
from ..io import atomic_write

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def _model_device(model: nn.Module) -> torch.device:
    param = next(iter(model.parameters()), None)
    return param.device if param is not None else torch.device("cpu")


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad (B, C, H, W) at the bottom/right to multiples of ``multiple``: reflect, or replicate where the image
    is too small to reflect."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return x
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode)


def blend_ramp(length: int, overlap: int, interior_start: bool, interior_end: bool) -> torch.Tensor:
    """1-D blending weights (length,) for one tile side by side: see the module docstring."""
    w = torch.ones(length, dtype=torch.float64)
    margin = overlap // 4
    band = overlap - 2 * margin
    if overlap == 0 or band <= 0:
        return w
    d = torch.arange(length, dtype=torch.float64)
    # distance d from an interior edge: 0 below the margin, raised cosine over the band, 1 after it
    rise = 0.5 - 0.5 * torch.cos(math.pi * ((d - margin + 0.5) / band).clamp(0, 1))
    rise[d < margin] = 0.0
    if interior_start:
        w = w * rise
    if interior_end:
        w = w * rise.flip(0)
    return w


def tile_starts(size: int, tile: int, step: int) -> list[int]:
    """Start offsets of tiles of ``tile`` pixels covering ``size`` pixels; the last tile ends at ``size``."""
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile, step))
    return starts + [size - tile]


@torch.inference_mode()
def restore_image(model: nn.Module, img: torch.Tensor, tile: int | None = None, overlap: int = 32,
                  device: str | torch.device | None = None) -> torch.Tensor:
    """Restore ``img`` (3, H, W) or (B, 3, H, W) in [0, 1] of any size; returns the same shape, clamped to
    [0, 1], float32 on ``img``'s device.

    The image is padded to the model's ``stride`` (reflect) and the output cropped back. With ``tile`` set,
    the padded image is processed in overlapping tiles of ``tile`` pixels (rounded down to the stride) that
    are run one at a time on ``device`` (default: the model's) and blended on ``img``'s device.
    """
    channels = 3 + int(getattr(model, "prior_channels", 0))  # cat(lq, prior) for prior-conditioned models
    if img.ndim not in (3, 4) or img.shape[-3] != channels:
        raise ValueError(f"expected an image ({channels}, H, W) or batch (B, {channels}, H, W), got shape {tuple(img.shape)}")
    single = img.ndim == 3
    x = img[None] if single else img
    device = torch.device(device) if device is not None else _model_device(model)
    stride = int(getattr(model, "stride", 1))
    h, w = x.shape[-2:]
    padded = pad_to_multiple(x.float(), stride)
    if tile is None:
        out = model(padded.to(device)).to(x.device).float()
    else:
        out = _restore_tiled(model, padded, tile, overlap, stride, device)
    out = out[..., :h, :w].clamp(0, 1)
    return out[0] if single else out


def _restore_tiled(model: nn.Module, x: torch.Tensor, tile: int, overlap: int, stride: int,
                   device: torch.device) -> torch.Tensor:
    if overlap < 0:
        raise ConfigError(f"overlap must be >= 0, got {overlap}")
    tile = (tile // stride) * stride
    if tile < max(stride, 2 * overlap):
        raise ConfigError(f"tile must be at least max(stride={stride}, 2*overlap={2 * overlap}) after rounding "
                         f"to the stride, got {tile}")
    # steps are multiples of the stride so windowed models see the same window grid as untiled
    step = ((tile - overlap) // stride) * stride
    if step == 0:
        raise ConfigError(f"tile {tile} minus overlap {overlap} must leave at least one stride ({stride}) of step")
    b, _, hp, wp = x.shape
    out = torch.zeros(b, 3, hp, wp, dtype=torch.float32, device=x.device)
    weight = torch.zeros(1, 1, hp, wp, dtype=torch.float32, device=x.device)
    th, tw = min(tile, hp), min(tile, wp)
    for top in tile_starts(hp, th, step):
        for left in tile_starts(wp, tw, step):
            patch = x[..., top:top + th, left:left + tw].to(device)
            restored = model(patch).to(x.device).float()
            wy = blend_ramp(th, overlap, top > 0, top + th < hp)
            wx = blend_ramp(tw, overlap, left > 0, left + tw < wp)
            window = (wy[:, None] * wx[None, :]).to(torch.float32).to(x.device)
            out[..., top:top + th, left:left + tw] += restored * window
            weight[..., top:top + th, left:left + tw] += window
    return out / weight


# ------------------------------------------------------------------------------------------------ files
def read_rgb(path: str | os.PathLike) -> tuple[torch.Tensor, int]:
    """Read an image file → ((3, H, W) float32 in [0, 1], bit depth 8 or 16). Grey → 3 channels; alpha is
    composited on white (:func:`maskdcpt.data.decode.read_image`)."""
    from maskdcpt.data.decode import SkipImage, read_image, to_float

    try:
        array = read_image(str(path))
    except SkipImage as err:
        raise DataError(f"cannot read image {path}: {err.reason}") from None
    bits = 16 if array.dtype == np.uint16 else 8
    return torch.from_numpy(to_float(array)).permute(2, 0, 1).contiguous(), bits


def write_rgb(path: str | os.PathLike, img: torch.Tensor, bits: int = 8) -> None:
    """Write a (3, H, W) [0, 1] image; 16-bit only where the format keeps it (PNG, TIFF), else 8-bit."""
    path = Path(path)
    if bits == 16 and path.suffix.lower() not in (".png", ".tif", ".tiff"):
        bits = 8
    peak = 65535.0 if bits == 16 else 255.0
    array = (img.detach().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * peak).round()
    array = array.astype(np.uint16 if bits == 16 else np.uint8)
    try:
        ok, encoded = cv2.imencode(path.suffix, cv2.cvtColor(array, cv2.COLOR_RGB2BGR))
    except cv2.error:
        ok = False
    if not ok:
        raise DataError(f"cannot write image {path}: OpenCV has no encoder for {path.suffix!r}")
    # written by Python, not by cv2.imwrite: a read-only folder or a full disk then says so (an OSError
    # naming the path) instead of a bare False; atomically, so that a full disk leaves no cut-off image
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(encoded.tobytes()))


def list_images(folder: str | os.PathLike, recursive: bool = False) -> list[Path]:
    """Image files directly in ``folder`` (or anywhere below it with ``recursive``), sorted by path."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MissingFileError(f"image folder {folder} does not exist")
    found = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in found if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def with_prior(model: nn.Module, lq: torch.Tensor, lq_path: str | os.PathLike, prior: str | os.PathLike | None) -> torch.Tensor:
    """``lq`` (3, H, W), or cat(lq, its prior image) for a model fine-tuned with generative priors."""
    if not getattr(model, "prior_channels", 0):
        return lq
    if prior is None:
        raise DataError("this restorer takes a generative prior as extra input: give the prior folder (--prior DIR)")
    from maskdcpt.data.paired import find_prior

    image, _ = read_rgb(find_prior(prior, lq_path))
    if image.shape != lq.shape:
        raise DataError(f"prior of {lq_path} is {tuple(image.shape[1:])}, the image {tuple(lq.shape[1:])}")
    return torch.cat([lq, image], dim=0)


def restore_path(model: nn.Module, input: str | os.PathLike, output: str | os.PathLike, tile: int | None = None,
                 overlap: int = 32, device: str | torch.device | None = None, progress: bool = True,
                 prior: str | os.PathLike | None = None, skipped: list[tuple[Path, str]] | None = None) -> list[Path]:
    """Restore an image file or every image of a folder; returns the written paths. ``prior``: the
    folder of generative restorations (matched by name) for a prior-conditioned model.

    A folder (or an image to a path without an image suffix) writes ``output/<same name>``; an image to an image
    path writes that path. 16-bit PNG/TIFF inputs give 16-bit outputs, others 8-bit.

    ``skipped``: given a list, an input that cannot be read (or lacks its prior) is appended to it as
    (path, reason) and the others are still restored; without one, the first such input raises.
    """
    from tqdm import tqdm

    input, output = Path(input), Path(output)
    if input.is_dir():
        sources = list_images(input)
        if not sources:
            raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {input}")
        targets = [output / p.name for p in sources]
    elif input.is_file():
        sources = [input]
        targets = [output if output.suffix.lower() in IMAGE_SUFFIXES else output / input.name]
    else:
        raise MissingFileError(f"input {input} does not exist")
    folder = targets[0].parent
    if folder.exists() and not folder.is_dir():
        raise DataError(f"output {folder} is an existing file; give a folder (or an image path for one input image)")
    folder.mkdir(parents=True, exist_ok=True)  # a folder that cannot be made fails now, before any work
    if getattr(model, "prior_channels", 0) and prior is None:
        raise DataError("this restorer takes a generative prior as extra input: give the prior folder (--prior DIR)")
    written: list[Path] = []
    for source, target in tqdm(list(zip(sources, targets)), desc="restore", unit="img", disable=not progress):
        try:
            img, bits = read_rgb(source)
            img = with_prior(model, img, source, prior)
        except DataError as err:
            if skipped is None:
                raise
            skipped.append((source, str(err)))
            continue
        write_rgb(target, restore_image(model, img, tile=tile, overlap=overlap, device=device), bits)
        written.append(target)
    return written


if __name__ == "__main__":  # python -m maskdcpt.evaluation.restore: say where the command is instead of doing nothing
    raise SystemExit(f"error: {__spec__.name} is a library module; run python tools/restore.py --help "
                     "(python -m maskdcpt lists every tool)")
