"""Extra degradation types (albumentations transforms and user functions declared in an engine config): the
example config end to end, the level mappings, reproducibility across workers and processes, and every refusal."""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import random
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

from degradations import NUM_TYPES, TYPE_NAMES, DegradationEngine, EngineConfig, all_types, resolve
from degradations.benchmark import format_table, measure
from degradations.cli import load_engine_config
from degradations.cli import main as cli_main
from degradations.extra_types import LEVEL_MAPS
from degradations.image import pixel_scale, read_rgb, to_uint8
from degradations.photos import sample_photos
from degradations.sheet import sheet_shape
from maskdcpt.config import load_config, save_config
from maskdcpt.data.config import DataConfig

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "configs" / "engine" / "uir19_plus.yaml"
EXTRA = ["sun_flare", "shadow", "lens_spatter", "chromatic_aberration", "zoom_blur", "plasma_shadow"]

# A user's module, written to a temporary folder and put on the path (PYTHONPATH for subprocesses).
USER_MODULE = "xt_user_degradations"
USER_SOURCE = '''
import random

import numpy as np


def vignette(image, level, rng, strength=0.6):
    """Darkening towards the corners around a randomly shifted centre."""
    h, w = image.shape[:2]
    cy, cx = h * rng.uniform(0.4, 0.6), w * rng.uniform(0.4, 0.6)
    y, x = np.mgrid[0:h, 0:w]
    r2 = ((y - cy) / h) ** 2 + ((x - cx) / w) ** 2
    return (image * (1.0 - strength * level * np.minimum(r2 * 2.0, 1.0))[..., None]).astype(np.float32)


def wrong_shape(image, level, rng):
    return image[:-1]


def wrong_dtype(image, level, rng):
    return image.astype(np.float64) * 0.5


def global_numpy(image, level, rng):
    return np.clip(image + np.random.normal(0, 0.1, image.shape), 0, 1).astype(np.float32)


def reseeds_global(image, level, rng):
    random.seed(0)
    return np.clip(image + random.random() * 0.1, 0, 1).astype(np.float32)


def identity(image, level, rng):
    return image


def broken(image, level, rng):
    raise RuntimeError("boom")


def needs_gain(image, level, rng, gain):
    return np.clip(image * gain, 0, 1).astype(np.float32)


NOT_CALLABLE = 3
'''


@pytest.fixture(scope="module")
def user_module(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("user_module")
    (folder / f"{USER_MODULE}.py").write_text(USER_SOURCE)
    sys.path.insert(0, str(folder))
    yield folder
    sys.path.remove(str(folder))
    sys.modules.pop(USER_MODULE, None)


@pytest.fixture(scope="module")
def example() -> EngineConfig:
    return load_engine_config(str(EXAMPLE))


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """A 128×128 crop of a real photo, float32 in [0, 1]."""
    return dict(sample_photos())["chelsea"][100:228, 200:328].astype(np.float32) / 255.0


def _env(*paths: Path) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", NO_ALBUMENTATIONS_UPDATE="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *map(str, paths), env.get("PYTHONPATH", "")])
    return env


def run_tool(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "tools" / "degrade.py"), *args], capture_output=True, text=True,
                          cwd=ROOT, env=env or _env())


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(-10 * np.log10(max(float(np.mean((a.astype(np.float64) - b) ** 2)), 1e-12)))


# --- the example config, end to end ---------------------------------------------------------------------------


def test_example_config_ids_follow_the_19_in_the_order_given(example):
    assert example.label_names == TYPE_NAMES + tuple(EXTRA)
    assert example.type_names == list(example.label_names)  # types: all includes the extras
    for k, name in enumerate(EXTRA):
        assert example.resolve(name).id == NUM_TYPES + k and example.resolve(NUM_TYPES + k).name == name
    # the global registry of the 19 is untouched
    assert [t.name for t in all_types()] == list(TYPE_NAMES)
    with pytest.raises(ValueError, match="unknown degradation type 'sun_flare'"):
        resolve("sun_flare")


def test_example_config_with_the_cli_list_degrade_and_sheet(tmp_path, example, capsys):
    assert cli_main(["--list", "--config", str(EXAMPLE)]) == 0  # in this process; the degrading runs in another
    assert capsys.readouterr().out.strip().splitlines() == [f"{i} {n}" for i, n in enumerate(TYPE_NAMES + tuple(EXTRA))]

    inputs = tmp_path / "in"
    inputs.mkdir()
    rng = np.random.default_rng(0)
    cv2.imwrite(str(inputs / "a.png"), cv2.GaussianBlur((rng.random((64, 80, 3)) * 255).astype(np.uint8), (5, 5), 0))
    out, sheet = tmp_path / "out", tmp_path / "sheet.png"
    types = ",".join(["noise", *EXTRA])
    result = run_tool(str(inputs), str(out), "--config", str(EXAMPLE), "--types", types, "--levels", "2",
                      "--sheet", str(sheet), "--tile", "64")
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in (out / "labels.jsonl").read_text().splitlines()]
    assert [(r["type_id"], r["type_name"]) for r in records[::2]] == [(0, "noise")] + [(19 + k, n) for k, n in enumerate(EXTRA)]
    for record in records[2:]:
        assert record["params"]["transform"] == example.extra_types[record["type_name"]].albumentations
        assert isinstance(record["params"]["seed"], int)
    assert cv2.imread(str(sheet)).shape == sheet_shape(rows=1 + len(EXTRA), cols=3, side=64)
    # the files written by that process are the pixels this process computes for the same (image, level, seed)
    engine = DegradationEngine(example)
    image = read_rgb(str(inputs / "a.png"))
    for record in records:
        expected = to_uint8(engine.apply(image, record["type_name"], record["level"], seed=tuple(record["seed"])).lq)
        assert np.array_equal(read_rgb(str(out / record["file"])), expected), record["file"]


def test_pretraining_with_the_example_engine_has_19_plus_n_classes(tmp_path, example):
    engine = yaml.safe_load(EXAMPLE.read_text())
    engine["types"] = ["noise", *EXTRA]  # 12 samples in 3 steps: mostly extra types, still 25 classes
    config = {
        "data": {"engine": engine, "crop_size": 32, "crops_per_image": 2},
        "train": {"max_steps": 3, "batch_size": 4, "log_every": 1, "image_every": 3, "checkpoint_every": 3,
                  "progress": False},
        "optim": {"warmup_steps": 1},
        "run": {"output_dir": str(tmp_path), "name": "r"},
    }
    path = tmp_path / "pretrain.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))  # the order of extra_types gives their ids
    env = _env()
    env.pop("RANK", None), env.pop("WORLD_SIZE", None)
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "pretrain.py"), "--config", str(path)],
                            capture_output=True, text=True, cwd=ROOT, env=env)
    assert result.returncode == 0, result.stderr
    run = tmp_path / "r"
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["model"]["num_classes"] == NUM_TYPES + len(EXTRA) == 25
    assert list(saved["data"]["engine"]["extra_types"]) == EXTRA
    from safetensors.torch import load_file

    weights = load_file(str(run / "checkpoints" / "last.safetensors"))
    fc = [v for k, v in weights.items() if k.endswith("classifier.fc.weight")]
    assert len(fc) == 1 and fc[0].shape[0] == 25
    assert json.loads((run / "metrics.json").read_text())["step"] == 3
    # the confusion matrix is drawn 25×25 with the engine's names (the picture's size depends on both)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from maskdcpt.training.logging import render_confusion

    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    confusion = events.Images("classification/confusion")[-1]
    expected = render_confusion(np.zeros((25, 25), dtype=np.int64), list(example.label_names))
    assert (confusion.height, confusion.width) == expected.shape[:2]

    from maskdcpt.training.pretrain import load_pretrain_config

    with pytest.raises(ValueError, match=r"model.num_classes is 19 but the degradation engine labels 25 types"):
        load_pretrain_config(path, ["model.num_classes=19"])
    assert load_pretrain_config(path, ["model.num_classes=25"]).model.num_classes == 25


# --- levels -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("transform", sorted(LEVEL_MAPS))
def test_supported_transforms_grow_more_severe_with_the_level(transform, photo):
    engine = DegradationEngine(EngineConfig(extra_types={"x": {"albumentations": transform}}))
    means = [np.mean([psnr(engine.apply(photo, "x", level, seed=s).lq, photo) for s in range(3)]) for level in (0.0, 0.5, 1.0)]
    assert means[0] > means[1] > means[2], f"{transform}: mean PSNR at levels 0, 0.5, 1 = {np.round(means, 2)}"


def test_level_maps_scale_pixels_draw_signs_and_take_overrides(photo):
    config = EngineConfig(extra_types={
        "flare": {"albumentations": "RandomSunFlare", "level": {"src_radius": [10, 30]}},
        "ca": {"albumentations": "ChromaticAberration"},
        "emboss": {"albumentations": "Emboss", "level": {"strength": [0.1, 0.9]}},
        "plain": {"albumentations": "Emboss"},
    })
    engine = DegradationEngine(config)
    # src_radius keeps the table's pixel scaling (given at 256²) under the entry's own bounds
    assert engine.apply(photo, "flare", 1.0, seed=0).params["src_radius"] == round(30 * pixel_scale(photo.shape))
    assert engine.apply(photo, "flare", 0.0, seed=0).params["src_radius"] == round(10 * pixel_scale(photo.shape))
    # the aberration's magnitude follows the level, its sign (the fringe direction) is drawn per sample
    limits = [engine.apply(photo, "ca", 0.5, seed=s).params["primary_distortion_limit"] for s in range(12)]
    m = LEVEL_MAPS["ChromaticAberration"]["primary_distortion_limit"]
    assert [abs(lim[0]) for lim in limits] == [pytest.approx((m.at_0 + m.at_1) / 2)] * 12
    assert {np.sign(lim[0]) for lim in limits} == {-1, 1}
    # a transform outside the table follows a level mapping given in the entry, as a point range
    assert engine.apply(photo, "emboss", 0.5, seed=0).params["strength"] == [pytest.approx(0.5)] * 2
    # and without one it ignores the level, which --list's description says
    assert "(level ignored)" in config.resolve("plain").description
    assert engine.apply(photo, "plain", 0.5, seed=3).params["level_ignored"] is True
    assert "level_ignored" not in engine.apply(photo, "emboss", 0.5, seed=3).params
    assert np.array_equal(engine.apply(photo, "plain", 0.0, seed=3).lq, engine.apply(photo, "plain", 1.0, seed=3).lq)


def test_the_readme_table_documents_every_level_map():
    readme = (ROOT / "README.md").read_text()
    rows = {line.split("|")[1].strip(): line for line in readme.splitlines()
            if line.startswith("| ") and line.split("|")[1].strip() in LEVEL_MAPS}
    assert set(rows) == set(LEVEL_MAPS)
    for transform, params in LEVEL_MAPS.items():
        for name, m in params.items():
            assert f"`{name}` " in rows[transform], (transform, name)
            assert f"{m.at_0:g} → " in rows[transform] and f"{m.at_1:g}" in rows[transform], (transform, name)


def test_user_function_gets_image_level_rng_and_params(user_module, photo):
    engine = DegradationEngine(EngineConfig(extra_types={
        "vignette": {"function": f"{USER_MODULE}:vignette", "params": {"strength": 0.8}}}))
    sample = engine.apply(photo, "vignette", 1.0, seed=(1, 2))
    assert sample.type_id == NUM_TYPES and sample.params == {"function": f"{USER_MODULE}:vignette", "strength": 0.8}
    assert psnr(sample.lq, photo) < psnr(engine.apply(photo, "vignette", 0.3, seed=(1, 2)).lq, photo)
    assert np.array_equal(sample.lq, engine.apply(photo, "vignette", 1.0, seed=(1, 2)).lq)
    assert not np.array_equal(sample.lq, engine.apply(photo, "vignette", 1.0, seed=(1, 3)).lq)


# --- reproducibility ------------------------------------------------------------------------------------------


def _outputs(engine: DegradationEngine, image: np.ndarray) -> dict[str, np.ndarray]:
    return {name: engine.apply(image, name, 0.7, seed=(5, k)).lq for k, name in enumerate(EXTRA)}


def test_same_seed_same_output_other_seed_other_output(example, photo):
    engine = DegradationEngine(example)
    first, again = _outputs(engine, photo), _outputs(DegradationEngine(example), photo)
    for name in EXTRA:
        assert np.array_equal(first[name], again[name]), name
        # other seeds, other draws (the chromatic aberration draws only its direction: compare several)
        others = [engine.apply(photo, name, 0.7, seed=(6, k)).lq for k in range(6)]
        assert not all(np.array_equal(first[name], other) for other in others), name
    # a pickled engine (what a spawned DataLoader worker receives) gives the same pixels
    assert all(np.array_equal(first[n], o) for n, o in _outputs(pickle.loads(pickle.dumps(engine)), photo).items())


def test_extra_types_leave_the_global_rngs_alone(example, photo):
    random.seed(11), np.random.seed(11), torch.manual_seed(11)
    before = (random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state().clone())
    engine = DegradationEngine(EngineConfig(extra_types=dict(example.extra_types), types=EXTRA))
    for k in range(12):
        engine.sample(photo, seed=(0, k))
    _outputs(engine, photo)
    assert random.getstate() == before[0]
    assert np.array_equal(np.random.get_state()[1], before[1])
    assert torch.equal(torch.get_rng_state(), before[2])


class _Keyed(torch.utils.data.Dataset):
    """Item i: extra type EXTRA[i // 2 % 6] of the photo at seed (9, i // 2): each key comes twice in a row, so
    that with two workers, each taking every other item, both workers compute every key."""

    def __init__(self, engine: DegradationEngine, image: np.ndarray):
        self.engine, self.image = engine, image

    def __len__(self) -> int:
        return 2 * len(EXTRA)

    def __getitem__(self, i: int) -> dict:
        key = i // 2
        out = self.engine.apply(self.image, EXTRA[key], 0.6, seed=(9, key))
        return {"lq": torch.from_numpy(out.lq), "worker": torch.utils.data.get_worker_info().id}


def test_two_dataloader_workers_give_identical_outputs(example, photo):
    engine = DegradationEngine(example)
    loader = torch.utils.data.DataLoader(_Keyed(engine, photo[:64, :64]), batch_size=1, num_workers=2)
    items = list(loader)
    assert [int(b["worker"]) for b in items] == [0, 1] * len(EXTRA)
    for key, name in enumerate(EXTRA):
        in_process = engine.apply(photo[:64, :64], name, 0.6, seed=(9, key)).lq
        assert torch.equal(items[2 * key]["lq"][0], items[2 * key + 1]["lq"][0]), name
        assert np.array_equal(items[2 * key]["lq"][0].numpy(), in_process), name


_HASH_SCRIPT = """
import hashlib, json, sys
import numpy as np
from degradations import DegradationEngine
from degradations.cli import load_engine_config
from degradations.cli import main as cli_main
from degradations.photos import sample_photos
photo = dict(sample_photos())["chelsea"][100:228, 200:328].astype(np.float32) / 255.0
engine = DegradationEngine(load_engine_config(sys.argv[1]))
names = engine.label_names[19:]
print(json.dumps({n: hashlib.sha256(engine.apply(photo, n, 0.7, seed=(5, k)).lq.tobytes()).hexdigest()
                  for k, n in enumerate(names)}))
"""


def test_another_process_gives_identical_outputs(example, photo):
    result = subprocess.run([sys.executable, "-c", _HASH_SCRIPT, str(EXAMPLE)], capture_output=True, text=True, env=_env())
    assert result.returncode == 0, result.stderr
    theirs = json.loads(result.stdout.strip().splitlines()[-1])
    ours = {n: hashlib.sha256(lq.tobytes()).hexdigest() for n, lq in _outputs(DegradationEngine(example), photo).items()}
    assert theirs == ours


def test_two_engines_with_different_extras_do_not_interfere(photo):
    a = DegradationEngine(EngineConfig(extra_types={"x": {"albumentations": "ZoomBlur"}, "y": {"albumentations": "Posterize"}}))
    before = a.apply(photo, "x", 0.5, seed=1).lq
    b = DegradationEngine(EngineConfig(extra_types={"x": {"albumentations": "GaussNoise"}}))
    assert a.label_names[19:] == ("x", "y") and b.label_names[19:] == ("x",)
    assert a.resolve("x").description == "albumentations ZoomBlur" and b.resolve("x").description == "albumentations GaussNoise"
    with pytest.raises(ValueError, match="valid ids are 0..19"):
        b.resolve(20)
    assert np.array_equal(a.apply(photo, "x", 0.5, seed=1).lq, before)
    assert not np.array_equal(b.apply(photo, "x", 0.5, seed=1).lq, before)
    assert DegradationEngine().label_names == TYPE_NAMES


# --- configuration -------------------------------------------------------------------------------------------


@dataclass
class WithData:
    data: DataConfig = field(default_factory=DataConfig)


def test_extra_types_load_save_and_round_trip_through_the_config_loader(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(textwrap.dedent("""\
        data:
          engine:
            types: [noise, glare, 20]
            weights: {glare: 3}
            extra_types:
              glare: {albumentations: RandomSunFlare, params: {method: physics_based}, level: {src_radius: [20, 90]}}
              grain: {albumentations: ISONoise}
        """))
    cfg = load_config(WithData, path)
    engine = cfg.data.engine
    assert isinstance(engine, EngineConfig) and engine.label_names[19:] == ("glare", "grain")
    assert engine.type_names == ["noise", "glare", "grain"] and engine.weights == {"glare": 3.0}
    assert engine.extra_types["glare"].level == {"src_radius": (20.0, 90.0)}
    save_config(cfg, tmp_path / "resolved.yaml")
    assert load_config(WithData, tmp_path / "resolved.yaml") == cfg
    # the engine's own dict form round-trips too (what tools/degrade.py --config reads)
    again = EngineConfig.from_dict(engine.to_dict())
    assert (again.label_names, again.type_names, again.weights, again.extra_types) == (
        engine.label_names, engine.type_names, engine.weights, engine.extra_types)
    with pytest.raises(ValueError, match=r"unknown config key 'data.engine.extra_types.glare.strength'; valid keys in "
                                         r"data.engine.extra_types.glare: albumentations, function, params, level"):
        load_config(WithData, path, ["data.engine.extra_types.glare.strength=1"])
    with pytest.raises(ValueError, match=r"unknown config key 'extra_types.glare.strength'; valid keys in extra_types.glare"):
        EngineConfig.from_dict({"extra_types": {"glare": {"albumentations": "RandomSunFlare", "strength": 1}}})
    with pytest.raises(ValueError, match=r"data.engine.extra_types.glare.level.src_radius: expected 2 items"):
        load_config(WithData, path, ["data.engine.extra_types.glare.level.src_radius=[1]"])


def test_benchmark_times_extra_types(example):
    result = measure(size=32, runs=2, types=[example.resolve(n) for n in ("noise", *EXTRA)])
    assert result["type_ids"] == {"noise": 0, **{n: 19 + k for k, n in enumerate(EXTRA)}}
    assert all(ms > 0 for ms in result["per_type_ms"].values())
    table = format_table(result)
    assert " 24  plasma_shadow" in table and "uniform mix over 7 types" in table


# --- refusals ----------------------------------------------------------------------------------------------


REFUSALS = [
    ({"albumentations": "SunFlare"}, r"extra_types.bad.albumentations: unknown albumentations transform 'SunFlare'; did you mean RandomSunFlare"),
    ({"albumentations": "Rotate"}, r"extra_types.bad.albumentations: Rotate is a geometric transform .* misalign"),
    ({"albumentations": "ZoomBlur", "params": {"strenght": 2}}, r"extra_types.bad.params.strenght: ZoomBlur has no parameter 'strenght'; valid: max_factor, step_factor"),
    ({"albumentations": "ZoomBlur", "params": {"p": 0.5}}, r"extra_types.bad.params.p: the engine sets it"),
    ({"albumentations": "ZoomBlur", "params": {"max_factor": [1, 2]}}, r"extra_types.bad.params.max_factor: follows the level .*extra_types.bad.level"),
    ({"albumentations": "ZoomBlur", "level": {"zoom": [1, 2]}}, r"extra_types.bad.level.zoom: ZoomBlur has no parameter 'zoom'"),
    ({"albumentations": "ZoomBlur", "level": {"max_factor": [1.1]}}, r"extra_types.bad.level.max_factor: expected \[value at level 0, value at level 1\]"),
    ({"albumentations": "ZoomBlur", "level": {"max_factor": [0.1, 0.2]}}, r"extra_types.bad: albumentations ZoomBlur rejects .*'max_factor': \[0.1, 0.1\].*must be >= 1"),
    ({"albumentations": "RandomSunFlare", "params": {"method": "sparkle"}}, r"extra_types.bad: albumentations RandomSunFlare rejects .*'method': 'sparkle'"),
    ({"albumentations": "ZoomBlur", "function": "m:f"}, r"extra_types.bad: give exactly one of 'albumentations'"),
    ({"params": {}}, r"extra_types.bad: give exactly one of 'albumentations' .* got neither"),
    ({"function": "no_such_module_xyz:f"}, r"extra_types.bad.function: cannot import module 'no_such_module_xyz'"),
    ({"function": f"{USER_MODULE}"}, r"extra_types.bad.function: expected 'module:function'"),
    ({"function": f"{USER_MODULE}:missing"}, rf"extra_types.bad.function: module '{USER_MODULE}' has no attribute 'missing'"),
    ({"function": f"{USER_MODULE}:NOT_CALLABLE"}, r"extra_types.bad.function: .* is not callable"),
    ({"function": f"{USER_MODULE}:wrong_shape"}, r"extra type 'bad' returned shape \(47, 64, 3\) for an input of shape \(48, 64, 3\)"),
    ({"function": f"{USER_MODULE}:wrong_dtype"}, r"extra type 'bad' returned dtype float64, expected float32"),
    ({"function": f"{USER_MODULE}:global_numpy"}, r"extra_types.bad: two calls with the same seed gave different images"),
    ({"function": f"{USER_MODULE}:reseeds_global"}, r"extra_types.bad: changed a global random state"),
    ({"function": f"{USER_MODULE}:identity"}, r"extra_types.bad: left the test image unchanged at level 1"),
    ({"function": f"{USER_MODULE}:broken"}, r"extra_types.bad: fails on a 48×64 test image at level 0: RuntimeError: boom"),
    ({"function": f"{USER_MODULE}:needs_gain"}, r"extra_types.bad.params: .*needs_gain cannot be called as fn\(image, level, rng, \*\*params\)"),
    ({"function": f"{USER_MODULE}:vignette", "params": {"gain": 2}}, r"extra_types.bad.params: .*unexpected keyword argument 'gain'"),
    ({"function": f"{USER_MODULE}:vignette", "level": {"strength": [0, 1]}}, r"extra_types.bad.level: applies to albumentations entries"),
]


@pytest.mark.parametrize("entry,message", REFUSALS, ids=[m.split(":")[0] + f"-{i}" for i, (_, m) in enumerate(REFUSALS)])
def test_a_bad_entry_is_refused_naming_it(entry, message, user_module):
    with pytest.raises(ValueError, match=message):
        EngineConfig(extra_types={"noise_ok": {"function": f"{USER_MODULE}:vignette"}, "bad": entry})


def test_bad_names_and_misplaced_settings_are_refused(user_module):
    fine = {"function": f"{USER_MODULE}:vignette"}
    with pytest.raises(ValueError, match=r"extra_types.haze: 'haze' is one of the 19 built-in types"):
        EngineConfig(extra_types={"haze": fine})
    with pytest.raises(ValueError, match=r"extra_types.Lens Flare: a type name is lower-case letters"):
        EngineConfig(extra_types={"Lens Flare": fine})
    with pytest.raises(ValueError, match=r"params\['vig'\]: set the parameters of an extra type in extra_types.vig.params"):
        EngineConfig(extra_types={"vig": fine}, params={"vig": {"strength": 1}})
    with pytest.raises(ValueError, match=r"unknown degradation type 'vignete'; valid: .*downsample_noise_blur_jpeg, vig"):
        EngineConfig(extra_types={"vig": fine}, types=["vignete"])
    config = EngineConfig(extra_types={"vig": fine}, types=["vig", 19, "noise"], weights={"vig": 2})
    assert config.type_names == ["noise", "vig"] and DegradationEngine(config).probabilities.tolist() == [1 / 3, 2 / 3]


def test_the_cli_refuses_a_bad_entry_up_front(tmp_path, user_module):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"extra_types": {"my_sensor": {"function": f"{USER_MODULE}:wrong_shape"}}}))
    env = _env(user_module)
    for args in (["--list"], [str(tmp_path / "out")]):
        result = run_tool(*args, "--config", str(bad), env=env)
        assert result.returncode == 2, result.stdout
        assert "extra type 'my_sensor' returned shape" in result.stderr and str(bad) in result.stderr
        assert not (tmp_path / "out").exists()
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("extra_types:\n  flare: {albumentation: RandomSunFlare}\n")
    result = run_tool("--list", "--config", str(unknown), env=env)
    assert result.returncode == 2 and "unknown config key 'extra_types.flare.albumentation'" in result.stderr
