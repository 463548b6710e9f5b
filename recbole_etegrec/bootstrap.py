"""Paired bootstrap over test users: is one model's margin over another larger than the noise of
which users happen to be in the test split?

Both models were scored on the same users, so we resample *users* (with replacement) and take the
same resample for both models: the per-user differences carry the pairing, and the spread of their
resampled means is the uncertainty of the mean difference. The interval is the percentile interval
of those means. Pure numpy, deterministic for a given ``seed``.
"""
from typing import Tuple

import numpy as np

CHUNK = 100  # resamples drawn at once: 100 x 25k users of int64 is 20 MB, 1000 at once would be 200 MB


def paired_bootstrap(a, b, n_resamples=1000, seed=2020, level=0.95) -> Tuple[float, float, float]:
    """``(mean(a - b), lo, hi)``: the mean per-user difference and its ``level`` percentile
    interval over ``n_resamples`` resamples of the users. ``a[i]`` and ``b[i]`` are one user's
    values under the two models."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or not len(a):
        raise ValueError(f"paired_bootstrap needs two 1-d arrays of the same non-zero length, got {a.shape} and "
                         f"{b.shape}")
    if not 0 < level < 1 or n_resamples < 1:
        raise ValueError(f"paired_bootstrap needs 0 < level < 1 and n_resamples >= 1, got {level}, {n_resamples}")
    diff = a - b  # one index draw per user serves both arrays: the resample is paired
    rng = np.random.default_rng(seed)
    means = np.concatenate([diff[rng.integers(0, len(diff), size=(min(CHUNK, n_resamples - start), len(diff)))]
                            .mean(axis=1) for start in range(0, n_resamples, CHUNK)])
    tail = (1 - level) / 2
    lo, hi = np.quantile(means, [tail, 1 - tail])
    return float(diff.mean()), float(lo), float(hi)
