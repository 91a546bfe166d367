"""Synthetic and paired sources: determinism, decode amortisation, LQ/GT alignment."""
import json
import subprocess
import sys

import cv2
import numpy as np
import pytest

import degradations
from maskdcpt.data.index import CorpusIndex
from maskdcpt.data.paired import PairedSource
from maskdcpt.data.synthetic import SyntheticSource

from conftest import cheap_types, write_offset_pairs


def _photos(root, n=3, size=(150, 170)):
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        base = cv2.resize(rng.integers(0, 256, (12, 14, 3), dtype=np.uint8), size[::-1], interpolation=cv2.INTER_CUBIC)
        cv2.imwrite(str(root / f"p{i}.png"), base)
    return CorpusIndex.build([root])


def test_synthetic_sample_is_a_function_of_its_key(tmp_path):
    index = _photos(tmp_path / "photos")
    engine = {"types": cheap_types()}
    a = SyntheticSource(index, engine, source_id=0, seed=11, crop_size=64)
    b = SyntheticSource(index, engine, source_id=0, seed=11, crop_size=64)
    keys = [(0, 0, 1, 0, 5), (0, 0, 1, 1, 6), (0, 2, 0, 3, 7)]
    for key in reversed(keys):  # b decodes in another order: the cache must not matter
        b.sample(key)
    for key in keys:
        x, y = a.sample(key), b.sample(key)
        np.testing.assert_array_equal(x["lq"], y["lq"])
        np.testing.assert_array_equal(x["gt"], y["gt"])
        assert x["params"] == y["params"] and x["type_id"] == y["type_id"] and x["index"] == key[4]
        assert x["lq"].shape == (3, 64, 64) and x["lq"].dtype == np.float32
        assert 0 <= x["lq"].min() and x["lq"].max() <= 1
        assert json.loads(x["params"])["type"] == degradations.TYPE_NAMES[x["type_id"]]
    first, second = a.sample(keys[0]), a.sample(keys[1])
    assert not np.array_equal(first["gt"], second["gt"])  # two crops of one image differ
    other_seed = SyntheticSource(index, engine, source_id=0, seed=12, crop_size=64).sample(keys[0])
    assert not np.array_equal(other_seed["gt"], first["gt"])


def test_synthetic_sample_identical_in_a_fresh_process(tmp_path):
    index = _photos(tmp_path / "photos")
    index.save(tmp_path / "p.index")
    engine = {"types": cheap_types()}
    here = SyntheticSource(CorpusIndex.load(tmp_path / "p.index"), engine, source_id=2, seed=4, crop_size=48)
    sample = here.sample((2, 1, 2, 3, 99))
    code = (
        "import sys, numpy as np\n"
        "from maskdcpt.data.index import CorpusIndex\n"
        "from maskdcpt.data.synthetic import SyntheticSource\n"
        f"s = SyntheticSource(CorpusIndex.load(sys.argv[1]), {engine!r}, source_id=2, seed=4, crop_size=48)\n"
        "x = s.sample((2, 1, 2, 3, 99))\n"
        "np.save(sys.argv[2], np.stack([x['lq'], x['gt']]))\n"
    )
    out = tmp_path / "fresh.npy"
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "p.index"), str(out)], check=True, timeout=120)
    np.testing.assert_array_equal(np.load(out), np.stack([sample["lq"], sample["gt"]]))


def test_crops_share_one_decode(tmp_path):
    index = _photos(tmp_path / "photos", n=4)
    source = SyntheticSource(index, {"types": cheap_types()}, source_id=0, seed=0, crop_size=32)
    samples = 0
    for item in range(4):
        for crop in range(5):
            source.sample((0, 0, item, crop, samples))
            samples += 1
    assert source.decodes == 4 < samples == 20


def test_paired_augmentation_keeps_lq_and_gt_aligned(tmp_path):
    root = tmp_path / "pairs"
    write_offset_pairs(root, 2, (90, 70), seed=1, offset=30)  # LQ = GT + constant
    index = CorpusIndex.build([root], type_ids=[5])
    source = PairedSource(index, 5, source_id=1, seed=3, crop_size=40)
    transforms = set()
    for crop in range(24):
        s = source.sample((1, 0, crop % 2, crop, crop))
        np.testing.assert_allclose(s["lq"] - s["gt"], 30 / 255, atol=1e-6)
        assert s["type_id"] == 5 and s["level"] == -1.0 and s["source"] == 1
        transforms.add(s["gt"].tobytes())
    assert len(transforms) == 24  # the crops really vary (window and flip/rot90)


def test_paired_size_mismatch_is_skipped_and_substituted(tmp_path):
    root = tmp_path / "pairs"
    (root / "gt").mkdir(parents=True)
    (root / "lq").mkdir()
    for i, lq_size in enumerate([(64, 64), (60, 64)]):
        cv2.imwrite(str(root / "gt" / f"{i}.png"), np.full((64, 64, 3), 100, np.uint8))
        cv2.imwrite(str(root / "lq" / f"{i}.png"), np.full(lq_size + (3,), 90, np.uint8))
    source = PairedSource(CorpusIndex.build([root], type_ids=[1]), 1, source_id=0, seed=0, crop_size=32)
    s = source.sample((0, 0, 1, 0, 0))
    assert len(s["skipped"]) == 1 and "1.png: LQ and GT differ in size (LQ 64x60, GT 64x64)" in s["skipped"][0]
    assert json.loads(s["params"])["pair"] == "gt/0.png"  # the substitute, drawn deterministically
    with pytest.raises(ValueError, match="declare its degradation type"):
        PairedSource(CorpusIndex.build([root]), -1, source_id=0, seed=0, crop_size=32)
