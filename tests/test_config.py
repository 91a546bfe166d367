"""The config loader: ranges declared once on the fields and checked where a config is read, naming the key."""
import dataclasses
import types
import typing

import pytest

from maskdcpt.config import RANGE, Range, field_metadata, load_config, ranged
from maskdcpt.errors import ConfigError, UserError
from maskdcpt.evaluation.evaluate import EvalConfig
from maskdcpt.launch.cluster_check import ClusterCheckConfig, load_cluster_check_config
from maskdcpt.training.finetune import FinetuneConfig, load_finetune_config
from maskdcpt.training.pretrain import PretrainConfig, load_pretrain_config


@pytest.mark.parametrize("override, message", [
    ("optim.lr=-1", "optim.lr: -1.0 is out of range; allowed: > 0"),
    ("optim.classifier_lr=-1e-4", "optim.classifier_lr: -0.0001 is out of range; allowed: >= 0"),
    ("optim.betas=[0.9, 1.5]", r"optim.betas\[1\]: 1.5 is out of range; allowed: \[0, 1\)"),
    ("loss.w_con=-0.1", "loss.w_con: -0.1 is out of range; allowed: >= 0"),
    ("loss.temperature=0", r"loss.temperature: 0.0 is out of range; allowed: > 0"),
    ("train.batch_size=-8", "train.batch_size: -8 is out of range; allowed: >= 1"),
    ("train.checkpoint_every=-1", "train.checkpoint_every: -1 is out of range; allowed: >= 0"),
    ("model.mask_ratio=1", r"model.mask_ratio: 1.0 is out of range; allowed: \[0, 1\)"),
    ("data.crop_size=16", "data.crop_size: 16 is out of range; allowed: >= 32"),
    ("data.sources=[{root: x, weight: -1}]", r"data.sources\[0\].weight: -1.0 is out of range; allowed: >= 0"),
    ("data.pseudo_gt_ratio=2", r"data.pseudo_gt_ratio: 2.0 is out of range; allowed: \[0, 1\]"),
])
def test_out_of_range_values_are_refused_naming_key_and_range(override, message):
    with pytest.raises(ConfigError, match=message):
        load_pretrain_config(None, [override])


def test_ranges_hold_for_every_loader_and_for_sections_built_in_code():
    with pytest.raises(ConfigError, match=r"ema_decay: 1.5 is out of range; allowed: \[0, 1\]"):
        load_finetune_config(None, ["ema_decay=1.5"])
    with pytest.raises(ConfigError, match="train.step_sleep_s"):
        load_cluster_check_config(None, ["train.step_sleep_s=-1"])
    # a subclass that only changes a default keeps its base's range
    with pytest.raises(ConfigError, match="train.max_steps: 0 is out of range; allowed: >= 1"):
        load_cluster_check_config(None, ["train.max_steps=0"])
    with pytest.raises(ConfigError, match="overlap"):
        load_config(EvalConfig, None, ["overlap=-4"])
    from maskdcpt.data.config import DataConfig

    with pytest.raises(ConfigError, match="data.num_workers"):
        DataConfig(num_workers=-1)
    assert load_pretrain_config(None, ["model.patch_size=null"]).model.patch_size is None  # None passes


def test_a_new_section_gets_checking_by_declaring_ranges():
    @dataclasses.dataclass
    class Val:
        every: int = ranged(100, ge=0)
        fraction: float | None = ranged(None, gt=0, le=1)

    @dataclasses.dataclass
    class Cfg:
        val: Val = dataclasses.field(default_factory=Val)

    assert load_config(Cfg, None, ["val.every=0", "val.fraction=0.5"]).val.fraction == 0.5
    with pytest.raises(ConfigError, match=r"val.fraction: 0.0 is out of range; allowed: \(0, 1\]"):
        load_config(Cfg, None, ["val.fraction=0"])
    assert str(Range(lt=3)) == "< 3" and str(Range(ge=1, lt=2.5)) == "[1, 2.5)"


def _numeric(tp) -> bool:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return any(_numeric(a) for a in typing.get_args(tp) if a is not type(None))
    if typing.get_origin(tp) is tuple:
        return all(_numeric(a) for a in typing.get_args(tp))
    return tp in (int, float)


# Numbers checked elsewhere, with the reason.
UNRANGED = {
    "EngineConfig.level_range": "its __post_init__ checks 0 <= lo <= hi <= 1 together",
}


@pytest.mark.parametrize("root", [PretrainConfig, FinetuneConfig, ClusterCheckConfig, EvalConfig])
def test_every_numeric_setting_declares_its_range(root):
    missing = []

    def walk(cls, path):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            tp = hints[f.name]
            if dataclasses.is_dataclass(tp):
                walk(tp, f"{path}.{f.name}")
            elif typing.get_origin(tp) is list and dataclasses.is_dataclass(typing.get_args(tp)[0]):
                walk(typing.get_args(tp)[0], f"{path}.{f.name}[]")
            elif _numeric(tp) and field_metadata(cls, f.name, RANGE) is None \
                    and f"{cls.__name__}.{f.name}" not in UNRANGED:
                missing.append(f"{path}.{f.name}")

    walk(root, root.__name__)
    assert not missing, f"numeric settings without a declared range: {missing}"


@pytest.mark.parametrize("overrides, message", [
    (["model.name=nafnet_huge"], "model.name: unknown model 'nafnet_huge'; registered: nafnet_5d"),
    (["model.patch_size=7"], "model.patch_size: 7 is not a multiple of nafnet_tiny's stride 16"),
    (["train.max_steps"], "override 'train.max_steps' is not of the form key=value"),
    (["data.engine={types: [noise"], "override 'data.engine={types: \\[noise': the value is not valid YAML"),
])
def test_config_mistakes_are_config_errors_naming_the_culprit(overrides, message):
    with pytest.raises(ConfigError, match=message) as info:
        load_pretrain_config(None, overrides)
    assert isinstance(info.value, UserError) and isinstance(info.value, ValueError)


def test_a_yaml_syntax_error_names_file_line_and_column(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  max_steps: 3\n  batch_size: [4\n")
    with pytest.raises(ConfigError, match=r"bad.yaml': invalid YAML at line 4, column 1"):
        load_pretrain_config(path)


def test_a_section_given_in_part_keeps_the_rest_of_its_own_default():
    # These fell back to the class defaults: fine-tuning lost its warm-up and its 5D task set as soon as any
    # other optim / data key was given; pre-training its demo learning rates and crops.
    assert load_finetune_config(None, ["optim.lr=1e-4"]).optim.warmup_steps == 20
    engine = load_finetune_config(None, ["data.crop_size=64"]).data.engine
    assert engine.type_names == load_finetune_config().data.engine.type_names == \
        ["noise", "motion_blur", "haze", "rain_streaks", "low_light"]
    assert engine.params["noise"]["sigma"] == [15.0, 50.0]
    demo = load_pretrain_config(None, ["optim.warmup_steps=2"]).optim
    assert (demo.lr, demo.classifier_lr, demo.warmup_steps) == (5e-4, 5e-3, 2)
    data = load_pretrain_config(None, ["data.crops_per_image=2"]).data
    assert (data.crop_size, data.crops_per_image, data.engine.level_range) == (32, 2, (0.1, 1.0))
    assert load_finetune_config(None, ["data.engine.types=[haze]"]).data.engine.type_names == ["haze"]
