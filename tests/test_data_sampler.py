"""The mixture sampler: shard coverage, resume, progressive schedule, class balance."""
from collections import Counter

import numpy as np
import pytest

from maskdcpt.data.mixture import class_balanced_weights
from maskdcpt.data.sampler import MixtureSampler
from maskdcpt.data.schedule import MixingSchedule


def _keys_of_epoch(samplers, source, epoch, steps):
    seen = []
    for sampler in samplers:
        for step in range(steps):
            seen += [(k[2], k[3]) for k in sampler.batch_keys(step) if k[0] == source and k[1] == epoch]
    return seen


@pytest.mark.parametrize("items,crops,batch", [(30, 2, 4), (31, 1, 4), (17, 3, 5)])
def test_three_ranks_cover_every_sample_once_per_epoch(items, crops, batch):
    ranks = [MixtureSampler([items], ["synthetic"], [1.0], seed=3, batch_size=batch, crops_per_image=crops,
                            rank=r, world_size=3) for r in range(3)]
    steps = 3 * items * crops // (3 * batch) + 3  # well past the end of epoch 2
    for epoch in range(3):
        seen = _keys_of_epoch(ranks, 0, epoch, steps)
        assert len(seen) == len(set(seen)) == items * crops  # none twice, all once
        assert set(seen) == {(i, c) for i in range(items) for c in range(crops)}
    # different epochs shuffle differently, and ranks hold disjoint positions
    assert [k[2] for k in ranks[0].batch_keys(0)] != [k[2] for k in ranks[0].batch_keys(steps)]
    positions = [q for r in ranks for q in r.positions(0)]
    assert len(set(positions)) == 3 * batch


def test_mixture_sources_each_covered_once_per_source_epoch():
    sizes = [7, 20, 11]
    ranks = [MixtureSampler(sizes, ["synthetic", "paired", "paired"], [1.0, 2.0, 1.0], seed=1, batch_size=8,
                            rank=r, world_size=3, chunk_groups=32) for r in range(3)]
    for source, n in enumerate(sizes):
        seen = _keys_of_epoch(ranks, source, 1, 60)
        assert sorted(i for i, _ in seen) == list(range(n))


def test_resume_yields_identical_keys_at_any_step():
    args = dict(sizes=[13, 40], kinds=["synthetic", "paired"], weights=[1.0, 1.0], seed=5, batch_size=6,
                crops_per_image=2, rank=1, world_size=2, schedule=MixingSchedule.from_ratios([[0, 100, 0], [30, 20, 80]]),
                chunk_groups=16)  # tiny chunks: resumes cross many chunk boundaries
    stream = MixtureSampler(**args)
    uninterrupted = [keys for keys, _ in zip(stream, range(80))]
    for k in (0, 1, 17, 55, 79):
        resumed = MixtureSampler(**args, start_step=k)
        assert next(iter(resumed)) == uninterrupted[k]
        assert resumed.batch_keys(k + 1) == (uninterrupted[k + 1] if k + 1 < 80 else stream.batch_keys(k + 1))


def test_keys_do_not_depend_on_rank_count_at_fixed_global_batch():
    common = dict(sizes=[9, 14], kinds=["synthetic", "paired"], weights=[1.0, 1.0], seed=2, crops_per_image=2)
    one = MixtureSampler(**common, batch_size=12)
    four = [MixtureSampler(**common, batch_size=3, rank=r, world_size=4) for r in range(4)]
    for step in (0, 7, 30):
        assert one.batch_keys(step) == [k for r in four for k in r.batch_keys(step)]


def test_schedule_interpolates_and_validates():
    schedule = MixingSchedule.from_ratios([[0, 100, 0], [1000, 20, 80]])
    assert schedule.synthetic_share(0) == 1.0
    assert schedule.synthetic_share(500) == pytest.approx(0.6)
    assert schedule.synthetic_share(1000) == pytest.approx(0.2) == schedule.synthetic_share(10**6)
    with pytest.raises(ValueError, match="strictly increasing"):
        MixingSchedule.from_ratios([[10, 1, 0], [5, 0, 1]])
    with pytest.raises(ValueError, match=r"\[step, synthetic, real\]"):
        MixingSchedule.from_ratios([[0, 1]])
    with pytest.raises(ValueError, match="0:0"):
        MixingSchedule.from_ratios([[0, 0, 0]])


def test_measured_mixing_ratio_follows_the_schedule():
    schedule = MixingSchedule.from_ratios([[0, 100, 0], [1000, 20, 80]])
    sampler = MixtureSampler([50, 30, 30], ["synthetic", "paired", "paired"], [1.0, 1.0, 1.0], seed=0,
                             batch_size=1000, schedule=schedule)
    for step, expected in [(0, 1.0), (250, 0.8), (500, 0.6), (1000, 0.2), (4000, 0.2)]:
        sources = np.array([k[0] for s in range(step, step + 6) for k in sampler.batch_keys(s)])
        measured = float(np.mean(sources == 0))
        assert abs(measured - expected) < 0.025, (step, measured, expected)
        if expected < 1:  # the real share splits evenly between the two paired sources
            real = sources[sources > 0]
            assert abs(np.mean(real == 1) - 0.5) < 0.04


def test_class_balanced_frequencies_by_type():
    type_ids = [7, 7, 1, 12]
    weights = class_balanced_weights(type_ids, [1.0, 3.0, 1.0, 5.0])
    assert weights == pytest.approx([1 / 12, 3 / 12, 1 / 3, 1 / 3])
    sampler = MixtureSampler([5, 5, 100, 5], ["paired"] * 4, weights, seed=9, batch_size=4000)
    counts = Counter(type_ids[k[0]] for s in range(5) for k in sampler.batch_keys(s))
    total = sum(counts.values())
    for tid in (7, 1, 12):
        assert abs(counts[tid] / total - 1 / 3) < 0.02  # equal per type despite sizes 10 / 100 / 5
    within = Counter(k[0] for s in range(5) for k in sampler.batch_keys(s) if k[0] in (0, 1))
    assert abs(within[1] / (within[0] + within[1]) - 0.75) < 0.03
    assert class_balanced_weights([-1, 3], [2.0, 5.0]) == [2.0, 1.0]  # synthetic keeps its weight


def test_bad_sampler_arguments():
    with pytest.raises(ValueError, match="at least one item"):
        MixtureSampler([0], ["synthetic"], [1.0], seed=0, batch_size=2)
    with pytest.raises(ValueError, match="rank=3"):
        MixtureSampler([4], ["synthetic"], [1.0], seed=0, batch_size=2, rank=3, world_size=3)
    with pytest.raises(ValueError, match="kinds"):
        MixtureSampler([4], ["clean"], [1.0], seed=0, batch_size=2)
