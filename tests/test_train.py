"""Stage train: pure functions on small arrays, and the whole stage on a tiny fixture with a real
MLflow sqlite store."""

from __future__ import annotations

import hashlib
import json
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

from pipeline import contract, io, metrics, selection, tracking, train
from pipeline import features as feature_stage
from pipeline.config import parse_params
from pipeline.errors import ContractError
from pipeline.train import calibration, cohort, evaluation, fit, registry, scoring

TARGET = "emergency_admission_12m"
N_PEOPLE = 1_500


def _params(**train_overrides):
    return parse_params(
        {
            "seed": 7,
            "targets": {
                TARGET: {
                    "outcome": "emergency_admission",
                    "follow_up_months": 12,
                    "min_age": 18,
                    "description": "Emergency admission within 12 months",
                }
            },
            "train": {
                "n_estimators": 60,
                "early_stopping_rounds": 10,
                "min_child_samples": 20,
                "learning_rate": 0.1,
                "n_bootstrap": 40,
                "num_threads": 1,
                **train_overrides,
            },
        }
    )


def _population(root: Path, *, truth: bool, external: bool = False) -> None:
    """features/ (parquet + manifest), outcomes and optionally the oracle, for N_PEOPLE people."""
    rng = np.random.default_rng(11)
    n = N_PEOPLE
    age = rng.integers(18, 95, n)
    imd = rng.integers(1, 11, n)
    admissions = rng.poisson(0.3, n)
    diabetes = rng.random(n) < 0.1
    bmi = np.where(rng.random(n) < 0.3, np.nan, rng.normal(27, 4, n))
    ethnicity = rng.integers(0, 6, n)
    lp = -3.2 + 0.03 * (age - 50) - 0.1 * (imd - 5) + 0.9 * admissions + 0.8 * diabetes
    risk = 1 / (1 + np.exp(-lp))
    outcome = (rng.random(n) < risk).astype(np.int8)
    ids = [f"P{i:06d}" for i in range(n)]
    shares = [0.5, 0.2, 0.2, 0.1] if external else [0.6, 0.2, 0.2, 0.0]
    splits = np.array(["train", "validation", "test", "external"])[rng.choice(4, n, p=shares)]
    features = pl.DataFrame(
        {
            "person_id": ids,
            "split": splits,
            "sex": np.where(rng.random(n) < 0.5, "F", "M"),
            "age": age.astype(np.int16),
            "age_band": [""] * n,
            "imd_decile": imd.astype(np.int8),
            "imd_quintile": ((imd + 1) // 2).astype(np.int8),
            "region": ["London"] * n,
            "icb_code": np.where(rng.random(n) < 0.5, "QMJ", "QMF"),
            "practice_id": [f"Y{i % 7}" for i in range(n)],
            "ethnicity_group": ["White"] * n,
            "rural_urban": ["urban"] * n,
            "n_emergency_admission_12m": admissions.astype(np.int32),
            "has_diabetes": diabetes.astype(np.int8),
            "latest_bmi": bmi,
            "ethnicity_code": ethnicity.astype(np.int8),
            "region_code": np.zeros(n, dtype=np.int8),
        }
    ).with_columns(contract.age_band_expr(pl.col("age")).alias("age_band"))
    (root / "features").mkdir(parents=True)
    features.write_parquet(root / "features" / "features.parquet")
    # the real manifest of these params, cut down to this table's columns and input flags
    inputs = {"age", "imd_decile", "n_emergency_admission_12m", "has_diabetes", "latest_bmi"}
    inputs |= {"ethnicity_code"}
    params = _params()
    document = feature_stage.build_manifest(
        params.features, index_date=params.index_date, seed=params.seed
    ).document()
    document["features"] = [
        {**entry, "model_input": entry["name"] in inputs}
        for entry in document["features"]
        if entry["name"] in features.columns
    ]
    document["model_inputs"] = [e["name"] for e in document["features"] if e["model_input"]]
    document["columns"] = features.columns
    io.write_json(document, root / "features" / "manifest.json")
    # the cohort is a subset: people under 25 are not eligible
    eligible = age >= 25
    (root / "data" / "population").mkdir(parents=True)
    pl.DataFrame(
        {
            "person_id": np.array(ids)[eligible],
            "target": TARGET,
            "value": outcome[eligible],
        },
        schema_overrides={"value": pl.Int8},
    ).write_parquet(root / "data" / "population" / "outcomes.parquet")
    if truth:
        (root / "data" / "truth").mkdir(parents=True)
        pl.DataFrame(
            {"person_id": np.array(ids)[eligible], "target": TARGET, "oracle_risk": risk[eligible]}
        ).write_parquet(root / "data" / "truth" / "oracle.parquet")


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)  # the sqlite store's default artifact root is ./mlruns
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    return tmp_path


# --- the whole stage -----------------------------------------------------------------------------


def _check_committed_metrics(committed: Path, metrics: dict) -> None:
    """``metrics/<target>/`` (kept in git): a few headline numbers and the plot tables."""
    for name in ("precision_recall", "calibration", "cumulative_gain"):
        assert (committed / "plots" / f"{name}.csv").is_file(), name
    headline = json.loads((committed / "train.json").read_text())
    assert list(headline) == sorted(headline)
    assert set(headline) <= set(metrics)
    assert {"auroc", "auprc", "brier", "oe_ratio", "calibration_slope"} <= headline.keys()
    assert all(isinstance(value, int | float) for value in headline.values())  # numbers only
    assert headline["auroc"] == round(metrics["auroc"], 4)
    roc = pl.read_csv(committed / "plots" / "roc.csv")
    assert roc.columns == ["fpr", "tpr"] and 2 < roc.height <= 400


def _assert_model_files(model_dir: Path) -> None:
    """No plots beside the model, no pickle, and importance floats published (MLflow) at 10
    significant digits, like every other published float."""
    assert not (model_dir / "plots").exists()
    assert "pickle" not in (model_dir / "calibration.json").read_text()
    importance = json.loads((model_dir / "feature_importance.json").read_text())
    published = [row[key] for row in importance["features"] for key in ("gain", "mean_abs_shap")]
    assert published == [io.significant(value) for value in published]
    assert any(value != round(value, 4) for value in published)  # not rounded coarser


def test_stage_writes_outputs_logs_and_registers(project: Path) -> None:
    import mlflow

    _population(project, truth=True, external=True)
    train.run(_params(), io.Paths.at(project), target=TARGET)

    model_dir = project / "models" / TARGET
    for name in (
        "model.txt",
        "calibration.json",
        "metrics.json",
        "feature_importance.json",
        "model_card.md",
    ):
        assert (model_dir / name).is_file(), name
    _assert_model_files(model_dir)

    scores = pl.read_parquet(project / "data" / "scores" / f"{TARGET}.parquet")
    outcomes = pl.read_parquet(project / "data" / "population" / "outcomes.parquet")
    assert dict(scores.schema) == contract.SCORES_SCHEMA
    assert scores.height == outcomes.height
    assert scores["person_id"].to_list() == sorted(outcomes["person_id"].to_list())
    assert sorted(scores["risk_rank"].to_list()) == list(range(1, scores.height + 1))
    top = scores.sort("risk_rank")
    assert top["risk_score"].is_sorted(descending=True)
    assert top["risk_decile"][0] == 10 and top["risk_decile"][-1] == 1
    assert top["risk_tier"][0] == "very high" and top["risk_tier"][-1] == "low"
    assert scores["risk_score"].is_between(0, 1).all()

    metrics = json.loads((model_dir / "metrics.json").read_text())
    for name in (*evaluation.METRIC_NAMES, "oracle_auroc", "oracle_gap"):
        assert {name, f"{name}_ci_low", f"{name}_ci_high"} <= metrics.keys()
    assert 0.6 < metrics["auroc"] <= 1.0
    assert metrics["auroc_ci_low"] <= metrics["auroc"] <= metrics["auroc_ci_high"]
    assert metrics["oracle_gap"] == pytest.approx(metrics["oracle_auroc"] - metrics["auroc"])
    assert {"external_auroc", "external_oe_ratio_ci_low", "n_external"} <= metrics.keys()
    assert "external_oracle_auroc" not in metrics
    for key, value in metrics.items():
        if key.startswith("n_") or key.endswith("_count"):
            assert value == "*" or (isinstance(value, int) and value % 5 == 0), key

    _check_committed_metrics(project / "metrics" / TARGET, metrics)

    run = tracking.find_model_run(model_dir / "model.txt", root=project)
    assert run is not None
    assert run.info.run_name.startswith(f"{TARGET} ")  # <target> <git sha> <data hash>
    assert run.data.tags["target"] == TARGET
    features_file = project / "features" / "features.parquet"
    assert run.data.tags["input.sha256.features/features.parquet"] == (
        hashlib.sha256(features_file.read_bytes()).hexdigest()
    )
    assert "input.sha256.data/truth/oracle.parquet" in run.data.tags
    assert "git_commit" in run.data.tags
    assert run.data.metrics["auroc"] == pytest.approx(metrics["auroc"])
    assert run.data.params["train.learning_rate"] == "0.1"
    assert len(run.inputs.dataset_inputs) == 1
    client = mlflow.MlflowClient()
    version = client.get_model_version_by_alias(f"phm-{TARGET}", "candidate")
    assert version.run_id == run.info.run_id
    artifacts = {item.path for item in client.list_artifacts(run.info.run_id)}
    assert {
        "model_card.md",
        "feature_importance.json",
        "metrics.json",
        "calibration_summary.json",
    } <= artifacts
    loaded = mlflow.pyfunc.load_model(f"models:/phm-{TARGET}@candidate")
    example = loaded.input_example
    assert example is not None and len(example) == 1  # one synthetic row, not a person
    manifest = contract.read_manifest(project / "features" / "manifest.json")
    assert list(example.columns) == list(manifest.model_inputs)  # manifest order
    assert set(example.columns) == {
        "age",
        "imd_decile",
        "n_emergency_admission_12m",
        "has_diabetes",
        "latest_bmi",
        "ethnicity_code",
    }


def test_stage_is_deterministic_and_moves_the_alias(project: Path) -> None:
    import mlflow

    _population(project, truth=False)
    paths = io.Paths.at(project)
    model_dir = project / "models" / TARGET
    outputs = (
        "models/emergency_admission_12m/model.txt",
        "models/emergency_admission_12m/metrics.json",
        "models/emergency_admission_12m/calibration.json",
        "metrics/emergency_admission_12m/train.json",
        "metrics/emergency_admission_12m/plots/calibration.csv",
        "data/scores/emergency_admission_12m.parquet",
    )
    train.run(_params(), paths, target=TARGET)
    first = {name: (project / name).read_bytes() for name in outputs}
    train.run(_params(), paths, target=TARGET)
    assert {name: (project / name).read_bytes() for name in outputs} == first

    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert "oracle_auroc" not in metrics and "oracle_gap" not in metrics
    client = mlflow.MlflowClient()
    assert str(client.get_model_version_by_alias(f"phm-{TARGET}", "candidate").version) == "2"


def test_stage_refuses_a_cohort_member_without_features(project: Path) -> None:
    _population(project, truth=False)
    outcomes = project / "data" / "population" / "outcomes.parquet"
    frame = pl.read_parquet(outcomes)
    extra = frame.head(1).with_columns(pl.lit("NOBODY").alias("person_id"))
    pl.concat([frame, extra]).write_parquet(outcomes)
    with pytest.raises(ContractError, match="1 people"):
        train.run(_params(), io.Paths.at(project), target=TARGET)
    assert not (project / "models").exists()


def test_samples_gathered_slice_by_slice_are_the_whole_cohort_rows(project: Path) -> None:
    """Each sample (train, early stopping, calibration, test, SHAP) drawn from the per-slice
    counts and gathered slice by slice is the rows the same seeded positions pick from the
    whole cohort's split, for any slice size; the caps bound them; the fit's inputs are freed
    when the fit returns."""
    _population(project, truth=False)
    params = _params()
    paths = io.Paths.at(project)
    table, _ = cohort.read_outcomes(paths, params, target=TARGET)
    features_file = paths.features / "features.parquet"
    whole = cohort.cohort_frame(
        pl.scan_parquet(features_file), table, target=TARGET, columns=["icb_code"]
    ).collect()
    caps = {"train": 400, "early_stopping": 100, "calibration": 150, "test": 10_000, "shap": 50}
    seeds_of = {name: index for index, name in enumerate(caps)}
    for rows in (7, 64, 10_000):
        slices = cohort.plan_slices(
            features_file, table, target=TARGET, columns=["icb_code"], rows=rows
        )
        counts = cohort.cohort_counts(slices)
        samples = cohort.draw_samples(
            counts, caps=caps, seeds_of=seeds_of, distributed=False, target=TARGET
        )
        people = cohort.gather_samples(slices, counts, samples)
        for name, positions in samples.positions.items():
            split = whole.filter(pl.col("split") == samples.split_of(name))
            assert people[name].drop("split_position").equals(split[positions]), (rows, name)
    assert people["early_stopping"].height == 100 and people["calibration"].height == 150
    assert people["test"].height == whole.filter(pl.col("split") == "test").height  # below cap
    assert people["external"].height == 0
    inputs = train.stage.read_fit_inputs(features_file, people, _spec(paths))
    fit_inputs = weakref.ref(inputs.train)
    held = [inputs]
    del inputs  # passed inline, as the stage does: fit_model holds the only reference
    train.stage.fit_model(
        held.pop(), spec=_spec(paths), train=params.train, target=TARGET, root_seed=7, client=None
    )
    assert fit_inputs() is None


def _spec(paths: io.Paths) -> cohort.FeatureSpec:
    return cohort.feature_spec(contract.read_manifest(paths.features / "manifest.json"))


def test_calibration_reads_every_validation_row_below_its_cap(project: Path) -> None:
    """Below ``train.max_calibration_rows`` the calibration is fitted on every validation row's
    score (with calibration "none", the scores file holds the raw scores)."""
    _population(project, truth=False)
    train.run(_params(calibration="none"), io.Paths.at(project), target=TARGET)
    scores = pl.read_parquet(project / "data/scores" / f"{TARGET}.parquet").filter(
        pl.col("split") == "validation"
    )
    stored = json.loads((project / "models" / TARGET / "calibration.json").read_text())
    every_row = float(((scores["risk_score"] - scores["outcome"]) ** 2).mean())  # type: ignore[operator]
    assert scores.height > 200
    assert stored["validation_brier_raw"] == float(
        f"{every_row:.{calibration.SIGNIFICANT_DIGITS}g}"
    )


# --- pure functions ------------------------------------------------------------------------------


def test_rank_scores_breaks_ties_by_the_seeded_key_and_cuts_deciles_and_tiers() -> None:
    n = 40
    frame = pl.DataFrame(
        {
            "person_id": [f"P{i:02d}" for i in range(n)][::-1],
            "split": ["test"] * n,
            "outcome": pl.Series([0] * n, dtype=pl.Int8),
            "risk_score": [0.5] * 2 + [float(i) / 100 for i in range(n - 2)],
        }
    )
    ranked = scoring.rank_scores(frame, root_seed=1).sort("risk_rank")
    keys = frame.head(2).select("person_id", selection.tie_key(pl.col("person_id"), root_seed=1))
    first = keys.sort("tie_key")["person_id"].to_list()  # tie at 0.5: lower seeded key first
    assert ranked["person_id"][:2].to_list() == first
    assert ranked["risk_decile"].value_counts()["count"].to_list() == [4] * 10
    tiers = ranked["risk_tier"].to_list()
    assert tiers[:2] == ["very high"] * 2 and tiers[2:8] == ["high"] * 6
    assert tiers[8:20] == ["moderate"] * 12 and tiers[20:] == ["low"] * 20


@pytest.mark.parametrize(
    ("mode", "capacity"), [("share", 0.05), ("per_icb", 3), ("per_practice", 2)]
)
def test_scores_ranked_on_disk_in_parts_are_the_whole_cohort_ranking(
    tmp_path: Path, mode: selection.CapacityMode, capacity: float
) -> None:
    """Parts of 7 people ranked on disk are rank_scores of the whole frame (large ties
    included), and the selection folded from their ranks is select_top's on the whole cohort."""
    rng = np.random.default_rng(4)
    n = 500
    people = pl.DataFrame(
        {
            "person_id": [f"P{i:04d}" for i in range(n)],
            "split": rng.choice(["train", "validation", "test"], n).tolist(),
            "outcome": pl.Series(rng.integers(0, 2, n), dtype=pl.Int8),
            "icb_code": rng.choice(["QA", "QB", "QC"], n).tolist(),
            "practice_id": rng.choice([f"G{i}" for i in range(40)], n).tolist(),
        }
    )
    risk = np.round(rng.beta(1, 8, n), 2)  # rounded: large ties, broken by the seeded key
    parts = []
    for start in range(0, n, 7):
        part = scoring.scored_part(
            people.slice(start, 7).select("person_id", "split", "outcome"),
            risk[start : start + 7],
            root_seed=3,
        )
        parts.append(tmp_path / io.part_name(start))
        part.write_parquet(parts[-1])
    target = tmp_path / "t.parquet"
    scoring.write_ranked_scores(parts, target, n_people=n, spill=tmp_path / "spill", threads=2)
    whole = scoring.rank_scores(
        people.select("person_id", "split", "outcome").with_columns(risk_score=risk),
        root_seed=3,
    )
    written = pl.read_parquet(target)
    assert written.schema == pl.Schema(contract.SCORES_SCHEMA)
    assert written.equals(whole)
    units = people.select("icb_code", "practice_id")
    expected = scoring.selected_at_capacity(
        whole.hstack(units), capacity_mode=mode, capacity=capacity
    )
    capacity_table = selection.list_sizes(
        people, capacity_mode=mode, capacity=capacity, key="operating_point.capacity"
    )
    ranks = written.select(pl.int_range(pl.len()).alias("row"), "risk_rank").hstack(units)
    selected = scoring.selected_rows(
        (ranks.slice(start, 7) for start in range(0, n, 7)), capacity_table, capacity_mode=mode
    )
    assert sorted(selected.to_list()) == np.flatnonzero(expected.to_numpy()).tolist()
    assert 0 < selected.len() < n


def test_the_cohort_joined_in_slices_is_the_whole_join(tmp_path: Path) -> None:
    """Every slice size gives cohort_frame's rows: outcome rows between two slices' ids, before
    the first and after the last are each joined once (without a feature row: a null split),
    other targets' rows are left out; an unsorted features file falls back to the whole join."""
    ids = [f"P{i:04d}" for i in range(0, 600, 2)]
    features = pl.DataFrame(
        {"person_id": ids, "split": ["train", "test", "validation"] * 100, "icb_code": "QA"}
    )
    io.write_parquet(features, tmp_path / "features.parquet", sort_by="person_id")
    odd = [f"P{i:04d}" for i in (1, 101, 255, 599)] + ["A", "Z"]  # no feature row
    eligible = [*ids[::3], *odd]
    outcomes = pl.concat(
        [
            pl.DataFrame({"person_id": eligible, "target": "t", "value": 1}),
            pl.DataFrame({"person_id": ids[:50], "target": "other", "value": 0}),
        ]
    ).cast({"value": pl.Int8})
    whole = cohort.cohort_frame(
        pl.scan_parquet(tmp_path / "features.parquet"),
        outcomes.lazy(),
        target="t",
        columns=["icb_code"],
    ).collect()
    assert whole.height == len(eligible) and whole["split"].null_count() == len(odd)
    for rows in (1, 7, 64, 10_000):
        sliced = cohort.cohort_in_slices(
            cohort.plan_slices(
                tmp_path / "features.parquet",
                outcomes.lazy(),
                target="t",
                columns=["icb_code"],
                rows=rows,
            )
        )
        assert sliced.equals(whole), rows
    features.reverse().write_parquet(tmp_path / "unsorted.parquet", row_group_size=10)
    unsorted_plan = cohort.plan_slices(
        tmp_path / "unsorted.parquet", outcomes.lazy(), target="t", columns=["icb_code"], rows=7
    )
    assert len(unsorted_plan) == 1
    unsorted = cohort.cohort_in_slices(unsorted_plan)
    assert unsorted.equals(whole)


def test_metrics_match_sklearn_and_statsmodels() -> None:
    import statsmodels.api as sm
    from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

    rng = np.random.default_rng(3)
    p = np.round(rng.beta(1, 8, 3_000), 3)  # rounded: plenty of ties
    y = (rng.random(p.size) < np.clip(p * 1.2, 0, 1)).astype(float)
    selected = p >= np.quantile(p, 0.9)
    sets = evaluation.metric_sets(np.ones((1, p.size)), y, p, selected)
    point = {name: values[0] for name, values in sets.items()}
    assert point["auroc"] == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert point["auprc"] == pytest.approx(average_precision_score(y, p), abs=1e-12)
    assert point["brier"] == pytest.approx(brier_score_loss(y, p), abs=1e-12)
    assert point["oe_ratio"] == pytest.approx(y.sum() / p.sum())
    assert point["sensitivity_at_capacity"] == pytest.approx(y[selected].sum() / y.sum())
    assert point["ppv_at_capacity"] == pytest.approx(y[selected].mean())
    lp = np.log(np.clip(p, 1e-6, 1 - 1e-6) / (1 - np.clip(p, 1e-6, 1 - 1e-6)))
    slope = sm.GLM(y, sm.add_constant(lp), family=sm.families.Binomial()).fit()
    assert point["calibration_slope"] == pytest.approx(slope.params[1], rel=1e-6)
    intercept = sm.GLM(y, np.ones((p.size, 1)), family=sm.families.Binomial(), offset=lp).fit()
    assert point["calibration_intercept"] == pytest.approx(intercept.params[0], rel=1e-6)


def test_weights_reproduce_a_resample_and_the_bootstrap_is_poisson_and_seeded() -> None:
    rng = np.random.default_rng(5)
    counts = metrics.poisson_weights(np.ones(50), n_resamples=400, rng=rng)
    assert counts.shape == (400, 50) and abs(counts.mean() - 1.0) < 0.05
    p = np.linspace(0.01, 0.9, 50)
    y = (np.arange(50) % 3 == 0).astype(float)
    selected = p > 0.7
    weighted = evaluation.metric_sets(counts[:1], y, p, selected)
    index = np.repeat(np.arange(50), counts[0].astype(int))
    explicit = evaluation.metric_sets(
        np.ones((1, index.size)),
        y[index],
        p[index],
        selected[index],
        ece_edges=metrics.ece_bin_edges(p),
    )
    for name in ("auroc", "auprc", "brier", "calibration_slope", "sensitivity_at_capacity"):
        assert weighted[name][0] == pytest.approx(explicit[name][0]), name
    first = evaluation.evaluate(y, p, selected, oracle=None, n_bootstrap=50, seed=3)
    assert first == evaluation.evaluate(y, p, selected, oracle=None, n_bootstrap=50, seed=3)
    assert first["auroc"]["ci_low"] < first["auroc"]["value"] < first["auroc"]["ci_high"]


def _scored_people(n: int, *, seed: int) -> tuple[np.ndarray, ...]:
    """Outcome, score (rounded: ties), selected top 10% and an oracle with ties of its own."""
    rng = np.random.default_rng(seed)
    p = np.round(rng.beta(1, 10, n), 3)
    y = (rng.random(n) < p).astype(np.int8)
    oracle = np.round(np.clip(p + rng.normal(0, 0.01, n), 1e-4, 0.99), 3)
    return y, p, p >= np.quantile(p, 0.9), oracle


def _same(first: dict[str, dict[str, float]], second: dict[str, dict[str, float]]) -> bool:
    """Equal to the bit, NaN included."""
    return {k: {s: v.hex() for s, v in e.items()} for k, e in first.items()} == {
        k: {s: v.hex() for s, v in e.items()} for k, e in second.items()
    }


def test_resample_path_equals_the_straightforward_metrics_on_the_same_weights() -> None:
    y, p, selected, oracle = _scored_people(20_000, seed=11)
    indexes = (metrics.rank_index(p), metrics.rank_index(oracle))
    edges = metrics.ece_bin_edges(p)
    shared: dict[str, Any] = {"oracle": oracle, "ece_edges": edges, "rank_indexes": indexes}
    point = evaluation.metric_sets(np.ones((1, p.size)), y, p, selected, **shared)
    fit = evaluation.recalibration_fit(
        y,
        indexes[0],
        citl=float(point["calibration_intercept"][0]),
        slope=float(point["calibration_slope"][0]),
    )
    order = evaluation.score_order(y, p, selected, rank_indexes=indexes, ece_edges=edges, fit=fit)
    rng = np.random.default_rng(2)
    weights = np.vstack([np.ones(p.size), rng.poisson(1.0, (4, p.size))]).astype(float)
    # metric_sets iterates the calibration fits to convergence, from (0, 1)
    expected = evaluation.metric_sets(weights, y, p, selected, **shared)
    fast = evaluation.resample_sets(weights[:, indexes[0].order], order)
    assert fast.keys() == expected.keys()
    for name, values in expected.items():
        np.testing.assert_allclose(fast[name], values, rtol=1e-12, atol=1e-8, err_msg=name)
    # integer sums: the rank metrics are exact whatever the order of summation
    np.testing.assert_array_equal(fast["auroc"], expected["auroc"])
    np.testing.assert_array_equal(fast["oracle_auroc"], expected["oracle_auroc"])


def test_evaluate_publishes_the_straightforward_point_estimates_bit_for_bit() -> None:
    y, p, selected, oracle = _scored_people(3_000, seed=12)
    out = evaluation.evaluate(y, p, selected, oracle=oracle, n_bootstrap=20, seed=4)
    point = evaluation.metric_sets(np.ones((1, p.size)), y, p, selected, oracle=oracle)
    assert out.keys() == point.keys()
    for name, values in point.items():
        assert out[name]["value"].hex() == float(values[0]).hex(), name
        assert out[name]["ci_low"] <= out[name]["value"] <= out[name]["ci_high"], name


def test_evaluate_does_not_depend_on_the_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    y, p, selected, oracle = _scored_people(2_000, seed=13)
    monkeypatch.setattr(evaluation, "BOOTSTRAP_CELLS", 7 * p.size)  # 7 resamples a batch
    runs = [
        evaluation.evaluate(y, p, selected, oracle=oracle, n_bootstrap=40, seed=5, threads=threads)
        for threads in (1, 2, 3)
    ]
    assert _same(runs[0], runs[1]) and _same(runs[0], runs[2])
    other = evaluation.evaluate(y, p, selected, oracle=oracle, n_bootstrap=40, seed=6, threads=2)
    assert other["auroc"]["ci_low"] != runs[0]["auroc"]["ci_low"]  # the seed matters


def test_calibration_json_reproduces_sklearn_and_is_skipped_when_it_does_not_help() -> None:
    from sklearn.isotonic import IsotonicRegression

    rng = np.random.default_rng(9)
    raw = rng.random(4_000) * 0.5
    y = (rng.random(raw.size) < raw**2 * 3).astype(float)  # miscalibrated raw scores
    fitted = calibration.fit_calibration(raw, y, mode="auto", seed=1)
    assert fitted["method"] in {"isotonic", "sigmoid"}
    assert (
        fitted["validation_brier_cross_fitted"][fitted["method"]] < fitted["validation_brier_raw"]
    )
    json.dumps(fitted)  # JSON, not pickle
    iso = calibration.fit_calibration(raw, y, mode="isotonic", seed=1)
    order = np.argsort(raw, kind="stable")
    bins = np.arange(raw.size) * (raw.size // 100) // raw.size  # 40 bins of 100 people
    binned_score = np.bincount(bins, weights=raw[order]) / 100
    binned_rate = np.bincount(bins, weights=y[order]) / 100
    reference = IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip").fit(
        binned_score, binned_rate
    )
    grid = np.linspace(-0.1, 0.7, 333)
    np.testing.assert_allclose(calibration.apply_calibration(iso, grid), reference.predict(grid))
    # Published with the registered model: no point is one person's score or outcome.
    assert not set(iso["x"]) & set(raw.tolist())
    assert np.isclose(np.asarray(iso["x"])[:, None], binned_score[None, :]).any(axis=1).all()

    calibrated = np.clip(rng.random(4_000) * 0.3, 0.01, 1)
    y_cal = (rng.random(calibrated.size) < calibrated).astype(float)
    kept = calibration.fit_calibration(calibrated, y_cal, mode="sigmoid", seed=1)
    assert kept["method"] == "none"
    assert calibration.fit_calibration(raw, y, mode="none", seed=1)["method"] == "none"


def test_booster_is_deterministic_and_uses_categoricals() -> None:
    rng = np.random.default_rng(2)
    x = np.column_stack([rng.normal(size=2_000), rng.integers(0, 5, 2_000)]).astype(np.float32)
    y = (rng.random(2_000) < 1 / (1 + np.exp(-(x[:, 0] + (x[:, 1] == 3))))).astype(float)
    spec = cohort.FeatureSpec(("a", "code"), ("code",))
    lgb_params = fit.lightgbm_params(_params().train, seed=4)
    models = [
        fit.fit_booster(
            x[:1500],
            y[:1500],
            x[1500:],
            y[1500:],
            spec=spec,
            params=lgb_params,
            n_estimators=40,
            early_stopping_rounds=5,
        ).model_to_string()
        for _ in range(2)
    ]
    assert models[0] == models[1]
    assert "categorical_feature=1" in models[0] or "[categorical_feature: 1]" in models[0]


def test_class_weight_and_input_hashes(tmp_path: Path) -> None:
    y = np.array([1, 0, 0, 0], dtype=float)
    assert fit.class_weight(y, mode="none") == 1.0
    assert fit.class_weight(y, mode="balanced") == 3.0
    first, second = tmp_path / "a.bin", tmp_path / "sub" / "b.bin"
    second.parent.mkdir()
    first.write_bytes(b"abc")
    second.write_bytes(b"")
    tags = registry.input_tags([first, second], root=tmp_path)
    assert tags == {
        "input.sha256.a.bin": hashlib.sha256(b"abc").hexdigest(),
        "input.sha256.sub/b.bin": hashlib.sha256(b"").hexdigest(),
    }
    assert registry.dataset_digest([first, second]) != registry.dataset_digest([second, first])


def test_everything_logged_to_mlflow_is_published_and_holds_no_person(project: Path) -> None:
    """Issue 14 item 8: every artifact, metric, param and tag of the run and its registered
    model follows the disclosure rule; no person id and no per-node training counts."""
    import mlflow

    from pipeline.disclosure import Rule
    from pipeline.report.scan import scan_json

    _population(project, truth=True)
    train.run(_params(), io.Paths.at(project), target=TARGET)
    run = tracking.find_model_run(project / "models" / TARGET / "model.txt", root=project)
    assert run is not None
    # the fit's wall seconds are logged for reviewers, never in metrics.json
    assert run.data.metrics["fit_seconds"] > 0
    assert "fit_seconds" not in io.read_json(project / "models" / TARGET / "metrics.json")
    rule = Rule()
    for name, value in run.data.metrics.items():
        if contract.is_count_name(name):
            assert rule.is_published(value), name
    person_ids = set(pl.read_parquet(project / "features" / "features.parquet")["person_id"])
    version = mlflow.MlflowClient().get_model_version_by_alias(f"phm-{TARGET}", "candidate")
    folders = [
        mlflow.artifacts.download_artifacts(run_id=run.info.run_id, dst_path="run"),
        mlflow.artifacts.download_artifacts(artifact_uri=version.source, dst_path="model"),
    ]
    files = [path for folder in folders for path in Path(folder).rglob("*") if path.is_file()]
    assert any(path.name == "model.txt" for path in files)  # the registered model's booster
    texts = {path: path.read_bytes() for path in files if path.suffix != ".png"}
    for path, data in texts.items():
        text = data.decode("utf-8", errors="replace")
        assert not any(pid in text for pid in person_ids), path
        if path.name == "model.txt":
            assert "leaf_count=" not in text and "internal_count=" not in text
        if path.suffix == ".json" and "example" not in path.name:
            # the input example is one synthetic row of training medians, not counts
            assert scan_json(json.loads(text), source=str(path), rule=rule) == [], path
    shown = " ".join([*run.data.params.values(), *run.data.tags.values()])
    assert not any(pid in shown for pid in person_ids)


def test_training_example_is_the_medians_of_evenly_spaced_training_rows() -> None:
    x = np.arange(30, dtype=np.float32).reshape(10, 3)
    x[:, 2] = np.nan  # an all-missing column gives 0, not NaN
    example = train.stage.training_example(x, max_rows=4)  # every 3rd row: 0, 3, 6, 9
    np.testing.assert_array_equal(example, [np.median(x[::3, 0]), np.median(x[::3, 1]), 0.0])
    assert train.stage.training_example(x)[0] == np.median(x[:, 0])  # all rows below the cap
