"""Scoring in batches (pipeline.batches): train and need scores are those of the whole matrix at
once (the code path before issue 18), whatever the batch size, with or without icb_code, and on
a Dask cluster the same as here."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import lightgbm as lgb
import numpy as np
import polars as pl
import pytest
from distributed import Client

from pipeline import batches, contract, io, need, train
from pipeline.train import batches as train_batches
from pipeline.train import calibration, cohort, fit
from tests import test_need, test_train


@pytest.fixture
def client(cluster: str) -> Iterator[Client]:
    with Client(cluster, timeout="30s") as connected:
        yield connected


def test_batches_group_by_icb_in_code_order_and_cut_slices() -> None:
    frame = pl.DataFrame({"icb_code": ["B", None, "A", "B", "B", "A", None]})
    got = [rows.tolist() for rows in batches.batches(frame, batch_rows=2)]
    assert got == [[2, 5], [0, 3], [4], [1, 6]]  # A, B (cut at 2), then no ICB
    plain = pl.DataFrame({"person_id": list("abcde")})
    assert [r.tolist() for r in batches.batches(plain, batch_rows=2)] == [[0, 1], [2, 3], [4]]
    assert batches.batches(plain.clear(), batch_rows=2) == []
    with pytest.raises(ValueError, match="batch_rows"):
        batches.batches(plain, batch_rows=0)


def test_input_rows_keep_the_order_asked_and_leave_unknown_people_null() -> None:
    features = pl.LazyFrame(
        {"person_id": ["P1", "P2", "P3"], "icb_code": ["A", "B", "B"], "x": [1.0, 2.0, 3.0]}
    )
    ids = pl.Series(["P3", "P9", "P2"])
    got = batches.input_rows(features, ids, ["x"], icb="B")
    assert got.rows() == [("P3", 3.0), ("P9", None), ("P2", 2.0)]
    assert batches.input_rows(features, ids, ["x"], icb="A")["x"].null_count() == 3
    # ids in the file's order, all found (no join needed), then the same with a duplicate row
    assert batches.input_rows(features, pl.Series(["P2", "P3"]), ["x"], icb="B").rows() == [
        ("P2", 2.0),
        ("P3", 3.0),
    ]
    twice = pl.concat([features, features.filter(pl.col("person_id") == "P3")])
    assert batches.input_rows(twice, pl.Series(["P2", "P3"]), ["x"], icb=None).rows() == [
        ("P2", 2.0),
        ("P3", 3.0),
        ("P3", 3.0),
    ]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The train stage's outputs on test_train's fixture (1,500 people, two ICBs)."""
    root = tmp_path_factory.mktemp("trained")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        patch.chdir(root)
        patch.delenv("DVC_EXP_NAME", raising=False)
        test_train._population(root, truth=True, external=True)
        train.run(test_train._params(), io.Paths.at(root), target=test_train.TARGET)
    return root


def _whole(root: Path) -> tuple[pl.DataFrame, cohort.FeatureSpec, lgb.Booster]:
    """The cohort with every model input (as the stage collected it before issue 18)."""
    spec = cohort.feature_spec(contract.read_manifest(root / "features/manifest.json"))
    frame = cohort.cohort_frame(
        pl.scan_parquet(root / "features/features.parquet"),
        pl.scan_parquet(root / "data/population/outcomes.parquet"),
        target=test_train.TARGET,
        columns=[*spec.names, "icb_code"],
    ).collect()
    booster = lgb.Booster(model_file=str(root / "models" / test_train.TARGET / "model.txt"))
    return frame, spec, booster


def test_train_scores_are_those_of_the_whole_matrix(trained: Path) -> None:
    """The stage's risk scores equal the model and calibration it wrote applied to the whole
    cohort's matrix at once: exactly (the same float64 bits)."""
    frame, spec, booster = _whole(trained)
    stored = json.loads((trained / "models" / test_train.TARGET / "calibration.json").read_text())
    whole = calibration.apply_calibration(
        stored, fit.predict_raw(booster, cohort.feature_matrix(frame, spec))
    )
    scores = pl.read_parquet(trained / "data/scores" / f"{test_train.TARGET}.parquet")
    assert scores["person_id"].equals(frame["person_id"])
    assert np.array_equal(scores["risk_score"].to_numpy(), whole)


@pytest.mark.parametrize("batch_rows", [1, 97, 10_000])
def test_train_batches_of_any_size_with_or_without_icb_give_the_same_scores(
    trained: Path, tmp_path: Path, batch_rows: int
) -> None:
    frame, spec, booster = _whole(trained)
    expected = fit.predict_raw(booster, cohort.feature_matrix(frame, spec))
    features = trained / "features/features.parquet"
    no_icb = tmp_path / "features.parquet"
    pl.read_parquet(features).drop("icb_code").write_parquet(no_icb)
    for path, key in ((features, ["person_id", "icb_code"]), (no_icb, ["person_id"])):
        got = train_batches.score_in_batches(
            frame.select(key),
            features_path=path,
            spec=spec,
            booster=booster,
            client=None,
            batch_rows=batch_rows,
        )
        assert np.array_equal(got, expected), (path.name, batch_rows)


def test_train_batches_on_dask_equal_the_local_engines(trained: Path, client: Client) -> None:
    """Two ICBs cut into 4 batches run as tasks on 2 worker processes: the same bits."""
    frame, spec, booster = _whole(trained)
    kwargs = {
        "features_path": trained / "features/features.parquet",
        "spec": spec,
        "booster": booster,
        "batch_rows": 400,
    }
    cohort_keys = frame.select("person_id", "icb_code")
    local = train_batches.score_in_batches(cohort_keys, client=None, **kwargs)
    remote = train_batches.score_in_batches(cohort_keys, client=client, **kwargs)
    assert len(batches.batches(cohort_keys, batch_rows=400)) == 4
    assert np.array_equal(local, remote)


@pytest.fixture(scope="module")
def need_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("need")
    test_need._write_world(root, truth=True)
    return root


def test_need_scores_are_the_whole_matrix_model_whatever_the_slices(
    need_world: Path, client: Client, tmp_path: Path
) -> None:
    """need_scores (the sample's inputs read by id, scores per slice written as parts) equals
    the model fitted on the same sample of the whole frame and applied to the whole matrix (the
    path before issue 18), for any slice size and on Dask."""
    manifest = contract.read_manifest(need_world / "features/manifest.json")
    inputs, categorical = need.need_model_features(manifest)
    params = test_need._params()
    # a sample smaller than the train split, so slices must find its people
    params = params.model_copy(
        update={"audit": params.audit.model_copy(update={"need_model_max_rows": 1_000})}
    )
    sources = need.NeedSources(
        scores=need_world / "data/scores" / f"{test_need.TARGET}.parquet",
        features=need_world / "features/features.parquet",
        oracle=need_world / "data/truth/oracle.parquet",
        target=test_need.TARGET,
    )
    true_need = need.target_need(sources.oracle, target=test_need.TARGET)
    assert sources.oracle is not None and true_need is not None
    whole = (
        pl.read_parquet(sources.scores, columns=["person_id", "split"])
        .join(true_need.collect(), on="person_id", how="left", maintain_order="left")
        .join(
            pl.read_parquet(sources.features, columns=["person_id", *inputs]),
            on="person_id",
            how="inner",
            maintain_order="left",
        )
    )
    sample_seed = need.seeds.sequence("audit", test_need.TARGET, "need", root=params.seed)
    training = whole.filter(pl.col("split") == "train")
    if training.height > params.audit.need_model_max_rows:
        training = training.sample(
            params.audit.need_model_max_rows, seed=int(sample_seed.generate_state(1)[0])
        )
    booster = need.train_need_model(
        training,
        label="true_need",
        features=inputs,
        categorical=categorical,
        rounds=params.audit.need_model_rounds,
        seed=need.seeds.derive("need_model", test_need.TARGET, "lightgbm", root=params.seed),
        num_threads=params.audit.num_threads,
    )
    assert training.height == 1_000
    expected = booster.predict(whole.select(inputs).to_numpy().astype(np.float64))
    written = []
    for slice_rows, engine_client in ((10_000, None), (50, None), (200, client)):
        target = tmp_path / f"need-{slice_rows}.parquet"
        scored = need.need_scores(
            sources,
            target,
            features=inputs,
            categorical=categorical,
            audit=params.audit,
            root_seed=params.seed,
            client=engine_client,
            slice_rows=slice_rows,
        )
        got = pl.read_parquet(target)
        assert scored == got.height == whole.height
        assert got["person_id"].equals(whole["person_id"])
        assert np.array_equal(got["need_score"].to_numpy(), expected), slice_rows
        written.append(target.read_bytes())
    assert written[0] == written[1] == written[2]  # the file, not just its values
    assert not list(tmp_path.glob(".tmp/*"))  # the parts are gone
