"""``tools/degrade.py``: degrade a folder of photos with chosen types and levels; labels and a contact sheet.

    python tools/degrade.py --list [--config ENGINE.yaml]
    python tools/degrade.py [INPUT] OUTPUT --types all --levels 4 --seed 0 [--sheet sheet.png] [--crop 256]
    python tools/degrade.py OUTPUT --config configs/engine/uir19_plus.yaml --sheet sheet.png

``--config`` reads an engine config (the keys of :class:`EngineConfig`: ``types``, ``params``,
``extra_types``, …), or a training config whose ``data.engine`` holds one; its extra types join the list,
the labels and the sheet with ids after the 19, and ``--types`` defaults to the config's selection.

Levels: ``--levels K`` gives K evenly spaced levels from 0 (mildest) to 1 (harshest) inclusive, so a
sheet spans the whole range each type can produce; K = 1 gives the middle level 0.5. Level 0 is still a
(mild) degradation, never the clean image; the sheet shows the clean image in its first column.
Image i and type t are seeded by (seed, i, t), the same at every level: a row of the sheet shows one
degradation instance growing more severe, and re-running reproduces every file.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import yaml
from tqdm import tqdm

from .config import EngineConfig
from .engine import DegradationEngine
from .image import read_rgb, to_uint8, write_png
from .photos import sample_photos
from .sheet import Tile, contact_sheet

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def load_engine_config(path: str | None) -> EngineConfig:
    """The engine config of an engine YAML file, or of a training config's ``data.engine``; defaults without a path."""
    if path is None:
        return EngineConfig()
    if not os.path.isfile(path):
        raise ValueError(f"config file {path!r} does not exist")
    try:
        with open(path) as f:
            data = yaml.safe_load(f) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"config file {path!r}: invalid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ValueError(f"config file {path!r} must hold a mapping at the top level")
    if "data" in data and isinstance(data["data"], dict):  # a training config
        data = data["data"].get("engine") or {}
    try:
        return EngineConfig.from_dict(data)
    except ValueError as err:
        raise ValueError(f"{err} (in {path})") from None


def list_types(config: EngineConfig | None = None) -> str:
    """"id name" per line: the 19, then the config's extra types."""
    names = (config or EngineConfig()).label_names
    return "\n".join(f"{i} {name}" for i, name in enumerate(names))


def parse_types(text: str | None, config: EngineConfig | None = None) -> list[str]:
    """"all" or a comma-separated list of names or ids → type names in id order (ValueError if unknown);
    None: the config's selection."""
    config = config or EngineConfig()
    if text is None:
        return list(config.type_names)
    if text.strip() == "all":
        return list(config.label_names)
    names = []
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        names.append(config.resolve(int(item) if item.isdigit() else item).name)
    if not names:
        raise ValueError(f"--types: no type given in {text!r}")
    return sorted(set(names), key=lambda n: config.resolve(n).id)


def level_grid(count: int) -> list[float]:
    if count < 1:
        raise ValueError(f"--levels must be at least 1, got {count}")
    return [0.5] if count == 1 else [float(v) for v in np.linspace(0.0, 1.0, count)]


def load_inputs(folder: str | None, crop: int) -> list[tuple[str, np.ndarray]]:
    """(stem, uint8 RGB) for every image in ``folder`` (sorted), for one image file, or the bundled sample photos."""
    if folder is None:
        images = sample_photos()
    elif os.path.isfile(folder):
        if not folder.lower().endswith(IMAGE_EXTENSIONS):
            raise ValueError(f"input {folder!r} is neither a folder nor an image ({', '.join(IMAGE_EXTENSIONS)})")
        image = read_rgb(folder)
        if image is None:
            raise ValueError(f"cannot read image {folder!r}")
        images = [(os.path.splitext(os.path.basename(folder))[0], image)]
    else:
        if not os.path.isdir(folder):
            raise ValueError(f"input {folder!r} does not exist (give a folder of images or one image)")
        images = []
        for name in sorted(os.listdir(folder)):
            if name.lower().endswith(IMAGE_EXTENSIONS):
                image = read_rgb(os.path.join(folder, name))
                if image is None:
                    raise ValueError(f"cannot read image {os.path.join(folder, name)!r}")
                images.append((os.path.splitext(name)[0], image))
        if not images:
            raise ValueError(f"input folder {folder!r} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    if crop < 0:
        raise ValueError(f"--crop must be >= 0, got {crop}")
    if crop:
        images = [(stem, _centre_crop(img, crop, stem)) for stem, img in images]
    return images


def _centre_crop(image: np.ndarray, side: int, stem: str) -> np.ndarray:
    """Centre crop to side×side, or to the largest square that fits when the image is smaller."""
    h, w = image.shape[:2]
    side = min(side, h, w)
    y, x = (h - side) // 2, (w - side) // 2
    return image[y : y + side, x : x + side]


def run(args: argparse.Namespace) -> int:
    config = load_engine_config(args.config)
    names = parse_types(args.types, config)
    levels = level_grid(args.levels)
    images = load_inputs(args.input, args.crop)
    os.makedirs(args.output, exist_ok=True)
    if args.sheet:  # its folder now, not after every image is written
        sheet_dir = os.path.dirname(os.path.abspath(args.sheet))
        if os.path.exists(sheet_dir) and not os.path.isdir(sheet_dir):
            raise ValueError(f"--sheet: {sheet_dir} is a file, not a folder")
        os.makedirs(sheet_dir, exist_ok=True)
    engine = DegradationEngine(config)  # apply() takes any of its types, selected or not
    sheet_rows: list[list[Tile]] = []
    progress = tqdm(total=len(images) * len(names) * len(levels), desc="degrade", unit="img", dynamic_ncols=True)
    with progress, open(os.path.join(args.output, "labels.jsonl"), "w") as labels:
        for i, (stem, image) in enumerate(images):
            for name in names:
                spec = engine.resolve(name)
                row = [Tile(image, f"clean ({stem})")]
                progress.set_postfix_str(f"{stem} {name}", refresh=False)
                for j, level in enumerate(levels):
                    progress.update(1)
                    sample = engine.apply(image, name, level, seed=(args.seed, i, spec.id))
                    file = f"{stem}_{spec.id:02d}_{name}_L{level:.2f}.png"
                    lq = to_uint8(sample.lq)
                    write_png(os.path.join(args.output, file), lq)
                    record = {
                        "file": file,
                        "source": stem,
                        "type_id": sample.type_id,
                        "type_name": sample.type_name,
                        "level": level,
                        "seed": [args.seed, i, spec.id],
                        "params": sample.params,
                    }
                    labels.write(json.dumps(record) + "\n")
                    row.append(Tile(lq, f"{name} {level:.2f}"))
                if i == 0:
                    sheet_rows.append(row)
    if args.sheet:
        write_png(args.sheet, contact_sheet(sheet_rows, args.tile))
    print(f"wrote {len(images) * len(names) * len(levels)} images and labels.jsonl to {args.output}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tools/degrade.py",
        description="Degrade a folder of images (default: scikit-image's sample photos) and label every output.",
    )
    parser.add_argument("paths", nargs="*", metavar="[INPUT] OUTPUT",
                        help="input folder or image (optional) and output folder")
    parser.add_argument("--list", action="store_true", help="print the types as 'id name' and exit (the 19, then --config's extra types)")
    parser.add_argument("--config", help="engine config YAML (or a training config's data.engine): parameters and extra types")
    parser.add_argument("--types", default=None,
                        help="'all' or comma-separated names/ids (default: all, or the --config's selection)")
    parser.add_argument("--levels", type=int, default=4, help="K evenly spaced levels in [0, 1] (default 4)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--crop", type=int, default=0, help="centre-crop inputs to (at most) this square side first (0: off)"
    )
    parser.add_argument("--sheet", help="write a contact sheet PNG of the first image (row per type)")
    parser.add_argument("--tile", type=int, default=192, help="contact-sheet tile side in px (default 192)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list:
        try:
            print(list_types(load_engine_config(args.config)))
        except ValueError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        return 0
    if len(args.paths) == 1:
        args.input, args.output = None, args.paths[0]
    elif len(args.paths) == 2:
        args.input, args.output = args.paths
    else:
        parser.error("give OUTPUT, or INPUT OUTPUT")
    if args.seed < 0:
        parser.error(f"--seed must be non-negative, got {args.seed}")
    try:
        return run(args)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # a folder that cannot be made or written, a full disk
        print(f"error: {error.filename or args.output}: {error.strerror or error}", file=sys.stderr)
        return 2
