"""The eligible cohort of a target, its model matrix and its splits."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

import numpy as np
import polars as pl

from pipeline import contract, outcomes
from pipeline.batches import slice_bounds
from pipeline.errors import ContractError, StageError

if TYPE_CHECKING:
    from pipeline.config import Params
    from pipeline.io import Paths


SLICE_ROWS: Final = 1_000_000
"""Rows of the features file joined to their outcome rows at once (:class:`CohortSlices`): the
people the train stage holds, counts and scores together (its memory past the samples' caps)."""


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
    # derived once, here: the cohort is read in slices that each filter this table
    derived = table.collect().lazy()
    return derived, f"{paths.population / 'events'} (outcomes derived by targets.{target}.derive)"


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
        cohort member without features shows as a null split (see :func:`check_counts`).
    """
    cohort = outcomes.filter(pl.col("target") == target).select(
        "person_id", pl.col("value").cast(pl.Int8).alias("outcome")
    )
    keep = features.select("person_id", "split", *columns)
    return cohort.join(keep, on="person_id", how="left").sort("person_id")


@dataclass(frozen=True)
class CohortSlices:
    """The eligible cohort of a target as slices of ``features/features.parquet``, each joined
    to its outcome rows when read (:meth:`read`), so no step holds every person's rows and the
    joins' hash tables and the reader's copies are a slice's (the whole join's transient was
    0.4 GB at 2.3M people, against the cohort's 38 MB).

    A slice's outcome rows are those from its first ``person_id`` up to the next slice's first
    (``ranges``), so every outcome row is read exactly once, including a person without a
    feature row (a null split, refused by :func:`check_counts`). A features file not sorted by
    person_id is one slice (the whole join).
    """

    features: Path
    eligible: pl.LazyFrame
    columns: tuple[str, ...]
    bounds: tuple[tuple[int, int], ...]
    ranges: tuple[tuple[str | None, str | None], ...]

    def read(self, index: int) -> pl.DataFrame:
        """Slice ``index``: person_id, outcome (Int8), split and ``columns``, by person_id."""
        start, stop = self.bounds[index]
        low, high = self.ranges[index]
        in_range = pl.lit(value=True)
        if low is not None:
            in_range &= pl.col("person_id") >= low
        if high is not None:
            in_range &= pl.col("person_id") < high
        keep = (
            pl.scan_parquet(self.features)
            .slice(start, stop - start)
            .select("person_id", "split", *self.columns)
        )
        part = self.eligible.filter(in_range).join(keep, on="person_id", how="left")
        return part.sort("person_id").collect()

    def __len__(self) -> int:
        return len(self.bounds)


def plan_slices(
    features: Path,
    outcomes: pl.LazyFrame,
    *,
    target: str,
    columns: Sequence[str],
    rows: int = SLICE_ROWS,
) -> CohortSlices:
    """The :class:`CohortSlices` of ``target``, ``rows`` feature rows each; ``outcomes``
    should be cheap to filter by person_id (files, or a frame in memory: not a derivation that
    reruns per slice, :func:`read_outcomes`)."""
    scan = pl.scan_parquet(features)
    n_rows = scan.select(pl.len()).collect().item()
    bounds = slice_bounds(n_rows, rows=rows)
    firsts = [scan.slice(start, 1).select("person_id").collect().item() for start, _ in bounds[1:]]
    if firsts != sorted(firsts):  # not sorted by person_id: the ranges would not partition
        bounds, firsts = [(0, n_rows)], []
    eligible = outcomes.filter(pl.col("target") == target).select(
        "person_id", pl.col("value").cast(pl.Int8).alias("outcome")
    )
    edges = [None, *firsts, None]
    return CohortSlices(
        features=features,
        eligible=eligible,
        columns=tuple(columns),
        bounds=tuple(bounds),
        ranges=tuple(itertools.pairwise(edges)),
    )


def cohort_in_slices(slices: CohortSlices) -> pl.DataFrame:
    """Every slice, in order: :func:`cohort_frame`'s rows (for tests and small cohorts)."""
    return pl.concat([slices.read(index) for index in range(len(slices))])


SPLIT_NAMES: Final = ("train", "validation", "test", "external")
"""The splits the stage reads (``external``: a held-out ICB's people, if any)."""


@dataclass(frozen=True)
class CohortCounts:
    """What the checks and the samples need to know of the whole cohort: sums over slices.

    ``per_slice[i][split]``: people of ``split`` in slice ``i`` (each split's people are
    numbered in cohort order across slices: :func:`with_split_position`).
    """

    n_people: int
    no_feature_row: int
    bad_outcome: int
    duplicated: int
    split_rows: dict[str, int]
    split_events: dict[str, int]
    per_slice: tuple[dict[str, int], ...]


def slice_counts(people: pl.DataFrame) -> dict[str, int]:
    """One slice's counts (:class:`CohortCounts`; people are sorted by person_id, so a
    duplicated id is within one slice)."""
    row = people.select(
        pl.len().alias("n_people"),
        pl.col("split").is_null().sum().alias("no_feature_row"),
        (~pl.col("outcome").is_in([0, 1]) | pl.col("outcome").is_null()).sum().alias("bad"),
        (pl.len() - pl.col("person_id").n_unique()).alias("duplicated"),
        *((pl.col("split") == name).sum().alias(f"rows_{name}") for name in SPLIT_NAMES),
        *(
            pl.col("outcome")
            .filter(pl.col("split") == name)
            .cast(pl.Int64)
            .sum()
            .alias(f"events_{name}")
            for name in SPLIT_NAMES
        ),
    )
    return {name: int(value or 0) for name, value in row.row(0, named=True).items()}


def cohort_counts(slices: CohortSlices) -> CohortCounts:
    """:class:`CohortCounts` of every slice (one pass, one slice held at a time)."""
    per_slice = tuple(slice_counts(slices.read(index)) for index in range(len(slices)))

    def total(key: str) -> int:
        return sum(counts[key] for counts in per_slice)

    return CohortCounts(
        n_people=total("n_people"),
        no_feature_row=total("no_feature_row"),
        bad_outcome=total("bad"),
        duplicated=total("duplicated"),
        split_rows={name: total(f"rows_{name}") for name in SPLIT_NAMES},
        split_events={name: total(f"events_{name}") for name in SPLIT_NAMES},
        per_slice=tuple({name: c[f"rows_{name}"] for name in SPLIT_NAMES} for c in per_slice),
    )


def check_counts(counts: CohortCounts, *, target: str, source: str) -> None:
    """Raise ContractError when the cohort cannot be trained on, naming the rule and row count."""
    if counts.n_people == 0:
        raise ContractError(f"{source}: no outcome rows for target {target!r}")
    if counts.no_feature_row:
        raise ContractError(
            f"features/features.parquet: {counts.no_feature_row} people of the {target!r} "
            "cohort have no feature row"
        )
    if counts.bad_outcome:
        raise ContractError(
            f"{source}: column value must be 0/1 ({counts.bad_outcome} rows of {target!r})"
        )
    if counts.duplicated:
        raise ContractError(
            f"{source}: {counts.duplicated} duplicated person_id rows for {target!r}"
        )
    for split in ("train", "validation"):
        rows, events = counts.split_rows[split], counts.split_events[split]
        if rows == 0 or events in (0, rows):
            raise StageError(
                f"{target}: the {split} split needs both outcomes (rows={rows}, events={events})"
            )


def with_split_position(people: pl.DataFrame, counts: CohortCounts, index: int) -> pl.DataFrame:
    """Slice ``index``'s people with ``split_position``: their number within their split,
    counted in cohort order across every slice (0-based): the positions samples are drawn in."""
    before = {name: sum(counts.per_slice[i][name] for i in range(index)) for name in SPLIT_NAMES}
    offset = pl.col("split").replace_strict(before, default=0, return_dtype=pl.Int64)
    return people.with_columns(
        (pl.int_range(pl.len()).over("split") + offset).alias("split_position")
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


SAMPLE_SPLITS: Final = {
    "train": "train",
    "early_stopping": "validation",
    "calibration": "validation",
    "test": "test",
    "shap": "test",
    "external": "external",
    "distributed": "train",
}
"""The split each of :class:`Samples`' people come from."""


@dataclass(frozen=True)
class Samples:
    """Positions within their split (:func:`with_split_position`, sorted) of the people each
    step reads: the fit (``train``, a seeded sample above ``train.max_train_rows``), early
    stopping (validation, above ``train.max_validation_rows``), the calibration (validation,
    above ``train.max_calibration_rows``), the test metrics (above ``train.max_test_rows``),
    the SHAP importance (test), the held-out ICB (``external``: everyone) and, for a
    distributed fit, every training row. Each cap bounds the stage's memory in N."""

    positions: dict[str, np.ndarray]

    def split_of(self, name: str) -> str:
        return SAMPLE_SPLITS[name]


def draw_samples(
    counts: CohortCounts,
    *,
    caps: dict[str, int],
    seeds_of: dict[str, int],
    distributed: bool,
    target: str,
) -> Samples:
    """Every :class:`Samples` position set: ``sample_rows(n, max_rows=caps[name],
    seed=seeds_of[name])`` of its split's people (the external split whole).

    Raises
    ------
    StageError
        When the test split is empty.
    """
    if counts.split_rows["test"] == 0:
        raise StageError(f"{target}: the test split is empty")
    positions = {
        name: sample_rows(counts.split_rows[SAMPLE_SPLITS[name]], max_rows=cap, seed=seeds_of[name])
        for name, cap in caps.items()
    }
    positions["external"] = np.arange(counts.split_rows["external"])
    if distributed:
        positions["distributed"] = np.arange(counts.split_rows["train"])
    return Samples(positions)


def gather_samples(
    slices: CohortSlices, counts: CohortCounts, samples: Samples
) -> dict[str, pl.DataFrame]:
    """The people of every sample (their slice's columns and ``split_position``), in position
    order: one pass over the slices, each holding only its share of the samples."""
    found: dict[str, list[pl.DataFrame]] = {name: [] for name in samples.positions}
    for index in range(len(slices)):
        people = with_split_position(slices.read(index), counts, index)
        for name, positions in samples.positions.items():
            split = samples.split_of(name)
            first = sum(counts.per_slice[i][split] for i in range(index))
            low, high = np.searchsorted(positions, [first, first + counts.per_slice[index][split]])
            found[name].append(people.filter(in_sample(split, positions[low:high])))
    return {name: pl.concat(parts) for name, parts in found.items()}


def in_sample(split: str, positions: np.ndarray) -> pl.Expr:
    """The people of ``split`` at ``positions`` of it (``split_position``:
    :func:`with_split_position`)."""
    wanted = pl.Series(positions, dtype=pl.Int64).implode()
    return (pl.col("split") == split) & pl.col("split_position").is_in(wanted)


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
