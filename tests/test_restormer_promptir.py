"""Restormer and PromptIR: release layouts, the backbone contract, and the masked form's sparsity."""
from __future__ import annotations

import re

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from maskdcpt.io import unwrap_state_dict
from maskdcpt.models.masking import LayerNorm2d, random_keep_map
from maskdcpt.models.promptir import PromptGenBlock, promptir, promptir_tiny
from maskdcpt.models.restormer import (
    ChannelAttention,
    Downsample,
    GatedDconvFeedForward,
    PatchEmbed,
    TransformerBlock,
    Upsample,
    checkpoint_filter_fn,
    restormer,
    restormer_tiny,
)

from conftest import visible

TINY = {
    "restormer_tiny": restormer_tiny,
    "restormer_tiny_bias": lambda masked=False, **kw: restormer_tiny(masked=masked, bias=True, **kw),
    "promptir_tiny": promptir_tiny,
}


def lively_(model: nn.Module) -> nn.Module:
    """Re-draw weights at unit gain (std 1/sqrt(fan_in)) and non-zero biases/norm affines: the
    release init (std 0.02) leaves activations so small that differences hide under tolerances."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("prompt_param"):
                continue
            if p.ndim > 1:
                p.normal_(0.0, p[0].numel() ** -0.5)
            elif name.endswith("temperature"):
                p.uniform_(0.5, 2.0)
            elif re.search(r"norm\d?\.weight$", name):
                p.uniform_(0.8, 1.2)
            else:
                p.uniform_(-0.1, 0.1)
    return model


def build_pair(name: str, seed: int = 0) -> tuple[nn.Module, nn.Module]:
    """A dense and a masked tiny model with the same (lively) weights."""
    torch.manual_seed(seed)
    dense = lively_(TINY[name]()).eval()
    masked = TINY[name](masked=True).eval()
    masked.load_state_dict(dense.state_dict(), strict=True)
    return dense, masked


def fixed_keep(batch: int, grid: tuple[int, int], seed: int = 1) -> torch.Tensor:
    keep = random_keep_map(batch, grid, 0.5, torch.Generator().manual_seed(seed))
    assert 0 < keep.sum() < keep.numel()
    return keep


def scramble_hidden(x: torch.Tensor, keep: torch.Tensor, seed: int = 7) -> torch.Tensor:
    """x with every hidden pixel replaced by large noise; visible pixels untouched."""
    noise = 10 * torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))
    vis = visible(x, keep)
    out = torch.where(vis, x, noise)
    assert torch.equal(out[vis], x[vis]) and not torch.equal(out, x)
    return out


# --------------------------------------------------------------------------------- release layouts


@pytest.mark.parametrize(
    "factory, params, entries",
    [(restormer, 26_126_644, 494), (promptir, 35_539_290, 830)],
)
def test_release_configs_have_the_release_parameter_and_entry_counts(factory, params, entries):
    with torch.device("meta"):  # shapes only: no memory, no init time
        dense, masked = factory(), factory(masked=True)
    assert sum(p.numel() for p in dense.parameters()) == params
    assert len(dense.state_dict()) == entries
    assert [(k, v.shape) for k, v in masked.state_dict().items()] == [(k, v.shape) for k, v in dense.state_dict().items()]
    assert dense.stride == 8 and dense.tap_downsample is False and masked.masked and not dense.masked


def test_release_key_names_and_tap_dims():
    with torch.device("meta"):
        r, p = restormer(), promptir()
    rk, pk = r.state_dict(), p.state_dict()
    assert r.tap_dims == [96, 96, 192] and p.tap_dims == [96, 192, 192]
    # Names the release checkpoints use (MaskDCPT restormer_arch / promptir_arch).
    assert rk["encoder_level1.blocks.3.norm1.bias"].shape == (48,)
    assert rk["latent.blocks.7.attn.temperature"].shape == (8, 1, 1)
    assert rk["decoder_level1.blocks.0.ffn.project_in.weight"].shape == (int(96 * 2.66) * 2, 96, 1, 1)
    assert rk["up4_3.conv.weight"].shape == (768, 384, 3, 3)
    assert rk["output.weight"].shape == (3, 96, 3, 3) and "output.bias" not in rk
    assert "encoder_level1.blocks.0.attn.qkv.bias" not in rk
    assert pk["prompt3.prompt_param"].shape == (1, 5, 320, 16, 16)
    assert pk["prompt1.linear_layer.weight"].shape == (5, 96)
    assert pk["noise_level3.attn.temperature"].shape == (4, 1, 1)
    assert pk["reduce_noise_level3.weight"].shape == (192, 704, 1, 1)
    assert pk["reduce_chan_level3.weight"].shape == (192, 288, 1, 1)
    assert pk["up4_3.conv.weight"].shape == (384, 192, 3, 3)
    assert pk["encoder_level1.blocks.0.attn.qkv.bias"].shape == (144,)
    assert "patch_embed.proj.bias" not in pk and "prompt1.conv3x3.bias" not in pk


def test_unknown_override_is_a_value_error():
    with pytest.raises(ValueError, match="dimm"):
        restormer_tiny(dimm=4)
    with pytest.raises(ValueError, match="prompt_length"):
        promptir_tiny(prompt_length=4)


# --------------------------------------------------------------------------------- contract


@pytest.mark.parametrize("name", sorted(TINY))
def test_masked_state_dict_loads_strictly_into_dense(name):
    dense, masked = TINY[name](), TINY[name](masked=True)
    assert [(k, v.shape) for k, v in masked.state_dict().items()] == [(k, v.shape) for k, v in dense.state_dict().items()]
    dense.load_state_dict(masked.state_dict(), strict=True)
    assert all(torch.equal(a, b) for a, b in zip(dense.state_dict().values(), masked.state_dict().values()))


@pytest.mark.parametrize("name", ["restormer_tiny", "promptir_tiny"])
@pytest.mark.parametrize("size", [(37, 29), (8, 8), (16, 40)])
def test_forward_any_size_returns_input_size_and_finite(name, size):
    torch.manual_seed(0)
    model = TINY[name]().eval()
    x = torch.rand(1, 3, *size)
    with torch.no_grad():
        y = model(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    assert not torch.equal(y, x)  # the body contributes: nothing zero-inits the head here


@pytest.mark.parametrize(
    "name, tap_scales", [("restormer_tiny", [1, 2, 4]), ("promptir_tiny", [2, 4, 8])]
)
def test_feature_and_tap_shapes(name, tap_scales):
    model = TINY[name]()
    x = torch.rand(2, 3, 32, 48)
    feat, taps = model.forward_features(x)
    assert feat.shape == (2, 2 * model.config.dim, 32, 48)
    assert [t.shape for t in taps] == [(2, c, 32 // s, 48 // s) for c, s in zip(model.tap_dims, tap_scales)]
    head = model.forward_head(feat)
    assert head.shape == x.shape
    assert torch.allclose(model.forward_head(feat, inp=x), head + x)
    assert torch.allclose(model(x), head + x, atol=1e-6)  # a multiple of 8: no padding, same numbers


def test_bad_inputs_raise_value_errors():
    dense, masked = restormer_tiny(), restormer_tiny(masked=True)
    with pytest.raises(ValueError, match="multiple of the stride 8"):
        dense.forward_features(torch.rand(1, 3, 20, 16))
    with pytest.raises(ValueError, match="keep map shape"):
        masked.forward_features(torch.rand(1, 3, 16, 16), torch.ones(1, 1, 4, 4))
    with pytest.raises(ValueError, match="dense model"):
        dense.forward_features(torch.rand(1, 3, 16, 16), torch.ones(1, 1, 2, 2))


# --------------------------------------------------------------------------------- masking


def run_features(model: nn.Module, x: torch.Tensor, keep: torch.Tensor):
    """(final features, taps, head output) with keep for the masked model, dense otherwise."""
    with torch.no_grad():
        feat, taps = model.forward_features(x, keep if model.masked else None)
        return [feat, *taps, model.forward_head(feat)]


@pytest.mark.parametrize("name", sorted(TINY))
def test_leak_hidden_pixels_change_nothing_visible(name):
    dense, masked = build_pair(name)
    x = torch.rand(2, 3, 48, 64)
    keep = fixed_keep(2, (6, 8))
    x2 = scramble_hidden(x, keep)
    outs1, outs2 = run_features(masked, x, keep), run_features(masked, x2, keep)
    for a, b in zip(outs1, outs2):
        vis = visible(a, keep)
        assert torch.equal(a[vis], b[vis])
        assert a[vis].abs().sum() > 0
    for t in outs1[:-1]:  # features and taps: hidden positions exactly zero
        assert torch.equal(t[~visible(t, keep)], torch.zeros_like(t[~visible(t, keep)]))
    # Teeth: the dense model, which masks nothing, lets hidden pixels reach visible positions.
    d1, d2 = run_features(dense, x, keep), run_features(dense, x2, keep)
    assert all(not torch.equal(a[visible(a, keep)], b[visible(b, keep)]) for a, b in zip(d1, d2))


@pytest.mark.parametrize("name", ["restormer_tiny_bias", "promptir_tiny"])
def test_masked_forward_output_is_independent_of_hidden_pixels(name):
    _, masked = build_pair(name)
    x = torch.rand(1, 3, 30, 21)  # padded to 32×24 → keep grid 4×3
    keep = fixed_keep(1, (4, 3))
    xp = F.pad(x, (0, 3, 0, 2), mode="reflect")
    x2 = scramble_hidden(xp, keep)[..., :30, :21]
    with torch.no_grad():
        y1, y2 = masked(x, keep), masked(x2, keep)
    # The global residual adds the masked input, so even hidden output pixels never see hidden input.
    assert y1.shape == x.shape and torch.equal(y1, y2)


SPARSE_MODULES = (LayerNorm2d, ChannelAttention, GatedDconvFeedForward, TransformerBlock, PatchEmbed,
                  Downsample, Upsample, PromptGenBlock)


def hidden_maxima(model: nn.Module, x: torch.Tensor, keep: torch.Tensor) -> dict[str, float]:
    """max |value| at hidden positions of every sparse-aware module's output."""
    found: dict[str, float] = {}

    def hook(name):
        def record(module, args, out):
            found[name] = out[~visible(out, keep)].abs().max().item()
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if isinstance(m, SPARSE_MODULES)]
    try:
        run_features(model, x, keep)
    finally:
        for h in handles:
            h.remove()
    return found


@pytest.mark.parametrize("name", ["restormer_tiny_bias", "promptir_tiny"])
def test_every_intermediate_map_is_zero_at_hidden_positions(name):
    dense, masked = build_pair(name)
    x = torch.rand(1, 3, 32, 32)
    keep = fixed_keep(1, (4, 4))
    found = hidden_maxima(masked, x, keep)
    assert len(found) > 20 and all(v == 0.0 for v in found.values()), {k: v for k, v in found.items() if v}
    # Teeth: zeroing the input alone (dense model on x ⊙ keep) is not sparse: biases and 3×3 convs fill holes.
    pre_masked = x * F.interpolate(keep, scale_factor=8, mode="nearest")
    assert max(hidden_maxima(dense, pre_masked, keep).values()) > 0


@pytest.mark.parametrize("name", sorted(TINY))
def test_all_visible_masked_model_equals_dense(name):
    dense, masked = build_pair(name)
    x = torch.rand(2, 3, 32, 40)
    ones = torch.ones(2, 1, 4, 5)
    for a, b in zip(run_features(dense, x, ones), run_features(masked, x, ones)):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(masked(x, ones), dense(x), rtol=1e-5, atol=1e-5)
    # keep=None on the masked model is the dense computation exactly.
    for a, b in zip(run_features(dense, x, None), run_features(masked.train(False), x, None)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", ["restormer_tiny", "restormer_tiny_bias"])
def test_masked_restormer_on_visible_half_equals_dense_on_the_crop(name):
    """Sparse semantics: hidden positions act as absent. With the left half visible, the masked
    features there equal the dense model's on the cropped left half (3×3 convs see zeros as padding,
    the channel attention's Gram matrix and norms sum over the visible half only)."""
    dense, masked = build_pair(name)
    x = torch.rand(1, 3, 32, 64)
    keep = torch.zeros(1, 1, 4, 8)
    keep[..., :4] = 1.0
    crop = run_features(dense, x[..., :32], None)
    half = run_features(masked, x, keep)
    for a, b in zip(crop[:-1], half[:-1]):
        torch.testing.assert_close(b[..., : a.shape[-1]], a, rtol=1e-4, atol=1e-4)
    # Teeth: the dense model on the zero-filled image is not the crop (holes are not "absent").
    zero_filled = run_features(dense, x * F.interpolate(keep, scale_factor=8), None)
    assert (zero_filled[0][..., :32] - crop[0]).abs().max() > 1e-2


def test_prompt_is_generated_from_visible_positions_only():
    torch.manual_seed(0)
    block = PromptGenBlock(prompt_dim=4, prompt_len=3, prompt_size=4, lin_dim=6)
    x = torch.randn(1, 6, 8, 8)
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., :4, :] = 1.0
    # Visible mean of the zero-filled map equals the plain mean of the visible rows: the prompt
    # weights do not shrink with the hidden fraction (the release averages the zeros in).
    got = block(x * mask, mask)
    ref_weights = F.softmax(block.linear_layer(x[..., :4, :].mean((-2, -1))), dim=1)
    prompt = torch.einsum("bl,lchw->bchw", ref_weights, block.prompt_param[0])
    prompt = F.interpolate(prompt, size=(8, 8), mode="bilinear", align_corners=False)
    torch.testing.assert_close(got, block.conv3x3(prompt * mask) * mask)
    assert torch.equal(got[..., 4:, :], torch.zeros_like(got[..., 4:, :]))


def test_gradient_checkpointing_changes_no_numbers():
    torch.manual_seed(0)
    plain = promptir_tiny(masked=True)
    ckpt = promptir_tiny(masked=True)
    ckpt.load_state_dict(plain.state_dict())
    ckpt.set_grad_checkpointing()
    x, keep = torch.rand(1, 3, 32, 32), fixed_keep(1, (4, 4))
    grads = []
    for model in (plain, ckpt):
        model.train()
        feat, taps = model.forward_features(x, keep)
        (model.forward_head(feat).square().mean() + sum(t.mean() for t in taps)).backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


# --------------------------------------------------------------------------------- checkpoints


def to_dcpt_layout(state_dict: dict, stage_infix: str) -> dict:
    """Rename our keys to the DCPT release layout (hand-written from its arch files)."""
    out = {}
    for key, value in state_dict.items():
        key = re.sub(r"\.blocks\.(\d+)\.", rf".{stage_infix}\1.", key)
        key = re.sub(r"\.(norm\d)\.(weight|bias)$", r".\1.body.\2", key)
        key = re.sub(r"^((?:down|up)\d_\d)\.conv\.", r"\1.body.0.", key)
        out[key] = value
    return out


def test_loader_unwraps_basicsr_and_ddp_and_the_filter_keeps_our_layout():
    torch.manual_seed(0)
    src, dst = promptir_tiny(), promptir_tiny(masked=True)
    wrapped = {"params_ema": {f"module.{k}": v for k, v in src.state_dict().items()}, "params": {}}
    state, used = unwrap_state_dict(wrapped)
    assert used == "params_ema"
    dst.load_state_dict(checkpoint_filter_fn(state, dst), strict=True)
    assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), dst.state_dict().values()))


@pytest.mark.parametrize("factory, infix", [(restormer_tiny, "body."), (promptir_tiny, "")])
def test_checkpoint_filter_maps_dcpt_withbias_layout(factory, infix):
    torch.manual_seed(0)
    src = factory(bias=False)
    dcpt = to_dcpt_layout(src.state_dict(), infix)
    assert "encoder_level1.blocks.0.norm1.weight" not in dcpt and "down1_2.body.0.weight" in dcpt
    dst = factory(bias=False)
    dst.load_state_dict(checkpoint_filter_fn(dcpt, dst), strict=True)
    assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), dst.state_dict().values()))


def test_checkpoint_filter_rejects_biasfree_norms():
    model = restormer_tiny()
    dcpt = to_dcpt_layout(model.state_dict(), "body.")
    bias_free = {k: v for k, v in dcpt.items() if not re.search(r"norm\d\.body\.bias$", k)}
    with pytest.raises(ValueError, match="BiasFree"):
        checkpoint_filter_fn(bias_free, model)


def test_load_pretrained_maps_a_dcpt_checkpoint_and_names_a_bias_mismatch(tmp_path):
    from maskdcpt.models.checkpoint import load_pretrained

    torch.manual_seed(0)
    src = promptir_tiny(bias=False)
    path = tmp_path / "dcpt_promptir.pth"
    torch.save({"params_ema": to_dcpt_layout(src.state_dict(), "")}, path)
    dst = promptir_tiny(bias=False, masked=True)
    load_pretrained(dst, path)  # the loader finds this module's checkpoint_filter_fn
    assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), dst.state_dict().values()))
    with pytest.raises(ValueError, match=r"missing in the checkpoint \(72\): encoder_level1.blocks.0.attn.qkv.bias"):
        load_pretrained(promptir_tiny(bias=True), path)
