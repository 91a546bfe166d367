import pytest
import torch

from maskdcpt.evaluation import lpips


def _weights_file(tmp_path, net="alex", official_names=False):
    """A complete LPIPS weights file with a randomly initialised torchvision backbone and random non-negative
    linear layers, in torchvision naming or in the lpips package's naming."""
    torch.manual_seed(0)
    trunk = lpips.LPIPS(net)  # its trunk is torchvision's alexnet/vgg16 `features`, randomly initialised
    state = {}
    ends, channels = lpips._TAPS[net]
    for key, value in trunk.features.state_dict().items():
        index = int(key.split(".")[0])
        if official_names:
            slice_id = next(i for i, end in enumerate(ends) if index < end) + 1
            state[f"net.slice{slice_id}.{key}"] = value
        else:
            state[f"features.{key}"] = value
    for i, c in enumerate(channels):
        state[f"lin{i}.model.1.weight" if official_names else f"lin{i}.weight"] = torch.rand(1, c, 1, 1)
    path = tmp_path / f"lpips_{net}_{int(official_names)}.pth"
    torch.save(state, path)
    return path


def _images(b=2, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, size, size, generator=g), torch.rand(b, 3, size, size, generator=g)


def test_lpips_zero_for_identical_symmetric_positive_otherwise(tmp_path):
    model = lpips.load_lpips(_weights_file(tmp_path))
    x, y = _images()
    assert model.net_name == "alex"
    torch.testing.assert_close(model(x, x), torch.zeros(2), rtol=0, atol=1e-7)
    torch.testing.assert_close(model(x, y), model(y, x), rtol=1e-6, atol=0)
    assert torch.all(model(x, y) > 0)
    # closer images are closer: a little noise < a different image
    near = (x + 0.02 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    assert torch.all(model(x, near) < model(x, y))


def test_official_key_names_load_to_the_same_metric(tmp_path):
    ours = lpips.load_lpips(_weights_file(tmp_path))
    official = lpips.load_lpips(_weights_file(tmp_path, official_names=True))
    x, y = _images(seed=2)
    torch.testing.assert_close(ours(x, y), official(x, y), rtol=0, atol=0)


def test_combine_weights_and_env_var(tmp_path, monkeypatch):
    full = torch.load(_weights_file(tmp_path), weights_only=True)
    torch.save({k: v for k, v in full.items() if k.startswith("features.")}, tmp_path / "backbone.pth")
    torch.save({f"{k[:4]}.model.1.weight": v for k, v in full.items() if k.startswith("lin")}, tmp_path / "lins.pth")
    combined = lpips.combine_weights(tmp_path / "backbone.pth", tmp_path / "lins.pth", tmp_path / "lpips.safetensors")
    monkeypatch.setenv(lpips.ENV_VAR, str(combined))
    assert lpips.available()
    x, y = _images(seed=3)
    torch.testing.assert_close(lpips.load_lpips()(x, y), lpips.load_lpips(_weights_file(tmp_path))(x, y))


def test_unavailable_without_weights(tmp_path, monkeypatch):
    monkeypatch.delenv(lpips.ENV_VAR, raising=False)
    assert not lpips.available()
    assert lpips.ENV_VAR in lpips.unavailable_reason()
    assert "does not exist" in lpips.unavailable_reason(tmp_path / "none.pth")
    with pytest.raises(ValueError, match="none.pth"):
        lpips.load_lpips(tmp_path / "none.pth")
    torch.save({"features.0.weight": torch.zeros(64, 3, 11, 11)}, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match="partial.pth.*incomplete"):
        lpips.load_lpips(tmp_path / "partial.pth")
