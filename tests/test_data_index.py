"""Corpus index: round trips on generated trees, pair matching, meta files, small pickles."""
import os
import pickle
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from maskdcpt.data.index import CorpusIndex, build_index

REPO = Path(__file__).resolve().parents[1]


def _write(path: Path, seed: int = 0, size: int = 40) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.random.default_rng(seed).integers(0, 256, (size, size + seed % 5, 3), dtype=np.uint8)
    assert cv2.imwrite(str(path), image)


def test_clean_tree_round_trip(tmp_path):
    root = tmp_path / "clean"
    names = ["b/z.png", "a.jpg", "b/c/d.png", "ünï code.png", "a2.PNG"]
    for i, name in enumerate(names):
        _write(root / name, i)
    (root / "notes.txt").write_text("not an image")
    out = tmp_path / "clean.index"
    index = build_index([root], out)
    expected = sorted(names)
    assert [index.relpath(i) for i in range(len(index))] == expected
    assert list(index.sizes) == [os.path.getsize(root / n) for n in expected]
    assert index.path(1) == str(root / expected[1])
    assert set(index.source.tolist()) == {0} and set(index.type_id.tolist()) == {-1}
    assert isinstance(index.sizes, np.memmap)  # loaded by memory map, not read into lists
    assert index.sources[0].kind == "clean"
    with pytest.raises(ValueError, match="clean image and has no LQ"):
        index.lq_path(0)


def test_pair_tree_matching_names_and_types(tmp_path):
    rain, noise = tmp_path / "rain", tmp_path / "sidd"
    for i in range(3):
        _write(rain / "GT" / f"{i:03d}.png", i)
        _write(rain / "LQ" / f"{i:03d}.jpg", i + 10)  # extensions may differ
    for i in range(2):
        _write(noise / "target" / "sub" / f"n{i}.png", i)
        _write(noise / "input" / "sub" / f"n{i}.png", i + 20)
    clean = tmp_path / "photos"
    _write(clean / "p.png", 5)
    index = build_index([rain, noise, clean], tmp_path / "mix.index", type_ids=[7, 1, -1])
    assert [s.kind for s in index.sources] == ["paired", "paired", "clean"]
    assert index.type_id.tolist() == [7, 7, 7, 1, 1, -1]
    assert index.source.tolist() == [0, 0, 0, 1, 1, 2]
    assert index.lq_path(1) == str(rain / "LQ" / "001.jpg") and index.path(1) == str(rain / "GT" / "001.png")
    view = index.source_view(1)
    assert len(view) == 2 and view.path(0) == str(noise / "target" / "sub" / "n0.png")
    assert view.lq_path(1) == str(noise / "input" / "sub" / "n1.png")
    assert view.type_id.tolist() == [1, 1]


def test_pair_tree_mismatch_names_the_files(tmp_path):
    root = tmp_path / "bad"
    _write(root / "gt" / "a.png")
    _write(root / "gt" / "b.png")
    _write(root / "lq" / "a.png")
    with pytest.raises(ValueError, match=r"1 GT file\(s\) without LQ .*b\.png"):
        CorpusIndex.build([root])


def test_pair_meta_file(tmp_path):
    root = tmp_path / "gopro"
    _write(root / "gt" / "sharp_1.png", 1)
    _write(root / "lq" / "blur_1.png", 2)
    _write(root / "gt" / "same.png", 3)
    _write(root / "lq" / "same.png", 4)
    _write(root / "gt" / "unlisted.png", 5)  # not in the meta file → not indexed
    meta = tmp_path / "pairs.txt"
    meta.write_text("# lq gt\nblur_1.png, sharp_1.png\nsame.png\n\n")
    index = CorpusIndex.build([root], type_ids=[2], metas=[str(meta)])
    assert len(index) == 2
    assert index.lq_path(0) == str(root / "lq" / "blur_1.png") and index.path(0) == str(root / "gt" / "sharp_1.png")
    assert index.lq_path(1) == str(root / "lq" / "same.png")
    meta.write_text("missing.png\n")
    with pytest.raises(ValueError, match="missing.png"):
        CorpusIndex.build([root], metas=[str(meta)])


def test_index_pickles_as_a_file_name(tmp_path):
    root = tmp_path / "many"
    n = 3000
    for d in range(3):
        (root / f"d{d}").mkdir(parents=True)
        for i in range(n // 3):
            (root / f"d{d}" / f"img_{i:06d}_with_a_long_descriptive_name.jpg").write_bytes(b"x")
    index = build_index([root], tmp_path / "many.index")
    assert len(index) == n
    sent = pickle.dumps(index)
    as_list = pickle.dumps([index.relpath(i) for i in range(n)])
    assert len(sent) < 2000 < len(as_list) // 50  # a few hundred bytes, not ~40 bytes × files
    received = pickle.loads(sent)
    assert isinstance(received.sizes, np.memmap)
    assert received.relpath(n - 1) == index.relpath(n - 1) == "d2/img_000999_with_a_long_descriptive_name.jpg"
    view = pickle.loads(pickle.dumps(index.source_view(0)))
    assert len(view) == n


def test_bad_inputs_raise_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="is not a directory"):
        CorpusIndex.build([tmp_path / "nope"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no images"):
        CorpusIndex.build([tmp_path / "empty"])
    (tmp_path / "junk.index").write_bytes(b"garbage garbage garbage")
    with pytest.raises(ValueError, match="not a corpus index"):
        CorpusIndex.load(tmp_path / "junk.index")


def test_index_corpus_cli(tmp_path):
    root = tmp_path / "pairs"
    for i in range(2):
        _write(root / "gt" / f"{i}.png", i)
        _write(root / "lq" / f"{i}.png", i)
    out = tmp_path / "cli.index"
    result = subprocess.run([sys.executable, str(REPO / "tools" / "index_corpus.py"), str(root), "--type", "haze",
                             "--out", str(out)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "indexed 2 entries" in result.stdout
    index = CorpusIndex.load(out)
    assert index.type_id.tolist() == [6, 6] and index.sources[0].kind == "paired"


def test_symlink_loops_and_dangling_links_are_skipped_named_and_counted(tmp_path):
    root = tmp_path / "corpus"
    _write(root / "a.png", 0)
    _write(root / "L1" / "b.png", 1)
    os.symlink(".", root / "L1" / "self")  # a folder loop: L1/self/self/… (ELOOP after 40 levels)
    os.symlink("loop2.png", root / "loop1.png")  # a loop of file links
    os.symlink("loop1.png", root / "loop2.png")
    os.symlink("gone.png", root / "dangling.png")
    os.symlink("L1", root / "alias")  # a second path to L1: its images are indexed once
    out = tmp_path / "corpus.index"
    result = subprocess.run([sys.executable, str(REPO / "tools" / "index_corpus.py"), str(root), "--out", str(out)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "indexed 2 entries" in result.stdout and "skipped 5 path(s)" in result.stdout
    for name, reason in [("L1/self", "symlink loop back to"), ("loop1.png", "symlink loop"),
                         ("loop2.png", "symlink loop"), ("dangling.png", "dangling symlink"),
                         ("alias", "second path to")]:
        assert f"skipped {root / name}: {reason}" in result.stderr, (name, result.stderr)
    index = CorpusIndex.load(out)
    assert list(index.iter_relpaths()) == ["L1/b.png", "a.png"]
    assert len(index.skipped) == 5 and (str(root / "dangling.png"), "dangling symlink (its target does not exist)") in index.skipped


def test_per_root_options_of_the_corpus_tools_are_checked_and_converted():
    from maskdcpt.data.mixture import per_root_options
    from maskdcpt.errors import ConfigError
    from degradations import TYPE_NAMES

    types, metas = per_root_options(2, ["rain_streaks", "-"], ["-", "pairs.txt"], ["a", "b"])
    assert types == [TYPE_NAMES.index("rain_streaks"), -1] and metas == [None, "pairs.txt"]
    assert per_root_options(1, None, None, None) == (None, None)
    with pytest.raises(ConfigError, match=r"--meta needs one value per root \(2\), got 1"):
        per_root_options(2, None, ["-"], None)
    with pytest.raises(ConfigError, match="--type: unknown degradation type 'rain'"):
        per_root_options(1, ["rain"], None, None)
