"""Backbones (generic over every registered ``*_tiny``), the sparse-masking invariants and the MaskDCPT wrapper."""
from __future__ import annotations

import pytest
import torch

from maskdcpt.models import Backbone, MaskDCPT, ReconstructionHead, build_maskdcpt, create_model, get_model_cfg, list_models
from maskdcpt.models.base import BlockStage
from maskdcpt.models.classifier import DegradationClassifier
from maskdcpt.models.masking import mask_like, random_keep_map

torch.set_num_threads(1)

TINY = [name for name in list_models() if name.endswith("_tiny")]

# Release configurations (METHOD.md §13): parameters and state_dict entries of the 5D test configs.
RELEASE_COUNTS = {
    "nafnet": (67_888_835, 664),
    "restormer": (26_126_644, 494),
    "promptir": (35_539_290, 830),
    "swinir": (11_455_563, 454),
}


def _randomize(model: torch.nn.Module, seed: int = 0, scale: float = 0.05) -> torch.nn.Module:
    """Perturb every parameter (zero-initialised gates included) so that every branch is active."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return model.eval()


def _pair(name: str, seed: int = 0):
    """A randomised masked model and the dense model holding the same weights (loaded strictly)."""
    torch.manual_seed(seed)
    masked = _randomize(create_model(name, masked=True), seed)
    # SwinIR's masked form drops the input mean shift by default (as released): compare like with like
    same_input = {"mean_shift": masked.mean_shift} if hasattr(masked, "mean_shift") else {}
    dense = create_model(name, **same_input)
    dense.load_state_dict(masked.state_dict(), strict=True)
    return masked, dense.eval()


def _input(model, batch=2, cells=4, seed=0):
    size = cells * model.stride
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _build_for_counting(name: str, masked: bool = False) -> torch.nn.Module:
    try:
        with torch.device("meta"):  # counts need no memory and no init time
            return create_model(name, masked=masked)
    except Exception:  # a constructor that cannot run on meta: build it for real
        return create_model(name, masked=masked)


# ---------------------------------------------------------------- registry and release configurations


def test_every_backbone_family_has_a_tiny_variant():
    assert "nafnet_tiny" in TINY
    families = {name.split("_")[0] for name in list_models()}
    assert families <= {name.split("_")[0] for name in TINY}, f"families without a *_tiny: {families}"


def test_unknown_model_is_a_value_error_listing_the_names():
    with pytest.raises(ValueError, match="nafnet_5d"):
        create_model("no_such_net")


@pytest.mark.parametrize("family", sorted(RELEASE_COUNTS))
def test_release_configuration_parameter_counts(family):
    names = [n for n in (f"{family}_5d", family) if n in list_models()]
    if not names:
        pytest.skip(f"no {family}_5d / {family} registered yet (another helper's backbone)")
    params, entries = RELEASE_COUNTS[family]
    model = _build_for_counting(names[0])
    assert sum(p.numel() for p in model.parameters()) == params
    assert len(model.state_dict()) == entries
    masked = _build_for_counting(names[0], masked=True)
    shapes = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    assert [(k, tuple(v.shape)) for k, v in masked.state_dict().items()] == shapes


@pytest.mark.parametrize("name", list_models())
def test_every_model_follows_the_backbone_contract_and_its_default_cfg(name):
    model = _build_for_counting(name)
    cfg = get_model_cfg(name)
    assert isinstance(model, Backbone) and model.default_cfg is cfg
    assert (model.stride, list(model.tap_dims), model.tap_downsample) == (cfg.stride, list(cfg.tap_dims), cfg.tap_downsample)
    stem = model.get_submodule(cfg.stem)
    assert isinstance(stem, torch.nn.Conv2d) and stem.in_channels == model.in_chans == 3
    assert cfg.param_key == ("params" if name.startswith("swinir") else "params_ema")


def test_nafnet_layout_and_taps():
    with torch.device("meta"):
        model = create_model("nafnet_5d")
    assert model.stride == 16 and model.tap_dims == [64, 128, 256, 512] and model.tap_downsample is False
    assert [len(getattr(model, f"decoder{i}").blocks) for i in range(4)] == [1, 1, 1, 1]
    assert [len(stage.blocks) for stage in model.encoders] == [1, 1, 1, 28]
    w32 = create_model("nafnet_w32")
    assert [len(s.blocks) for s in w32.encoders] == [2, 2, 4, 8] and len(w32.middle_blks.blocks) == 12
    assert w32.tap_dims == [32, 64, 128, 256]
    block = w32.encoders[0].blocks[0]
    assert torch.count_nonzero(block.beta) == 0 and torch.count_nonzero(block.gamma) == 0
    assert block.norm1.eps == 1e-5 and block.norm1.weight.shape == (32,)


# ---------------------------------------------------------------- generic backbone tests


@pytest.mark.parametrize("name", TINY)
def test_dense_forward_any_size(name):
    torch.manual_seed(0)
    model = create_model(name).eval()
    x = torch.rand(1, 3, 37, 45)
    with torch.no_grad():
        out = model(x)
    assert out.shape == x.shape and torch.isfinite(out).all()


@pytest.mark.parametrize("name", TINY)
def test_forward_features_shapes_follow_the_contract(name):
    model = create_model(name, masked=True)
    x = _input(model)
    keep = random_keep_map(2, (4, 4), 0.5, torch.Generator().manual_seed(1))
    with torch.no_grad():
        feat, taps = model.forward_features(x, keep)
    assert feat.shape[0] == 2 and feat.shape[-2:] == x.shape[-2:]
    assert [t.shape[1] for t in taps] == list(model.tap_dims)
    # what the classifier needs: each tap half the size of the previous one, or all full size for tap_downsample
    h0, w0 = taps[0].shape[-2:]
    for i, tap in enumerate(taps):
        scale = 1 if model.tap_downsample else 2**i
        assert tuple(tap.shape[-2:]) == (h0 // scale, w0 // scale), (i, tuple(tap.shape))
    if model.tap_downsample:
        assert (h0, w0) == tuple(x.shape[-2:])
    assert model.forward_head(feat).shape == x.shape


@pytest.mark.parametrize("name", TINY)
def test_masked_weights_load_strictly_into_dense_and_compute_the_same(name):
    masked, dense = _pair(name)
    assert [(k, v.shape) for k, v in masked.state_dict().items()] == [(k, v.shape) for k, v in dense.state_dict().items()]
    x = _input(masked, batch=1)
    ones = torch.ones(1, 1, 4, 4)
    with torch.no_grad():
        f_m, taps_m = masked.forward_features(x, ones)
        f_d, taps_d = dense.forward_features(x)
    torch.testing.assert_close(f_m, f_d, atol=1e-5, rtol=1e-4)
    for a, b in zip(taps_m, taps_d):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", TINY)
def test_leak_hidden_pixels_never_reach_visible_positions(name):
    """THE LEAK TEST: change only hidden pixels → every visible feature, tap and head pixel is bit-identical."""
    masked, dense = _pair(name, seed=1)
    x1 = _input(masked, seed=2)
    keep = random_keep_map(2, (4, 4), 0.5, torch.Generator().manual_seed(3))
    pix = mask_like(keep, x1)
    x2 = x1 * pix + torch.rand(x1.shape, generator=torch.Generator().manual_seed(4)) * (1 - pix)
    assert not torch.equal(x1, x2)
    with torch.no_grad():
        f1, taps1 = masked.forward_features(x1, keep)
        f2, taps2 = masked.forward_features(x2, keep)
        h1, h2 = masked.forward_head(f1), masked.forward_head(f2)
    for a, b in [(f1, f2), *zip(taps1, taps2)]:
        m = mask_like(keep, a)
        assert torch.equal(a * m, b * m)
        # sparse invariant: hidden positions hold exactly 0 (every branch re-masked, biases included)
        assert torch.count_nonzero(a * (1 - m)) == 0
        assert torch.count_nonzero(a * m) > 0
    assert torch.equal(h1 * pix, h2 * pix)

    # teeth: the dense model with the same weights does see the hidden pixels at visible positions
    with torch.no_grad():
        d1, _ = dense.forward_features(x1)
        d2, _ = dense.forward_features(x2)
    assert not torch.equal(d1 * pix[:, :1], d2 * pix[:, :1])


@pytest.mark.parametrize("name", TINY)
def test_grad_checkpointing_recomputes_blocks_and_gives_the_same_gradients(name):
    torch.manual_seed(0)
    model = _randomize(create_model(name, masked=True)).train()
    stages = [m for m in model.modules() if isinstance(m, BlockStage)]
    calls, block = [], stages[0].blocks[0]
    block.forward = lambda *args, _forward=block.forward: calls.append(1) or _forward(*args)  # count its runs
    x = _input(model, batch=1, cells=2)
    keep = torch.tensor([[[[1.0, 0.0], [1.0, 1.0]]]])
    grads = []
    for enable in (False, True):
        model.zero_grad()
        calls.clear()
        model.set_grad_checkpointing(enable)
        feat, taps = model.forward_features(x, keep)
        (model.forward_head(feat).square().mean() + sum(t.mean() for t in taps)).backward()
        grads.append([p.grad.clone() for p in model.parameters()])
        assert len(calls) == (2 if enable else 1)  # checkpointed: the block runs again in the backward pass
    assert all(torch.equal(a, b) for a, b in zip(*grads))
    assert all(s.grad_checkpointing for s in create_model(name, grad_checkpointing=True).modules()
               if isinstance(s, BlockStage))


@pytest.mark.parametrize("name", TINY)
def test_masked_model_rejects_a_keep_map_of_the_wrong_grid(name):
    masked = create_model(name, masked=True)
    x = _input(masked)
    with pytest.raises(ValueError):
        masked.forward_features(x, torch.ones(2, 1, 3, 3))  # wrong grid


def test_nafnet_visible_region_equals_the_dense_model_on_that_region():
    """SparK semantics: with the left half visible, the masked NAFNet computes on it exactly what the dense NAFNet
    computes on the crop (hidden neighbours act as zero padding, SCA pools over visible positions only)."""
    masked, dense = _pair("nafnet_tiny", seed=5)
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(6))
    keep = torch.zeros(1, 1, 4, 4)
    keep[..., :2] = 1
    with torch.no_grad():
        f_m, taps_m = masked.forward_features(x, keep)
        f_c, taps_c = dense.forward_features(x[..., :32])
        h_m, h_c = masked.forward_head(f_m), dense.forward_head(f_c)
    torch.testing.assert_close(f_m[..., :32], f_c, atol=1e-5, rtol=1e-4)
    for i, (a, b) in enumerate(zip(taps_m, taps_c)):
        torch.testing.assert_close(a[..., : 32 >> i], b, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(h_m[..., :32], h_c, atol=1e-5, rtol=1e-4)


def test_nafnet_masked_without_keep_is_the_dense_model():
    masked, dense = _pair("nafnet_tiny", seed=7)
    x = torch.rand(1, 3, 40, 24)
    with torch.no_grad():
        assert torch.equal(masked(x), dense(x))
    with pytest.raises(ValueError, match="masked=True"):
        dense.forward_features(torch.rand(1, 3, 32, 32), torch.ones(1, 1, 2, 2))
    with pytest.raises(ValueError, match="multiple of the stride"):
        dense.forward_features(torch.rand(1, 3, 40, 32))


# ---------------------------------------------------------------- keep maps


@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.75])
def test_keep_map_counts_differ_per_sample_and_are_reproducible(ratio):
    g = torch.Generator().manual_seed(0)
    keep = random_keep_map(16, (4, 6), ratio, g)
    assert keep.shape == (16, 1, 4, 6)
    assert set(keep.unique().tolist()) <= {0.0, 1.0}
    assert (keep.sum(dim=(1, 2, 3)) == round(24 * (1 - ratio))).all()
    assert len({tuple(k.flatten().tolist()) for k in keep}) > 1
    again = random_keep_map(16, (4, 6), ratio, torch.Generator().manual_seed(0))
    assert torch.equal(keep, again)


# ---------------------------------------------------------------- MaskDCPT


def test_maskdcpt_forward_shapes_and_gradients():
    torch.manual_seed(0)
    model = build_maskdcpt("nafnet_tiny")
    lq = torch.rand(2, 3, 64, 64)
    out = model(lq, generator=torch.Generator().manual_seed(0))
    assert out.reconstruction.shape == (2, 3, 64, 64)
    assert out.logits.shape == (2, 19)
    assert out.features.shape == (2, model.backbone.tap_dims[-1])
    assert out.keep.shape == (2, 1, 4, 4)
    assert (out.keep.sum(dim=(1, 2, 3)) == 8).all() and not torch.equal(out.keep[0], out.keep[1])
    # features are the pooled vector the logits come from
    torch.testing.assert_close(model.classifier.fc(out.features), out.logits)
    loss = (out.reconstruction - lq).abs().mean() + torch.nn.functional.cross_entropy(out.logits, torch.tensor([0, 3]))
    loss.backward()
    for name in ("intro.weight", "ending.weight", "encoders.0.blocks.0.beta", "decoder3.blocks.0.gamma"):
        assert model.backbone.get_parameter(name).grad.abs().sum() > 0, name
    for name in ("fc.weight", "mixing_weights", "bottleneck_layers.0.0.conv1.weight"):
        assert model.classifier.get_parameter(name).grad.abs().sum() > 0, name


def test_maskdcpt_pads_odd_sizes_and_reports_pixel_keep():
    model = build_maskdcpt("nafnet_tiny")
    out = model(torch.rand(1, 3, 50, 40), generator=torch.Generator().manual_seed(1))
    assert out.reconstruction.shape == (1, 3, 50, 40)
    assert out.keep.shape == (1, 1, 4, 3) and out.keep.sum() == 6
    pix = out.visible_pixels()
    assert pix.shape == (1, 1, 50, 40)
    assert torch.equal(pix[..., ::16, ::16], out.keep[..., :4, :3])


def test_maskdcpt_given_keep_is_used_and_generator_is_deterministic():
    model = build_maskdcpt("nafnet_tiny").eval()
    lq = torch.rand(2, 3, 32, 48)
    keep = torch.tensor([[1.0, 0, 1], [0, 1, 0]]).expand(2, 1, 2, 3).clone()
    with torch.no_grad():
        out = model(lq, keep=keep)
        a = model(lq, generator=torch.Generator().manual_seed(5))
        b = model(lq, generator=torch.Generator().manual_seed(5))
    assert torch.equal(out.keep, keep)
    assert torch.equal(a.keep, b.keep) and torch.equal(a.reconstruction, b.reconstruction)
    with pytest.raises(ValueError, match="keep map"):
        model(lq, keep=torch.ones(2, 1, 3, 3))


def test_maskdcpt_reconstruction_is_the_restorer_output_on_what_the_backbone_saw():
    """Transfer consistency by construction: unmasked, the reconstruction is the dense restorer's output (the
    head plus the global input residual); masked, it is the masked restorer's output, so the weights fine-tuning
    starts from already compute the residual the restorer adds to its input."""
    model = build_maskdcpt("nafnet_tiny", mask_ratio=0.0)
    _randomize(model.backbone, 3)
    dense = create_model("nafnet_tiny")
    dense.load_state_dict(model.backbone.state_dict())
    lq = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        out = model(lq)
        assert torch.equal(out.keep, torch.ones(1, 1, 2, 2))
        torch.testing.assert_close(out.reconstruction, dense(lq), rtol=0, atol=1e-6)
        masked = build_maskdcpt("nafnet_tiny", mask_ratio=0.5)
        masked.backbone.load_state_dict(model.backbone.state_dict())
        keep = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])
        torch.testing.assert_close(masked(lq, keep=keep).reconstruction, masked.backbone(lq, keep), rtol=0, atol=1e-6)
        # the releases' analysis head: the projection alone, without the input
        plain = build_maskdcpt("nafnet_tiny", mask_ratio=0.0, rec_residual=False)
        plain.backbone.load_state_dict(model.backbone.state_dict())
        feat, _ = plain.backbone.forward_features(lq)
        assert torch.equal(plain(lq).reconstruction, plain.backbone.ending(feat))


def test_maskdcpt_patch_size_must_be_a_stride_multiple_and_coarser_patches_do_not_leak():
    with pytest.raises(ValueError, match="multiple of the backbone stride 16"):
        build_maskdcpt("nafnet_tiny", patch_size=24)
    model = build_maskdcpt("nafnet_tiny", patch_size=32).eval()
    _randomize(model.backbone, 4)
    lq = torch.rand(1, 3, 64, 64)
    keep = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])
    pix = keep.repeat_interleave(32, 2).repeat_interleave(32, 3)
    with torch.no_grad():
        a = model(lq, keep=keep)
        b = model(lq * pix + (1 - pix) * torch.rand(1, 3, 64, 64), keep=keep)
    assert torch.equal(a.reconstruction * pix, b.reconstruction * pix)
    assert torch.equal(a.logits, b.logits)  # the classifier sees only (zero-filled) masked features


def test_maskdcpt_state_dict_and_encoder_transfer():
    model = build_maskdcpt("nafnet_tiny")
    assert isinstance(model.head, ReconstructionHead) and not list(model.head.parameters())
    n_backbone = sum(p.numel() for p in model.backbone.parameters())
    n_classifier = sum(p.numel() for p in model.classifier.parameters())
    assert sum(p.numel() for p in model.parameters()) == n_backbone + n_classifier
    assert {k.split(".")[0] for k in model.state_dict()} == {"backbone", "classifier"}
    dense = create_model("nafnet_tiny")
    dense.load_state_dict(model.backbone.state_dict(), strict=True)  # what the encoder export writes
    assert isinstance(model.classifier, DegradationClassifier) and model.classifier.tap_dims == [8, 16, 32, 64]


def test_maskdcpt_refuses_a_dense_backbone_when_masking():
    backbone = create_model("nafnet_tiny")
    classifier = DegradationClassifier(backbone.tap_dims)
    with pytest.raises(ValueError, match="masked=True"):
        MaskDCPT(backbone, classifier, mask_ratio=0.5)
    assert MaskDCPT(backbone, classifier, mask_ratio=0.0).mask_ratio == 0.0
