"""The statistics behind every interval and verdict in a report.

Seeds are few (1-5), so a configuration's interval is a Student-t interval of the mean with n-1 degrees of
freedom (with 2 seeds the 95% multiplier is 12.7, not 2). Two configurations are compared **paired by seed**: seed s
draws the same training subset and the same head initialisation for every configuration, so the per-seed
differences carry less noise than the two spreads together. Where fewer than two seeds are shared, the difference
falls back to Welch's unpaired t-interval, and with one seed on a side to a **paired bootstrap over evaluation
examples** (per-example predictions saved beside each run) when both runs have them; otherwise it is unknown.

Verdicts are "holds", "fails" or "not resolved", each decided by an interval against a margin stated before the
numbers (`delta`, in the metric's points):
- `beats` (A better than B): the 95% interval of A - B above 0 holds; below 0 fails.
- `above` / `below` (a level against a threshold, e.g. the adapter analysis' phi above 0.5): as `beats`, with the
  threshold in place of 0.
- `equivalent` (A matches B within delta): two one-sided tests at 5%, i.e. the 90% interval inside (-delta, delta)
  holds; the 95% interval entirely outside it fails.
- `noninferior` (A matches or exceeds B, within delta): the 90% interval's lower end above -delta (a one-sided
  test at 5%) holds; the 95% interval's upper end below -delta fails.

A claim made of k comparisons ("at every rank", "on every task", "every QLoRA data type") holds only when every
part holds at the levels above: an intersection-union test, which needs no correction. It fails when any part
fails, and k parts give k chances to fail by noise, so each part's fail side is tested at the Bonferroni level:
the (1 - 0.05/k) interval instead of the 95% one (`parts=k` in each test). Otherwise "fails" for a claim of 5
parts would carry up to 5 x 2.5% of false alarms.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np

HOLDS, FAILS, UNRESOLVED = "holds", "fails", "not resolved"
LEVEL = 0.95


def t_quantile(level: float, df: float) -> float:
    from scipy import stats

    return float(stats.t.ppf(0.5 + level / 2, df))


@dataclass(frozen=True)
class Summary:
    """One configuration's metric over seeds: n, mean, median, sample SD and the 95% t-interval of the mean
    (None with one value)."""
    n: int
    mean: float
    median: float
    sd: float | None
    lo: float | None
    hi: float | None

    @property
    def half_width(self) -> float | None:
        return None if self.lo is None else (self.hi - self.lo) / 2


def summarize(values: Sequence[float], level: float = LEVEL) -> Summary:
    x = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    n = len(x)
    if n == 0:
        return Summary(0, math.nan, math.nan, None, None, None)
    mean, median = float(x.mean()), float(np.median(x))
    if n < 2:
        return Summary(1, mean, median, None, None, None)
    sd = float(x.std(ddof=1))
    h = t_quantile(level, n - 1) * sd / math.sqrt(n)
    return Summary(n, mean, median, sd, mean - h, mean + h)


@dataclass
class Diff:
    """A - B with what its interval rests on: a t distribution (se, df) or bootstrap draws."""
    mean: float
    n: int  # seeds paired, or seeds of the smaller side (Welch), or evaluation examples (bootstrap)
    how: str  # "paired over seeds 1,2,3" / "Welch over 3 and 3 seeds" / "bootstrap over 408 examples"
    se: float | None = None
    df: float | None = None
    draws: np.ndarray | None = field(default=None, repr=False)

    def interval(self, level: float = LEVEL) -> tuple[float, float]:
        if self.draws is not None:
            a = (1 - level) / 2
            lo, hi = np.quantile(self.draws, [a, 1 - a])
            return float(lo), float(hi)
        h = t_quantile(level, self.df) * self.se
        return self.mean - h, self.mean + h

    def text(self, level: float = LEVEL) -> str:
        lo, hi = self.interval(level)
        return f"{self.mean:+.1f} [{lo:+.1f}, {hi:+.1f}] ({int(level * 100)}% interval, {self.how})"


def paired_t(a: Mapping[int, float], b: Mapping[int, float]) -> Diff | None:
    """A - B over the seeds both have (at least two), as a paired t-interval."""
    return mean_t({s: a[s] - b[s] for s in sorted(set(a) & set(b))})


def mean_t(values: Mapping[int, float]) -> Diff | None:
    """The mean of per-seed values (e.g. a per-seed difference of differences) and its t-interval, n >= 2."""
    d = np.asarray(list(values.values()), dtype=float)
    if len(d) < 2:
        return None
    se = float(d.std(ddof=1)) / math.sqrt(len(d))
    return Diff(float(d.mean()), len(d), "paired over seeds " + ",".join(map(str, values)), se=se, df=len(d) - 1)


def welch_t(a: Sequence[float], b: Sequence[float]) -> Diff | None:
    """Mean(A) - mean(B) for independent samples of at least two each, Welch-Satterthwaite degrees of freedom."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(a) < 2 or len(b) < 2:
        return None
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        df = float(len(a) + len(b) - 2)
    else:
        df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    return Diff(float(a.mean() - b.mean()), min(len(a), len(b)), f"Welch over {len(a)} and {len(b)} seeds",
                se=se, df=df)


def bootstrap(metric: Callable[[np.ndarray], float], n_examples: int, n_boot: int = 2000, seed: int = 0) -> Diff:
    """Paired bootstrap over evaluation examples: `metric(idx)` is A's metric minus B's on the examples `idx`
    (the same resample for both, since both ran on the same examples). Percentile interval, fixed seed."""
    rng = np.random.default_rng(seed)
    full = float(metric(np.arange(n_examples)))
    draws = np.asarray([metric(rng.integers(0, n_examples, n_examples)) for _ in range(n_boot)], dtype=float)
    return Diff(full, n_examples, f"bootstrap over {n_examples} examples", draws=draws)


def compare(a: Mapping[int, float], b: Mapping[int, float], examples: Callable[[], Diff | None] | None = None
            ) -> Diff | None:
    """A - B by the strongest test the data allow: paired over seeds, else Welch, else a per-example bootstrap
    (`examples`, called only then), else None (one seed and no predictions: the noise is unknown)."""
    return (paired_t(a, b) or welch_t(list(a.values()), list(b.values()))
            or (examples() if examples is not None else None))


def wider(*diffs: Diff | None, level: float = LEVEL) -> Diff | None:
    """Of several intervals for the same difference (e.g. paired over seeds, and bootstrapped over the evaluation
    examples with the seeds averaged), the widest: each leaves out the other's source of noise, so a verdict rests
    on the more cautious one (two seeds that happen to agree give a zero-width seed interval)."""
    found = [d for d in diffs if d is not None]
    if not found:
        return None
    return max(found, key=lambda d: (lambda lo_hi: lo_hi[1] - lo_hi[0])(d.interval(level)))


# ----------------------------------------------------------------------------------------------- verdicts
def fail_level(parts: int = 1) -> float:
    """The interval level for a "fails" verdict on one of `parts` comparisons that make up one claim: Bonferroni,
    1 - 0.05/parts (0.95 for a claim of one comparison)."""
    if parts < 1:
        raise ValueError(f"a claim has at least one part, got parts={parts}")
    return 1 - (1 - LEVEL) / parts


def above(d: Diff | None, threshold: float = 0.0, parts: int = 1) -> str:
    """The mean is above `threshold`: holds when the 95% interval lies above it; fails when the interval at the
    fail level (Bonferroni over `parts`) lies below it."""
    if d is None:
        return UNRESOLVED
    if d.interval(LEVEL)[0] > threshold:
        return HOLDS
    return FAILS if d.interval(fail_level(parts))[1] < threshold else UNRESOLVED


def below(d: Diff | None, threshold: float, parts: int = 1) -> str:
    """The mean is below `threshold`: `above`'s mirror."""
    if d is None:
        return UNRESOLVED
    if d.interval(LEVEL)[1] < threshold:
        return HOLDS
    return FAILS if d.interval(fail_level(parts))[0] > threshold else UNRESOLVED


def beats(d: Diff | None, parts: int = 1) -> str:
    """A - B above 0 (`above` at 0)."""
    return above(d, 0.0, parts)


def equivalent(d: Diff | None, delta: float, parts: int = 1) -> str:
    """TOST at 5%: the 90% interval inside (-delta, delta); fails when the 95% interval (Bonferroni over `parts`:
    the 1 - 0.05/parts one) lies outside it."""
    if d is None:
        return UNRESOLVED
    lo, hi = d.interval(0.90)
    if -delta < lo and hi < delta:
        return HOLDS
    lo, hi = d.interval(fail_level(parts))
    return FAILS if lo > delta or hi < -delta else UNRESOLVED


def noninferior(d: Diff | None, delta: float, parts: int = 1) -> str:
    """A - B at least -delta (A matches B within delta, or beats it): one-sided test at 5%. Fails when the 95%
    interval's upper end (Bonferroni over `parts`) lies below -delta."""
    if d is None:
        return UNRESOLVED
    lo, _ = d.interval(0.90)
    if lo > -delta:
        return HOLDS
    _, hi = d.interval(fail_level(parts))
    return FAILS if hi < -delta else UNRESOLVED


def falls_short(d: Diff | None, delta: float, parts: int = 1) -> str:
    """A - B below -delta (A falls short of B by more than the margin): the mirror of `noninferior`. Holds when
    the 95% interval's upper end lies below -delta; fails when A's non-inferiority holds at the fail level (the
    one-sided 5%/parts test: the 1 - 0.10/parts interval's lower end above -delta)."""
    if d is None:
        return UNRESOLVED
    _, hi = d.interval(LEVEL)
    if hi < -delta:
        return HOLDS
    lo, _ = d.interval(1 - 2 * (1 - fail_level(parts)))
    return FAILS if lo > -delta else UNRESOLVED


def all_of(verdicts: Sequence[str]) -> str:
    """A claim made of parts: fails if any part fails, holds if all hold, else not resolved. Each part's verdict
    should come from its test with `parts=len(verdicts)`, so that the fail side is Bonferroni-corrected."""
    if not verdicts:
        return UNRESOLVED
    return FAILS if FAILS in verdicts else HOLDS if all(v == HOLDS for v in verdicts) else UNRESOLVED
