"""Stage ``need``: a need-based ranking of one target's eligible cohort (one DVC stage per target).

A LightGBM regression of a need label - the target's own ``true_need`` when
``data/truth/oracle.parquet`` exists (synthetic data: e.g. the true 5-year CVD risk for the CVD
target), else the recorded multimorbidity count - on the recorded features, trained on a seeded
sample of the train split and scored on the whole cohort. The cohort is read in slices of the
scores file (sorted by person_id, so a ``person_id`` range filter reads only a slice's row groups
of the other files): a first pass counts each slice's people, the training sample's people are
found by their position in the train split, and each slice is scored as a task on the engine
(``engine``) that writes its part of ``data/scores/need/<target>.parquet`` (person_id,
need_score; row-level, so under ``data/``), streamed into one file in order
(:func:`pipeline.io.parts_into`): the stage holds a slice and the sample, never the cohort. The
audit reads the scores for its ``need_based`` mitigation policy and outreach for its
``need_adjusted`` policy.

Parameters: ``audit.need_model_rounds``, ``audit.need_model_max_rows``, ``audit.num_threads``
and ``seed``. Seeds (unchanged from when the audit trained this model, so the scores are too):
``seeds.derive("need_model", target, "lightgbm")`` for LightGBM and
``seeds.sequence("audit", target, "need")`` for the training sample.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

import lightgbm as lgb
import numpy as np
import polars as pl

from pipeline import batches, console, contract, engine, io, seeds
from pipeline.batches import slice_bounds
from pipeline.config import AuditParams, Params
from pipeline.errors import ContractError, StageError
from pipeline.io import person_range

if TYPE_CHECKING:
    from distributed import Client

LIGHTGBM_PARAMS: Final = {
    "objective": "regression",
    "learning_rate": 0.05,
    "num_leaves": 31,
    "min_data_in_leaf": 100,
    "feature_fraction": 0.8,
    "bagging_fraction": 0.8,
    "bagging_freq": 1,
    "deterministic": True,
    "force_row_wise": True,  # fixed histogram layout: the same model on every run
    "verbosity": -1,
}


def need_model_features(manifest: contract.FeatureManifest) -> tuple[list[str], list[str]]:
    """Model inputs for the need model and the categorical ones; the recorded multimorbidity
    count itself is left out (it may be the label)."""
    inputs, categorical = manifest.inputs(exclude=(contract.RECORDED_MULTIMORBIDITY,))
    return list(inputs), list(categorical)


@dataclass(frozen=True)
class NeedSources:
    """The stage's row-level inputs, as paths (a task reads them itself).

    ``oracle``: ``data/truth/oracle.parquet``, None without truth (a real extract)."""

    scores: Path
    features: Path
    oracle: Path | None
    target: str


def slice_people(bounds: tuple[int, int], *, sources: NeedSources) -> pl.DataFrame:
    """person_id and split of the scores file's rows ``start``-``stop`` that have a feature row,
    in the file's (person_id) order: the slice's part of the need model's cohort."""
    start, stop = bounds
    people = (
        pl.scan_parquet(sources.scores)
        .select("person_id", "split")
        .slice(start, stop - start)
        .collect()
    )
    if people.height == 0:
        return people
    ids = people["person_id"]
    present = (
        pl.scan_parquet(sources.features)
        .filter(person_range(ids))  # a sorted file: the reader skips other row groups
        .select("person_id")
        .filter(pl.col("person_id").is_in(ids.implode()))
        .collect()
    )
    return people.join(present, on="person_id", how="semi", maintain_order="left")


def slice_counts(bounds: tuple[int, int], *, sources: NeedSources) -> tuple[int, int]:
    """People of the slice with a feature row, and how many of them are in the train split
    (a task: the first pass, so the training sample can be drawn without the whole cohort)."""
    people = slice_people(bounds, sources=sources)
    return people.height, int((people["split"] == "train").sum())


def sample_positions(n_rows: int, *, max_rows: int, seed: int) -> np.ndarray:
    """Positions of the training sample among ``n_rows`` rows, in the sample's order: every row,
    or the rows ``DataFrame.sample(max_rows, seed=seed)`` picks from a frame of ``n_rows``
    (the need model's sample before it was drawn slice by slice, so the model is unchanged)."""
    if n_rows <= max_rows:
        return np.arange(n_rows)
    return pl.int_range(n_rows, eager=True).sample(max_rows, seed=seed).to_numpy()


@dataclass(frozen=True)
class TrainingSample:
    """The need model's training people: each slice's, in position order (``per_slice``), and
    the permutation back to the sample's order (``order``: the rows' order changes the fit)."""

    per_slice: list[pl.Series]
    order: np.ndarray

    def person_ids(self) -> pl.Series:
        """Every training person's id, in the sample's order."""
        ids = [part for part in self.per_slice if part.len()]
        together = pl.concat(ids) if ids else pl.Series("person_id", [], dtype=pl.String)
        return together.gather(self.order)


def training_ids(
    slices: list[tuple[int, int]],
    counts: list[tuple[int, int]],
    *,
    sources: NeedSources,
    max_rows: int,
    seed: int,
) -> TrainingSample:
    """The need model's training people: the train split (everyone when it is empty), a
    seeded sample of ``max_rows`` above that (:func:`sample_positions`), found slice by slice
    from the per-slice ``counts`` of :func:`slice_counts`."""
    use_train = sum(train for _, train in counts) > 0
    sizes = np.array([train if use_train else n for n, train in counts], dtype=np.int64)
    positions = sample_positions(int(sizes.sum()), max_rows=max_rows, seed=seed)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    in_order = np.sort(positions)
    per_slice: list[pl.Series] = []
    for index, bounds in enumerate(slices):
        low, high = np.searchsorted(in_order, offsets[index : index + 2])
        if low == high:
            per_slice.append(pl.Series("person_id", [], dtype=pl.String))
            continue
        people = slice_people(bounds, sources=sources)
        if use_train:
            people = people.filter(pl.col("split") == "train")
        per_slice.append(people["person_id"].gather(in_order[low:high] - offsets[index]))
    return TrainingSample(per_slice, np.argsort(np.argsort(positions)))


def _labels(ids: pl.Series, *, sources: NeedSources) -> tuple[pl.DataFrame, str]:
    """The need label of ``ids`` (sorted; in their order) and its name: the target's
    ``true_need`` with truth (0 where a person has none), else the recorded multimorbidity
    count (``recorded_need``). Files sorted by person_id: only the ids' row groups are read."""
    truth = target_need(sources.oracle, target=sources.target) if sources.oracle else None
    if truth is None:
        features = pl.scan_parquet(sources.features).filter(person_range(ids))
        recorded = batches.input_rows(features, ids, [contract.RECORDED_MULTIMORBIDITY], icb=None)
        return recorded.select(
            pl.col(contract.RECORDED_MULTIMORBIDITY).cast(pl.Float64).alias("recorded_need")
        ), "recorded_need"
    wanted = ids.to_frame("person_id")
    found = truth.filter(person_range(ids)).join(wanted.lazy(), on="person_id", how="semi")
    joined = wanted.join(found.collect(), on="person_id", how="left", maintain_order="left")
    return joined.select(pl.col("true_need").fill_null(0.0)), "true_need"


def training_frame(
    sample: TrainingSample, *, sources: NeedSources, features: list[str]
) -> tuple[pl.DataFrame, str]:
    """The training rows of ``sample`` in its order: their model inputs and need label, read
    slice by slice (:func:`_labels`), and the label's name."""
    parts, label = [], "recorded_need"
    for ids in sample.per_slice:
        if ids.len() == 0:
            continue
        labels, label = _labels(ids, sources=sources)
        scan = pl.scan_parquet(sources.features).filter(person_range(ids))
        parts.append(batches.input_rows(scan, ids, features, icb=None).hstack(labels))
    if not parts:
        raise StageError("need: no training rows for the need model")
    return pl.concat(parts)[sample.order], label


def train_need_model(
    training: pl.DataFrame,
    *,
    label: str,
    features: list[str],
    categorical: list[str],
    rounds: int,
    seed: int,
    num_threads: int,
) -> lgb.Booster:
    """LightGBM regression of the need label on recorded features (deterministic)."""
    if training.height == 0:
        raise StageError("need: no training rows for the need model")
    data = lgb.Dataset(
        training.select(features).to_numpy().astype(np.float64),
        label=training[label].cast(pl.Float64).fill_null(0.0).to_numpy(),
        feature_name=features,
        categorical_feature=categorical or "auto",
        free_raw_data=True,
    )
    params = {**LIGHTGBM_PARAMS, "seed": seed, "num_threads": num_threads}
    return lgb.train(params, data, num_boost_round=rounds)


def score_slice(
    bounds: tuple[int, int],
    *,
    sources: NeedSources,
    model: str,
    inputs: list[str],
    parts: str,
) -> int:
    """Score one slice's people and write them as a part of the output (a task: module-level);
    returns how many people it scored."""
    people = slice_people(bounds, sources=sources)
    scores = pl.Series("need_score", [], dtype=pl.Float64)
    if people.height:
        ids = people["person_id"]
        features = pl.scan_parquet(sources.features).filter(person_range(ids))
        frame = batches.input_rows(features, ids, inputs, icb=None)
        booster = lgb.Booster(model_str=model)
        matrix = frame.select(inputs).to_numpy().astype(np.float64)
        scores = pl.Series("need_score", booster.predict(matrix), dtype=pl.Float64)
    part = pl.DataFrame(
        {"person_id": people["person_id"], "need_score": scores},
        schema=contract.NEED_SCORES_SCHEMA,
    )
    part.write_parquet(Path(parts) / io.part_name(bounds[0]), compression="zstd", statistics=True)
    return part.height


def need_scores(
    sources: NeedSources,
    target_file: Path,
    *,
    features: list[str],
    categorical: list[str],
    audit: AuditParams,
    root_seed: int,
    client: Client | None = None,
    slice_rows: int = batches.BATCH_ROWS,
) -> int:
    """Train the need model on its training sample (:func:`training_ids`; only those people's
    inputs are read), then score everyone in slices of ``slice_rows`` rows of the scores file on
    the engine, writing ``target_file`` (person_id, need_score in the scores' order) from the
    slices' parts: the stage holds one slice, never the cohort.

    Returns
    -------
    int
        People scored (the cohort members with a feature row).
    """
    n_rows = pl.scan_parquet(sources.scores).select(pl.len()).collect().item()
    slices = slice_bounds(n_rows, rows=slice_rows)
    counts = engine.map_partitions(slice_counts, slices, client=client, sources=sources)
    if sum(n for n, _ in counts) == 0:
        raise ContractError(
            f"{sources.features}: no feature rows for the people in {sources.scores}"
        )
    target = sources.target
    sample_seed = seeds.sequence("audit", target, "need", root=root_seed).generate_state(1)[0]
    sample = training_ids(
        slices, counts, sources=sources, max_rows=audit.need_model_max_rows, seed=int(sample_seed)
    )
    training, label = training_frame(sample, sources=sources, features=features)
    started = time.perf_counter()
    booster = train_need_model(
        training,
        label=label,
        features=features,
        categorical=categorical,
        rounds=audit.need_model_rounds,
        seed=seeds.derive("need_model", target, "lightgbm", root=root_seed),
        num_threads=audit.num_threads,
    )
    # a fit on a capped sample: the benchmarks project it apart from the per-person work
    fit_seconds = time.perf_counter() - started
    console.record_timing("need", "fit", fit_seconds, target=target, rows=training.height)
    del training
    with io.parts_into(target_file) as parts:
        scored = engine.map_partitions(
            score_slice,
            slices,
            client=client,
            sources=sources,
            model=batches.broadcast(booster.model_to_string(), client),
            inputs=features,
            parts=str(parts),
        )
    return sum(scored)


def target_need(oracle_path: Path, *, target: str) -> pl.LazyFrame | None:
    """``person_id``, ``true_need`` of the target's own true need (``data/truth/oracle.parquet``;
    None without truth, i.e. on a real extract)."""
    if not oracle_path.exists():
        return None
    oracle = pl.scan_parquet(oracle_path)
    names = oracle.collect_schema().names()
    missing = [c for c in ("person_id", "target", "true_need") if c not in names]
    if missing:
        raise ContractError(f"{oracle_path}: missing column(s) {missing}")
    return oracle.filter(pl.col("target") == target).select("person_id", "true_need")


def _existing(path, what: str):
    if not path.exists():
        raise StageError(f"need: {what} not found at {path} (run the upstream stage first)")
    return path


def run(params: Params, paths: io.Paths, *, target: str) -> None:
    """Train the need model of one target and write ``data/scores/need/<target>.parquet``."""
    if target not in params.targets:
        raise StageError(f"need: unknown target {target!r}")
    oracle = paths.truth / "oracle.parquet"
    sources = NeedSources(
        scores=_existing(paths.scores / f"{target}.parquet", "scores"),
        features=_existing(paths.features / "features.parquet", "features"),
        oracle=oracle if oracle.exists() else None,
        target=target,
    )
    manifest = contract.read_manifest(_existing(paths.features / "manifest.json", "manifest"))
    features, categorical = need_model_features(manifest)
    target_need(oracle, target=target)  # a malformed oracle fails before any work
    with engine.connect_for(params) as client:
        scored = need_scores(
            sources,
            paths.scores / contract.NEED_SCORES_DIR / f"{target}.parquet",
            features=features,
            categorical=categorical,
            audit=params.audit,
            root_seed=params.seed,
            client=client,
        )
    console.stage_done("need", target=target, did=f"{console.count(scored)} people scored")
