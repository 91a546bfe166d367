"""The degradation-classification decoder: release layout and counts, forward contract, tap down-sampling."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from maskdcpt.models.classifier import DegradationClassifier

torch.set_num_threads(1)

# METHOD.md §13: the release classifier (PromptIR_NoImg_DC, 19 classes) for each backbone's taps.
RELEASE = {
    "nafnet": ([64, 128, 256, 512], False, 49_297_687, 97),
    "restormer": ([96, 96, 192], False, 7_452_502, 78),
    "promptir": ([96, 192, 192], False, 9_693_910, 78),
    "swinir": ([180, 180, 180], True, 10_483_042, 78),
}


def _release_layout(dims: list[int], classes: int, blocks: int = 2) -> dict[str, tuple[int, ...]]:
    """The key → shape table of the release classifier, written out from its naming rules."""
    table: dict[str, tuple[int, ...]] = {"mixing_weights": (len(dims),)}

    def stage(prefix: str, c: int) -> None:
        for b in range(blocks):
            for conv, shape in (("conv1", (2 * c, c, 1, 1)), ("conv2", (2 * c, 2 * c, 3, 3)), ("conv3", (c, 2 * c, 1, 1))):
                table[f"{prefix}.{b}.{conv}.weight"] = shape
                table[f"{prefix}.{b}.{conv}.norm.weight"] = (shape[0],)
                table[f"{prefix}.{b}.{conv}.norm.bias"] = (shape[0],)

    for i, c in enumerate(dims):
        stage(f"bottleneck_layers.{i}", c)
        nxt = dims[i + 1] if i + 1 < len(dims) else c
        table[f"downsample_layers.{i}.0.weight"] = (nxt, c, 1, 1)
    stage("last_stage", dims[-1])
    table["fc.weight"] = (classes, dims[-1])
    table["fc.bias"] = (classes,)
    return table


@pytest.mark.parametrize("backbone", sorted(RELEASE))
def test_release_layout_and_counts(backbone):
    dims, downsample, params, entries = RELEASE[backbone]
    with torch.device("meta"):
        model = DegradationClassifier(dims, num_classes=19, tap_downsample=downsample)
    assert sum(p.numel() for p in model.parameters()) == params
    state = model.state_dict()
    assert len(state) == entries
    assert {k: tuple(v.shape) for k, v in state.items()} == _release_layout(dims, 19)


def test_init_msra_bias_free_ln_eps_and_equal_mixing():
    torch.manual_seed(0)
    model = DegradationClassifier([32, 64], num_classes=5)
    conv = model.bottleneck_layers[0][0].conv2  # 3×3, 64 → 64: fan_out = 64·9
    assert conv.bias is None and conv.norm.eps == 1e-6
    assert abs(conv.weight.std().item() - math.sqrt(2 / (64 * 9))) < 0.01
    assert torch.equal(model.mixing_weights.detach(), torch.ones(2))
    assert not any(name.endswith(".bias") and "norm" not in name and not name.startswith("fc")
                   for name, _ in model.named_parameters())


def _taps(dims, size, batch=2, seed=0, same_size=False):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, d, size if same_size else size >> i, size if same_size else size >> i, generator=g)
            for i, d in enumerate(dims)]


def test_forward_returns_logits_and_the_pooled_vector_they_come_from():
    torch.manual_seed(0)
    model = DegradationClassifier([8, 16, 32], num_classes=19).eval()
    logits, pooled = model(_taps([8, 16, 32], 32))
    assert logits.shape == (2, 19) and pooled.shape == (2, 32)
    torch.testing.assert_close(model.fc(pooled), logits)
    assert (pooled >= 0).all()  # average of ReLU outputs


def test_every_tap_and_the_mixing_weights_matter():
    torch.manual_seed(0)
    model = DegradationClassifier([8, 16, 32], num_classes=7)
    taps = _taps([8, 16, 32], 32)
    logits, _ = model(taps)
    logits.square().sum().backward()
    assert (model.mixing_weights.grad.abs() > 0).all()
    with torch.no_grad():
        for i in range(3):
            changed = [t.clone() for t in taps]
            changed[i] += 1.0
            assert not torch.allclose(model(changed)[0], logits), f"tap {i} is ignored"


def test_tap_downsample_equals_nearest_subsampling_of_full_size_taps():
    torch.manual_seed(0)
    dims = [12, 12, 12]
    full = _taps(dims, 32, same_size=True)
    swin = DegradationClassifier(dims, num_classes=4, tap_downsample=True).eval()
    plain = DegradationClassifier(dims, num_classes=4).eval()
    plain.load_state_dict(swin.state_dict(), strict=True)
    with torch.no_grad():
        a = swin(full)
        b = plain([t[..., :: 2**i, :: 2**i] for i, t in enumerate(full)])
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_bad_taps_are_value_errors_naming_the_tap():
    model = DegradationClassifier([8, 16], num_classes=3)
    with pytest.raises(ValueError, match="expected 2 taps"):
        model(_taps([8], 16))
    with pytest.raises(ValueError, match="tap 1 must be"):
        model(_taps([8, 12], 16))
    with pytest.raises(ValueError, match="tap 1 is"):
        model([torch.randn(1, 8, 16, 16), torch.randn(1, 16, 16, 16)])
    with pytest.raises(ValueError):
        DegradationClassifier([], num_classes=3)


def test_masked_batchnorm_takes_its_statistics_from_visible_positions_only():
    from maskdcpt.models.classifier import MaskedBatchNorm2d

    torch.manual_seed(0)
    x = torch.randn(4, 3, 6, 6)
    mask = (torch.rand(4, 1, 6, 6) > 0.5).float()
    bn = MaskedBatchNorm2d(3, momentum=1.0).train()
    y = bn(x, mask)
    visible = x.permute(1, 0, 2, 3)[:, mask[:, 0].bool()]  # (C, n visible)
    mean, var = visible.mean(1), visible.var(1, unbiased=False)
    assert torch.allclose(y.permute(1, 0, 2, 3)[:, mask[:, 0].bool()],
                          (visible - mean[:, None]) / torch.sqrt(var[:, None] + bn.eps), atol=1e-5)
    # momentum 1: the running statistics are exactly this batch's visible ones (variance unbiased, as BatchNorm)
    assert torch.allclose(bn.running_mean, mean, atol=1e-6)
    assert torch.allclose(bn.running_var, visible.var(1, unbiased=True), atol=1e-5)
    # without a mask, or in eval mode, it is nn.BatchNorm2d
    ref = torch.nn.BatchNorm2d(3).train()
    assert torch.allclose(MaskedBatchNorm2d(3).train()(x), ref(x), atol=1e-6)


@pytest.mark.parametrize("norm", ["batch", "layer"])
def test_sparse_classifier_ignores_what_the_keep_map_hides(norm):
    """With a keep map, the logits depend on visible positions only: changing hidden tap values (which a masked
    backbone sets to 0, but the classifier must not rely on it) leaves them unchanged, also in training mode."""
    torch.manual_seed(0)
    dims = [4, 8, 16]
    clf = DegradationClassifier(dims, 5, norm=norm).train()
    keep = (torch.rand(3, 1, 2, 2) > 0.5).float()
    keep[:, :, 0, 0] = 1  # every image keeps something
    taps = [torch.randn(3, d, 16 >> i, 16 >> i) for i, d in enumerate(dims)]
    other = []
    for tap in taps:
        hidden = 1 - torch.nn.functional.interpolate(keep, size=tap.shape[-2:], mode="nearest")
        other.append(tap + 5 * torch.randn_like(tap) * hidden)
    a_logits, a_pooled = clf(taps, keep)
    b_logits, b_pooled = clf(other, keep)
    assert torch.allclose(a_logits, b_logits, atol=1e-5) and torch.allclose(a_pooled, b_pooled, atol=1e-5)
    assert not torch.allclose(clf(taps)[0], clf(other)[0], atol=1e-3)  # without the keep map they matter


def test_the_release_recipes_keep_two_blocks_per_level_and_the_cpu_default_has_one():
    from maskdcpt.models import build_maskdcpt
    from maskdcpt.training.pretrain import load_pretrain_config

    recipes = Path(__file__).resolve().parents[1] / "configs" / "pretrain"
    for name in ("nafnet", "restormer", "promptir", "swinir"):
        assert load_pretrain_config(recipes / f"{name}_uir.yaml").model.classifier_blocks == 2, name
    cfg = load_pretrain_config()
    assert cfg.model.classifier_blocks == 1
    model = build_maskdcpt(cfg.model.name, classifier_blocks=cfg.model.classifier_blocks)
    dims = list(model.backbone.tap_dims)
    shapes = {k: tuple(p.shape) for k, p in model.classifier.named_parameters()}  # BatchNorm adds only buffers
    assert shapes == _release_layout(dims, 19, blocks=1)
