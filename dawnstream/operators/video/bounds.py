"""Exact binomial confidence bounds for the cascade's live error test.

The cascade's sampled checks are Bernoulli trials: of the ``n`` checked frames the reference model calls
true, ``k`` got "false" from the cheaper stage (false negatives; false positives likewise). The
Clopper-Pearson interval (Clopper & Pearson, Biometrika 1934) inverts the binomial test, so its one-sided
lower bound at confidence ``1 - alpha`` is below the true rate with probability at least ``1 - alpha``
whatever ``n`` is: when it is above the user's target, the stage is that sure the target is missed.
Computed with scipy's beta quantiles (``scipy.stats.binomtest(...).proportion_ci(method="exact")`` gives
the same numbers).

>>> round(lower_bound(2, 10), 4), round(upper_bound(0, 60), 4)
(0.0368, 0.0487)
"""

from __future__ import annotations


def lower_bound(k: int, n: int, alpha: float = 0.05) -> float:
    """One-sided Clopper-Pearson lower bound of a rate from ``k`` events in ``n`` trials (0 when ``k`` is 0).

    Raises:
        ValueError: ``k`` outside ``0..n`` or ``alpha`` outside (0, 1).
    """
    _check(k, n, alpha)
    if k == 0:
        return 0.0
    from scipy.stats import beta

    return float(beta.ppf(alpha, k, n - k + 1))


def upper_bound(k: int, n: int, alpha: float = 0.05) -> float:
    """One-sided Clopper-Pearson upper bound of a rate from ``k`` events in ``n`` trials (1 when ``k == n``).

    Raises:
        ValueError: ``k`` outside ``0..n`` or ``alpha`` outside (0, 1).
    """
    _check(k, n, alpha)
    if k == n:
        return 1.0
    from scipy.stats import beta

    return float(beta.ppf(1.0 - alpha, k + 1, n - k))


def _check(k: int, n: int, alpha: float) -> None:
    if not (0 <= k <= n) or not 0.0 < alpha < 1.0:
        raise ValueError(f"expected 0 <= k <= n and 0 < alpha < 1, got k={k}, n={n}, alpha={alpha}")
