"""The training loader: batch contract, resume, workers, bad files, the embedded default."""
import json
import logging
import os
import socket
import time
import urllib.request
from dataclasses import dataclass, field

import cv2
import numpy as np
import pytest
import torch

import degradations
from degradations import EngineConfig
from maskdcpt.config import from_dict, load_config, save_config
from maskdcpt.data import DataConfig, build_train_loader
from maskdcpt.data.default import DEFAULT_PHOTOS, default_photo_dir

from conftest import cheap_types, write_offset_pairs


def _mixed_tree(root):
    """Usable images in several formats plus unusable ones, as a corpus must tolerate."""
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    photo = cv2.resize(rng.integers(0, 256, (10, 10, 3), dtype=np.uint8), (96, 80), interpolation=cv2.INTER_CUBIC)
    cv2.imwrite(str(root / "rgb.jpg"), photo)
    cv2.imwrite(str(root / "deep16.png"), photo.astype(np.uint16) * 257)
    cv2.imwrite(str(root / "gray.png"), photo[..., 0])
    cv2.imwrite(str(root / "rgba.png"), np.dstack([photo, np.full(photo.shape[:2], 200, np.uint8)]))
    cv2.imwrite(str(root / "tiny.png"), photo[:10, :10])
    (root / "truncated.jpg").write_bytes(cv2.imencode(".jpg", photo)[1].tobytes()[:500])
    (root / "empty.png").write_bytes(b"")
    return {"tiny.png": "too small (10x10 < 64)", "truncated.jpg": "truncated", "empty.png": "empty"}


def _pairs(root, type_name):
    write_offset_pairs(root, 3, (72, 72), seed=3, offset=20)
    return {"kind": "paired", "root": str(root), "type": type_name}


def _config(tmp_path, **extra):
    bad = _mixed_tree(tmp_path / "clean")
    sources = [{"kind": "synthetic", "root": str(tmp_path / "clean")}, _pairs(tmp_path / "rain", "rain_streaks")]
    cfg = DataConfig(sources=sources, crop_size=64, crops_per_image=2, engine=EngineConfig(types=cheap_types()), **extra)
    return cfg, bad


def test_batch_contract_and_bad_files_logged_once_per_epoch(tmp_path, caplog):
    cfg, bad = _config(tmp_path)
    loader = build_train_loader(cfg, seed=0, batch_size=4)
    caplog.set_level(logging.WARNING, logger="maskdcpt.data.loader")
    epoch_steps = loader.sampler.epoch_samples // 4  # (7 + 3 items) × 2 crops / 4
    batches = [b for b, _ in zip(loader, range(2 * epoch_steps + 1))]
    b = batches[0]
    assert b["lq"].shape == b["gt"].shape == (4, 3, 64, 64) and b["lq"].dtype == torch.float32
    assert b["type_id"].dtype == torch.int64 and b["level"].shape == (4,) and b["source"].dtype == torch.int64
    assert all(isinstance(json.loads(p), dict) for p in b["params"])
    assert b["index"].tolist() == [0, 1, 2, 3]
    for batch in batches:
        assert 0 <= batch["lq"].min() and batch["gt"].max() <= 1
        real = batch["source"] == 1
        assert (batch["type_id"][real] == degradations.TYPE_IDS["rain_streaks"]).all()
        assert (batch["level"][real] == -1).all() and (batch["level"][~real] >= 0).all()
    assert set(loader.skipped_files) == {str(tmp_path / "clean" / n) for n in bad}
    for name, reason in bad.items():
        assert loader.skipped_files[str(tmp_path / "clean" / name)] == reason
    assert loader.skipped >= len(bad)
    lines = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(lines) == 2  # one per finished epoch (epochs 0 and 1)
    assert lines[0].startswith("data epoch 0: skipped 3 unusable file(s)")
    assert all(name in lines[0] for name in bad)


def test_resume_mid_epoch_repeats_and_skips_nothing(tmp_path):
    cfg, _ = _config(tmp_path, schedule=[[0, 100, 0], [6, 50, 50]])
    full = [b for b, _ in zip(build_train_loader(cfg, seed=7, batch_size=6, rank=1, world_size=2), range(9))]
    for k in (3, 7):
        resumed = build_train_loader(cfg, seed=7, batch_size=6, rank=1, world_size=2, start_step=k)
        for expected, got in zip(full[k:], resumed):
            for name in ("lq", "gt", "type_id", "level", "source", "key", "index"):
                assert torch.equal(expected[name], got[name]), name
            assert expected["params"] == got["params"]
        assert resumed.step == 9


def test_worker_processes_give_the_same_batches(tmp_path):
    cfg, _ = _config(tmp_path)
    plain = [b for b, _ in zip(build_train_loader(cfg, seed=1, batch_size=4), range(3))]
    workers = [b for b, _ in zip(build_train_loader(cfg, seed=1, batch_size=4, num_workers=2), range(3))]
    for a, b in zip(plain, workers):
        assert torch.equal(a["lq"], b["lq"]) and a["params"] == b["params"]


def test_embedded_default_uses_only_local_files(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("the default data path tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    loader = build_train_loader(DataConfig(crop_size=64, engine=EngineConfig(types=cheap_types())), seed=0, batch_size=4)
    batch = next(iter(loader))
    assert batch["lq"].shape == (4, 3, 64, 64)
    index = loader.dataset.sources[0].index
    assert index.sources[0].root == default_photo_dir()
    names = [index.relpath(i) for i in range(len(index))]
    assert len(names) >= 10 and set(names) <= set(DEFAULT_PHOTOS)


def test_data_config_from_yaml_dict_and_errors():
    cfg = from_dict(DataConfig, {"sources": [{"kind": "paired", "root": "/x", "type": "haze", "weight": 2}],
                                 "schedule": [[0, 100, 0], [100, 20, 80]], "crops_per_image": 8})
    assert cfg.sources[0].type == "haze" and cfg.sources[0].weight == 2.0 and cfg.crops_per_image == 8
    with pytest.raises(ValueError, match="unknown config key 'sources.0.typo'|unknown config key"):
        from_dict(DataConfig, {"sources": [{"root": "/x", "typo": 1}]})
    with pytest.raises(ValueError, match="exactly one of 'root' or 'index'"):
        DataConfig(sources=[{"root": "/a", "index": "/b"}])
    with pytest.raises(ValueError, match="crop_size"):
        DataConfig(crop_size=8)


@dataclass
class _WithData:
    data: DataConfig = field(default_factory=DataConfig)


def test_engine_config_is_a_typed_section_of_the_data_config(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  engine:\n    types: [noise, haze]\n    weights: {noise: 3}\n")
    cfg = load_config(_WithData, path, ["data.engine.level_range=[0.2,1]"])
    assert isinstance(cfg.data.engine, EngineConfig)
    assert cfg.data.engine.type_names == ["noise", "haze"] and cfg.data.engine.weights == {"noise": 3.0}
    assert cfg.data.engine.level_range == (0.2, 1.0)
    # the resolved config round-trips through its saved YAML
    save_config(cfg, tmp_path / "resolved.yaml")
    assert load_config(_WithData, tmp_path / "resolved.yaml") == cfg
    with pytest.raises(ValueError, match=r"unknown config key 'data.engine.foo'; valid keys in data.engine: "
                                         r"types, weights, level_range, params, extra_types \(in .*c.yaml\)"):
        load_config(_WithData, path, ["data.engine.foo=1"])
    with pytest.raises(ValueError, match=r"data.engine.level_range: expected 2 items"):
        load_config(_WithData, None, ["data.engine.level_range=[0.2]"])


def _burn(seconds: float, done) -> None:
    start = time.process_time()
    while time.process_time() - start < seconds:
        pass
    done.set()
    time.sleep(60)  # stays alive (killed by the test) so that its CPU time can be read


def test_benchmark_cpu_time_counts_workers_started_by_the_fork_server():
    # The DataLoader starts its workers through the fork server: grandchildren of the measuring process, whose CPU
    # time the data benchmark used to miss (0.4 CPU s for 20 s of a busy worker).
    from maskdcpt.benchmarks.data import cpu_seconds_of_tree
    from maskdcpt.data.loader import WORKER_CONTEXT

    warm = WORKER_CONTEXT.Process(target=time.sleep, args=(0,))  # the fork server's own start-up is not measured
    warm.start()
    warm.join()
    before = cpu_seconds_of_tree()
    done = WORKER_CONTEXT.Event()
    worker = WORKER_CONTEXT.Process(target=_burn, args=(1.5, done), daemon=True)
    worker.start()
    try:
        assert done.wait(120)
        assert os.getppid() != worker.pid and _parent(worker.pid) != os.getpid()  # not a child: a grandchild
        spent = cpu_seconds_of_tree() - before
    finally:
        worker.kill()
        worker.join()
    assert 1.5 <= spent < 1.5 + 1.0, spent  # the worker's 1.5 s, plus what this process and the server spent


def _parent(pid: int) -> int:
    return int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])
