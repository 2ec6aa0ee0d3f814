"""The project's MLflow helper against a real tracking server and the embedded sqlite store."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from pipeline import tracking


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path: Path):
    port = _free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    log = (tmp_path / "server.log").open("w")
    server = subprocess.Popen(
        [
            str(mlflow_bin),
            "server",
            "--backend-store-uri",
            f"sqlite:///{tmp_path / 'server.db'}",
            "--default-artifact-root",
            (tmp_path / "artifacts").as_uri(),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                server_log = (tmp_path / "server.log").read_text()
                pytest.fail(f"mlflow server did not start:\n{server_log}")
            time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def test_logs_and_reads_back_through_a_real_server(
    mlflow_server: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    assert tracking.tracking_uri(tmp_path) == mlflow_server
    tracking.configure(tmp_path)
    with mlflow.start_run(run_name="roundtrip") as run:
        mlflow.set_tag(tracking.MODEL_DIGEST_TAG, "abc123")
        tracking.log_flat_metrics({"test": {"auroc": 0.8, "n_events": 150, "skip": "text"}})
    found = tracking.find_run_by_tag(tracking.MODEL_DIGEST_TAG, "abc123", root=tmp_path)
    assert found is not None
    assert found.info.run_id == run.info.run_id
    assert found.data.metrics == {"test.auroc": 0.8, "test.n_events": 150.0}
    assert tracking.find_run_by_tag(tracking.MODEL_DIGEST_TAG, "nope", root=tmp_path) is None


def test_embedded_store_is_absolute_sqlite_at_the_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.tracking_uri(tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    # `dvc exp run --temp` works in a copy under .dvc/tmp/exps: log to the real project's store.
    temp_workspace = tmp_path / ".dvc" / "tmp" / "exps" / "tmpabc"
    temp_workspace.mkdir(parents=True)
    assert tracking.tracking_uri(temp_workspace) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    expected_artifacts = (tmp_path / "mlartifacts").resolve().as_uri()
    assert tracking.artifact_location(temp_workspace) == expected_artifacts


def _model_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, str]:
    """A sqlite store in ``tmp_path`` and a model file of target ``t`` with its digest."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    model_file = tmp_path / "models" / "t" / "model.txt"
    model_file.parent.mkdir(parents=True)
    model_file.write_text("tree\n")
    tracking.configure(tmp_path)
    return model_file, tracking.model_digest(model_file)


def test_model_run_found_by_the_registered_version_of_the_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow

    model_file, digest = _model_store(tmp_path, monkeypatch)
    with mlflow.start_run() as run:
        mlflow.set_tag(tracking.MODEL_DIGEST_TAG, digest)
    assert tracking.find_model_run(model_file, root=tmp_path) is None  # a run, no version
    client = mlflow.MlflowClient()
    client.create_registered_model("phm-t")
    version = client.create_model_version("phm-t", tmp_path.as_uri(), run_id=run.info.run_id)
    client.set_model_version_tag("phm-t", version.version, tracking.MODEL_DIGEST_TAG, digest)
    found = tracking.find_model_version(model_file, root=tmp_path)
    assert found is not None
    assert found[0].version == version.version and found[1].info.run_id == run.info.run_id
    model_file.write_text("another tree\n")
    assert tracking.find_model_run(model_file, root=tmp_path) is None


# --- failing fast ---------------------------------------------------------------------------------

DEAD_SERVER = "http://127.0.0.1:9"  # the discard port: nothing listens


def _project_params(root: Path):
    """A small project: the train test's params written as root/params.yaml."""
    import yaml

    from tests.test_train import _params

    params = _params()
    (root / "params.yaml").write_text(yaml.safe_dump(params.model_dump(mode="json")))
    return params


def test_stages_fail_fast_naming_an_unreachable_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipeline import audit, io, report, train
    from pipeline.errors import StageError

    monkeypatch.setenv("MLFLOW_TRACKING_URI", DEAD_SERVER)
    monkeypatch.setenv(tracking.TIMEOUT_ENV, "2")
    params, paths = _project_params(tmp_path), io.Paths.at(tmp_path)
    target = next(iter(params.targets))
    stages = {
        "train": lambda: train.run(params, paths, target=target),
        "audit": lambda: audit.run(params, paths, target=target),
        "report": lambda: report.run(params, paths),
    }
    for name, stage in stages.items():
        started = time.monotonic()
        with pytest.raises(StageError) as raised:
            stage()
        assert time.monotonic() - started < 30, name
        message = str(raised.value)
        assert DEAD_SERVER in message and "unset MLFLOW_TRACKING_URI" in message, name
    assert not (tmp_path / "models").exists()  # nothing written before the check
    for name, value in tracking.HTTP_DEFAULTS.items():  # MLflow's own retries shortened
        assert os.environ[name] == value


def test_a_server_that_never_answers_is_given_up_after_the_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipeline.errors import StageError

    with socket.socket() as silent:  # the kernel accepts connections; nobody ever answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        uri = f"http://127.0.0.1:{silent.getsockname()[1]}"
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        monkeypatch.setenv(tracking.TIMEOUT_ENV, "1.5")
        started = time.monotonic()
        with pytest.raises(StageError, match=r"waited up to 1\.5 s") as raised:
            tracking.preflight(tmp_path)
        assert 1.4 < time.monotonic() - started < 10
    assert uri in str(raised.value)


def test_cli_exits_2_with_one_line_and_no_traceback(tmp_path: Path) -> None:
    params = _project_params(tmp_path)
    env = {**os.environ, "MLFLOW_TRACKING_URI": DEAD_SERVER, tracking.TIMEOUT_ENV: "2"}
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", "audit", "--target", next(iter(params.targets))],
        check=False,
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(Path(__file__).parents[1])},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert time.monotonic() - started < 30
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert DEAD_SERVER in done.stderr and tracking.TIMEOUT_ENV in done.stderr


def test_a_locked_sqlite_store_is_retried_then_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sqlite3
    import threading

    from pipeline.errors import StageError

    database = tmp_path / "mlflow.db"
    uri = f"sqlite:///{database}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    holder = sqlite3.connect(database, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")
    monkeypatch.setenv(tracking.TIMEOUT_ENV, "1")
    started = time.monotonic()
    with pytest.raises(StageError, match="database is locked after 1 s") as raised:
        tracking.preflight(tmp_path)
    assert time.monotonic() - started < 10
    assert uri in str(raised.value)
    # a lock released within the timeout is waited for
    monkeypatch.setenv(tracking.TIMEOUT_ENV, "10")
    threading.Timer(0.5, holder.rollback).start()
    assert tracking.preflight(tmp_path) == uri
    holder.close()


@pytest.mark.parametrize("value", ["0", "-1", "soon", "nan"])
def test_timeout_must_be_a_positive_number(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.errors import StageError

    monkeypatch.setenv(tracking.TIMEOUT_ENV, value)
    with pytest.raises(StageError, match=tracking.TIMEOUT_ENV):
        tracking.preflight_timeout()


# --- orphaned runs --------------------------------------------------------------------------------

ORPHAN_SCRIPT = """
import os, signal, sys
import mlflow
from pipeline import tracking

root, digest = sys.argv[1], sys.argv[2]
tracking.configure(root)
run = mlflow.start_run()
mlflow.set_tags({"target": "t", "stage": "train", tracking.MODEL_DIGEST_TAG: digest,
                 **tracking.process_tags()})
client = mlflow.MlflowClient()
version = client.create_model_version("phm-t", "file://" + root, run_id=run.info.run_id)
client.set_model_version_tag("phm-t", version.version, tracking.MODEL_DIGEST_TAG, digest)
os.kill(os.getpid(), signal.SIGKILL)  # killed mid-logging: the run stays RUNNING
"""


def test_an_orphaned_run_is_marked_failed_and_never_picked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow

    from pipeline.train import registry

    model_file, digest = _model_store(tmp_path, monkeypatch)
    client = mlflow.MlflowClient()
    client.create_registered_model("phm-t")
    with mlflow.start_run() as finished:
        mlflow.set_tags({"target": "t", "stage": "train", tracking.MODEL_DIGEST_TAG: digest})
    source = tmp_path.as_uri()
    version = client.create_model_version("phm-t", source, run_id=finished.info.run_id)
    client.set_model_version_tag("phm-t", version.version, tracking.MODEL_DIGEST_TAG, digest)

    killed = subprocess.run(
        [sys.executable, "-c", ORPHAN_SCRIPT, str(tmp_path), digest],
        check=False,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert killed.returncode == -9, killed.stderr
    (orphan,) = client.search_runs([tracking.configure(tmp_path)], "attributes.status = 'RUNNING'")
    assert orphan.data.tags[tracking.MODEL_DIGEST_TAG] == digest
    # the newest run and the newest version are the orphan's; neither is picked
    found = tracking.find_model_run(model_file, root=tmp_path)
    assert found is not None and found.info.run_id == finished.info.run_id
    by_tag = tracking.find_run_by_tag(tracking.MODEL_DIGEST_TAG, digest, root=tmp_path)
    assert by_tag is not None and by_tag.info.run_id == finished.info.run_id

    # a run of a live process (this one) is left alone; the orphan is marked FAILED
    with mlflow.start_run() as live:
        mlflow.set_tags({"target": "t", "stage": "train", **tracking.process_tags()})
        assert registry.prepare(root=tmp_path, target="t") == [orphan.info.run_id]
        assert client.get_run(live.info.run_id).info.status == "RUNNING"
    marked = client.get_run(orphan.info.run_id)
    assert marked.info.status == "FAILED" and "phm.orphaned" in marked.data.tags
    assert client.get_run(finished.info.run_id).info.status == "FINISHED"
    assert registry.prepare(root=tmp_path, target="t") == []


# --- the registry: what the pipeline uses ---------------------------------------------------------


def test_registry_predicts_the_pipelines_scores_and_experiments_keep_the_alias(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow
    import polars as pl
    from typer.testing import CliRunner

    from pipeline import io, train
    from pipeline.cli import app
    from tests.test_train import TARGET, _population

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)
    for name in ("DVC_EXP_NAME", "DVC_EXP_BASELINE_REV"):
        monkeypatch.delenv(name, raising=False)
    params = _project_params(tmp_path)
    _population(tmp_path, truth=False)
    paths = io.Paths.at(tmp_path)
    train.run(params, paths, target=TARGET)

    name = f"phm-{TARGET}"
    client = mlflow.MlflowClient()
    candidate = client.get_model_version_by_alias(name, "candidate")
    model = mlflow.pyfunc.load_model(f"models:/{name}@candidate")
    features = pl.read_parquet(tmp_path / "features" / "features.parquet")
    scores = pl.read_parquet(tmp_path / "data" / "scores" / f"{TARGET}.parquet")
    sample = scores.sample(200, seed=1).join(features, on="person_id", how="left")
    inputs = model.metadata.get_input_schema().input_names()
    predicted = model.predict(sample.select(inputs).to_pandas().astype("float64"))
    np.testing.assert_allclose(np.asarray(predicted), sample["risk_score"].to_numpy(), rtol=1e-9)
    assert model.metadata.get_output_schema() is not None

    run = client.get_run(candidate.run_id)
    assert run.info.run_name.split(" ")[0] == TARGET and len(run.info.run_name.split(" ")) == 3
    charts = {item.path for item in client.list_artifacts(run.info.run_id, "charts")}
    assert charts == {"charts/roc.png", "charts/calibration.png"}
    png = client.download_artifacts(run.info.run_id, "charts/roc.png", str(tmp_path))
    assert Path(png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    metrics = json.loads((tmp_path / "models" / TARGET / "metrics.json").read_text())
    assert float(candidate.tags["auroc"]) == pytest.approx(metrics["auroc"], rel=1e-3)
    assert {"oe_ratio", "git_commit", "data_digest", tracking.MODEL_DIGEST_TAG} <= set(
        candidate.tags
    )
    assert candidate.tags["phm.experiment"] == "false" and "risk_score" in candidate.description
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"

    # under `dvc exp run`: a new version, tagged as an experiment; candidate does not move
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", "0" * 40)
    monkeypatch.setenv("DVC_EXP_NAME", "wiry-moth")
    train.run(params, paths, target=TARGET)
    latest = max(client.search_model_versions(f"name = '{name}'"), key=lambda v: int(v.version))
    assert latest.version != candidate.version and latest.tags["phm.experiment"] == "true"
    assert client.get_model_version_by_alias(name, "candidate").version == candidate.version
    assert client.get_run(latest.run_id).data.tags["dvc_exp_name"] == "wiry-moth"

    # promote: champion moves to the candidate by default, or to a named version
    runner = CliRunner()
    done = runner.invoke(app, ["promote", "--target", TARGET, "--root", str(tmp_path)])
    assert done.exit_code == 0, done.output
    assert client.get_model_version_by_alias(name, "champion").version == candidate.version
    argv = ["promote", "--target", TARGET, "--version", latest.version, "--root", str(tmp_path)]
    assert runner.invoke(app, argv).exit_code == 0
    assert client.get_model_version_by_alias(name, "champion").version == latest.version


def test_promote_names_a_missing_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.errors import StageError
    from pipeline.train import registry

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    with pytest.raises(StageError, match="phm-t has no alias 'candidate'"):
        registry.promote(root=tmp_path, target="t")


@pytest.mark.parametrize(
    "calibration",
    [
        {"method": "none"},
        {"method": "isotonic", "x": [0.01, 0.2, 0.5], "y": [0.0, 0.1, 0.6]},
        {"method": "sigmoid", "intercept": -0.3, "slope": 1.2},
    ],
)
def test_the_registered_model_calibrates_as_the_pipeline(calibration: dict) -> None:
    from pipeline.train import calibration as pipeline_calibration
    from pipeline.train import pyfunc_model

    raw = np.r_[0.0, 1e-9, np.linspace(0.001, 0.999, 50), 1.0]
    np.testing.assert_array_equal(
        pyfunc_model.calibrate(calibration, raw),
        pipeline_calibration.apply_calibration(calibration, raw),
    )


def test_the_input_example_is_internally_consistent() -> None:
    from pipeline.train import registry
    from pipeline.train.cohort import FeatureSpec

    spec = FeatureSpec(
        names=(
            "latest_bmi",
            "bmi_missing",
            "days_since_last_ae_attendance",
            "no_prior_ae_attendance",
            "has_diabetes",
            "has_copd",
            "n_recorded_conditions",
            "ethnicity_code",
        ),
        categorical=("ethnicity_code",),
    )
    medians = np.array([27.9, 1.0, 377.0, 1.0, 1.0, 1.0, 0.0, 3.5])
    example = dict(zip(spec.names, registry.consistent_example(medians, spec), strict=True))
    assert example["bmi_missing"] == 0 and example["no_prior_ae_attendance"] == 0
    assert example["n_recorded_conditions"] == 2 and example["ethnicity_code"] == 3
    assert example["latest_bmi"] == 27.9


def test_the_calibration_chart_keeps_its_diagonal_inside_the_axes() -> None:
    import polars as pl

    from pipeline.train import images

    bins = pl.DataFrame({"mean_predicted": [0.01, 0.1, 0.2], "observed_rate": [0.02, 0.09, 0.18]})
    spec = images.calibration_chart(bins, target="t").to_dict()
    domain = spec["layer"][1]["encoding"]["x"]["scale"]["domain"]
    diagonal = spec["datasets"][spec["layer"][0]["data"]["name"]]
    assert domain == [0, pytest.approx(0.21)]
    assert max(point["mean_predicted"] for point in diagonal) == domain[1]
    png = images.to_png(
        images.roc_chart(pl.DataFrame({"fpr": [0.0, 1.0], "tpr": [0.0, 1.0]}), target="t")
    )
    assert png.startswith(b"\x89PNG")


def test_published_model_has_no_training_counts_and_predicts_identically() -> None:
    import lightgbm as lgb
    import numpy as np

    from pipeline.train.registry import published_model_text

    rng = np.random.default_rng(3)
    x = np.column_stack([rng.normal(50, 15, 3_000), rng.integers(0, 4, 3_000)]).astype(float)
    x[rng.random(3_000) < 0.1, 0] = np.nan
    y = (
        rng.random(3_000) < 1 / (1 + np.exp(-(x[:, 1] - 1.5 + np.nan_to_num(x[:, 0]) / 50)))
    ).astype(int)
    data = lgb.Dataset(x, y, categorical_feature=[1], params={"verbose": -1})
    booster = lgb.train({"objective": "binary", "verbose": -1, "num_leaves": 7}, data, 20)
    original = booster.model_to_string()
    published = published_model_text(original)
    assert "leaf_count=" in original and "[" in original.split("feature_infos=")[1].split("\n")[0]
    for field in ("leaf_count=", "internal_count=", "leaf_weight=", "internal_weight="):
        assert field not in published
    assert "feature_infos=none " in published  # the numeric feature's min/max is gone
    again = lgb.Booster(model_str=published)
    probe = np.column_stack([rng.normal(50, 40, 500), rng.integers(0, 5, 500)]).astype(float)
    probe[::7, 0] = np.nan
    np.testing.assert_array_equal(again.predict(probe), booster.predict(probe))


# Kills the process at its k-th SQL statement while MLflow builds a new store's tables.
_KILLED_WHILE_CREATING = """
import os, signal, sys
from sqlalchemy import event
from sqlalchemy.engine import Engine
statements = 0
@event.listens_for(Engine, "before_cursor_execute")
def _kill(*_):
    global statements
    statements += 1
    if statements == int(sys.argv[1]):
        os.kill(os.getpid(), signal.SIGKILL)
from pipeline import tracking
tracking.configure(".")
"""


@pytest.mark.parametrize("statement", [5, 40, 120, 250])
def test_a_store_killed_while_being_created_is_absent_not_broken(
    statement: int, tmp_path: Path
) -> None:
    """A train killed while MLflow creates ``mlflow.db`` used to leave a store every later run
    refused (``table _alembic_tmp_experiments already exists``)."""
    env = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    killed = subprocess.run(
        [sys.executable, "-c", _KILLED_WHILE_CREATING, str(statement)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        check=False,
    )
    assert killed.returncode == -9
    assert not (tmp_path / "mlflow.db").exists()
    again = subprocess.run(
        [sys.executable, "-c", "from pipeline import tracking; tracking.configure('.')"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert again.returncode == 0, again.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == ["mlflow.db"]
