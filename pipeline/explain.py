"""Stage ``explain``: each eligible person's largest feature contributions, for outreach reasons.

For one target, the model (``models/<target>/model.txt``) is loaded once and LightGBM's
``pred_contrib`` (TreeSHAP, in log-odds) is computed for the whole eligible cohort
(``data/scores/<target>.parquet``) in batches. The ``EXPLAINED_FEATURES`` largest contributions
per person are written to ``data/explanations/<target>.parquet`` (``contract.EXPLANATIONS_SCHEMA``).
A DVC stage of its own, so that a new outreach capacity or policy re-runs outreach only, which
joins these rows to the people it selects and words them (``docs/outreach.md``).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any, Final

import numpy as np
import polars as pl

from pipeline import console, contract
from pipeline.errors import ContractError, StageError
from pipeline.io import Paths, write_parquet

__all__ = ["BATCH_ROWS", "explain_cohort", "explainable", "run", "top_contributions"]

BATCH_ROWS: Final = 5_000
"""People per ``pred_contrib`` call: bounds memory (rows x features x 8 bytes) and shows
progress."""
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
    parts = [pl.DataFrame(schema=contract.EXPLANATIONS_SCHEMA)]
    with _progress() as progress:
        task = progress.add_task("explain (pred_contrib)", total=inputs.height)
        for batch in inputs.iter_slices(batch_rows):
            contributions = booster.predict(
                _model_matrix(batch.select(names), booster), pred_contrib=True
            )
            parts.append(top_contributions(batch["person_id"], contributions, names))
            progress.advance(task, batch.height)
    return pl.concat(parts)


def _progress() -> Any:
    from rich.progress import Progress

    return Progress(transient=True, disable=not sys.stderr.isatty())


def _cohort_inputs(paths: Paths, target: str, names: Sequence[str]) -> pl.DataFrame:
    """The eligible cohort's model inputs, one row per scored person (sorted by person_id)."""
    scores_path = paths.scores / f"{target}.parquet"
    features_path = paths.features / "features.parquet"
    for path, what in ((scores_path, f"scores of {target}"), (features_path, "features table")):
        if not path.exists():
            raise StageError(f"explain: {what} not found at {path}; run the upstream stage first")
    features = pl.scan_parquet(features_path)
    missing = [name for name in names if name not in features.collect_schema().names()]
    if missing:
        raise ContractError(f"{features_path}: missing model input column(s) {', '.join(missing)}")
    cohort = pl.scan_parquet(scores_path).select("person_id")
    inputs = (
        cohort.join(features.select("person_id", *names), on="person_id", how="inner")
        .sort("person_id")
        .collect()
    )
    n_eligible = cohort.select(pl.len()).collect().item()
    if inputs.height != n_eligible or inputs["person_id"].n_unique() != inputs.height:
        raise ContractError(
            f"{features_path}: {n_eligible} people scored for {target} but {inputs.height} "
            "feature rows match them (every scored person needs exactly one row)"
        )
    return inputs


def run(paths: Paths, *, target: str) -> None:
    """Explain one target's eligible cohort (all IO lives here).

    Takes no params: the explanations depend on the model, the features and the cohort alone.
    """
    model_path = paths.models / target / "model.txt"
    if not model_path.exists():
        raise StageError(f"explain: model of {target} not found at {model_path}; train it first")
    import lightgbm as lgb

    booster = lgb.Booster(model_file=str(model_path))
    inputs = _cohort_inputs(paths, target, booster.feature_name())
    explanations = explain_cohort(inputs, booster)
    write_parquet(
        explanations,
        paths.root / contract.EXPLANATIONS_DIR / f"{target}.parquet",
        sort_by=["person_id", "position"],
    )
    console.stage_done(
        "explain", target=target, did=f"{console.count(inputs.height)} people explained"
    )
