"""harness.report.stats against SciPy on fixed inputs: t-intervals, paired and Welch differences, TOST, bootstrap."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sp

from harness.report import stats


def test_summary_is_the_t_interval_of_the_mean_with_n_minus_1_degrees_of_freedom():
    x = [76.0, 77.2, 76.1]
    s = stats.summarize(x)
    lo, hi = sp.t.interval(0.95, len(x) - 1, loc=np.mean(x), scale=sp.sem(x))
    assert (s.n, s.mean, s.median) == (3, pytest.approx(76.4333, abs=1e-4), 76.1)
    assert s.sd == pytest.approx(np.std(x, ddof=1)) and (s.lo, s.hi) == (pytest.approx(lo), pytest.approx(hi))
    two = stats.summarize([70.0, 72.0])  # two seeds: the multiplier is 12.71, not 2
    assert two.half_width == pytest.approx(12.706 * 1.0, abs=1e-3)
    one = stats.summarize([70.0])
    assert one.n == 1 and one.lo is None and one.sd is None


def test_paired_difference_matches_scipy_ttest_rel():
    a = {1: 76.0, 2: 77.2, 3: 76.1, 4: 75.5}
    b = {1: 74.0, 2: 75.0, 3: 74.9, 4: 74.1, 9: 60.0}  # seed 9 has no partner: left out
    d = stats.paired_t(a, b)
    seeds = [1, 2, 3, 4]
    ref = sp.ttest_rel([a[s] for s in seeds], [b[s] for s in seeds]).confidence_interval(0.95)
    assert d.n == 4 and d.how == "paired over seeds 1,2,3,4"
    assert d.interval() == (pytest.approx(ref.low), pytest.approx(ref.high))
    assert stats.paired_t({1: 1.0}, {1: 0.0}) is None  # one shared seed: no paired test


def test_welch_difference_matches_scipy_ttest_ind():
    a, b = [76.0, 77.2, 76.1], [74.0, 75.0, 71.9, 74.4]
    d = stats.welch_t(a, b)
    ref = sp.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert d.interval() == (pytest.approx(ref.low), pytest.approx(ref.high))
    assert d.mean == pytest.approx(np.mean(a) - np.mean(b))


def test_compare_prefers_paired_then_welch_then_the_example_bootstrap():
    assert stats.compare({1: 2.0, 2: 3.0}, {1: 1.0, 2: 1.5}).how.startswith("paired")
    assert stats.compare({1: 2.0, 2: 3.0}, {3: 1.0, 4: 1.5}).how.startswith("Welch")
    assert stats.compare({1: 2.0}, {1: 1.0}) is None
    boot = stats.compare({1: 2.0}, {1: 1.0}, lambda: stats.Diff(1.0, 10, "bootstrap", se=0.1, df=9))
    assert boot.how == "bootstrap"


@pytest.mark.parametrize("diffs, delta", [
    ([0.2, -0.3, 0.1, 0.4, -0.1], 1.0),
    ([0.9, 0.5, 1.4, 0.7], 1.0),
    ([2.0, 2.5, 1.8], 1.0),
    ([0.1, -0.1, 0.05], 0.5),
])
def test_equivalence_is_two_one_sided_tests_at_5_percent(diffs, delta):
    d = stats.mean_t(dict(enumerate(diffs)))
    p_low = sp.ttest_1samp(diffs, -delta, alternative="greater").pvalue
    p_high = sp.ttest_1samp(diffs, delta, alternative="less").pvalue
    tost_holds = max(p_low, p_high) < 0.05
    assert (stats.equivalent(d, delta) == stats.HOLDS) == tost_holds
    lo, hi = d.interval(0.95)
    if stats.equivalent(d, delta) == stats.FAILS:
        assert lo > delta or hi < -delta


def test_noninferiority_and_superiority_are_one_sided_tests():
    d = stats.mean_t({1: -0.2, 2: 0.1, 3: -0.4, 4: 0.0})
    p = sp.ttest_1samp([-0.2, 0.1, -0.4, 0.0], -1.0, alternative="greater").pvalue
    assert (stats.noninferior(d, 1.0) == stats.HOLDS) == (p < 0.05)
    worse = stats.mean_t({1: -3.0, 2: -3.5, 3: -2.8})
    assert stats.noninferior(worse, 1.0) == stats.FAILS and stats.beats(worse) == stats.FAILS
    better = stats.mean_t({1: 2.0, 2: 2.5, 3: 1.8})
    assert stats.beats(better) == stats.HOLDS
    assert stats.beats(None) == stats.equivalent(None, 1) == stats.noninferior(None, 1) == stats.UNRESOLVED
    assert stats.all_of([stats.HOLDS, stats.UNRESOLVED]) == stats.UNRESOLVED
    assert stats.all_of([stats.HOLDS, stats.FAILS, stats.UNRESOLVED]) == stats.FAILS


def test_a_claim_of_k_parts_fails_only_at_the_bonferroni_level():
    # mean -1, se 0.32 with 4 df: the 95% interval lies below 0, the 97.5% (0.05 / 2 parts) one does not
    d = stats.Diff(-1.0, 5, "test", se=0.32, df=4)
    assert d.interval(0.95)[1] < 0 < d.interval(stats.fail_level(2))[1]
    assert stats.fail_level(1) == 0.95 and abs(stats.fail_level(5) - 0.99) < 1e-12
    assert stats.beats(d) == stats.FAILS and stats.beats(d, parts=2) == stats.UNRESOLVED
    assert stats.noninferior(stats.Diff(-2.0, 5, "t", se=0.32, df=4), 1.0) == stats.FAILS
    assert stats.noninferior(stats.Diff(-2.0, 5, "t", se=0.32, df=4), 1.0, parts=2) == stats.UNRESOLVED
    assert stats.equivalent(stats.Diff(2.0, 5, "t", se=0.32, df=4), 1.0) == stats.FAILS
    assert stats.equivalent(stats.Diff(2.0, 5, "t", se=0.32, df=4), 1.0, parts=2) == stats.UNRESOLVED
    # the hold side is an intersection-union test: every part at 95%, no correction
    up = stats.Diff(1.0, 5, "test", se=0.3, df=4)
    assert stats.beats(up) == stats.beats(up, parts=3) == stats.HOLDS
    with pytest.raises(ValueError, match="parts=0"):
        stats.fail_level(0)


def test_falls_short_mirrors_noninferiority():
    short = stats.Diff(-3.0, 4, "t", se=0.3, df=3)
    assert stats.noninferior(short, 1.0) == stats.FAILS and stats.falls_short(short, 1.0) == stats.HOLDS
    close = stats.Diff(0.0, 4, "t", se=0.2, df=3)
    assert stats.noninferior(close, 1.0) == stats.HOLDS and stats.falls_short(close, 1.0) == stats.FAILS
    # non-inferior at 5% (the 90% interval's lower end above -1), not at 5%/2: no "fails" for a claim of 2 parts
    wide = stats.Diff(-0.5, 4, "t", se=0.2, df=3)
    lo90, lo95 = wide.interval(0.90)[0], wide.interval(0.95)[0]
    assert lo90 > -1.0 > lo95
    assert stats.falls_short(wide, 1.0) == stats.FAILS and stats.falls_short(wide, 1.0, parts=2) == stats.UNRESOLVED
    assert stats.falls_short(None, 1.0) == stats.UNRESOLVED


def test_paired_bootstrap_is_reproducible_and_agrees_with_scipy():
    rng = np.random.default_rng(1)
    a = (rng.random(400) < 0.76).astype(float)
    b = np.where(rng.random(400) < 0.9, a, 1 - a)  # b agrees with a on ~90% of examples

    def metric(idx):
        return 100 * (a[idx].mean() - b[idx].mean())

    d = stats.bootstrap(metric, 400, n_boot=4000, seed=7)
    assert d.interval() == stats.bootstrap(metric, 400, n_boot=4000, seed=7).interval()  # fixed seed
    assert d.mean == pytest.approx(100 * (a.mean() - b.mean()))
    ref = sp.bootstrap((a, b), lambda x, y: 100 * (x.mean() - y.mean()), paired=True, vectorized=False,
                       n_resamples=4000, method="percentile", random_state=7).confidence_interval
    lo, hi = d.interval()
    assert lo == pytest.approx(ref.low, abs=0.6) and hi == pytest.approx(ref.high, abs=0.6)


def test_wider_takes_the_more_cautious_of_two_intervals_for_one_difference():
    """Two seeds that agree exactly give a zero-width paired interval; a bootstrap over the evaluation examples of
    the same difference is wider, and decides."""
    seeds = stats.paired_t({1: 0.30, 2: 0.31}, {1: 0.26, 2: 0.27})  # the same +0.04 on both seeds
    assert seeds.interval() == pytest.approx((0.04, 0.04))
    rng = np.random.default_rng(0)
    hits_a, hits_b = rng.random(285) < 0.30, rng.random(285) < 0.26
    boot = stats.bootstrap(lambda idx: float(hits_a[idx].mean() - hits_b[idx].mean()), 285)
    assert stats.wider(seeds, boot) is boot and stats.wider(boot, seeds) is boot
    assert stats.wider(None, seeds) is seeds and stats.wider(None, None) is None
    assert stats.beats(seeds) == "holds" and stats.beats(stats.wider(seeds, boot)) == "not resolved"
