"""Multi-process pre-training normalises like one process: the classifier's masked BatchNorm synchronised across ranks.

A real 2-process gloo group on CPU: each rank holds half of a batch whose samples keep different numbers of cells;
after ``convert_sync_batchnorm`` (what the trainer calls under DDP) the classifier's logits, running statistics
and summed gradients equal those of one process holding the whole batch, for the packed and the zero-filled path.
"""
from __future__ import annotations

import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn

from maskdcpt.models.classifier import ConvNorm, DegradationClassifier, MaskedBatchNorm2d, SyncMaskedBatchNorm2d
from maskdcpt.training.distributed import convert_sync_batchnorm

DIMS = [4, 8, 16]
BATCH = 4


def _classifier(pack: bool) -> DegradationClassifier:
    torch.manual_seed(0)
    clf = DegradationClassifier(DIMS, num_classes=5, num_res_blocks=2, norm="batch").train()
    clf.pack_visible = pack
    for module in clf.modules():
        if isinstance(module, MaskedBatchNorm2d):
            module.momentum = 0.5  # running statistics that move visibly in one step
    return clf


def _inputs() -> tuple[list[torch.Tensor], torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    taps = [torch.randn(BATCH, d, 16 >> i, 16 >> i, generator=g).double() for i, d in enumerate(DIMS)]
    keep = (torch.rand(BATCH, 1, 4, 4, generator=g) > 0.5).double()
    keep[:, :, 0, 0] = 1
    keep[2:] = 1  # rank 1's samples keep every cell, rank 0's about half: unequal counts per rank
    return taps, keep


def _run(clf: nn.Module, taps: list[torch.Tensor], keep: torch.Tensor) -> tuple[torch.Tensor, dict, dict]:
    taps = [t.clone().requires_grad_() for t in taps]
    logits, _ = clf(taps, keep)
    logits.square().sum().backward()  # a sum over samples: the global loss is the sum of the ranks' losses
    grads = {n: p.grad.clone() for n, p in clf.named_parameters()}
    grads.update({f"tap{i}": t.grad.clone() for i, t in enumerate(taps)})
    stats = {k: v.clone() for k, v in clf.state_dict().items() if "running" in k}
    return logits.detach(), grads, stats


def _worker(rank: int, port: int, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        taps, keep = _inputs()
        half = slice(rank * BATCH // 2, (rank + 1) * BATCH // 2)
        results = {}
        for pack in (True, False):
            clf = convert_sync_batchnorm(_classifier(pack).double(), "cpu")
            norms = [m for m in clf.modules() if isinstance(m, MaskedBatchNorm2d)]
            assert norms and all(isinstance(m, SyncMaskedBatchNorm2d) for m in norms)
            logits, grads, stats = _run(clf, [t[half] for t in taps], keep[half])
            for name, g in grads.items():
                if not name.startswith("tap"):
                    dist.all_reduce(g)  # what DDP does with the parameters' gradients (then divides by the world)
            results[pack] = (logits, grads, stats)
        torch.save(results, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_ranks_normalise_with_the_masked_statistics_of_the_global_batch(tmp_path):
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    got = {rank: torch.load(tmp_path / f"rank{rank}.pt") for rank in range(2)}

    taps, keep = _inputs()
    for pack in (True, False):
        logits, grads, stats = _run(_classifier(pack).double(), taps, keep)
        ranks = [got[0][pack], got[1][pack]]
        torch.testing.assert_close(torch.cat([r[0] for r in ranks]), logits, rtol=1e-9, atol=1e-10)
        for name, g in grads.items():
            if name.startswith("tap"):  # each rank's input gradient includes what the other rank's loss sends it
                torch.testing.assert_close(torch.cat([r[1][name] for r in ranks]), g, rtol=1e-9, atol=1e-10, msg=name)
            else:
                for r in ranks:
                    torch.testing.assert_close(r[1][name], g, rtol=1e-9, atol=1e-10, msg=name)
        for name, value in stats.items():
            for r in ranks:
                torch.testing.assert_close(r[2][name], value, rtol=1e-9, atol=1e-10, msg=name)


def test_without_the_conversion_each_rank_would_normalise_its_own_share():
    """The teeth: per-rank statistics (what torch's own conversion led to, as it dropped the mask) differ."""
    taps, keep = _inputs()
    whole, _, _ = _run(_classifier(True).double(), taps, keep)
    halves = [_run(_classifier(True).double(), [t[s] for t in taps], keep[s])[0]
              for s in (slice(0, BATCH // 2), slice(BATCH // 2, BATCH))]
    assert not torch.allclose(torch.cat(halves), whole, atol=1e-3)


def test_conversion_keeps_parameters_and_the_mask_and_leaves_layer_norms():
    clf = _classifier(False)
    before = {k: v for k, v in clf.state_dict().items()}
    params = {n: p for n, p in clf.named_parameters()}
    converted = convert_sync_batchnorm(clf, "cpu")
    assert converted is clf
    assert {n: p for n, p in clf.named_parameters()}.keys() == params.keys()
    assert all(p is params[n] for n, p in clf.named_parameters())  # the same tensors: an optimiser built later sees them
    assert clf.state_dict().keys() == before.keys()
    convs = [m for m in clf.modules() if isinstance(m, ConvNorm)]
    assert convs and all(isinstance(c.norm, SyncMaskedBatchNorm2d) for c in convs)
    layer = DegradationClassifier(DIMS, num_classes=5, norm="layer")
    kinds = [type(m) for m in layer.modules()]
    assert [type(m) for m in convert_sync_batchnorm(layer, "cpu").modules()] == kinds
    # a plain BatchNorm stays per rank on CPU, where nn.SyncBatchNorm does not run
    plain = nn.Sequential(nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3))
    assert isinstance(convert_sync_batchnorm(plain, "cpu")[1], nn.BatchNorm2d)


@pytest.mark.parametrize("pack", [True, False])
def test_masked_batchnorm_reads_nothing_back_and_skips_running_stats_without_two_visible_positions(pack):
    """No host read per layer (the old ``if count < 2``): a batch with one visible position normalises without NaN
    and leaves the running statistics where they were."""
    bn = MaskedBatchNorm2d(3).train()
    x = torch.randn(1, 3, 4, 4)
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., 1, 2] = 1
    if pack:
        y = bn.forward_rows(x[:, :, 1, 2])
    else:
        y = bn(x, mask)
    assert torch.isfinite(y).all()
    assert torch.equal(bn.running_mean, torch.zeros(3)) and torch.equal(bn.running_var, torch.ones(3))
