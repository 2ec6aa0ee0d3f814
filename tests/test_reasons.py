"""Reasons for the selected people only (issue 18): the same lists as explaining everyone.

Before, a stage ``explain`` computed TreeSHAP for every eligible person and outreach joined the
selected people's rows; now outreach explains the selected people inside each ICB's task. A
person's TreeSHAP values do not depend on the other rows of the ``pred_contrib`` batch, so both
ways must give the same list rows, whichever ICBs a task holds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import polars as pl
import pytest

from pipeline import contract, explain, seeds, selection
from pipeline.errors import ContractError
from pipeline.io import Paths, write_parquet
from pipeline.outreach import lists, policies, reasons
from pipeline.outreach import stage as outreach_stage
from pipeline.outreach.stage import partition_lists, run
from pipeline.pseudonyms import pseudonymise
from tests import test_outreach
from tests.test_outreach import KEY, TARGET


@pytest.fixture(scope="module")
def world() -> dict[str, Any]:
    return test_outreach.make_world()


def _selected(paths: Paths, world: dict[str, Any], **outreach: Any) -> pl.DataFrame:
    """The people the stage selects (policy, capacity), with their list's columns."""
    params = test_outreach._params(paths.root, **outreach)
    cohort = test_outreach._cohort(world).join(
        world["population"].lazy().select("person_id", "age", "sex"), on="person_id"
    )
    cohort_frame = cohort.collect()
    prioritised, _ = policies.prioritise(
        cohort_frame,
        outreach=params.outreach,
        rng=seeds.rng("equal_opportunity", TARGET, root=params.seed),
    )
    capacity = selection.list_sizes(
        cohort_frame,
        capacity_mode=params.outreach.capacity_mode,
        capacity=params.outreach.capacity,
        key="outreach.capacity",
    )
    return lists.select_people(prioritised, capacity, capacity_mode=params.outreach.capacity_mode)


def _old_way(paths: Paths, selected: pl.DataFrame, **shared: Any) -> pl.DataFrame:
    """The former ``explain`` stage (every scored person, sorted) joined to the selected."""
    booster = lgb.Booster(model_file=str(paths.models / TARGET / "model.txt"))
    features = pl.read_parquet(paths.features / "features.parquet")
    scored = pl.read_parquet(paths.scores / f"{TARGET}.parquet").select("person_id")
    inputs = scored.join(features, on="person_id").sort("person_id")
    everyone = explain.explain_cohort(inputs, booster)
    assert everyone["person_id"].n_unique() == scored.height
    explained = reasons.attach_reasons(
        selected, everyone.lazy(), features.lazy(), shared["glossary"], area=shared["area"]
    )
    return lists.keyed_rows(explained, tiers=shared["tiers"])


@pytest.mark.parametrize(
    "outreach",
    [{"capacity": 0.1}, {"capacity_mode": "per_practice", "capacity": 10, "policy": "core20plus5"}],
)
def test_selected_peoples_reasons_equal_explaining_the_whole_cohort(
    tmp_path: Path, world, outreach: dict[str, Any]
) -> None:
    paths = test_outreach._project(tmp_path, world)
    selected = _selected(paths, world, **outreach)
    shared = {
        "glossary": reasons.feature_glossary(
            list(contract.read_manifest(paths.features / "manifest.json").features)
        ),
        "area": "urgent_care",
        "tiers": test_outreach._params(tmp_path).outreach.tiers,
    }
    model, features = paths.models / TARGET / "model.txt", paths.features / "features.parquet"
    per_icb = pl.concat(
        partition_lists(part, model=model, features=features, **shared)
        for part in selected.partition_by("icb_code", maintain_order=True)
    )
    in_one_go = partition_lists(selected, model=model, features=features, **shared)
    old = _old_way(paths, selected, **shared)
    assert per_icb.height == selected.height and per_icb["reason_1"].null_count() == 0
    assert per_icb.equals(in_one_go)
    assert per_icb.equals(old)


ALL_IN_ONE_TASK = outreach_stage.TASK_PEOPLE


@pytest.mark.parametrize("task_people", [1, 100, ALL_IN_ONE_TASK])
def test_the_stages_lists_equal_the_old_way(
    tmp_path: Path, world, monkeypatch, task_people: int
) -> None:
    """End to end: the written list is the old way's rows under their pseudonyms, whether each
    ICB is a task of its own (1), several ICBs share a task (100) or all do (the default here)."""
    monkeypatch.setenv("PHM_PSEUDONYM_KEY", KEY.decode())
    monkeypatch.setattr(outreach_stage, "TASK_PEOPLE", task_people)
    paths = test_outreach._project(tmp_path, world)
    run(test_outreach._params(tmp_path, capacity=0.1), paths)
    written = pl.read_parquet(paths.outreach / f"{TARGET}.parquet")
    selected = _selected(paths, world, capacity=0.1)
    tasks = len(outreach_stage.icb_tasks(selected, max_people=task_people))
    icbs = selected["icb_code"].n_unique()
    assert tasks == {1: icbs, 100: 2, ALL_IN_ONE_TASK: 1}[task_people]
    manifest = contract.read_manifest(paths.features / "manifest.json")
    old = _old_way(
        paths,
        selected,
        glossary=reasons.feature_glossary(list(manifest.features)),
        area=reasons.default_area("emergency_admission"),
        tiers=test_outreach._params(tmp_path).outreach.tiers,
    )
    want = old.with_columns(pseudonymise(old["person_id"], KEY)).select(lists.OUTREACH_COLUMNS)
    assert written.equals(want.sort("icb_code", "rank"))


def test_a_selected_person_without_exactly_one_features_row_is_named(tmp_path: Path, world):
    paths = test_outreach._project(tmp_path, world)
    selected = _selected(paths, world, capacity=0.1)
    features = paths.features / "features.parquet"
    table = pl.read_parquet(features)
    one = selected["person_id"][0]
    cases = {
        rf"150 people selected but 149 .*1 absent, e\.g\. \['{one}'\]; 0 repeated": table.filter(
            pl.col("person_id") != one
        ),
        rf"150 people selected but 151 .*0 absent, .*1 repeated, e\.g\. \['{one}'\]": pl.concat(
            [table, table.filter(pl.col("person_id") == one)]
        ),
    }
    for message, broken in cases.items():
        write_parquet(broken, features, sort_by="person_id")
        with pytest.raises(ContractError, match=message):
            partition_lists(
                selected,
                model=paths.models / TARGET / "model.txt",
                features=features,
                glossary=pl.DataFrame(schema=reasons.GLOSSARY_SCHEMA),
                area="urgent_care",
                tiers=test_outreach._params(tmp_path).outreach.tiers,
            )


def test_people_numbered_out_of_icb_order_are_still_found(tmp_path: Path, world) -> None:
    """The person_id range only narrows the read; real extracts need not number by ICB."""
    shuffled = dict(world)
    ids = world["population"]["person_id"].to_numpy()
    rename = dict(zip(ids, np.random.default_rng(5).permutation(ids), strict=True))
    shuffled["population"] = world["population"].with_columns(
        pl.col("person_id").replace_strict(rename)
    )
    shuffled["scores"] = world["scores"].with_columns(pl.col("person_id").replace_strict(rename))
    paths = test_outreach._project(tmp_path, shuffled)
    selected = _selected(paths, shuffled, capacity=0.1)
    shared = {
        "glossary": reasons.feature_glossary(
            list(contract.read_manifest(paths.features / "manifest.json").features)
        ),
        "area": "urgent_care",
        "tiers": test_outreach._params(tmp_path).outreach.tiers,
    }
    model, features = paths.models / TARGET / "model.txt", paths.features / "features.parquet"
    per_icb = pl.concat(
        partition_lists(part, model=model, features=features, **shared)
        for part in selected.partition_by("icb_code", maintain_order=True)
    )
    assert per_icb.equals(_old_way(paths, selected, **shared))


def test_people_without_an_icb_in_the_features_get_their_own_values(tmp_path: Path, world) -> None:
    """The stage lists people with no ICB as ``ICB_not_recorded`` while the features table says
    null: their rows are found by ``person_id``, so their reasons quote their own values."""
    paths = test_outreach._project(tmp_path, world)
    features = paths.features / "features.parquet"
    table = pl.read_parquet(features).with_columns(
        pl.when(pl.col("icb_code") != "QT6").then(pl.col("icb_code")).alias("icb_code")
    )
    write_parquet(table, features, sort_by="person_id")
    selected = _selected(paths, world, capacity=0.1).with_columns(
        pl.col("icb_code").replace({"QT6": lists.NO_ICB})
    )
    shared = {
        "glossary": reasons.feature_glossary(
            list(contract.read_manifest(paths.features / "manifest.json").features)
        ),
        "area": "urgent_care",
        "tiers": test_outreach._params(tmp_path).outreach.tiers,
    }
    got = partition_lists(
        selected, model=paths.models / TARGET / "model.txt", features=features, **shared
    )
    unrecorded = got.filter(pl.col("icb_code") == lists.NO_ICB)
    assert unrecorded.height > 0 and unrecorded["conditions_recorded"].null_count() == 0
    assert got.equals(_old_way(paths, selected, **shared))
