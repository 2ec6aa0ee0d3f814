"""The need stage: a need-based ranking of the cohort, written for the audit and outreach."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from pipeline import console, contract, io, need
from pipeline.audit import run as run_audit
from pipeline.config import Params, parse_params
from pipeline.errors import ContractError, StageError
from tests import simworld as simulate
from tests.manifests import write_manifest

TARGET = "sim_target"


def _params() -> Params:
    return parse_params(
        {
            "targets": {TARGET: {"outcome": "emergency_admission", "follow_up_months": 12}},
            "audit": {"n_bootstrap": 20, "n_monte_carlo": 100, "need_model_rounds": 20},
        }
    )


def _write_world(root: Path, *, truth: bool) -> pl.DataFrame:
    world = simulate.simulate_world(3_000, seed=5)
    io.write_parquet(
        world["scores"], root / "data/scores" / f"{TARGET}.parquet", sort_by="person_id"
    )
    io.write_parquet(world["features"], root / "features/features.parquet", sort_by="person_id")
    inputs = ["age", "imd_decile", "recorded_measure", contract.RECORDED_MULTIMORBIDITY]
    write_manifest(world["features"], root / "features/manifest.json", inputs=inputs)
    if truth:
        io.write_parquet(world["truth"], root / "data/truth/people.parquet", sort_by="person_id")
        io.write_parquet(world["oracle"], root / "data/truth/oracle.parquet", sort_by="person_id")
    return world["truth"]


def _need_file(root: Path) -> Path:
    return root / "data/scores" / contract.NEED_SCORES_DIR / f"{TARGET}.parquet"


def test_scores_every_cohort_member_deterministically_and_tracks_true_need(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    truth = _write_world(tmp_path, truth=True)
    timings = tmp_path / "timings.jsonl"  # outside the project's outputs, as a benchmark's
    monkeypatch.setenv(console.TIMINGS_ENV, str(timings))
    need.run(_params(), io.Paths.at(tmp_path), target=TARGET)
    (fit,) = [json.loads(line) for line in timings.read_text().splitlines()]
    assert fit["stage"] == "need" and fit["target"] == TARGET and fit["step"] == "fit"
    assert fit["seconds"] > 0 and 0 < fit["rows"] <= _params().audit.need_model_max_rows
    monkeypatch.delenv(console.TIMINGS_ENV)
    first = _need_file(tmp_path).read_bytes()
    need.run(_params(), io.Paths.at(tmp_path), target=TARGET)
    assert _need_file(tmp_path).read_bytes() == first
    scores = pl.read_parquet(_need_file(tmp_path))
    cohort = pl.read_parquet(tmp_path / "data/scores" / f"{TARGET}.parquet")
    assert scores.columns == ["person_id", "need_score"]
    assert scores["person_id"].to_list() == sorted(cohort["person_id"].to_list())
    joined = scores.join(truth, on="person_id")
    assert np.corrcoef(joined["need_score"], joined["true_need"])[0, 1] > 0.3


def _sources(root: Path, *, truth: bool) -> need.NeedSources:
    return need.NeedSources(
        scores=root / "data/scores" / f"{TARGET}.parquet",
        features=root / "features/features.parquet",
        oracle=root / "data/truth/oracle.parquet" if truth else None,
        target=TARGET,
    )


def test_without_truth_the_label_is_the_recorded_need(tmp_path: Path) -> None:
    _write_world(tmp_path, truth=False)
    ids = pl.read_parquet(tmp_path / "features/features.parquet")["person_id"].head(50)
    sample = need.TrainingSample([ids.head(20), ids.tail(30)], np.arange(50)[::-1])
    training, label = need.training_frame(
        sample, sources=_sources(tmp_path, truth=False), features=["age"]
    )
    assert training["person_id"].to_list() == ids.to_list()[::-1]
    assert label == "recorded_need" and training["recorded_need"].dtype == pl.Float64
    assert training.columns == ["person_id", "age", "recorded_need"]
    need.run(_params(), io.Paths.at(tmp_path), target=TARGET)
    assert pl.read_parquet(_need_file(tmp_path))["need_score"].null_count() == 0


@pytest.mark.parametrize("splits", [("train", "test"), ("test",)])
def test_the_training_sample_is_the_frame_sample_whatever_the_slices(
    tmp_path: Path, splits: tuple[str, ...]
) -> None:
    """The sample drawn slice by slice from per-slice counts is the one ``DataFrame.sample``
    draws from the whole cohort's train split (everyone when it is empty), in its order; people
    without a feature row are not in the cohort."""
    ids = [f"P{i:05d}" for i in range(3_000)]
    cohort = pl.DataFrame(
        {"person_id": ids, "split": [splits[i % len(splits)] for i in range(3_000)]}
    )
    io.write_parquet(cohort, tmp_path / "scores.parquet", sort_by="person_id")
    features = cohort.select("person_id").filter(pl.int_range(pl.len()) % 7 != 3)
    io.write_parquet(features, tmp_path / "features.parquet", sort_by="person_id")
    sources = need.NeedSources(
        scores=tmp_path / "scores.parquet",
        features=tmp_path / "features.parquet",
        oracle=None,
        target=TARGET,
    )
    whole = cohort.join(features, on="person_id", how="semi", maintain_order="left")
    pool = whole.filter(pl.col("split") == "train") if "train" in splits else whole
    expected = pool.sample(500, seed=11)["person_id"]
    for rows in (3_000, 997, 64):
        slices = need.slice_bounds(cohort.height, rows=rows)
        counts = [need.slice_counts(bounds, sources=sources) for bounds in slices]
        assert sum(n for n, _ in counts) == whole.height
        got = need.training_ids(slices, counts, sources=sources, max_rows=500, seed=11)
        assert got.person_ids().to_list() == expected.to_list(), rows
    every = need.training_ids(slices, counts, sources=sources, max_rows=10_000, seed=11)
    assert every.person_ids().to_list() == pool["person_id"].to_list()


def test_the_audit_reads_the_need_scores_and_refuses_to_run_without_them(tmp_path: Path) -> None:
    _write_world(tmp_path, truth=True)
    with pytest.raises(StageError, match="need"):
        run_audit(_params(), io.Paths.at(tmp_path), target=TARGET)
    assert not (tmp_path / "reports").exists()


def test_the_label_is_the_targets_own_true_need(tmp_path: Path) -> None:
    oracle = pl.DataFrame(
        {
            "person_id": ["A", "B", "A", "B"],
            "target": [TARGET, TARGET, "other", "other"],
            "oracle_risk": [0.1, 0.2, 0.1, 0.2],
            "true_need": [0.3, 0.4, 0.9, 0.8],
        }
    )
    oracle.write_parquet(tmp_path / "oracle.parquet")
    own = need.target_need(tmp_path / "oracle.parquet", target=TARGET)
    assert own is not None
    assert own.collect().sort("person_id")["true_need"].to_list() == [0.3, 0.4]
    assert need.target_need(tmp_path / "missing.parquet", target=TARGET) is None
    oracle.drop("true_need").write_parquet(tmp_path / "old.parquet")
    with pytest.raises(ContractError, match="true_need"):
        need.target_need(tmp_path / "old.parquet", target=TARGET)
