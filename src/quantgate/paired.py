"""The ratio of one build's figure to the reference build's, with a distribution-free interval, paired or not.

Paired (interleaved A/B, quantgate.workload.interleave): request i of each build ran in the same slot of the
schedule, so each pair's log-ratio log(other_i / reference_i) carries no drift of the machine between the two;
the estimate is the Hodges-Lehmann pseudo-median of those log-ratios (the median of their Walsh averages) and
the interval the Wilcoxon signed-rank interval around it.

Unpaired (the builds ran one after the other): the Hodges-Lehmann shift between the two samples' logs (the
median of every difference log(other_j) - log(reference_i)) and the Mann-Whitney interval around it.

Both intervals are exact for small samples: a few repeats cannot reach 95% (3 pairs reach at most 75%), so the
interval is the tightest one whose confidence reaches the asked one where it can, else the widest there is
(min..max), and says the confidence it has.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from statistics import NormalDist, median

EXACT_MAX = 80  # exact null distributions up to this many pairs (or this many values per side); normal beyond


@dataclass(frozen=True)
class RatioInterval:
    """other / reference: the estimate and an interval of it, with the confidence the interval has."""

    estimate: float
    low: float
    high: float
    confidence: float  # the interval's own coverage (at least the asked one where the sample allows it)
    n: int  # pairs (paired) or the smaller sample (unpaired)
    paired: bool

    @property
    def width(self) -> float:
        """high - low, in ratio units (0.06 = six points of percentage)."""
        return self.high - self.low

    def text(self) -> str:
        """`-3.1% (-5.0%..-1.2%, 95%)`."""
        return f"{self.estimate - 1:+.1%} ({self.low - 1:+.1%}..{self.high - 1:+.1%}, {self.confidence:.0%})"


def _logs(values: Sequence[float]) -> list[float]:
    return [math.log(v) for v in values if v > 0 and math.isfinite(v)]


@cache
def _signed_rank_cdf(n: int) -> tuple[float, ...]:
    """P(T <= t) for t = 0..n(n+1)/2, T the Wilcoxon signed-rank statistic of n pairs under no difference."""
    counts = [1] + [0] * (n * (n + 1) // 2)
    for rank in range(1, n + 1):  # subsets of {1..n} by their sum
        for s in range(len(counts) - 1, rank - 1, -1):
            counts[s] += counts[s - rank]
    total, acc, out = 2 ** n, 0, []
    for c in counts:
        acc += c
        out.append(acc / total)
    return tuple(out)


@cache
def _rank_sum_cdf(m: int, n: int) -> tuple[float, ...]:
    """P(U <= u) for u = 0..m*n, U the Mann-Whitney statistic of samples of m and n under no difference."""
    # counts[j][u]: arrangements of m values of one side among j of the other with statistic u, side by side
    prev = [[1] for _ in range(n + 1)]  # m = 0
    for i in range(1, m + 1):
        cur = [[1]]  # n = 0
        for j in range(1, n + 1):
            a, b = prev[j], cur[j - 1]  # the largest value is from the first side (adds j) or the second
            row = [0] * (i * j + 1)
            for u, c in enumerate(b):
                row[u] += c
            for u, c in enumerate(a):
                row[u + j] += c
            cur.append(row)
        prev = cur
    counts = prev[n]
    total, acc, out = sum(counts), 0, []
    for c in counts:
        acc += c
        out.append(acc / total)
    return tuple(out)


def _depth(cdf: Sequence[float], confidence: float) -> tuple[int, float]:
    """k of the interval [v_(k), v_(N+1-k)] over N sorted values: the largest k whose coverage
    1 - 2 P(stat <= k-1) still reaches `confidence` (else k = 1, the widest), and that coverage."""
    alpha = 1.0 - confidence
    k = 1
    while k < len(cdf) and 2 * cdf[k] <= alpha + 1e-12:
        k += 1
    return k, max(0.0, 1.0 - 2 * cdf[k - 1])


def _normal_depth(mean: float, var: float, confidence: float) -> tuple[int, float]:
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    return max(1, math.floor(mean - z * math.sqrt(var))), confidence


def _interval(values: list[float], k: int, confidence: float, n: int, paired: bool) -> RatioInterval:
    values.sort()
    k = min(k, (len(values) + 1) // 2)
    return RatioInterval(math.exp(median(values)), math.exp(values[k - 1]), math.exp(values[len(values) - k]),
                         confidence, n, paired)


def paired_ratio(reference: Sequence[float], other: Sequence[float], confidence: float = 0.95) -> RatioInterval | None:
    """The ratio other/reference from pairs measured together (same index = same slot of the schedule);
    None without a usable pair. Pairs with a non-positive or missing value on either side are dropped."""
    if len(reference) != len(other):
        raise ValueError(f"paired samples differ in length: {len(reference)} reference, {len(other)} other")
    logs = [math.log(o / r) for r, o in zip(reference, other, strict=True)
            if r > 0 and o > 0 and math.isfinite(r) and math.isfinite(o)]
    return log_ratio_interval(logs, confidence)


def log_ratio_interval(logs: Sequence[float], confidence: float = 0.95) -> RatioInterval | None:
    """The Hodges-Lehmann estimate and Wilcoxon signed-rank interval of paired log-ratios."""
    n = len(logs)
    if n == 0:
        return None
    walsh = [(logs[i] + logs[j]) / 2 for i in range(n) for j in range(i, n)]
    if n <= EXACT_MAX:
        k, got = _depth(_signed_rank_cdf(n), confidence)
    else:
        k, got = _normal_depth(n * (n + 1) / 4, n * (n + 1) * (2 * n + 1) / 24, confidence)
    return _interval(walsh, k, got, n, paired=True)


def unpaired_ratio(reference: Sequence[float], other: Sequence[float],
                   confidence: float = 0.95) -> RatioInterval | None:
    """The ratio other/reference from two samples measured apart; None when either side has no usable value."""
    a, b = _logs(reference), _logs(other)
    m, n = len(a), len(b)
    if not m or not n:
        return None
    diffs = [y - x for x in a for y in b]
    if max(m, n) <= EXACT_MAX:
        k, got = _depth(_rank_sum_cdf(m, n), confidence)
    else:
        k, got = _normal_depth(m * n / 2, m * n * (m + n + 1) / 12, confidence)
    return _interval(diffs, k, got, min(m, n), paired=False)
