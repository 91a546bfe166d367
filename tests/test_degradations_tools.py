"""End-to-end checks of tools/degrade.py and the degradation benchmark; image files and the bundled photos."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import cv2
import numpy as np

from degradations import TYPE_TABLE
from degradations.benchmark import format_table, measure
from degradations.image import read_rgb, write_png
from degradations.photos import BUNDLED_PHOTOS, SAMPLE_PHOTOS, SCENE_PHOTOS, photo_dir, sample_photos
from degradations.sheet import LABEL_HEIGHT, sheet_shape

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(ROOT, "tools", "degrade.py")


def run_tool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, TOOL, *args], capture_output=True, text=True, cwd=ROOT)


def test_list_prints_the_19_types():
    result = run_tool("--list")
    assert result.returncode == 0
    assert result.stdout.strip().splitlines() == [f"{row[0]} {row[1]}" for row in TYPE_TABLE]


def test_degrade_folder_end_to_end(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    rng = np.random.default_rng(0)
    for name, size in (("a.png", (64, 80)), ("b.png", (72, 64))):
        cv2.imwrite(str(inputs / name), (rng.random((*size, 3)) * 255).astype(np.uint8))
    out = tmp_path / "out"
    sheet = tmp_path / "sheet.png"
    options = ("--types", "noise,jpeg", "--levels", "2", "--sheet", str(sheet), "--tile", "64")
    result = run_tool(str(inputs), str(out), *options)
    assert result.returncode == 0, result.stderr
    assert "degrade: 100%" in result.stderr and "8/8" in result.stderr  # progress shown
    records = [json.loads(line) for line in (out / "labels.jsonl").read_text().splitlines()]
    assert len(records) == 2 * 2 * 2
    assert {(r["source"], r["type_id"], r["type_name"], r["level"]) for r in records} == {
        (s, tid, name, lv) for s in ("a", "b") for tid, name in ((0, "noise"), (5, "jpeg")) for lv in (0.0, 1.0)
    }
    for record in records:
        image = cv2.imread(str(out / record["file"]))
        assert image is not None and image.shape[:2] == ((64, 80) if record["source"] == "a" else (72, 64))
        assert isinstance(record["params"], dict) and record["params"]
    jpeg_q = {r["level"]: r["params"]["quality"] for r in records if r["type_name"] == "jpeg"}
    assert jpeg_q == {0.0: 95, 1.0: 10}
    files = sorted(p for p in os.listdir(out) if p.endswith(".png"))
    assert len(files) == 8
    drawn = cv2.imread(str(sheet))
    assert drawn.shape == sheet_shape(rows=2, cols=3, side=64) == (2 * (64 + LABEL_HEIGHT), 3 * 64, 3)
    # captions are drawn: the label strip is not blank
    assert (drawn[:LABEL_HEIGHT] < 128).any()
    # same seed, same files
    again = tmp_path / "again"
    assert run_tool(str(inputs), str(again), "--types", "noise,jpeg", "--levels", "2").returncode == 0
    for name in files:
        assert np.array_equal(cv2.imread(str(out / name)), cv2.imread(str(again / name)))


def test_bad_arguments_give_clear_errors(tmp_path):
    result = run_tool(str(tmp_path / "missing"), str(tmp_path / "out"))
    assert result.returncode == 2 and "does not exist (give a folder of images or one image)" in result.stderr
    (tmp_path / "empty").mkdir()
    result = run_tool(str(tmp_path / "empty"), str(tmp_path / "out"))
    assert result.returncode == 2 and "holds no images" in result.stderr
    result = run_tool(str(tmp_path / "out"), "--types", "noise,fog")
    assert result.returncode == 2 and "unknown degradation type 'fog'" in result.stderr
    result = run_tool(str(tmp_path / "out"), "--levels", "0")
    assert result.returncode == 2 and "--levels must be at least 1" in result.stderr
    (tmp_path / "taken").write_text("a file where the output folder should go")
    result = run_tool(str(tmp_path / "taken"), "--types", "noise", "--levels", "1")
    assert result.returncode == 2 and result.stderr.startswith(f"error: {tmp_path / 'taken'}: File exists")
    assert "Traceback" not in result.stderr


def test_benchmark_measures_every_registered_type():
    result = measure(size=32, runs=2)
    assert result["size"] == 32 and set(result["per_type_ms"]) == set(result["per_type_mean_ms"])
    assert all(ms > 0 for ms in result["per_type_ms"].values())
    assert "uniform mix" in format_table(result)


def test_png_round_trip_keeps_rgb_order(tmp_path):
    rng = np.random.default_rng(1)
    image = (rng.random((33, 47, 3)) * 255).astype(np.uint8)
    path = str(tmp_path / "x.png")
    write_png(path, image)
    np.testing.assert_array_equal(read_rgb(path), image)
    assert read_rgb(str(tmp_path / "missing.png")) is None


def test_photo_selections_come_from_the_one_list():
    assert set(SAMPLE_PHOTOS) <= set(BUNDLED_PHOTOS) and set(SCENE_PHOTOS) < set(BUNDLED_PHOTOS)
    present = [name for name in SAMPLE_PHOTOS if os.path.isfile(os.path.join(photo_dir(), name))]
    stems = [stem for stem, _ in sample_photos()]
    assert stems == [os.path.splitext(name)[0] for name in present] and stems[0] == "astronaut"
