"""Confidence intervals: Wilson for proportions, percentiles of bootstrap draws otherwise.

The bootstrap resamples *cell counts*, not rows: under the Poisson bootstrap every person gets
an independent Poisson(1) weight, so a cell of ``n`` identical people gets a Poisson(``n``)
weight in total. Drawing one Poisson number per cell is therefore exactly the row-level Poisson
bootstrap, at a cost that does not grow with the number of people.
"""

from __future__ import annotations

import numpy as np
from scipy import stats


def z_value(confidence: float) -> float:
    """Two-sided normal quantile for ``confidence`` (1.96 at 0.95)."""
    return float(stats.norm.ppf(0.5 + confidence / 2.0))


def wilson_interval(
    successes: np.ndarray, trials: np.ndarray, *, confidence: float = 0.95
) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval for binomial proportions, vectorised.

    Parameters
    ----------
    successes, trials
        Counts (same shape); ``trials == 0`` gives NaN bounds.
    confidence
        Two-sided coverage.

    Returns
    -------
    tuple of numpy.ndarray
        Lower and upper bounds.
    """
    successes = np.asarray(successes, dtype=np.float64)
    trials = np.asarray(trials, dtype=np.float64)
    z = z_value(confidence)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = successes / trials
        denominator = 1.0 + z**2 / trials
        centre = (share + z**2 / (2.0 * trials)) / denominator
        half = z * np.sqrt(share * (1.0 - share) / trials + z**2 / (4.0 * trials**2)) / denominator
    low = np.where(trials > 0, np.clip(centre - half, 0.0, 1.0), np.nan)
    high = np.where(trials > 0, np.clip(centre + half, 0.0, 1.0), np.nan)
    return low, high


def percentile_interval(
    draws: np.ndarray, *, confidence: float = 0.95, shift: np.ndarray | float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval over axis 0 of bootstrap (or Monte Carlo) draws, NaN draws ignored.

    ``shift`` moves the interval, used when the draws were computed on coarser score bins
    than the point estimate (the interval is re-centred on the point estimate).
    """
    alpha = (1.0 - confidence) / 2.0
    draws = np.asarray(draws, dtype=np.float64)
    finite = np.isfinite(draws)
    enough = finite.sum(axis=0) >= max(10, int(0.5 * draws.shape[0]))
    with np.errstate(invalid="ignore"):
        filled = np.where(finite, draws, np.nan)
        if filled.size == 0 or not enough.any():
            nan = np.full(draws.shape[1:], np.nan)
            return nan, nan.copy()
        safe = np.where(enough, 0, 1)  # all-NaN columns would warn in nanquantile
        filled = np.where(safe[None, ...] == 1, 0.0, filled)
        low, high = np.nanquantile(filled, [alpha, 1.0 - alpha], axis=0)
    low = np.where(enough, low + shift, np.nan)
    high = np.where(enough, high + shift, np.nan)
    return low, high


def poisson_resample(
    counts: np.ndarray, *, n_resamples: int, rng: np.random.Generator
) -> np.ndarray:
    """Poisson-bootstrap resampled cell counts, shape ``(n_resamples, len(counts))``."""
    return rng.poisson(np.asarray(counts, dtype=np.float64), size=(n_resamples, len(counts)))
