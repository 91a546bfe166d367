import copy

import pytest
import torch
import torch.nn as nn

from maskdcpt.training.ema import ModelEMA, warmup_decay


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 3, 1))


def test_ema_matches_hand_computed_update_over_steps():
    model = _net()
    decay = 0.9
    ema = ModelEMA(model, decay=decay, warmup=False)
    expected = {k: v.detach().clone().double() for k, v in model.named_parameters()}
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=gen))
        model.train()(torch.rand(2, 3, 8, 8, generator=gen))  # changes BN running stats
        ema.update(model)
        for k, p in model.named_parameters():
            expected[k] = decay * expected[k] + (1 - decay) * p.detach().double()
    for k, p in ema.module.named_parameters():
        torch.testing.assert_close(p.double(), expected[k], rtol=0, atol=1e-6)
        assert not torch.equal(p, dict(model.named_parameters())[k])  # really an average, not a copy
    # buffers are copied, not averaged
    for k, b in model.named_buffers():
        assert torch.equal(dict(ema.module.named_buffers())[k], b)
    assert ema.num_updates == 3


def test_ema_shadow_is_fp32_and_copy_to_and_state_dict_round_trip():
    model = _net().to(torch.bfloat16)
    ema = ModelEMA(model, decay=0.5)
    assert all(p.dtype == torch.float32 for p in ema.module.parameters())
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(2.0)
    ema.update(model)
    other = ModelEMA(_net(), decay=0.1)
    other.load_state_dict(ema.state_dict())
    assert other.decay == 0.5 and other.num_updates == 1
    for a, b in zip(other.module.state_dict().values(), ema.module.state_dict().values()):
        assert torch.equal(a, b)
    target = _net()
    ema.copy_to(target)
    for a, b in zip(target.state_dict().values(), ema.module.state_dict().values()):
        assert torch.equal(a, b.to(a.dtype))


def test_ema_decay_one_freezes_and_zero_copies():
    model = _net()
    frozen, copying = ModelEMA(model, decay=1.0, warmup=False), ModelEMA(model, decay=0.0, warmup=False)
    start = copy.deepcopy(model.state_dict())
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0)
    frozen.update(model)
    copying.update(model)
    for k, p in frozen.module.named_parameters():
        assert torch.equal(p, start[k])
    for k, p in copying.module.named_parameters():
        assert torch.equal(p, dict(model.named_parameters())[k])


def test_ema_rejects_bad_decay():
    with pytest.raises(ValueError, match="decay"):
        ModelEMA(_net(), decay=1.5)


def test_warmup_decay_follows_the_schedule_and_caps_at_decay():
    assert warmup_decay(0.999, 0) == 0.0  # the first update copies the weights
    assert warmup_decay(0.999, 10) == pytest.approx(1 - 11 ** (-2 / 3))
    assert warmup_decay(0.999, 600) == pytest.approx(0.986, abs=1e-3)
    assert warmup_decay(0.999, 10**6) == 0.999
    assert all(warmup_decay(0.9, n) <= warmup_decay(0.9, n + 1) <= 0.9 for n in range(200))


def test_warmed_up_ema_matches_hand_computed_update():
    model = _net()
    ema = ModelEMA(model, decay=0.999)
    expected = {k: v.detach().clone().double() for k, v in model.named_parameters()}
    gen = torch.Generator().manual_seed(2)
    for n in range(5):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=gen))
        ema.update(model)
        d = 1 - (1 + n) ** (-2 / 3)
        for k, p in model.named_parameters():
            expected[k] = d * expected[k] + (1 - d) * p.detach().double()
    for k, p in ema.module.named_parameters():
        torch.testing.assert_close(p.double(), expected[k], rtol=0, atol=1e-6)


def test_short_run_ema_is_close_to_the_trained_weights_not_the_initialisation():
    """600 steps of drifting weights: with the warm-up the EMA follows them; without, it keeps ~55 % of the
    initialisation (0.999^600), which made short fine-tuning runs export nearly random restorers."""
    model = _net()
    start = {k: v.detach().clone() for k, v in model.named_parameters()}
    warm, cold = ModelEMA(model, decay=0.999), ModelEMA(model, decay=0.999, warmup=False)
    with torch.no_grad():
        for step in range(600):
            for p in model.parameters():
                p.add_(0.01)  # a steady drift, as training moves the weights
            warm.update(model)
            cold.update(model)

    def share_of_init(ema):  # where the EMA sits between start (1) and the final weights (0)
        final = dict(model.named_parameters())
        return float(torch.stack([((e - final[k]) / (start[k] - final[k])).mean()
                                  for k, e in ema.module.named_parameters()]).mean())

    assert share_of_init(warm) < 0.15  # it lags the drift by ~1 / (1 − 0.986) ≈ 70 of the 600 steps
    assert share_of_init(cold) > 0.3
