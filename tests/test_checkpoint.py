"""Weight files: release layouts, wrappers and prefixes, reports by name, refusal of executable pickles, atomic
writes, and where the file code lives (the layering of the packages: tests/test_architecture.py)."""
from __future__ import annotations

import os
import pickle
import stat
import zipfile
from pathlib import Path

import pytest
import torch

from maskdcpt.errors import CheckpointError
from maskdcpt.io import atomic_write, read_metadata, read_state_dict, remove_stale_temporaries, save_weights, unwrap_state_dict
from maskdcpt.models import create_model, load_pretrained, load_restorer
from maskdcpt.models.nafnet import checkpoint_filter_fn
from maskdcpt.training.checkpoint import load_state, save_state
from maskdcpt.training.finetune import load_pretrained_weights

ROOT = Path(__file__).resolve().parents[1]

torch.set_num_threads(1)

TINY = dict(width=8, enc=[1, 1, 1, 1], middle=1, dec=[1, 1, 1, 1])
FIVE_D = dict(width=64, enc=[1, 1, 1, 28], middle=1, dec=[1, 1, 1, 1])


def _release_nafnet_layout(width, enc, middle, dec, stage_infix=".blocks") -> dict[str, tuple[int, ...]]:
    """Key → shape of the release's NAFNetBaseline, written out from its naming rules (intro, ending, encoders,
    middle_blks, ups, downs, decoder{i}; blocks inside ``.blocks``)."""
    table: dict[str, tuple[int, ...]] = {}

    def block(prefix: str, c: int) -> None:
        for name, shape in {
            "beta": (1, c, 1, 1), "gamma": (1, c, 1, 1),
            "conv1.weight": (2 * c, c, 1, 1), "conv1.bias": (2 * c,),
            "conv2.weight": (2 * c, 1, 3, 3), "conv2.bias": (2 * c,),
            "conv3.weight": (c, c, 1, 1), "conv3.bias": (c,),
            "sca.1.weight": (c, c, 1, 1), "sca.1.bias": (c,),
            "conv4.weight": (2 * c, c, 1, 1), "conv4.bias": (2 * c,),
            "conv5.weight": (c, c, 1, 1), "conv5.bias": (c,),
            "norm1.weight": (c,), "norm1.bias": (c,), "norm2.weight": (c,), "norm2.bias": (c,),
        }.items():
            table[f"{prefix}.{name}"] = shape

    table.update({"intro.weight": (width, 3, 3, 3), "intro.bias": (width,),
                  "ending.weight": (3, width, 3, 3), "ending.bias": (3,)})
    c = width
    for i, n in enumerate(enc):
        for j in range(n):
            block(f"encoders.{i}{stage_infix}.{j}", c)
        table[f"downs.{i}.weight"] = (2 * c, c, 2, 2)
        table[f"downs.{i}.bias"] = (2 * c,)
        c *= 2
    for j in range(middle):
        block(f"middle_blks{stage_infix}.{j}", c)
    for i, n in enumerate(dec):
        table[f"ups.{i}.0.weight"] = (2 * c, c, 1, 1)
        c //= 2
        for j in range(n):
            block(f"decoder{i}{stage_infix}.{j}", c)
    return table


def _synthetic(layout: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(shape, generator=g) for k, shape in layout.items()}


def test_release_layout_equals_ours_at_the_5d_configuration():
    with torch.device("meta"):
        model = create_model("nafnet_5d")
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == _release_nafnet_layout(**FIVE_D)
    assert len(ours) == 664


@pytest.mark.parametrize("key", ["params_ema", "params"])
def test_release_checkpoint_with_module_prefix_loads_strictly(tmp_path, key):
    weights = _synthetic(_release_nafnet_layout(**TINY))
    path = tmp_path / "net_g_latest.pth"
    torch.save({key: {f"module.{k}": v for k, v in weights.items()}}, path)
    for masked in (False, True):
        model = create_model("nafnet_tiny", masked=masked)
        report = load_pretrained(model, path)  # asks params_ema, falls back to params
        assert report.ok and report.source_key == key and len(report.loaded) == len(weights)
        state = model.state_dict()
        assert all(torch.equal(state[k], v) for k, v in weights.items())


def test_asked_key_wins_over_the_other_wrapper(tmp_path):
    a, b = _synthetic(_release_nafnet_layout(**TINY), 1), _synthetic(_release_nafnet_layout(**TINY), 2)
    path = tmp_path / "both.pth"
    torch.save({"params": a, "params_ema": b}, path)
    model = create_model("nafnet_tiny")
    assert load_pretrained(model, path, key="params").source_key == "params"
    assert torch.equal(model.intro.weight, a["intro.weight"])
    load_pretrained(model, path)
    assert torch.equal(model.intro.weight, b["intro.weight"])


def test_swinir_5d_loads_params_where_the_others_load_params_ema(tmp_path):
    """The release's SwinIR-5D config loads 'params' (METHOD.md §13). The loader used to take 'params_ema' before
    SwinIR's own param_key was looked at; the registry's default config now names the key."""
    small = dict(embed_dim=6, depths=(1, 1), num_heads=(1, 1))  # the registered 'swinir', shrunk
    torch.manual_seed(0)
    params = create_model("swinir", **small).state_dict()
    ema = {k: v + 1.0 for k, v in params.items()}
    path = tmp_path / "swinir_5d.pth"
    torch.save({"params": params, "params_ema": ema}, path)
    model = create_model("swinir", **small)
    report = load_pretrained(model, path)
    assert report.source_key == "params"
    assert all(torch.equal(model.state_dict()[k], v) for k, v in params.items())
    restorer = load_restorer(path, arch="swinir", arch_kwargs=small)  # evaluation and fine-tuning ask the same key
    assert torch.equal(restorer.conv_first.weight, params["conv_first.weight"])
    assert "(key 'params')" in load_pretrained_weights(create_model("swinir", **small), str(path))
    load_pretrained(model, path, key="params_ema")  # an explicit key still wins
    assert torch.equal(model.conv_first.weight, ema["conv_first.weight"])


def test_unwrap_falls_back_from_the_asked_key_and_strips_ddp():
    a, b = {"module.w": torch.zeros(1)}, {"w": torch.ones(1)}
    assert unwrap_state_dict({"params": a}, "params_ema") == ({"w": a["module.w"]}, "params")
    assert unwrap_state_dict({"params_ema": b}, "params")[1] == "params_ema"
    assert unwrap_state_dict({"params": a, "params_ema": b}, "params")[0] == {"w": a["module.w"]}
    assert unwrap_state_dict({"state_dict": b, "epoch": 3})[1] == "state_dict"
    assert unwrap_state_dict(b) == (b, None)


def test_bare_state_dict_and_safetensors_round_trip(tmp_path):
    torch.manual_seed(0)
    source = create_model("nafnet_tiny")
    torch.save(source.state_dict(), tmp_path / "bare.pth")
    save_weights(source, tmp_path / "ours.safetensors", {"format": "test"})
    for name in ("bare.pth", "ours.safetensors"):
        target = create_model("nafnet_tiny")
        report = load_pretrained(target, tmp_path / name)
        assert report.ok and report.source_key is None
        assert all(torch.equal(target.state_dict()[k], v) for k, v in source.state_dict().items())


def test_dcpt_sequential_layout_is_mapped_by_the_filter(tmp_path):
    release = _synthetic(_release_nafnet_layout(**TINY, stage_infix=""))
    assert "decoder3.0.conv1.weight" in release and "middle_blks.0.beta" in release
    path = tmp_path / "dcpt.pth"
    torch.save({"params": release}, path)
    model = create_model("nafnet_tiny")
    assert load_pretrained(model, path).ok  # the model's own checkpoint_filter_fn is applied
    assert torch.equal(model.decoder3.blocks[0].conv1.weight, release["decoder3.0.conv1.weight"])
    original = {k.replace("decoder", "decoders.", 1) if k.startswith("decoder") else k: v for k, v in release.items()}
    assert set(checkpoint_filter_fn(original)) == set(create_model("nafnet_tiny").state_dict())


def test_missing_extra_and_misshaped_keys_are_reported_by_name(tmp_path):
    weights = _synthetic(_release_nafnet_layout(**TINY))
    del weights["decoder2.blocks.0.conv4.bias"]
    weights["decoder9.blocks.0.extra"] = torch.zeros(3)
    weights["intro.weight"] = torch.zeros(8, 3, 5, 5)
    path = tmp_path / "broken.pth"
    torch.save({"params_ema": weights}, path)
    model = create_model("nafnet_tiny")
    before = model.ending.weight.clone()
    with pytest.raises(ValueError) as info:
        load_pretrained(model, path)
    message = str(info.value)
    for text in ("broken.pth", "decoder2.blocks.0.conv4.bias", "decoder9.blocks.0.extra", "intro.weight", "[8, 3, 5, 5]"):
        assert text in message
    assert torch.equal(model.ending.weight, before)  # strict failure copies nothing

    report = load_pretrained(model, path, strict=False)
    assert report.missing == ["decoder2.blocks.0.conv4.bias"]
    assert report.unexpected == ["decoder9.blocks.0.extra"]
    assert report.mismatched == [("intro.weight", (8, 3, 5, 5), (8, 3, 3, 3))]
    assert torch.equal(model.ending.weight, weights["ending.weight"])


class _Payload:
    """Unpickling this would run a shell command that creates the marker file."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _ExecPayload:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("writer", ["torch_zip", "legacy_pickle", "exec_payload"])
def test_malicious_pickle_is_refused_and_never_executed(tmp_path, writer):
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.pth"
    if writer == "torch_zip":
        torch.save({"params_ema": {"intro.weight": torch.zeros(1)}, "x": _Payload(str(marker))}, path)
        assert zipfile.is_zipfile(path)
    elif writer == "legacy_pickle":
        with open(path, "wb") as f:
            pickle.dump({"params_ema": _Payload(str(marker))}, f)
    else:
        torch.save({"params": _ExecPayload(str(marker))}, path)
    with pytest.raises(CheckpointError, match="evil.pth: refused: ") as info:
        load_pretrained(create_model("nafnet_tiny"), path)
    assert not marker.exists()
    # our own words: never torch's advice to retry with weights_only=False ("will likely succeed")
    assert "weights_only" not in str(info.value) and "succeed" not in str(info.value)
    assert "Nothing in it was executed" in str(info.value)
    if writer == "legacy_pickle":  # the payload is real: an unrestricted unpickler runs it (inside tmp_path)
        with open(path, "rb") as f:
            pickle.load(f)
        assert marker.exists()


def test_corrupt_and_unstructured_files_are_value_errors(tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="junk.pth"):
        read_state_dict(junk)
    odd = tmp_path / "odd.pth"
    torch.save({"epoch": 3, "optimizer": {"lr": 1e-3}}, odd)
    with pytest.raises(ValueError, match="odd.pth.*params"):
        read_state_dict(odd)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 16)
    with pytest.raises(ValueError, match="bad.safetensors"):
        read_state_dict(bad)
    with pytest.raises(FileNotFoundError):
        read_state_dict(tmp_path / "absent.pth")


def test_training_state_is_read_weights_only(tmp_path):
    marker = tmp_path / "PWNED"
    path = tmp_path / "last.ckpt"
    torch.save({"step": 1, "x": _Payload(str(marker))}, path)
    with pytest.raises(ValueError, match="last.ckpt"):
        load_state(path)
    assert not marker.exists()
    save_state({"step": 2, "model": {"w": torch.ones(2)}}, path)
    assert load_state(path)["step"] == 2


def test_a_failed_write_leaves_the_previous_file(tmp_path):
    path = tmp_path / "w.safetensors"
    save_weights({"a": torch.ones(2)}, path, {"format": "test", "step": 3, "name": "x"})
    before = path.read_bytes()

    def killed(tmp: str) -> None:
        Path(tmp).write_bytes(b"half a file")
        raise KeyboardInterrupt  # what a signal looks like mid-write

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, killed)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]
    assert read_metadata(path) == {"format": "test", "step": "3", "name": "x"}  # non-strings stored as JSON
    with pytest.raises(ValueError, match="must end in .safetensors"):
        save_weights({"a": torch.ones(2)}, tmp_path / "w.pth", {"format": "test"})
    with pytest.raises(ValueError, match="format"):  # every weight file says what it is
        save_weights({"a": torch.ones(2)}, path)


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_written_files_honour_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        save_weights({"a": torch.ones(2)}, tmp_path / "w.safetensors", {"format": "test"})
        save_state({"step": 1}, tmp_path / "last.ckpt")
    finally:
        os.umask(old)
    for name in ("w.safetensors", "last.ckpt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~umask, name


def test_stale_temporaries_of_killed_writes_are_removed(tmp_path):
    (tmp_path / "last.ckpt").write_bytes(b"kept")
    stale = [tmp_path / ".last.safetensors.k3j_9x2a.tmp", tmp_path / ".last.ckpt.0a1b2c3d.tmp"]
    for path in stale:
        path.write_bytes(b"half a file")
    (tmp_path / ".hidden.tmp").write_bytes(b"not ours")  # not atomic_write's pattern
    assert sorted(remove_stale_temporaries(tmp_path)) == sorted(stale)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".hidden.tmp", "last.ckpt"]


def test_torch_load_lives_in_one_module():
    users = sorted(str(f.relative_to(ROOT)) for f in (ROOT / "maskdcpt").rglob("*.py") if "torch.load(" in f.read_text())
    assert users == ["maskdcpt/io.py"]
