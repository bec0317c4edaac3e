"""Exact binomial tests shared by the stages that decide from counts: the canary guard and paired evals."""

from __future__ import annotations

import math


def binomial_upper_tail(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p), summed in log space (exact; n up to millions in well under a second)."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    log_p, log_q = math.log(p), math.log1p(-p)
    log_terms = [
        math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * log_p + (n - i) * log_q
        for i in range(k, n + 1)
    ]
    top = max(log_terms)
    return min(1.0, math.exp(top) * sum(math.exp(term - top) for term in log_terms))


def mcnemar_exact(first_only: int, second_only: int) -> float:
    """Two-sided exact McNemar p-value: of the discordant items (wrong in one only), is the split 50/50?

    ``first_only`` items are wrong only under the first condition, ``second_only`` only under the second;
    items both got right or both got wrong say nothing about which is better, so they are not counted.
    """
    discordant = first_only + second_only
    if discordant == 0:
        return 1.0
    return min(1.0, 2 * binomial_upper_tail(max(first_only, second_only), discordant, 0.5))
