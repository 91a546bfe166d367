"""The code paths a GPU run takes, exercised on CPU: bf16 autocast and torch.compile (inductor), and the packed
visible-position path of the masked models against the zero-filled one.

Tolerances of bf16 against fp32 (bf16 keeps 8 significant bits: 0.4 % per rounding). Measured on three seeds of the
step below: reconstruction ≤ 2e-4 relative (its input residual stays float32), classification ≤ 2e-3 (about ten
bf16 layers), SupCon ≤ 3e-2 (τ = 0.07 multiplies the pooled features' rounding by 14 in the logits); the bounds
asserted are those with a margin of about 3.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from maskdcpt.losses import supervised_contrastive_loss
from maskdcpt.models import build_maskdcpt, create_model
from maskdcpt.models.classifier import MaskedBatchNorm2d
from maskdcpt.models.masking import mask_like, random_keep_map
from maskdcpt.training.distributed import DistInfo
from maskdcpt.training.finetune import FinetuneConfig, FinetuneTask
from maskdcpt.training.pretrain import PretrainTask, load_pretrain_config

torch.set_num_threads(1)

BF16 = dict(device_type="cpu", dtype=torch.bfloat16)
TOLERANCE = {"loss/rec": 1e-3, "loss/cls": 1e-2, "loss/con": 1e-1, "loss/total": 1e-2}


def _pretrain_task(seed: int = 0, *overrides: str) -> PretrainTask:
    cfg = load_pretrain_config(None, ["model.name=nafnet_tiny", *overrides])
    torch.manual_seed(seed)
    task = PretrainTask(cfg, DistInfo())
    with torch.no_grad():  # every branch active (zero-initialised gates and head included)
        for p in task.model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return task


def _batch(seed: int = 0, size: int = 64, n: int = 8) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    gt = torch.rand(n, 3, size, size, generator=g)
    lq = (gt + 0.1 * torch.randn(n, 3, size, size, generator=g)).clamp(0, 1)
    return {"lq": lq, "gt": gt, "type_id": torch.arange(n) % 4, "index": torch.arange(n)}


# ----------------------------------------------------------------------------- bf16 autocast
@pytest.mark.parametrize("seed", [0, 1])
def test_bf16_pretrain_step_losses_within_tolerance_of_fp32_and_finite(seed):
    task, batch = _pretrain_task(seed), _batch(seed)
    state = {k: v.clone() for k, v in task.model.state_dict().items()}
    terms = {}
    for bf16 in (False, True):
        task.model.load_state_dict(state)
        task.model.zero_grad()
        with torch.autocast(**BF16, enabled=bf16):
            out = task.step(task.forward_module, batch, 0)
        out.loss.backward()
        grads = [p.grad for p in task.model.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads)
        assert out.extras["out"].logits.dtype == (torch.bfloat16 if bf16 else torch.float32)  # autocast did act
        terms[bf16] = {k: v.item() for k, v in out.terms.items()}
    for key, tol in TOLERANCE.items():
        assert terms[True][key] == pytest.approx(terms[False][key], rel=tol), key
    # the BatchNorm statistics stay float32 under autocast
    norms = [m for m in task.model.modules() if isinstance(m, MaskedBatchNorm2d)]
    assert norms and all(m.running_var.dtype == torch.float32 and torch.isfinite(m.running_var).all() for m in norms)


def test_bf16_finetune_step_within_tolerance_of_fp32():
    torch.manual_seed(0)
    task = FinetuneTask(FinetuneConfig(), DistInfo())
    with torch.no_grad():
        for p in task.model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    batch = _batch(2)
    losses = {}
    for bf16 in (False, True):
        task.model.zero_grad()
        with torch.autocast(**BF16, enabled=bf16):
            out = task.step(task.model, batch, 0)
        out.loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in task.model.parameters() if p.grad is not None)
        losses[bf16] = out.loss.item()
    assert losses[True] == pytest.approx(losses[False], rel=1e-2)


@pytest.mark.parametrize("packed", [True, False])
def test_bf16_masked_backbone_stays_leak_free(packed):
    """Under autocast as in fp32: hidden positions hold exactly 0 and changing hidden pixels changes no visible
    feature, on the packed and on the zero-filled path."""
    torch.manual_seed(0)
    model = create_model("nafnet_tiny", masked=True).eval()
    model.pack_visible = packed
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    g = torch.Generator().manual_seed(1)
    x1 = torch.rand(2, 3, 64, 64, generator=g)
    keep = random_keep_map(2, (4, 4), 0.5, g)
    pix = mask_like(keep, x1)
    x2 = x1 * pix + torch.rand(x1.shape, generator=g) * (1 - pix)
    with torch.no_grad(), torch.autocast(**BF16):
        f1, taps1 = model.forward_features(x1, keep)
        f2, taps2 = model.forward_features(x2, keep)
    for a, b in [(f1, f2), *zip(taps1, taps2)]:
        m = mask_like(keep, a)
        assert torch.equal(a * m, b * m)
        assert torch.count_nonzero(a * (1 - m)) == 0 and torch.count_nonzero(a * m) > 0


def test_supcon_under_autocast_is_the_float32_loss():
    """SupCon switches autocast off: the same value as without autocast (before, its matmul ran in bf16)."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(16, 32, generator=g)
    labels = torch.randint(0, 4, (16,), generator=g)
    plain = supervised_contrastive_loss(z, labels, 0.07)
    with torch.autocast(**BF16):
        inside = supervised_contrastive_loss(z, labels, 0.07)
    assert inside.dtype == torch.float32
    assert torch.equal(inside, plain)


def test_masked_batchnorm_statistics_are_float32_under_autocast():
    """bf16 activations, float32 statistics: the normalised output equals the float32 normalisation of the same
    (bf16-rounded) values up to the output's own rounding, and nothing overflows at large magnitudes."""
    g = torch.Generator().manual_seed(0)
    x = (300 + 20 * torch.randn(4, 6, 32, 32, generator=g)).bfloat16()  # a large mean: bf16 sums would lose it
    mask = (torch.rand(4, 1, 32, 32, generator=g) > 0.5).float()
    bn, ref = MaskedBatchNorm2d(6).train(), MaskedBatchNorm2d(6).train()
    y = bn(x, mask)
    y_ref = ref(x.float(), mask)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), y_ref, rtol=1e-2, atol=2e-2)
    torch.testing.assert_close(bn.running_mean, ref.running_mean)
    torch.testing.assert_close(bn.running_var, ref.running_var)


# ----------------------------------------------------------------------------- packed = zero-filled
@pytest.mark.parametrize("name", ["nafnet_tiny", "restormer_tiny", "promptir_tiny", "swinir_tiny"])
@pytest.mark.parametrize("norm", ["batch", "layer"])
def test_packed_path_computes_the_zero_filled_path(name, norm):
    """In float64 (where rounding cannot hide a difference): outputs, gradients and BatchNorm statistics of the
    packed visible-position path equal those of the zero-filled maps, for every backbone's classifier."""
    torch.manual_seed(0)
    model = build_maskdcpt(name, classifier_norm=norm, classifier_blocks=2).double().train()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.rand(3, 3, 4 * model.patch_size, 4 * model.patch_size, dtype=torch.float64)
    keep = random_keep_map(3, (4, 4), 0.5, torch.Generator().manual_seed(1))
    results = []
    for packed in (False, True):
        model.load_state_dict(start)
        model.zero_grad()
        model.classifier.pack_visible = packed
        if hasattr(model.backbone, "pack_visible"):
            model.backbone.pack_visible = packed
        out = model(x, keep=keep)
        (out.logits.square().mean() + out.reconstruction.square().mean()).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((out.logits.detach(), out.reconstruction.detach(), grads,
                        {k: v.clone() for k, v in model.state_dict().items()}))
    (la, ra, ga, sa), (lb, rb, gb, sb) = results
    torch.testing.assert_close(lb, la, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(rb, ra, rtol=1e-9, atol=1e-10)
    assert ga.keys() == gb.keys()
    for key in ga:
        torch.testing.assert_close(gb[key], ga[key], rtol=1e-7, atol=1e-9, msg=key)
    for key in sa:
        torch.testing.assert_close(sb[key], sa[key], rtol=1e-9, atol=1e-10, msg=key)


# ----------------------------------------------------------------------------- torch.compile (inductor)
def _graph_breaks(fn, *args) -> list[str]:
    explained = torch._dynamo.explain(fn)(*args)
    return [f"{r.reason} at {r.user_stack[-1] if r.user_stack else '?'}" for r in explained.break_reasons]


def test_no_graph_breaks_in_the_dense_step_and_the_maskdcpt_step():
    """The whole pre-training step (keep maps, forward, three losses) and the dense restorer's forward + L1 trace
    into one graph each (the classifier's ``if count < 2`` used to break it at every BatchNorm). A convolutional and
    an attention backbone (PromptIR is Restormer's, SwinIR was checked by hand: tracing costs a minute each on CI)."""
    breaks = {}
    for name in ("nafnet_tiny", "restormer_tiny"):
        torch._dynamo.reset()
        task = _pretrain_task(0, f"model.name={name}")
        batch = _batch(0, size=32, n=4)
        breaks[f"{name} pretrain"] = _graph_breaks(lambda b: task.step(task.forward_module, b, 0).loss, batch)
        dense = create_model(name)
        breaks[f"{name} dense"] = _graph_breaks(lambda x, y: F.l1_loss(dense(x), y), batch["lq"], batch["gt"])
    assert all(not b for b in breaks.values()), breaks


def _steps(loss_fn, params, n: int) -> list[tuple[float, list[torch.Tensor]]]:
    out = []
    opt = torch.optim.SGD(params, lr=1e-2)
    for _ in range(n):
        loss = loss_fn()
        loss.backward()
        out.append((loss.item(), [p.grad.clone() for p in params]))
        opt.step()
        opt.zero_grad(set_to_none=True)
    return out


@pytest.mark.slow  # inductor compiles the forward and backward graphs: a minute or more on 2 cores
def test_compiled_dense_step_equals_eager_without_recompiling():
    torch._dynamo.reset()
    batch = _batch(3, size=32, n=2)
    results = []
    for compiled in (False, True):
        torch.manual_seed(0)
        model = create_model("nafnet_tiny").train()
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.02)
        forward = torch.compile(model, backend="inductor") if compiled else model
        loss = lambda: F.l1_loss(forward(batch["lq"]), batch["gt"])  # noqa: E731
        first = _steps(loss, list(model.parameters()), 1)
        with torch.compiler.set_stance("fail_on_recompile"):  # steps of the same shape reuse the graph
            rest = _steps(loss, list(model.parameters()), 2)
        results.append(first + rest)
    for (l_eager, g_eager), (l_comp, g_comp) in zip(*results):
        assert l_comp == pytest.approx(l_eager, rel=1e-4)
        for a, b in zip(g_eager, g_comp):
            torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-5)


@pytest.mark.slow
@pytest.mark.timeout(1500)  # inductor: over 10 minutes on a loaded 2-core machine (the dense step 7)
def test_compiled_maskdcpt_step_equals_eager_without_recompiling():
    """The pre-training step (keep maps, masked forward, three losses) compiled with inductor: the loss terms and
    gradients of eager (packed path) and compiled (zero-filled maps: static shapes) agree; no recompilation."""
    torch._dynamo.reset()
    batch = _batch(4, size=32, n=4)
    results = []
    for compiled in (False, True):
        task = _pretrain_task(0)
        model = torch.compile(task.forward_module, backend="inductor") if compiled else task.forward_module
        loss = lambda: task.step(model, batch, 0).loss  # noqa: E731
        params = [p for p in task.model.parameters()]
        first = _steps(loss, params, 1)
        with torch.compiler.set_stance("fail_on_recompile"):
            rest = _steps(loss, params, 1)
        results.append(first + rest)
    for (l_eager, g_eager), (l_comp, g_comp) in zip(*results):
        assert l_comp == pytest.approx(l_eager, rel=1e-4)
        flat_e = torch.cat([g.flatten() for g in g_eager])
        flat_c = torch.cat([g.flatten() for g in g_comp])
        # BatchNorm at initialisation makes the classification gradient a small residual (see the module doc of
        # the report): compare the whole gradient, not each element
        assert ((flat_c - flat_e).norm() / flat_e.norm()).item() < 0.1


# ----------------------------------------------------------------------------- no host reads per step
def test_keep_maps_and_the_masked_batchnorm_read_nothing_back_to_the_host():
    """On the ``meta`` device every value read back to Python raises: keep maps drawn from device indices, and the
    classifier's masked BatchNorm path (zero-filled maps, as under torch.compile), compute without one."""
    from maskdcpt.models.classifier import DegradationClassifier
    from maskdcpt.training.pretrain import keep_maps

    keep = keep_maps(torch.arange(6, device="meta"), (4, 4), 0.5, seed=3)
    assert keep.device.type == "meta" and keep.shape == (6, 1, 4, 4)
    with torch.device("meta"):
        clf = DegradationClassifier([4, 8], num_classes=5, norm="batch").train()
        clf.pack_visible = False
        logits, _ = clf([torch.randn(6, 4, 16, 16), torch.randn(6, 8, 8, 8)], keep)
    assert logits.shape == (6, 5)
    with pytest.raises(Exception):  # the teeth: a host read on meta does raise
        bool(keep.sum() > 2)


def test_keep_maps_are_uniform_over_cells_and_keep_exactly_the_ratio():
    from maskdcpt.training.pretrain import keep_maps

    keep = keep_maps(torch.arange(4000), (8, 8), 0.5, seed=0)
    assert (keep.flatten(1).sum(1) == 32).all()
    freq = keep.mean(0).flatten()  # each cell visible in half the samples, within 4 standard errors (0.008 each)
    assert (freq - 0.5).abs().max() < 0.035
    assert not torch.equal(keep_maps(torch.arange(4), (8, 8), 0.5, seed=0), keep_maps(torch.arange(4), (8, 8), 0.5, seed=1))
