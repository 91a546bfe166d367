"""The sharded corpus: the writer (original bytes, manifest, skips), the lanes that split shards over ranks and
workers, exact resume (also after kill -9 of a real training run), damaged and missing shards, and mixing with
paired shards as with the index."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from maskdcpt.data import DataConfig, build_train_loader
from maskdcpt.data.index import CorpusIndex
from maskdcpt.data.shard_writer import parse_size, verify_shards, write_shards
from maskdcpt.data.shards import LanePlan, load_manifest
from maskdcpt.errors import DataError, MissingFileError

from conftest import last_weights, run_env, write_offset_pairs

REPO = Path(__file__).resolve().parents[1]


def _photos(folder: Path, n: int, side: int = 80, seed: int = 0) -> list[Path]:
    """``n`` random PNG/JPEG images (alternating), each of its own size around ``side``."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        image = rng.integers(0, 256, (side + i % 7, side + 2 * (i % 5), 3), dtype=np.uint8)
        path = folder / f"img{i:03d}.{'png' if i % 2 else 'jpg'}"
        cv2.imwrite(str(path), image)
        paths.append(path)
    return paths


def _members(tar_path: Path) -> dict[str, bytes]:
    with tarfile.open(tar_path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


@pytest.fixture
def clean_shards(tmp_path):
    paths = _photos(tmp_path / "clean", 24)
    report = write_shards(CorpusIndex.build([tmp_path / "clean"]), tmp_path / "shards", shard_bytes=60_000, seed=1)
    return tmp_path / "shards", paths, report


# --- the writer ---------------------------------------------------------------------------------------------------


def test_shards_hold_the_original_bytes_and_the_manifest_describes_them(clean_shards):
    out, paths, report = clean_shards
    manifest = json.loads((out / "manifest.json").read_text())
    (source,) = manifest["sources"]
    assert source["kind"] == "clean" and source["samples"] == 24 and len(source["shards"]) > 3
    seen: dict[str, bytes] = {}
    for shard in source["shards"]:
        file = out / shard["file"]
        data = file.read_bytes()
        assert (len(data), hashlib.sha256(data).hexdigest()) == (shard["bytes"], shard["sha256"])
        assert len(data) <= 60_000 or shard["samples"] == 1  # closed before growing past the size asked
        members = _members(file)
        keys = sorted({name.split(".")[0] for name in members})
        assert len(keys) == shard["samples"]
        for key in keys:
            meta = json.loads(members[f"{key}.json"])
            image = next(v for k, v in members.items() if k.startswith(key + ".") and not k.endswith(".json"))
            seen[meta["path"]] = image
    # every file once, byte for byte (never re-encoded), written in a shuffled order
    assert seen == {p.name: p.read_bytes() for p in paths}
    order = [json.loads(m)["path"] for shard in source["shards"]
             for k, m in sorted(_members(out / shard["file"]).items()) if k.endswith(".json")]
    assert order != sorted(order)
    assert verify_shards(out / "manifest.json") == []


def test_pairs_keep_lq_and_gt_in_one_sample_and_skips_are_named(tmp_path):
    write_offset_pairs(tmp_path / "rain", 6, (40, 48), seed=0, offset=9)
    (tmp_path / "rain" / "gt" / "5.png").write_bytes(b"")  # empty
    (tmp_path / "rain" / "lq" / "4.png").write_bytes(b"not an image at all")
    index = CorpusIndex.build([tmp_path / "rain"], type_ids=[3])
    report = write_shards(index, tmp_path / "shards", shard_bytes=10_000)
    assert sorted(report.skipped) == sorted([
        (str(tmp_path / "rain" / "gt" / "5.png"), "empty"),
        (str(tmp_path / "rain" / "lq" / "4.png"), "not an image (unknown file signature)")])
    manifest = json.loads((tmp_path / "shards" / "manifest.json").read_text())
    assert manifest["skipped_count"] == 2 and manifest["sources"][0]["type_id"] == 3
    assert manifest["sources"][0]["samples"] == 4
    for shard in manifest["sources"][0]["shards"]:
        members = _members(tmp_path / "shards" / shard["file"])
        for name, data in members.items():
            if name.endswith(".gt.png"):
                key = name.split(".")[0]
                meta = json.loads(members[f"{key}.json"])
                assert data == (tmp_path / "rain" / meta["path"]).read_bytes()
                assert members[f"{key}.lq.png"] == (tmp_path / "rain" / meta["lq"]).read_bytes()
    with pytest.raises(DataError, match="manifest.json exists"):
        write_shards(index, tmp_path / "shards")


def test_shard_size_units():
    assert (parse_size("512MB"), parse_size("1GiB"), parse_size("300k"), parse_size(4096)) == \
        (512 * 10**6, 2**30, 300_000, 4096)
    with pytest.raises(DataError, match="'big'"):
        parse_size("big")


def test_shard_tool_writes_and_verifies(tmp_path):
    _photos(tmp_path / "clean", 6)
    out = subprocess.run([sys.executable, "tools/shard_corpus.py", str(tmp_path / "clean"), "--out",
                          str(tmp_path / "shards"), "--shard-size", "40kB"], cwd=REPO, env=run_env(),
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "wrote 6 samples" in out.stdout
    shard = next((tmp_path / "shards" / "clean").glob("*.tar"))
    shard.write_bytes(shard.read_bytes()[:-700])
    out = subprocess.run([sys.executable, "tools/shard_corpus.py", "--verify", str(tmp_path / "shards" / "manifest.json")],
                         cwd=REPO, env=run_env(), capture_output=True, text=True)
    assert out.returncode == 1 and f"{shard}: " in out.stderr and "1 shard(s) damaged" in out.stdout


# --- lanes ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("counts, lanes", [([5, 3, 7, 4, 6, 2, 5, 4], 4), ([9, 8], 4)])
def test_lanes_split_every_epoch_into_disjoint_parts_that_cover_it(counts, lanes):
    plan = LanePlan(np.array(counts), seed=3, source_id=0, lanes=lanes, block=4)
    total = sum(counts)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    for epoch in range(3):
        parts = [plan.order(lane, epoch) for lane in range(lanes)]
        assert sorted(np.concatenate(parts).tolist()) == list(range(total))
        if len(counts) >= lanes:  # whole shards per lane: no shard is read by two lanes
            shard_sets = [set(np.searchsorted(starts, p, side="right").tolist()) for p in parts]
            assert sum(len(s) for s in shard_sets) == len(set().union(*shard_sets)) == len(counts)
        for lane, part in enumerate(parts):
            natural = plan.natural(lane, epoch)
            for lo in range(0, len(natural), 4):  # a permutation of each block of its reading order
                assert sorted(part[lo:lo + 4].tolist()) == sorted(natural[lo:lo + 4].tolist())
            for j, item in enumerate(part[:6]):
                assert plan.locate(lane, sum(plan.lane_length(lane, e) for e in range(epoch)) + j) == (epoch, item)
                got_lane, block, members = plan.block_of(int(item), epoch)
                assert got_lane == lane and block == j // 4 and item in members
    assert plan.order(0, 0).tolist() != plan.order(0, 1).tolist()
    with pytest.raises(DataError, match="fewer than the 40 readers"):
        LanePlan(np.array(counts), seed=0, source_id=0, lanes=40, name="x")


def test_ranks_and_workers_read_disjoint_shards(clean_shards):
    out, _, _ = clean_shards
    cfg = DataConfig(sources=[{"kind": "shards", "shards": str(out), "shuffle_block": 3}], crop_size=64,
                     crops_per_image=2)
    world, workers = 2, 2
    loaders = [build_train_loader(cfg, seed=0, batch_size=4, rank=r, world_size=world, num_workers=workers)
               for r in range(world)]
    plan = loaders[0].mixture.plans[0]
    assert plan.lanes == world * workers and plan.by_shard
    positions: set[int] = set()
    for step in range(12):
        for rank, loader in enumerate(loaders):
            keys = loader.sampler.batch_keys(step)
            lane = (step % workers) * world + rank
            for _, epoch, item, _, position in keys:
                assert item in plan.natural(lane, epoch)  # served from its own lane's shards
                assert position not in positions
                positions.add(position)


# --- reading, resume, damage --------------------------------------------------------------------------------------


def _keys(cfg: DataConfig, steps: range, workers: int) -> list[list[list[int]]]:
    loader = build_train_loader(cfg, seed=5, batch_size=4, num_workers=workers, start_step=steps.start)
    out = []
    for batch in loader:
        out.append((batch["key"].tolist(), batch["lq"].numpy().copy()))
        if len(out) == len(steps):
            return out


def test_a_resumed_loader_serves_exactly_the_uninterrupted_batches(clean_shards):
    out, _, _ = clean_shards
    cfg = DataConfig(sources=[{"kind": "shards", "shards": str(out), "shuffle_block": 3}], crop_size=64,
                     crops_per_image=2)
    whole = _keys(cfg, range(0, 14), workers=2)
    resumed = _keys(cfg, range(9, 14), workers=2)
    for (keys_a, lq_a), (keys_b, lq_b) in zip(whole[9:], resumed):
        assert keys_a == keys_b and np.array_equal(lq_a, lq_b)
    # an epoch of each lane served every sample once (12 images, 2 lanes, 2 crops each): 14 steps of 4 crops pass it
    items = [k[2] for keys, _ in whole[:6] for k in keys if k[1] == 0]
    assert len(set(items)) == len(items) // 2


def test_with_fewer_shards_than_readers_the_samples_are_dealt_and_resume_is_exact(tmp_path):
    _photos(tmp_path / "clean", 10)
    write_shards(CorpusIndex.build([tmp_path / "clean"]), tmp_path / "one", shard_bytes=10**9)  # a single shard
    cfg = DataConfig(sources=[{"kind": "shards", "shards": str(tmp_path / "one"), "shuffle_block": 2}],
                     crop_size=64, crops_per_image=2)
    whole = _keys(cfg, range(0, 8), workers=2)
    assert not build_train_loader(cfg, seed=5, batch_size=4, num_workers=2).mixture.plans[0].by_shard
    for (keys_a, lq_a), (keys_b, lq_b) in zip(whole[5:], _keys(cfg, range(5, 8), workers=2)):
        assert keys_a == keys_b and np.array_equal(lq_a, lq_b)
    # two lanes (even and odd steps) of 5 photos each, 2 photos a step: in 8 steps each lane passes its epoch 0,
    # and together they serve every photo once in it
    assert sorted(k[2] for keys, _ in whole for k in keys[::2] if k[1] == 0) == list(range(10))


def test_a_corrupt_member_and_a_truncated_shard_are_skipped_counted_and_named(tmp_path):
    _photos(tmp_path / "clean", 8, side=70)
    write_shards(CorpusIndex.build([tmp_path / "clean"]), tmp_path / "shards", shard_bytes=40_000)
    manifest = json.loads((tmp_path / "shards" / "manifest.json").read_text())
    shards = [tmp_path / "shards" / s["file"] for s in manifest["sources"][0]["shards"]]
    assert len(shards) >= 3
    # damage the image bytes of the first sample of shard 0 (inside the tar: the archive stays readable)
    data = bytearray(shards[0].read_bytes())
    with tarfile.open(shards[0]) as tar:
        member = next(m for m in tar.getmembers() if not m.name.endswith(".json"))
    data[member.offset_data:member.offset_data + member.size] = b"\x00" * member.size
    shards[0].write_bytes(bytes(data))
    # cut shard 1 inside its second sample
    with tarfile.open(shards[1]) as tar:
        cut_at = [m for m in tar.getmembers() if not m.name.endswith(".json")][1].offset_data + 100
        lost = sorted({m.name.split(".")[0] for m in tar.getmembers()})[1:]
    shards[1].write_bytes(shards[1].read_bytes()[:cut_at])
    cfg = DataConfig(sources=[{"kind": "shards", "shards": str(tmp_path / "shards"), "shuffle_block": 2}],
                     crop_size=64, crops_per_image=1)
    loader = build_train_loader(cfg, seed=0, batch_size=4, num_workers=0)
    for i, batch in enumerate(loader):
        assert batch["lq"].shape == (4, 3, 64, 64)
        if i == 8:
            break
    named = set(loader.skipped_files)
    assert f"{shards[0]}:{member.name.split('.')[0]}.{member.name.split('.', 1)[1]}" in named
    assert {f"{shards[1]}:{key}" for key in lost} <= named, named
    assert loader.skipped >= 1 + len(lost)
    assert any("missing from the shard" in why for why in loader.skipped_files.values())


def test_a_missing_shard_or_manifest_is_a_clear_error(clean_shards):
    out, _, report = clean_shards
    cfg = DataConfig(sources=[{"kind": "shards", "shards": str(out / "nowhere.json")}], crop_size=64)
    with pytest.raises(MissingFileError, match=r"data.sources\[0\]: shard manifest .*nowhere.json.* does not exist"):
        build_train_loader(cfg, seed=0, batch_size=4)
    gone = out / report.sources[0].shards[2].file
    gone.unlink()
    with pytest.raises(MissingFileError, match=rf"1 shard\(s\) of source 'clean' do not exist: {gone}"):
        load_manifest(out)
    with pytest.raises(ValueError, match="a 'shards' source takes 'shards'"):
        DataConfig(sources=[{"kind": "shards", "root": str(out)}])


def test_mixing_schedule_and_paired_shards_work_as_with_the_index(tmp_path):
    _photos(tmp_path / "clean", 8)
    write_offset_pairs(tmp_path / "noisy", 8, (72, 80), seed=1, offset=20)
    index = CorpusIndex.build([tmp_path / "clean", tmp_path / "noisy"], type_ids=[-1, 0])
    write_shards(index, tmp_path / "shards", shard_bytes=30_000)
    cfg = DataConfig(sources=[{"kind": "shards", "shards": str(tmp_path / "shards"), "shuffle_block": 4}],
                     crop_size=64, crops_per_image=2, schedule=[[0, 100, 0], [6, 0, 100]])
    loader = build_train_loader(cfg, seed=0, batch_size=4, num_workers=0)
    assert loader.mixture.kinds == ["synthetic", "paired"] and loader.mixture.type_ids == [-1, 0]
    for step, batch in enumerate(loader):
        sources = set(batch["source"].tolist())
        if step == 0:
            assert sources == {0}  # all synthetic at the start of the schedule
        if step >= 6:
            assert sources == {1} and (batch["type_id"] == 0).all() and (batch["level"] == -1).all()
            # LQ = GT + 20 grey levels: the pair came out of one sample, aligned
            assert np.allclose((batch["lq"] - batch["gt"]).numpy(), 20 / 255, atol=1e-6)
        if step == 8:
            break


# --- kill -9 of a real training run, resumed --------------------------------------------------------------------


def _pretrain(run_root: Path, name: str, shards: Path, extra_env: dict[str, str]) -> subprocess.Popen:
    args = [sys.executable, "tools/pretrain.py", "model.name=nafnet_tiny", "data.crop_size=64",
            "data.crops_per_image=2", "train.batch_size=4", "train.progress=false", "val.samples_per_task=2",
            "val.every=6", "data.engine={types: [noise, jpeg]}", "train.max_steps=6", "train.checkpoint_every=2",
            "train.log_every=1", "data.num_workers=2",
            f"data.sources=[{{kind: shards, shards: {shards}, shuffle_block: 3}}]",
            f"run.output_dir={run_root}", f"run.name={name}"]
    env = {**run_env(), "MASKDCPT_DATA_TRACE": str(run_root / "trace" / name), **extra_env}
    return subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _trace(path: Path) -> dict[int, list]:
    return {line["step"]: line["keys"] for line in map(json.loads, path.read_text().splitlines())}


def test_training_on_shards_killed_hard_resumes_with_the_same_samples_and_weights(clean_shards, tmp_path):
    out, _, _ = clean_shards
    runs = tmp_path / "runs"
    whole = _pretrain(runs, "whole", out, {})
    killed = _pretrain(runs, "killed", out, {"MASKDCPT_HOLD_AT": f"{runs / 'killed'}@2"})
    deadline = time.time() + 300
    while not (runs / "killed" / "hold" / "held").exists():
        assert killed.poll() is None and time.time() < deadline, killed.communicate()[0]
        time.sleep(0.2)
    workers = _descendants(killed.pid)  # the fork server and the two DataLoader workers it started
    assert len(workers) >= 3, workers
    os.kill(killed.pid, signal.SIGKILL)  # at step 2, its checkpoint written, its two workers mid-prefetch
    killed.wait()
    resumed = _pretrain(runs, "killed", out, {})
    log = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0, log
    assert whole.wait(timeout=300) == 0, whole.communicate()[0]
    assert "resumed from" in (runs / "killed" / "log.txt").read_text()
    assert _trace(runs / "trace" / "killed" / "rank0.jsonl") == _trace(runs / "trace" / "whole" / "rank0.jsonl")
    a, b = last_weights(runs / "whole"), last_weights(runs / "killed")
    assert all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)
    assert (runs / "killed" / "val.jsonl").is_file()  # validation runs as with the index
    # the killed run's workers did not outlive it (their parent, the fork server, did: torch's check missed it)
    assert not [pid for pid in workers if Path(f"/proc/{pid}").exists() and _state(pid) != "Z"], workers


def _descendants(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(c) for c in children] + [d for c in children for d in _descendants(int(c))]


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


def test_the_data_benchmark_compares_index_and_shards_and_times_sharding(tmp_path, capsys):
    from maskdcpt.benchmarks.data import main

    argv = ["--workers", "0", "--sources", "index,shards", "--samples", "16", "--photos", "2", "--batch", "8",
            "--crops-per-image", "4", "--types", "noise,jpeg", "--shard-size", "4MB", "--work-dir", str(tmp_path),
            "--shard-files", "30", "--shard-file-kb", "5"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.split()[:1] in (["index"], ["shards"])]
    assert [(r[0], r[1], r[2]) for r in rows] == [("index", "0", "16"), ("shards", "0", "16")]
    assert "shards / index, samples per CPU-second:" in out
    assert "shard input: 30 files of 5 kB" in out and "; 1 shards, " in out and "extrapolated" in out
    assert not (tmp_path / "shard_tree_30_5k").exists()  # the generated input is removed unless --keep-tree
