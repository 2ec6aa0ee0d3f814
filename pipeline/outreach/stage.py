"""The ``outreach`` stage's IO: read the inputs, build each target's list, write the outputs.

Reads ``data/scores/<target>.parquet`` (the eligible cohort), ``features/features.parquet``
(units and sensitive attributes, the selected people's model inputs, and the values the reasons
quote), ``features/manifest.json``, ``models/<target>/model.txt`` (the selected people's
contributions, :mod:`pipeline.explain`), the audit's need scores for ``need_adjusted`` and, when
present, ``data/truth/oracle.parquet`` (each target's own true need). Writes
``data/outreach/<target>.parquet``, ``data/outreach/<target>/<icb_code>.csv``, the merged list
across targets (``data/outreach/merged.parquet``, ``merged/<icb_code>.csv``), the data dictionary
(``data/outreach/data_dictionary.csv``) and ``reports/outreach_summary.json``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import polars as pl

from pipeline import console, contract, engine, explain, seeds, selection
from pipeline.config import ListTier, OutreachParams, Params
from pipeline.disclosure import Rule
from pipeline.errors import ContractError, ParamsError, StageError
from pipeline.io import Paths, atomic_dir, person_range, write_parquet
from pipeline.outreach import cohort, dictionary, lists, policies, reasons, summary
from pipeline.outreach.cohort import COHORT_COLUMNS, CohortFiles
from pipeline.pseudonyms import check_key_fingerprint, read_secret

if TYPE_CHECKING:
    from distributed import Client

__all__ = [
    "COHORT_COLUMNS",
    "TASK_PEOPLE",
    "build_target",
    "icb_tasks",
    "outreach_targets",
    "partition_lists",
    "run",
    "select_target",
]

TASK_PEOPLE: Final = 50_000
"""Most selected people per task, whole ICBs only. At England's sizes a median ICB lists about
46,000 people, so each ICB is its own task and a task's memory does not grow with the number of
ICBs (tasks of 100,000 put two such ICBs in one task: the stage's peak grew 0.60 GB per million
people between one and two real-size ICBs, against 0.23 GB with tasks of 50,000). Smaller ICBs
are explained together: more people share more tree paths
(:func:`pipeline.explain.contributions`: at 2M people, 49 of 324 trees computed per person
among 8,500, 19 among 50,000)."""


def outreach_targets(chosen: Sequence[str] | None, *, known: Sequence[str]) -> tuple[str, ...]:
    """The targets to build lists for: ``outreach.targets``, or every target when it is null."""
    if chosen is None:
        return tuple(known)
    unknown = [name for name in chosen if name not in known]
    if unknown:
        names = ", ".join(sorted(known))
        raise ParamsError(
            f"outreach.targets: unknown target {unknown[0]!r} (params.yaml targets: {names})"
        )
    if not chosen:
        raise ParamsError("outreach.targets: name at least one target (or leave it null for all)")
    return tuple(chosen)


def partition_lists(
    selected: pl.DataFrame,
    *,
    model: Path,
    features: Path,
    glossary: pl.DataFrame,
    area: str,
    tiers: Sequence[ListTier],
) -> pl.DataFrame:
    """One partition's list rows: reasons, recorded conditions, action and tier, no pseudonym.

    The selected people's top contributions are computed here, from the model and their rows of
    the features table (:func:`pipeline.explain.explain_cohort`), and worded
    (:func:`pipeline.outreach.reasons.attach_reasons`). The same Polars code whether
    ``selected`` is one ICB's list, several ICBs' (a task of :func:`icb_tasks`, on either
    engine) or every ICB's: TreeSHAP, reasons and actions are per person and tiers per ICB, so
    the rows are equal.

    Parameters
    ----------
    selected
        Selected people of some ICBs (:func:`pipeline.outreach.lists.select_people`).
    model, features
        ``models/<target>/model.txt`` and ``features/features.parquet``: paths every worker
        reads.
    glossary
        From :func:`pipeline.outreach.reasons.feature_glossary`.
    area
        The target's default clinical area.
    tiers
        ``outreach.tiers``.

    Returns
    -------
    pl.DataFrame
        ``person_id`` and ``OUTREACH_COLUMNS`` but ``pseudonym`` (:func:`lists.keyed_rows`),
        in the order of ``selected``.
    """
    people = _selected_features(features, selected)
    booster, paths = explain.load_explainer(model)
    explanations = explain.explain_cohort(people, booster, paths=paths)
    explained = reasons.attach_reasons(
        selected, explanations.lazy(), people.lazy(), glossary, area=area
    )
    return lists.keyed_rows(explained, tiers=tiers)


def icb_tasks(selected: pl.DataFrame, *, max_people: int) -> list[pl.DataFrame]:
    """The selected people cut into tasks of whole ICBs, consecutive in list order, each of at
    most ``max_people`` people unless one ICB alone has more.

    Examples
    --------
    >>> selected = pl.DataFrame({"icb_code": ["A", "A", "B", "C", "C", "C"], "person_id": range(6)})
    >>> [task["icb_code"].unique(maintain_order=True).to_list()
    ...  for task in icb_tasks(selected, max_people=3)]
    [['A', 'B'], ['C']]
    """
    sizes = selected.group_by("icb_code", maintain_order=True).len()
    task_of_icb, task, people = [], 0, 0
    for size in sizes["len"]:  # one step per ICB, not per person
        if people and people + size > max_people:
            task, people = task + 1, 0
        task_of_icb.append(task)
        people += size
    tasks = sizes.select("icb_code", task=pl.Series(task_of_icb, dtype=pl.Int64))
    return selected.join(
        tasks, on="icb_code", how="left", maintain_order="left", nulls_equal=True
    ).partition_by("task", maintain_order=True, include_key=False)


def _selected_features(features: Path, selected: pl.DataFrame) -> pl.DataFrame:
    """The selected people's rows of the features table (every column), exactly one each.

    The ``person_id`` range of ``selected`` lets the reader skip row groups of other ICBs (the
    table is sorted by ``person_id`` and people are numbered ICB by ICB); the
    ``is_in`` filter (applied as each row group is read, so no other rows are held) keeps
    exactly the selected people, whatever the numbering.
    """
    ids = selected["person_id"]
    rows = (
        pl.scan_parquet(features)
        .filter(
            person_range(ids),
            pl.col("person_id").is_in(ids.implode()),
        )
        .collect()
    )
    if rows.height != selected.height or rows["person_id"].n_unique() != rows.height:
        absent = selected.join(rows, on="person_id", how="anti")["person_id"]
        repeated = rows.filter(pl.col("person_id").is_duplicated())["person_id"].unique().sort()
        raise ContractError(
            f"{features}: {selected.height} people selected but {rows.height} feature rows "
            "match them (column person_id, rule: exactly one row per selected person; "
            f"{absent.len()} absent, e.g. {absent.head(3).to_list()}; {repeated.len()} "
            f"repeated, e.g. {repeated.head(3).to_list()})"
        )
    return rows


def select_target(
    files: CohortFiles,
    *,
    capacity: pl.DataFrame,
    outreach: OutreachParams,
    rng: np.random.Generator,
    client: Client | None = None,
    chunk_people: int = cohort.CHUNK_PEOPLE,
) -> tuple[pl.DataFrame, dict[str, pl.DataFrame], dict[str, float] | None]:
    """One target's selected people, its summary's aggregates and the policy's thresholds, from
    its cohort in chunks (:mod:`pipeline.outreach.cohort`): one chunk and the running lists are
    held, never the whole cohort (but for the equal-opportunity fit's five columns).

    Returns
    -------
    tuple
        The selected rows (:func:`pipeline.outreach.lists.select_people` of the whole cohort),
        the added :func:`pipeline.outreach.summary.summary_aggregates`, and the
        equal-opportunity thresholds (None for other policies).
    """
    bounds = cohort.chunk_bounds(files.scores, chunk_people=chunk_people)
    thresholds = None
    if outreach.policy == "equal_opportunity":
        fit_rows = cohort.threshold_rows(files, capacity_mode=outreach.capacity_mode)
        thresholds = policies.fit_thresholds(fit_rows, outreach=outreach, rng=rng)
        del fit_rows
    candidates = engine.fold_partitions(
        cohort.chunk_candidates,
        bounds,
        combine=partial(
            cohort.merge_candidates, capacity=capacity, capacity_mode=outreach.capacity_mode
        ),
        client=client,
        files=files,
        outreach=outreach,
        thresholds=thresholds,
        capacity=capacity,
    )
    # the chunks' sums added in chunk order on both engines (float sums depend on the order)
    parts = engine.map_partitions(
        cohort.chunk_aggregates,
        bounds,
        client=client,
        files=files,
        selected_ids=candidates.selected["person_id"],
        need_ids=None if candidates.need is None else candidates.need["person_id"],
    )
    return candidates.selected, summary.add_aggregates(parts), thresholds


def build_target(
    files: CohortFiles,
    *,
    capacity: pl.DataFrame,
    model: Path,
    glossary: pl.DataFrame,
    outreach: OutreachParams,
    key: bytes,
    rng: np.random.Generator,
    area: str,
    rule: Rule,
    client: Client | None = None,
    chunk_people: int = cohort.CHUNK_PEOPLE,
) -> tuple[pl.DataFrame, dict[str, Any], list[str]]:
    """One target's list (``lists.OUTREACH_COLUMNS``), its summary block and its ICBs.

    ``rng`` is the ``("equal_opportunity", target)`` stream; ``area`` the target's default
    clinical area (``reasons.default_area``); ``rule`` publishes the summary's counts; ``client``
    (``pipeline.engine.connect``) runs the chunks (:func:`select_target`) and the explanations
    and reasons per task (:func:`icb_tasks`) on Dask, None here, one after another (the same
    tasks, so the same bytes). The key never leaves this process (pseudonyms are added to the
    gathered rows). The other arguments are described where they are made (:func:`run`).
    """
    selected, aggregates, thresholds = select_target(
        files,
        capacity=capacity,
        outreach=outreach,
        rng=rng,
        client=client,
        chunk_people=chunk_people,
    )
    # The same tasks on both engines: memory bounded by a task's people, not the whole list.
    rows = engine.map_partitions(
        partition_lists,
        icb_tasks(selected, max_people=TASK_PEOPLE) or [selected],
        client=client,
        model=model,
        features=files.features,
        glossary=glossary,
        area=area,
        tiers=outreach.tiers,
    )
    listed = lists.with_pseudonyms(pl.concat(rows, how="vertical"), key)
    block = summary.publish_target(
        aggregates,
        capacity=capacity,
        capacity_mode=outreach.capacity_mode,
        min_group_size=outreach.min_group_size,
        rule=rule,
    )
    block["policy_detail"] = policies.policy_detail(outreach, thresholds)
    icbs = aggregates["icb_code"]["icb_code"].sort().to_list()
    return listed.select(lists.OUTREACH_COLUMNS), block, icbs


def run(params: Params, paths: Paths) -> None:
    """Build every target's outreach lists and the summary (all IO lives here).

    Params, secret and inputs are checked first, then capacities against each cohort; lists are
    built in memory, then written (lists folder swapped in atomically, then the summary).
    """
    outreach = params.outreach
    targets = outreach_targets(outreach.targets, known=tuple(params.targets))
    key = read_secret(secret_env=outreach.secret_env, secret_file=outreach.secret_file)
    check_key_fingerprint(key, paths.key_fingerprint)
    manifest = contract.read_manifest(paths.features / "manifest.json")
    features_path = _require(paths.features / "features.parquet", "features table")
    oracle = paths.truth / "oracle.parquet"
    truth_available = oracle.exists()  # synthetic data only
    files = {
        name: _cohort_files(
            paths,
            name,
            features=features_path,
            oracle=oracle if truth_available else None,
            policy=outreach.policy,
        )
        for name in targets
    }
    models = {
        name: _require(paths.models / name / "model.txt", f"model of {name}") for name in targets
    }
    cohort.check_columns(
        pl.scan_parquet(features_path), ["person_id", *COHORT_COLUMNS], features_path
    )
    for name in targets:
        _check_model_inputs(models[name], features_path)
        if (need_path := files[name].need) is not None:
            need_columns = list(contract.NEED_SCORES_SCHEMA)
            cohort.check_columns(pl.scan_parquet(need_path), need_columns, need_path)
    # Capacities are checked on every cohort before any list is built; each cohort is then
    # read a chunk at a time (pipeline.outreach.cohort).
    capacities = {
        name: selection.list_sizes(
            cohort.scan_units(
                files[name].scores, features_path, capacity_mode=outreach.capacity_mode
            ),
            capacity_mode=outreach.capacity_mode,
            capacity=outreach.capacity,
            key="outreach.capacity",
        )
        for name in targets
    }
    glossary = reasons.feature_glossary(manifest.features)
    built: dict[str, tuple[pl.DataFrame, dict[str, Any]]] = {}
    icbs: dict[str, list[str]] = {}
    with engine.connect_for(params) as client:
        for name in targets:
            listed, block, icbs[name] = build_target(
                files[name],
                capacity=capacities[name],
                model=models[name],
                glossary=glossary,
                outreach=outreach,
                key=key,
                rng=seeds.rng("equal_opportunity", name, root=params.seed),
                area=reasons.default_area(params.targets[name].outcome),
                rule=params.disclosure,
                client=client,
                chunk_people=cohort.CHUNK_PEOPLE,  # read when called (tests set it smaller)
            )
            built[name] = (listed, block)
    rows = {name: frame for name, (frame, _) in built.items()}
    _write_lists(paths.outreach, rows, icbs, dictionary.data_dictionary(targets, outreach.tiers))
    summary.write_summary(
        paths.reports / summary.SUMMARY_FILE,
        outreach=outreach,
        summaries={name: block for name, (_, block) in built.items()},
        truth_available=truth_available,
    )
    console.stage_done(
        "outreach",
        did=", ".join(
            f"{console.count(rows[name].height)} people listed for {name}" for name in rows
        ),
        figure=f"policy {outreach.policy}, capacity {outreach.capacity:g} {outreach.capacity_mode}",
    )


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        raise StageError(f"outreach: {what} not found at {path}; run the upstream stage first")
    return path


def _cohort_files(
    paths: Paths, target: str, *, features: Path, oracle: Path | None, policy: policies.Policy
) -> CohortFiles:
    need = paths.scores / contract.NEED_SCORES_DIR / f"{target}.parquet"
    return CohortFiles(
        target=target,
        scores=_require(paths.scores / f"{target}.parquet", f"scores of {target}"),
        features=features,
        need=_require(need, f"need scores of {target}") if policy == "need_adjusted" else None,
        oracle=oracle,
    )


def _check_model_inputs(model: Path, features: Path) -> None:
    """Every model input is a column of the features table (checked before any list is built)."""
    names = explain.load_booster(model).feature_name()
    cohort.check_columns(pl.scan_parquet(features), names, features)


def _write_lists(
    folder: Path,
    rows: Mapping[str, pl.DataFrame],
    icbs: Mapping[str, list[str]],
    dictionary_rows: pl.DataFrame,
) -> None:
    """One parquet per target and one CSV per ICB (every eligible ICB, even an empty list), the
    merged list across targets (parquet and one CSV per ICB) and the data dictionary."""
    for target, codes in icbs.items():
        lists.check_file_names(codes, target=target)
    merged = lists.merge_lists(rows)
    with atomic_dir(folder) as staging:
        dictionary_rows.write_csv(staging / lists.DICTIONARY_FILE)
        merged_path = staging / f"{lists.MERGED_FILE}.parquet"
        write_parquet(merged, merged_path, sort_by=["icb_code", "rank"])
        (staging / lists.MERGED_FILE).mkdir()
        for code in sorted({code for codes in icbs.values() for code in codes}):
            lists.write_people_csv(
                merged.filter(pl.col("icb_code") == code),
                staging / lists.MERGED_FILE / f"{code}.csv",
            )
        for target, frame in rows.items():
            write_parquet(frame, staging / f"{target}.parquet", sort_by=["icb_code", "rank"])
            (staging / target).mkdir()
            for code in icbs[target]:
                lists.write_people_csv(
                    frame.filter(pl.col("icb_code") == code).sort("rank"),
                    staging / target / f"{code}.csv",
                )
