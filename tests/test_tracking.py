"""The project's MLflow helper against a real tracking server and the embedded sqlite store."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

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


def test_model_run_found_by_model_digest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    model_file = tmp_path / "model.txt"
    model_file.write_text("tree\n")
    tracking.configure(tmp_path)
    with mlflow.start_run() as run:
        mlflow.set_tag(tracking.MODEL_DIGEST_TAG, tracking.model_digest(model_file))
    found = tracking.find_model_run(model_file, root=tmp_path)
    assert found is not None and found.info.run_id == run.info.run_id
    model_file.write_text("another tree\n")
    assert tracking.find_model_run(model_file, root=tmp_path) is None
