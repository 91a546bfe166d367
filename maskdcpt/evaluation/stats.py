"""How much a figure would move: the spread of a result over seeds and over held-out samples.

* over **seeds** (a few runs that differ in initialisation, data order and masks): the mean, the sample standard
  deviation and a Student-t interval (:func:`summarize`); two arms run with the same seeds are compared by their
  **paired** differences, seed by seed (:func:`paired_difference`), which removes what the seed does to both;
* over **held-out samples** (one run, a fixed set of crops): a percentile bootstrap of a statistic of the
  per-sample figures, resampling within each task so that every resample keeps the set's composition
  (:func:`bootstrap_interval`).

Pure functions of their inputs (the bootstrap draws from its own seeded generator); no torch.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np
from scipy import stats as _scipy_stats

__all__ = ["LEVEL", "summarize", "paired_difference", "t_interval", "bootstrap_interval"]

LEVEL = 0.95  # every interval of the project is a 95 % interval unless said otherwise


def t_interval(values: Sequence[float], level: float = LEVEL) -> tuple[float, float] | None:
    """The Student-t interval of the mean of ``values`` (``None`` for fewer than two values: no spread to go by)."""
    x = np.asarray(values, dtype=np.float64)
    if x.size < 2:
        return None
    mean, sd = float(x.mean()), float(x.std(ddof=1))
    half = float(_scipy_stats.t.ppf(0.5 + level / 2, df=x.size - 1)) * sd / math.sqrt(x.size)
    return mean - half, mean + half


def summarize(values: Sequence[float], level: float = LEVEL) -> dict[str, Any]:
    """``{"n", "mean", "sd", "ci", "values"}`` of figures over seeds: ``sd`` the sample standard deviation (None for
    one value), ``ci`` the t-interval of the mean at ``level`` (None for one value)."""
    x = [float(v) for v in values]
    if not x:
        raise ValueError("summarize: no values")
    interval = t_interval(x, level)
    return {"n": len(x), "mean": float(np.mean(x)), "sd": float(np.std(x, ddof=1)) if len(x) > 1 else None,
            "ci": list(interval) if interval is not None else None, "values": x}


def paired_difference(a: Mapping[Any, float], b: Mapping[Any, float], level: float = LEVEL) -> dict[str, Any] | None:
    """``a − b`` paired by key (the seed): :func:`summarize` of the per-key differences over the keys both have,
    with ``keys`` (in ``a``'s order) and ``excludes_zero`` (the interval lies wholly above or below 0; False without
    an interval). None when no key is shared."""
    keys = [k for k in a if k in b]
    if not keys:
        return None
    out = summarize([a[k] - b[k] for k in keys], level)
    out["keys"] = keys
    out["excludes_zero"] = out["ci"] is not None and (out["ci"][0] > 0 or out["ci"][1] < 0)
    return out


def bootstrap_interval(values: Sequence[float], groups: Sequence[Any] | None = None, level: float = LEVEL,
                       resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of the group means of ``values`` (the papers' average over tasks;
    ``groups`` None: the plain mean). Each of ``resamples`` draws resamples every group's values with replacement,
    as many as it has, so that every draw keeps the set's composition. Deterministic for a ``seed``."""
    x = np.asarray(values, dtype=np.float64)
    g = np.zeros(x.size, dtype=np.int64) if groups is None else np.asarray(groups)
    if x.size == 0 or g.shape != x.shape:
        raise ValueError(f"bootstrap_interval: {x.size} values and {g.size} group labels")
    rng = np.random.default_rng(seed)
    draws = np.zeros(resamples)
    labels = list(dict.fromkeys(g.tolist()))
    for label in labels:
        member = x[g == label]
        draws += member[rng.integers(0, member.size, (resamples, member.size))].mean(axis=1)
    draws /= len(labels)
    lo, hi = np.quantile(draws, [0.5 - level / 2, 0.5 + level / 2])
    return float(lo), float(hi)
