"""The eligible cohort of a target, its model matrix and its splits."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from pipeline import contract, outcomes
from pipeline.errors import ContractError, StageError

if TYPE_CHECKING:
    from pipeline.config import Params
    from pipeline.io import Paths


@dataclass(frozen=True)
class FeatureSpec:
    """The model's inputs, in order, and which of them are integer categoricals."""

    names: tuple[str, ...]
    categorical: tuple[str, ...]


def feature_spec(manifest: contract.FeatureManifest) -> FeatureSpec:
    """Model inputs in manifest order and their categorical subset."""
    names, categorical = manifest.inputs()
    return FeatureSpec(names, categorical)


def read_outcomes(paths: Paths, params: Params, *, target: str) -> tuple[pl.LazyFrame, str]:
    """The target's outcomes (the population's ``outcomes`` rows, or derived from its events:
    :func:`pipeline.outcomes.target_outcomes`) and where they came from, for messages.

    Raises
    ------
    StageError
        When the population folder or one of its tables is missing.
    """
    try:
        table, source = outcomes.target_outcomes(
            paths.population,
            target,
            params.targets[target],
            index_date=params.index_date,
            extract_end=params.validation.extract_end,
            codelists=outcomes.project_codelists(paths.root),
        )
    except FileNotFoundError as error:
        raise StageError(str(error)) from None
    if source == outcomes.SUPPLIED:
        return table, str(paths.population / "outcomes")
    return table, f"{paths.population / 'events'} (outcomes derived by targets.{target}.derive)"


def cohort_frame(
    features: pl.LazyFrame,
    outcomes: pl.LazyFrame,
    *,
    target: str,
    columns: Sequence[str],
) -> pl.LazyFrame:
    """The eligible cohort of ``target``: its outcome rows joined to their feature rows.

    Parameters
    ----------
    features
        ``features/features.parquet`` (person_id, split, sensitive attributes, features).
    outcomes
        ``outcomes`` (person_id, target, value): one row per eligible person per target.
    target
        The target name.
    columns
        Feature-table columns to keep besides person_id and split.

    Returns
    -------
    pl.LazyFrame
        person_id, split, outcome (Int8), ``columns``, sorted by person_id; a left join, so a
        cohort member without features shows as a null split (see :func:`check_cohort`).
    """
    cohort = outcomes.filter(pl.col("target") == target).select(
        "person_id", pl.col("value").cast(pl.Int8).alias("outcome")
    )
    keep = features.select("person_id", "split", *columns)
    return cohort.join(keep, on="person_id", how="left").sort("person_id")


def check_cohort(cohort: pl.DataFrame, *, target: str, source: str) -> None:
    """Raise ContractError when the cohort cannot be trained on, naming the rule and row count."""
    if cohort.height == 0:
        raise ContractError(f"{source}: no outcome rows for target {target!r}")
    missing = cohort.filter(pl.col("split").is_null()).height
    if missing:
        raise ContractError(
            f"features/features.parquet: {missing} people of the {target!r} cohort have no "
            "feature row"
        )
    bad_outcome = cohort.filter(
        ~pl.col("outcome").is_in([0, 1]) | pl.col("outcome").is_null()
    ).height
    if bad_outcome:
        raise ContractError(
            f"{source}: column value must be 0/1 ({bad_outcome} rows of {target!r})"
        )
    duplicated = cohort.height - cohort.get_column("person_id").n_unique()
    if duplicated:
        raise ContractError(f"{source}: {duplicated} duplicated person_id rows for {target!r}")
    for split in ("train", "validation"):
        events = cohort.filter(pl.col("split") == split).get_column("outcome")
        if events.len() == 0 or events.sum() == 0 or events.sum() == events.len():
            raise StageError(
                f"{target}: the {split} split needs both outcomes (rows={events.len()}, "
                f"events={events.sum()})"
            )


def feature_matrix(frame: pl.DataFrame, spec: FeatureSpec) -> np.ndarray:
    """The model's input matrix (float32, nulls as NaN) in ``spec`` order.

    Raises
    ------
    ContractError
        When a model input is not numeric or boolean, or a categorical is not integer.
    """
    for name in spec.names:
        dtype = frame.schema[name]
        if name in spec.categorical and not dtype.is_integer():
            raise ContractError(
                f"features/features.parquet: categorical model input {name!r} must be an "
                f"integer code, found {dtype}"
            )
        if not (dtype.is_numeric() or dtype == pl.Boolean):
            raise ContractError(
                f"features/features.parquet: model input {name!r} must be numeric, found {dtype}"
            )
    return frame.select(pl.col(name).cast(pl.Float32) for name in spec.names).to_numpy()


def sample_rows(n_rows: int, *, max_rows: int, seed: int) -> np.ndarray:
    """Sorted row indices: all rows, or a seeded sample of ``max_rows`` without replacement."""
    if n_rows <= max_rows:
        return np.arange(n_rows)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n_rows, size=max_rows, replace=False))


def split_index(split: pl.Series, name: str) -> np.ndarray:
    """Row indices (ascending) whose ``split`` is ``name``."""
    return np.flatnonzero((split == name).to_numpy())


@dataclass(frozen=True)
class Splits:
    """Row indices of the cohort per split (``train`` possibly a seeded sample;
    ``early_stopping`` the validation rows early stopping reads, possibly a seeded sample)."""

    train: np.ndarray
    validation: np.ndarray
    test: np.ndarray
    external: np.ndarray
    early_stopping: np.ndarray


def split_rows(
    split: pl.Series,
    *,
    max_train_rows: int,
    max_validation_rows: int,
    sample_seed: int,
    stopping_seed: int,
    target: str,
) -> Splits:
    """The cohort's rows per split; the train split sampled down to ``max_train_rows`` and the
    early-stopping rows to ``max_validation_rows`` of the validation split.

    ``split`` is compared in Polars (a boolean mask per split), not converted to a NumPy array
    of Python strings (an object per person).

    Raises
    ------
    StageError
        When the test split is empty.
    """
    train = split_index(split, "train")
    train = train[sample_rows(train.size, max_rows=max_train_rows, seed=sample_seed)]
    validation = split_index(split, "validation")
    stopping = validation[
        sample_rows(validation.size, max_rows=max_validation_rows, seed=stopping_seed)
    ]
    test = split_index(split, "test")
    if test.size == 0:
        raise StageError(f"{target}: the test split is empty")
    return Splits(
        train=train,
        validation=validation,
        test=test,
        external=split_index(split, "external"),
        early_stopping=stopping,
    )


def oracle_risk(person_ids: pl.Series, oracle: pl.LazyFrame, *, target: str) -> np.ndarray:
    """The true risk (synthetic data) of each of ``person_ids``, in their order.

    Raises
    ------
    ContractError
        When a person has no oracle risk.
    """
    wanted = person_ids.to_frame("person_id")
    # only the wanted people's rows are collected (a semi join in the scan), not the target's
    # whole oracle: at 10M people that was a 1 GB transient for 1.6M test rows
    found = (
        oracle.filter(pl.col("target") == target)
        .select("person_id", "oracle_risk")
        .join(wanted.lazy(), on="person_id", how="semi")
        .collect()
    )
    risk = (
        wanted.join(found, on="person_id", how="left", maintain_order="left")
        .get_column("oracle_risk")
        .to_numpy()
    )
    if np.isnan(risk).any():
        raise ContractError(
            f"data/truth/oracle.parquet: {int(np.isnan(risk).sum())} test-split people of "
            f"{target!r} have no oracle_risk"
        )
    return risk
