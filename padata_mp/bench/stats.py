"""What a handful of timed runs can say: the median, a 95% interval for it, and whether a ratio of
two medians differs from 1 by more than the runs' noise.

The median's interval comes from order statistics (no assumption about the distribution): with n
runs it is [x(k), x(n-k+1)] for the largest k whose binomial tail P(B(n, 1/2) < k) stays within
2.5%.  Under 6 runs no such k exists, and the interval is [min, max], which covers the median
with probability 1 - 2/2^n (94% at 5 runs, 75% at 3): one of the reasons for the fewer-than-5-runs
warning.  A ratio's interval is a percentile bootstrap of the ratio of medians (2000 resamples,
fixed seed, so the same runs always give the same interval); significant means it excludes 1 and
each side has at least MIN_RUNS runs (with fewer, resampling cannot show the noise: one run each
would make every difference "significant").

Both cost the same at 10 runs or 10,000: the binomial tail is summed in floats from the log
of each term and stops at the interval's edge, and a resample's median is drawn straight from
its order statistics (the k-th smallest of n uniform draws is Beta(k, n - k + 1)), not by
sorting n resampled times.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

BOOTSTRAP_RESAMPLES = 2000
SEED = 20200527  # the day the series' v3 was posted
MIN_RUNS = 3


def median_ci95(times: Sequence[float]) -> tuple[float, float]:
    """A distribution-free interval holding the median with at least 95% probability (fewer
    where n < 6: then [min, max])."""
    ordered, n = sorted(times), len(times)
    k = max(_order_k(n), 1)  # [min, max] at the least
    return ordered[k - 1], ordered[n - k]


def _order_k(n: int) -> int:
    """The largest k <= n // 2 with P(B(n, 1/2) < k) <= 2.5%: terms added from the tail inwards,
    each from its logarithm (2^-n underflows a float past n = 1074)."""
    below, k = 0.0, 0
    while k + 1 <= n // 2:
        below += math.exp(math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) - n * math.log(2))
        if below > 0.025:  # P(B < k + 1) = P(B <= k)
            break
        k += 1
    return k


@dataclass(frozen=True)
class Ratio:
    """``value`` = median(a) / median(b), with a 95% bootstrap interval; significant when the
    interval excludes 1 and the smaller side had ``runs`` >= MIN_RUNS."""

    value: float
    ci95: tuple[float, float]
    runs: int

    @property
    def significant(self) -> bool:
        return self.runs >= MIN_RUNS and not self.ci95[0] <= 1.0 <= self.ci95[1]

    def inverse(self) -> Ratio:
        """median(b) / median(a), with the interval turned too."""
        return Ratio(1 / self.value, (1 / self.ci95[1], 1 / self.ci95[0]), self.runs)

    def mark(self) -> str:
        """How the table prints it: ``1.23x*``, the star where it is significant."""
        return f"{self.value:.2f}x{'*' if self.significant else ' '}"


def ratio(a: Sequence[float], b: Sequence[float]) -> Ratio:
    """median(a) / median(b) and its interval, resampling each set on its own."""
    rng = np.random.default_rng(SEED)
    ma, mb = _resampled_medians(a, rng), _resampled_medians(b, rng)
    lo, hi = np.percentile(ma / mb, [2.5, 97.5])
    return Ratio(statistics.median(a) / statistics.median(b), (float(lo), float(hi)), min(len(a), len(b)))


def _resampled_medians(times: Sequence[float], rng: np.random.Generator) -> np.ndarray:
    """The medians of BOOTSTRAP_RESAMPLES resamples (n draws with replacement) of ``times``, drawn
    from the order statistics: the k-th smallest of n uniform draws on [0, 1) is Beta(k, n-k+1),
    and the next one above it is that plus the rest times Beta(1, n-k); ceil(n u) is then the rank
    of the time drawn."""
    x, n = np.sort(np.asarray(times, float)), len(times)
    k = (n + 1) // 2
    low = rng.beta(k, n - k + 1, BOOTSTRAP_RESAMPLES)
    if n % 2:
        return x[_rank(low, n)]
    high = low + (1 - low) * rng.beta(1, n - k, BOOTSTRAP_RESAMPLES)
    return (x[_rank(low, n)] + x[_rank(high, n)]) / 2


def _rank(u: np.ndarray, n: int) -> np.ndarray:
    return np.clip(np.ceil(u * n).astype(np.int64) - 1, 0, n - 1)
