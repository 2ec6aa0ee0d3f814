"""Which features explain a score: each person's largest LightGBM contributions (TreeSHAP).

The one place that turns a model and people's model inputs into the ``EXPLAINED_FEATURES``
largest ``pred_contrib`` values per person (``contract.EXPLANATIONS_SCHEMA``, log-odds), never
naming ethnicity. Outreach calls it for the people it selects only, inside each ICB's task
(``pipeline.outreach.stage.partition_lists``): TreeSHAP of one row does not depend on the other
rows of its batch, so explaining the selected people gives them exactly the contributions that
explaining the whole eligible cohort would (``docs/outreach.md``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np
import polars as pl

from pipeline import contract
from pipeline.errors import ContractError, StageError

__all__ = ["BATCH_ROWS", "explain_cohort", "explainable", "load_booster", "top_contributions"]

BATCH_ROWS: Final = 5_000
"""People per ``pred_contrib`` call: bounds memory (rows x features x 8 bytes)."""
NEVER_EXPLAINED: Final = ("ethnic",)
"""Name fragments of features that may be model inputs but must never appear on a list."""


def explainable(feature_names: Sequence[str]) -> np.ndarray:
    """Which features may be named as a reason (never ethnicity), as a boolean mask.

    Examples
    --------
    >>> explainable(["age", "ethnicity_code"]).tolist()
    [True, False]
    """
    return np.array(
        [not any(word in name.lower() for word in NEVER_EXPLAINED) for name in feature_names],
        dtype=bool,
    )


def top_contributions(
    person_ids: pl.Series,
    contributions: np.ndarray,
    feature_names: Sequence[str],
    *,
    top: int = contract.EXPLAINED_FEATURES,
) -> pl.DataFrame:
    """The largest feature contributions per person (long: one row per position).

    Parameters
    ----------
    person_ids
        The people, in the row order of ``contributions``.
    contributions
        ``Booster.predict(X, pred_contrib=True)`` (columns after ``feature_names``, i.e. the
        bias, are ignored).
    feature_names
        The model's features, in column order.
    top
        Contributions kept per person (at most the number of explainable features).

    Returns
    -------
    pl.DataFrame
        ``contract.EXPLANATIONS_SCHEMA``, in the row order of ``person_ids``.
    """
    names = np.array(feature_names, dtype=object)
    contrib = np.array(contributions, dtype=np.float64).reshape(len(person_ids), -1)
    contrib = contrib[:, : len(names)]
    allowed = explainable(feature_names)
    contrib[:, ~allowed] = -np.inf
    top = min(top, int(allowed.sum()))
    # Stable sort of the negated contributions: equal contributions keep the feature order.
    order = np.argsort(-contrib, axis=1, kind="stable")[:, :top]
    return pl.DataFrame(
        {
            "person_id": np.repeat(person_ids.to_numpy(), top),
            "position": np.tile(np.arange(1, top + 1, dtype=np.int8), len(person_ids)),
            "feature": names[order.reshape(-1)],
            "contribution": np.take_along_axis(contrib, order, axis=1).reshape(-1),
        },
        schema=contract.EXPLANATIONS_SCHEMA,
    )


def _model_matrix(frame: pl.DataFrame, booster: Any) -> Any:
    """Model inputs as pandas (as LightGBM reads them); text columns become categories that
    LightGBM maps to its stored codes."""
    matrix = frame.to_pandas()
    text_columns = [
        column
        for column, dtype in frame.schema.items()
        if dtype in (pl.String, pl.Categorical, pl.Enum)
    ]
    if text_columns and not booster.pandas_categorical:
        raise ContractError(
            f"features/features.parquet: column {text_columns[0]!r} is text but the model "
            "stores no categorical mapping"
        )
    for column in text_columns:
        matrix[column] = matrix[column].astype("category")
    return matrix


def explain_cohort(
    inputs: pl.DataFrame, booster: Any, *, batch_rows: int = BATCH_ROWS
) -> pl.DataFrame:
    """Top contributions of every person in ``inputs``, computed in batches.

    Parameters
    ----------
    inputs
        ``person_id`` and the booster's features (in any column order), one row per person.
    booster
        A ``lightgbm.Booster``.
    batch_rows
        People per ``pred_contrib`` call.

    Returns
    -------
    pl.DataFrame
        ``contract.EXPLANATIONS_SCHEMA`` rows, in the row order of ``inputs``.
    """
    names = booster.feature_name()
    missing = [name for name in names if name not in inputs.columns]
    if missing:
        raise ContractError(
            f"features/features.parquet: missing model input column(s) {', '.join(missing)}"
        )
    parts = [pl.DataFrame(schema=contract.EXPLANATIONS_SCHEMA)]
    for batch in inputs.iter_slices(batch_rows):
        contributions = booster.predict(
            _model_matrix(batch.select(names), booster), pred_contrib=True
        )
        parts.append(top_contributions(batch["person_id"], contributions, names))
    return pl.concat(parts)


def load_booster(path: Path) -> Any:
    """A trained model (``models/<target>/model.txt``) as a ``lightgbm.Booster``.

    Loaded by every task that explains people: a text model of a few hundred trees loads in
    about 15 ms, so it is not cached.

    Raises
    ------
    StageError
        No model at ``path``.
    """
    if not path.exists():
        raise StageError(f"model not found at {path}; run the train stage first")
    import lightgbm as lgb

    return lgb.Booster(model_file=str(path))
