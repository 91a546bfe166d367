import math

import pytest
import torch
import torch.nn.functional as F

from maskdcpt.losses import focal_loss, masked_l1, supervised_contrastive_loss


def test_focal_known_value_and_gamma_zero_is_cross_entropy():
    logits = torch.zeros(1, 2)
    target = torch.tensor([0])
    # p_t = 0.5: FL = -(1 - 0.5)^2 log 0.5
    assert focal_loss(logits, target, 2.0).item() == pytest.approx(0.25 * math.log(2), rel=1e-6)
    logits = torch.randn(16, 19, generator=torch.Generator().manual_seed(0))
    target = torch.randint(0, 19, (16,), generator=torch.Generator().manual_seed(1))
    assert focal_loss(logits, target, 0.0).item() == pytest.approx(F.cross_entropy(logits, target).item(), rel=1e-6)
    # focusing: a confident correct sample loses far more weight than a wrong one
    easy = focal_loss(torch.tensor([[5.0, 0.0]]), torch.tensor([0]))
    assert easy < 0.01 * F.cross_entropy(torch.tensor([[5.0, 0.0]]), torch.tensor([0]))


def test_focal_rejects_bad_shapes():
    with pytest.raises(ValueError, match="logits"):
        focal_loss(torch.zeros(4), torch.zeros(4, dtype=torch.long))


def test_masked_l1_regions_partition_the_image():
    g = torch.Generator().manual_seed(0)
    pred, target = torch.rand(2, 3, 32, 32, generator=g), torch.rand(2, 3, 32, 32, generator=g)
    keep = torch.zeros(2, 1, 4, 4)
    keep[:, :, ::2] = 1  # half of the 8×8 patches visible
    full = masked_l1(pred, target, keep, "all")
    vis = masked_l1(pred, target, keep, "visible")
    hid = masked_l1(pred, target, keep, "hidden")
    assert full.item() == pytest.approx(0.5 * vis.item() + 0.5 * hid.item(), rel=1e-5)
    # the visible loss ignores hidden pixels entirely
    pred2 = pred.clone()
    pred2[:, :, 8:16] += 10.0  # rows of patch-row 1, which is hidden
    assert masked_l1(pred2, target, keep, "visible").item() == pytest.approx(vis.item(), rel=1e-6)
    assert masked_l1(pred2, target, keep, "hidden").item() > hid.item() + 1
    with pytest.raises(ValueError, match="region"):
        masked_l1(pred, target, keep, "corners")
    with pytest.raises(ValueError, match="keep map"):
        masked_l1(pred, target, None, "visible")


def _supcon_reference(z, labels, t):
    # Straight from the definition, one anchor at a time.
    z = F.normalize(z, dim=1)
    total, count = 0.0, 0
    for i in range(len(z)):
        others = [a for a in range(len(z)) if a != i]
        pos = [p for p in others if labels[p] == labels[i]]
        if not pos:
            continue
        denom = torch.logsumexp(torch.stack([z[i] @ z[a] / t for a in others]), 0)
        total += -sum((z[i] @ z[p] / t - denom) for p in pos) / len(pos)
        count += 1
    return total / count


def test_supcon_matches_definition_and_prefers_clustered_features():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(10, 8, generator=g)
    labels = torch.tensor([0, 0, 1, 1, 1, 2, 3, 3, 0, 4])
    got = supervised_contrastive_loss(z, labels, 0.1)
    assert got.item() == pytest.approx(_supcon_reference(z, labels, 0.1).item(), rel=1e-5)
    clustered = F.one_hot(labels, 8).float() + 0.01 * torch.randn(10, 8, generator=g)
    assert supervised_contrastive_loss(clustered, labels, 0.1) < got


def test_supcon_split_over_ranks_sums_to_the_global_loss():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(12, 6, generator=g)
    labels = torch.randint(0, 4, (12,), generator=g)
    whole = supervised_contrastive_loss(z, labels, 0.07)
    parts = sum(
        supervised_contrastive_loss(z[r * 4 : (r + 1) * 4], labels[r * 4 : (r + 1) * 4], 0.07, z, labels, anchor_offset=r * 4)
        for r in range(3)
    )
    assert parts.item() == pytest.approx(whole.item(), rel=1e-5)


# --- fine-tuning's restoration loss --------------------------------------------------------------------------------

def test_psnr_loss_is_minus_the_mean_of_each_samples_psnr():
    from maskdcpt.losses import psnr_loss

    target = torch.zeros(2, 3, 4, 4)
    pred = torch.stack([torch.full((3, 4, 4), 0.1), torch.full((3, 4, 4), 0.01)])  # MSE 1e-2 (20 dB), 1e-4 (40 dB)
    assert psnr_loss(pred, target).item() == pytest.approx(-30.0, abs=1e-3)
    # each sample counts by its own dB: halving the easy sample's error moves the loss as much as the hard one's
    easier = pred.clone(); easier[1] /= 2
    harder = pred.clone(); harder[0] /= 2
    assert psnr_loss(easier, target).item() == pytest.approx(psnr_loss(harder, target).item(), abs=1e-3)


def test_frequency_l1_is_zero_only_at_the_target_and_weighs_high_frequencies_as_low_ones():
    from maskdcpt.losses import frequency_l1

    torch.manual_seed(0)
    target = torch.rand(1, 3, 16, 16)
    assert frequency_l1(target, target).item() == 0.0
    # a checkerboard (the highest frequency) and a constant offset of the same pixel L1: the same spectral L1
    checker = (torch.arange(16)[:, None] + torch.arange(16)[None, :]) % 2 * 2 - 1
    high = frequency_l1(target + 0.01 * checker, target).item()
    low = frequency_l1(target + 0.01, target).item()
    assert high == pytest.approx(low, rel=1e-4) and high > 0


def test_restoration_loss_sums_the_weighted_terms_it_names():
    from maskdcpt.losses import RestorationLossConfig, frequency_l1, psnr_loss, restoration_loss

    torch.manual_seed(1)
    pred, target = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8)
    total, terms = restoration_loss(pred, target, RestorationLossConfig())
    assert set(terms) == {"loss/l1", "loss/total"} and total.item() == pytest.approx((pred - target).abs().mean().item())
    weights = RestorationLossConfig(l1=0.5, psnr=0.03, frequency=2.0)
    total, terms = restoration_loss(pred, target, weights)
    expected = 0.5 * (pred - target).abs().mean() + 0.03 * psnr_loss(pred, target) + 2.0 * frequency_l1(pred, target)
    assert set(terms) == {"loss/l1", "loss/psnr", "loss/frequency", "loss/total"}
    assert total.item() == pytest.approx(expected.item(), rel=1e-6)


def test_restoration_loss_refuses_all_weights_zero_and_negative_ones():
    from maskdcpt.errors import ConfigError
    from maskdcpt.losses import RestorationLossConfig

    with pytest.raises(ConfigError, match="all 0"):
        RestorationLossConfig(l1=0.0)
    with pytest.raises(ConfigError, match="loss.frequency"):
        RestorationLossConfig(frequency=-1.0)
