"""Deterministic float aggregation by group.

Polars' parallel group-by adds floats in an order that depends on thread scheduling, so a
mean can differ in its last bit between two runs on the same data; the audit's outputs must be
byte-identical. Here the groups get dense integer codes (a deterministic rank) and the sums are
numpy ``bincount``s, which add in row order (and the audit cohort's row order is fixed).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import polars as pl


def grouped_moments(
    frame: pl.DataFrame, keys: Sequence[str], columns: Sequence[str]
) -> pl.DataFrame:
    """Per group of ``keys``: ``n`` and, for each column, ``<col>_mean`` and ``<col>_sd``
    (sample sd, 0 for one person; nulls count as missing).

    Returns
    -------
    polars.DataFrame
        One row per group, sorted by the keys.
    """
    keys = list(keys)
    if frame.height == 0:
        empty = frame.select(keys).head(0).with_columns(pl.lit(0, dtype=pl.Int64).alias("n"))
        return empty.with_columns(
            pl.lit(None, dtype=pl.Float64).alias(f"{column}_{stat}")
            for column in columns
            for stat in ("mean", "sd", "sum")
        )
    # any integer code per group will do (sums run in row order within each group whatever the
    # code values): mixed-radix combination of cheap per-column codes, compacted by np.unique
    combined = np.zeros(frame.height, dtype=np.int64)
    for key in keys:
        series = frame[key]
        if series.dtype == pl.String:
            code = series.fill_null("").cast(pl.Categorical).to_physical().to_numpy()
        else:
            code = series.cast(pl.Int64).fill_null(-1).to_numpy()
        code = code.astype(np.int64) - int(code.min())
        combined = combined * (int(code.max()) + 1) + code
    _, first, codes = np.unique(combined, return_index=True, return_inverse=True)
    codes = codes.ravel()
    n_groups = len(first)
    out = frame.select(keys)[first.tolist()]
    out = out.with_columns(pl.Series("n", np.bincount(codes, minlength=n_groups)))
    for column in columns:
        values = frame[column].cast(pl.Float64).to_numpy()
        present = ~np.isnan(values)
        clean = np.where(present, values, 0.0)
        count = np.bincount(codes, weights=present.astype(np.float64), minlength=n_groups)
        total = np.bincount(codes, weights=clean, minlength=n_groups)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = total / count
            centred = np.where(present, values - mean[codes], 0.0)
            squares = np.bincount(codes, weights=centred**2, minlength=n_groups)
            sd = np.where(count > 1, np.sqrt(squares / (count - 1)), 0.0)
        out = out.with_columns(
            pl.Series(f"{column}_mean", mean).fill_nan(None),
            pl.Series(f"{column}_sd", sd),
            pl.Series(f"{column}_sum", total),
        )
    return out.sort(keys)
