"""MLflow tracking helpers: where the store is, a pre-flight check, and one way to find runs.

Embedded default: sqlite ``mlflow.db`` and artifacts in ``mlartifacts/`` at the project root,
both addressed by absolute path so ``dvc exp run --temp`` (which runs in a copy of the repo
under ``.dvc/tmp/exps``) still logs to the same store. ``MLFLOW_TRACKING_URI`` overrides it.

Failing fast: :func:`preflight` checks the store within ``PHM_TRACKING_TIMEOUT`` seconds (default
5) before a stage does any work - a GET of ``<uri>/health`` for a server, a write lock (retried
until the timeout) for sqlite - and MLflow's own HTTP retries are shortened for this process
(:data:`HTTP_DEFAULTS`, each only if unset). Store failures become one :class:`StageError` naming
the URI and the fix; the CLI prints it and exits 2.
"""

from __future__ import annotations

import math
import os
import socket
import sqlite3
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from pipeline import io
from pipeline.errors import PipelineError, StageError

if TYPE_CHECKING:
    import mlflow

EXPERIMENT_NAME = "phm-risk-stratification"
EXPERIMENT_TAGS: Final = {"mlflow.experimentKind": "custom_model_development"}
"""The UI opens the experiment on its model-training view (runs, models), not GenAI traces."""

TIMEOUT_ENV: Final = "PHM_TRACKING_TIMEOUT"
DEFAULT_TIMEOUT: Final = 5.0
"""Seconds the pre-flight check waits for the tracking store."""

HTTP_DEFAULTS: Final = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}
"""MLflow's HTTP retry settings for our calls (its defaults retry for minutes); set if unset."""

FINISHED: Final = "FINISHED"
PROCESS_TAGS: Final = ("phm.host", "phm.pid")
"""Tags naming the process that opened a run, so a later start can tell an orphan (process gone)
from a run still in progress."""


def preflight_timeout() -> float:
    """``PHM_TRACKING_TIMEOUT`` in seconds (default 5).

    Raises
    ------
    StageError
        When the variable is not a positive number.
    """
    raw = os.environ.get(TIMEOUT_ENV, "")
    if not raw:
        return DEFAULT_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise StageError(f"{TIMEOUT_ENV}={raw!r}: expected a positive number of seconds")
    return value


def shorten_http_retries() -> None:
    """Set MLflow's HTTP retry and timeout variables for this process where they are unset."""
    for name, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(name, value)


def _fix_hint(uri: str) -> str:
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return (
            f"start the tracking server at {uri} (mlflow server ...), point MLFLOW_TRACKING_URI "
            "at a running one, or unset MLFLOW_TRACKING_URI to use the project's mlflow.db; "
            f"{TIMEOUT_ENV} sets how many seconds to wait"
        )
    return (
        "wait for or stop the other process using it, check the file's permissions, or set "
        f"MLFLOW_TRACKING_URI to a tracking server; {TIMEOUT_ENV} sets how many seconds to wait"
    )


def check_http(uri: str, *, timeout: float) -> None:
    """GET ``<uri>/health`` within ``timeout`` seconds; any answer below 500 counts as up."""
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout):
            return
    except urllib.error.HTTPError as error:
        if error.code < 500:
            return
        reason = f"it answered HTTP {error.code}"
    except (OSError, ValueError) as error:
        reason = f"not reachable ({getattr(error, 'reason', error)}; waited up to {timeout:g} s)"
    raise StageError(f"MLflow tracking server {uri}: {reason}. To fix: {_fix_hint(uri)}")


def check_sqlite(database: Path, *, uri: str, timeout: float) -> None:
    """Take and release sqlite's write lock on ``database``, retrying until ``timeout`` seconds.

    A missing file is fine when its folder is writable (MLflow creates it).
    """
    if not database.exists():
        if os.access(database.parent, os.W_OK):
            return
        raise StageError(f"MLflow store {uri}: folder {database.parent} is not writable")
    deadline = time.monotonic() + timeout
    while True:
        try:
            with sqlite3.connect(f"{database.as_uri()}?mode=rw", uri=True, timeout=0.25) as db:
                db.execute("BEGIN IMMEDIATE")
                db.rollback()
            return
        except sqlite3.Error as error:
            locked = "locked" in str(error) or "busy" in str(error)
            if not locked or time.monotonic() >= deadline:
                waited = f" after {timeout:g} s" if locked else ""
                raise StageError(
                    f"MLflow store {uri}: {error}{waited}. To fix: {_fix_hint(uri)}"
                ) from None
            time.sleep(0.2)


def check_store(uri: str, *, timeout: float) -> None:
    """Pre-flight check of one tracking URI (http(s) and sqlite; other schemes pass)."""
    if uri.startswith(("http://", "https://")):
        check_http(uri, timeout=timeout)
    elif uri.startswith("sqlite:///") and len(uri) > len("sqlite:///"):
        check_sqlite(Path(uri.removeprefix("sqlite:///")), uri=uri, timeout=timeout)


def preflight(root: str | Path = ".") -> str:
    """Shorten MLflow's HTTP retries and check the store answers; returns the tracking URI.

    Raises
    ------
    StageError
        Naming the URI and how to fix it, when the store does not answer in time.
    """
    shorten_http_retries()
    uri = tracking_uri(root)
    check_store(uri, timeout=preflight_timeout())
    return uri


@contextmanager
def store_errors(action: str, *, root: str | Path = ".") -> Iterator[None]:
    """Turn a tracking-store failure inside the block into one :class:`StageError`.

    MLflow's own errors, HTTP and database errors (a lock held past sqlite's busy timeout, a
    read-only file) become ``<action>: MLflow store <uri> failed: <first line>. To fix: ...``.
    """
    from mlflow.exceptions import MlflowException
    from requests.exceptions import RequestException
    from sqlalchemy.exc import SQLAlchemyError

    try:
        yield
    except PipelineError:
        raise
    except (MlflowException, RequestException, SQLAlchemyError, sqlite3.Error) as error:
        uri = tracking_uri(root)
        first = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
        raise StageError(
            f"{action}: MLflow store {uri} failed: {first}. To fix: {_fix_hint(uri)}"
        ) from None


def project_root(start: str | Path = ".") -> Path:
    """The project root, seen through a ``dvc exp run --temp`` workspace if we are inside one."""
    here = Path(start).resolve()
    parts = here.parts
    for index in range(len(parts) - 2):
        if parts[index : index + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:index])
    return here


def tracking_uri(root: str | Path = ".") -> str:
    """``MLFLOW_TRACKING_URI`` if set, else the embedded sqlite store at the project root."""
    configured = os.environ.get("MLFLOW_TRACKING_URI")
    if configured:
        return configured
    return f"sqlite:///{project_root(root) / 'mlflow.db'}"


def artifact_location(root: str | Path = ".") -> str:
    """Absolute artifact root for the embedded store."""
    return (project_root(root) / "mlartifacts").as_uri()


def ensure_store(uri: str, *, root: str | Path = ".") -> None:
    """Create a missing embedded sqlite store whole, or not at all.

    MLflow builds a new store's tables through a series of migrations; a process killed in
    between leaves a store that every later run refuses (``table _alembic_tmp_experiments already
    exists``). So the tables are built in a private temporary file, which is linked into place
    only when complete (a store another process made meanwhile wins).
    """
    if not uri.startswith("sqlite:///"):
        return
    database = Path(uri.removeprefix("sqlite:///"))
    if database.exists():
        return
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    with io.atomic_path(database, replace=False) as building:
        with store_errors("creating the store", root=root):
            store = SqlAlchemyStore(f"sqlite:///{building}", artifact_location(root))
            store.engine.dispose()


def configure(root: str | Path = ".", *, experiment: str = EXPERIMENT_NAME) -> str:
    """Point MLflow at the store and make sure the experiment exists; returns its id."""
    import logging

    import mlflow

    # Alembic's migration chatter on first use of a new sqlite store is noise for users.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    # Read before set_tracking_uri, which exports MLFLOW_TRACKING_URI itself.
    team_server = bool(os.environ.get("MLFLOW_TRACKING_URI"))
    uri = preflight(root)
    ensure_store(uri, root=root)
    mlflow.set_tracking_uri(uri)
    with store_errors("opening the experiment", root=root):
        found = mlflow.get_experiment_by_name(experiment)
        if found is not None:
            experiment_id = found.experiment_id
        elif team_server:
            experiment_id = mlflow.create_experiment(experiment, tags=EXPERIMENT_TAGS)
        else:
            experiment_id = mlflow.create_experiment(
                experiment, artifact_location=artifact_location(root), tags=EXPERIMENT_TAGS
            )
        if found is not None and not EXPERIMENT_TAGS.items() <= found.tags.items():
            for key, value in EXPERIMENT_TAGS.items():
                mlflow.MlflowClient().set_experiment_tag(experiment_id, key, value)
        mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def find_run_by_tag(tag: str, value: str, *, root: str | Path = ".") -> mlflow.entities.Run | None:
    """The newest FINISHED run in the project experiment whose ``tag`` equals ``value`` (or None).

    Runs still RUNNING (or left RUNNING by a killed process), FAILED or KILLED are never picked.
    """
    import mlflow

    experiment_id = configure(root)
    with store_errors("searching runs", root=root):
        runs = mlflow.search_runs(
            experiment_ids=[experiment_id],
            filter_string=f"tags.`{tag}` = '{value}' and attributes.status = '{FINISHED}'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
            output_format="list",
        )
    return runs[0] if runs else None


def process_tags() -> dict[str, str]:
    """The :data:`PROCESS_TAGS` of this process (host name and pid)."""
    return dict(zip(PROCESS_TAGS, (socket.gethostname(), str(os.getpid())), strict=True))


def process_gone(tags: dict[str, str]) -> bool:
    """Whether the process named by a run's :data:`PROCESS_TAGS` has ended.

    A run without them is an orphan; a run from another host is never judged (False).
    """
    host, pid = (tags.get(name) for name in PROCESS_TAGS)
    if host is None or pid is None or not pid.isdigit():
        return True
    if host != socket.gethostname():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, someone else's
        return False
    return False


def fail_orphaned_runs(filters: dict[str, str], *, root: str | Path = ".") -> list[str]:
    """Mark FAILED each RUNNING run matching the tag ``filters`` whose process has ended.

    Returns the ids of the runs marked (tagged ``phm.orphaned``).
    """
    import mlflow

    experiment_id = configure(root)
    clauses = [f"tags.`{key}` = '{value}'" for key, value in filters.items()]
    with store_errors("marking interrupted runs FAILED", root=root):
        client = mlflow.MlflowClient()
        running = client.search_runs(
            [experiment_id], " and ".join([*clauses, "attributes.status = 'RUNNING'"])
        )
        orphans = [run.info.run_id for run in running if process_gone(run.data.tags)]
        for run_id in orphans:
            client.set_tag(run_id, "phm.orphaned", "its process ended before the run finished")
            client.set_terminated(run_id, status="FAILED")
    return orphans


def log_flat_metrics(
    metrics: dict[str, Any], *, prefix: str = "", run_id: str | None = None
) -> None:
    """Log the numeric leaves of a nested dict as metrics named ``prefix.key.subkey``.

    To the active run, or to ``run_id`` without reopening it (a finished run stays FINISHED).
    """
    import mlflow

    flat: dict[str, float] = {}

    def walk(node: Any, name: str) -> None:
        if isinstance(node, dict):
            for key, child in node.items():
                walk(child, f"{name}.{key}" if name else str(key))
        elif isinstance(node, bool):
            flat[name] = float(node)
        elif isinstance(node, int | float) and not math.isnan(node):
            flat[name] = float(node)

    walk(metrics, prefix)
    if not flat:
        return
    if run_id is None:
        mlflow.log_metrics(flat)
    else:
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        batch = [Metric(key, value, stamp, 0) for key, value in flat.items()]
        mlflow.MlflowClient().log_batch(run_id, metrics=batch)


MODEL_DIGEST_TAG = "model_sha256"
"""Train tags its run with the sha256 of ``models/<target>/model.txt``; later stages find the run
by that tag, so no run id has to be written into a DVC output (outputs stay deterministic)."""


def model_digest(model_file: str | Path) -> str:
    """sha256 of a model file, the key that links DVC outputs to their MLflow run."""
    import hashlib

    return hashlib.sha256(Path(model_file).read_bytes()).hexdigest()


def registered_name(target: str) -> str:
    """The registered model of one target: ``phm-<target>``."""
    return f"phm-{target}"


def find_model_version(
    model_file: str | Path, *, root: str | Path = "."
) -> tuple[mlflow.entities.model_registry.ModelVersion, mlflow.entities.Run] | None:
    """The registered version of ``models/<target>/model.txt`` and its FINISHED run.

    The versions of ``phm-<target>`` (``<target>`` = the file's folder) tagged with the file's
    sha256 are looked up newest first; the first whose run FINISHED is returned. Never simply
    the newest run: an interrupted (RUNNING / FAILED) run is not picked. None when the store
    holds no such version.
    """
    import mlflow

    digest = model_digest(model_file)
    name = registered_name(Path(model_file).parent.name)
    configure(root)
    with store_errors("finding the model's run", root=root):
        client = mlflow.MlflowClient()
        versions = client.search_model_versions(f"name = '{name}'")
        matching = [v for v in versions if v.tags.get(MODEL_DIGEST_TAG) == digest and v.run_id]
        for version in sorted(matching, key=lambda v: int(v.version), reverse=True):
            run = client.get_run(str(version.run_id))
            if run.info.status == FINISHED and run.data.tags.get(MODEL_DIGEST_TAG) == digest:
                return version, run
    return None


def find_model_run(model_file: str | Path, *, root: str | Path = ".") -> mlflow.entities.Run | None:
    """The FINISHED run behind the registered version of ``model_file`` (see
    :func:`find_model_version`), or None."""
    found = find_model_version(model_file, root=root)
    return None if found is None else found[1]
