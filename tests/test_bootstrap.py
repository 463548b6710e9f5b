"""The paired bootstrap behind the benchmark's delta columns: no difference, a known shift, determinism."""
import numpy as np
import pytest

from recbole_etegrec.bootstrap import paired_bootstrap


def _users(n=2000, seed=0):
    """Per-user recall-like values: mostly 0/1 hits, as leave-one-out Recall@10 is."""
    return (np.random.default_rng(seed).random(n) < 0.3).astype(np.float64)


def test_a_model_against_itself_differs_by_exactly_zero():
    a = _users()
    assert paired_bootstrap(a, a) == (0.0, 0.0, 0.0)


def test_a_known_shift_is_detected_and_covered():
    a = _users()
    diff, lo, hi = paired_bootstrap(a, a - 0.05)  # every user exactly 0.05 lower
    assert diff == pytest.approx(0.05) and lo == pytest.approx(0.05) and hi == pytest.approx(0.05)
    # the same mean shift with per-user noise: b's users are a's, shuffled, then 0.05 lower
    b = a[np.random.default_rng(3).permutation(len(a))] - 0.05
    diff, lo, hi = paired_bootstrap(a, b)
    assert diff == pytest.approx(0.05)
    assert 0 < lo < 0.05 < hi  # excludes 0, contains the shift


def test_a_real_difference_gets_an_interval_of_its_noise():
    a, b = _users(seed=1), _users(seed=2)
    diff, lo, hi = paired_bootstrap(a, b)
    assert lo < diff < hi
    se = np.std(a - b) / np.sqrt(len(a))  # the 95% interval is about +-2 standard errors
    assert hi - lo == pytest.approx(2 * 1.96 * se, rel=0.15)


def test_same_seed_same_interval_other_seed_other_interval():
    a, b = _users(seed=1), _users(seed=2)
    assert paired_bootstrap(a, b, seed=7) == paired_bootstrap(a, b, seed=7)
    assert paired_bootstrap(a, b, seed=7)[1:] != paired_bootstrap(a, b, seed=8)[1:]
    assert paired_bootstrap(a, b, n_resamples=250)[0] == paired_bootstrap(a, b)[0]


def test_unpaired_input_is_refused():
    with pytest.raises(ValueError, match="same non-zero length"):
        paired_bootstrap(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="level"):
        paired_bootstrap(np.zeros(3), np.zeros(3), level=95)
