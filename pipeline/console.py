"""What a person running the pipeline sees: one line per stage, progress bars, quiet libraries.

Each stage's ``run()`` ends with one :func:`stage_done` call (what it did: rows, time, a headline
figure). Long steps wrap their loop in :func:`progress`, a rich progress bar shown only when
stderr is a terminal (never in a pipe or a log file). :func:`quiet_third_party` silences the
libraries' own chatter (MLflow's INFO lines, pip-version warning and artifact progress bars)
before they are imported. :func:`record_timing` appends a step's wall seconds to the file
``$PHM_TIMINGS`` names, for the benchmarks (``benchmarks/``); timings are never outputs.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Final

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

_STARTED: Final = time.monotonic()
"""When the process imported this module (the stage's start, as the CLI imports it first)."""

QUIET_ENVIRONMENT: Final = {
    "MLFLOW_LOGGING_LEVEL": "WARNING",  # no INFO lines ("Creating initial tables", uv copies)
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",  # no tqdm "Downloading artifacts" bars
    "MLFLOW_LOG_UV_FILES": "false",  # uv.lock / pyproject.toml are not copied into model artifacts
    "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    "PIP_NO_WARN_SCRIPT_LOCATION": "1",
}
"""Environment defaults (a value the user already set wins)."""
QUIET_LOGGERS: Final = {
    # the venv is built by uv, without pip: MLflow warns on every model it logs
    "mlflow.utils.environment": logging.ERROR,
}


def quiet_third_party(environ: dict[str, str] | None = None) -> None:
    """Silence third-party noise: set :data:`QUIET_ENVIRONMENT` defaults and logger levels.

    Parameters
    ----------
    environ
        The environment to update (default ``os.environ``); values already set are kept.
    """
    target = os.environ if environ is None else environ
    for name, value in QUIET_ENVIRONMENT.items():
        target.setdefault(name, value)
    for name, level in QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(level)


def _stderr() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


def elapsed(*, now: float | None = None) -> str:
    """Wall time since the stage started, e.g. ``"4.2 s"`` or ``"1 min 05 s"``."""
    seconds = (time.monotonic() if now is None else now) - _STARTED
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest:02d} s"


def stage_line(
    stage: str, *, did: str, target: str | None = None, figure: str | None = None, took: str
) -> str:
    """The one line a stage prints: ``stage [target]: what it did; figure (time)``."""
    name = stage if target is None else f"{stage} {target}"
    tail = f"; {figure}" if figure else ""
    return f"{name}: {did}{tail} ({took})"


def stage_done(
    stage: str, *, did: str, target: str | None = None, figure: str | None = None
) -> None:
    """Print the stage's one line on stderr (the stage's time is measured here).

    Parameters
    ----------
    stage
        Stage name as in ``dvc.yaml`` (``train``, ``audit`` ...).
    did
        What it did, with its row counts (``"200,000 people, 81 features"``).
    target
        The target of a per-target stage.
    figure
        One headline figure (``"test AUROC 0.812"``), if the stage has one.
    """
    line = stage_line(stage, did=did, target=target, figure=figure, took=elapsed())
    _stderr().print(f"[green]done[/] {line}", markup=True)


TIMINGS_ENV: Final = "PHM_TIMINGS"
"""Environment variable naming a JSON-lines file that :func:`record_timing` appends to."""


def record_timing(
    stage: str, step: str, seconds: float, *, target: str | None = None, rows: int | None = None
) -> None:
    """Append ``{"stage", "target", "step", "seconds", "rows"}`` as one JSON line to the file
    ``$PHM_TIMINGS`` names (nothing when it is unset): how the benchmarks learn the wall time of
    a step whose cost does not grow with the population (a model fit on a capped sample, of
    ``rows`` rows), which a stage's total cannot tell them. Never part of an output (a timing
    would break the byte-identical reruns)."""
    target_file = os.environ.get(TIMINGS_ENV)
    if not target_file:
        return
    record = {"stage": stage, "target": target, "step": step, "seconds": seconds, "rows": rows}
    with open(target_file, "a", encoding="utf-8") as timings:
        timings.write(json.dumps(record) + "\n")


def interactive() -> bool:
    """Whether stderr is a terminal (progress bars are drawn only then)."""
    return sys.stderr.isatty()


@contextmanager
def progress(description: str, *, total: int | None) -> Iterator[Callable[[int], None]]:
    """A transient rich progress bar on a terminal, nothing otherwise.

    Yields
    ------
    callable
        ``advance(n)``: n more steps done.
    """
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=_stderr(),
        disable=not interactive(),
        transient=True,
    )
    with bar:
        task = bar.add_task(description, total=total)

        def advance(steps: int = 1) -> None:
            bar.advance(task, steps)

        yield advance


def figures(document: Mapping[str, object], *names: tuple[str, str]) -> str:
    """``"test AUROC 0.786, O/E 1.01"`` from a metrics document's (key, label) pairs; a
    suppressed or missing figure shows as ``*``."""
    shown = []
    for key, label in names:
        value = document.get(key)
        number = f"{value:.3g}" if isinstance(value, float) else "*"
        shown.append(f"{label} {number}")
    return "test " + ", ".join(shown)


def count(n: object) -> str:
    """A count with thousands separators (a published ``"*"`` as it is)."""
    return f"{n:,}" if isinstance(n, int) else str(n)


MLFLOW_UI: Final = "mlflow ui --backend-store-uri sqlite:///mlflow.db"


def _headline_line(target: str, train: Mapping[str, object], audit: Mapping[str, object]) -> str:
    shown = figures(train, ("auroc", "AUROC"), ("oe_ratio", "O/E"), ("calibration_slope", "slope"))
    reached = train.get("sensitivity_at_capacity")
    reached_text = f"{reached:.0%}" if isinstance(reached, float) else "*"
    flagged = audit.get("flagged_comparisons", "*")
    return (
        f"  {target}: {shown}; {reached_text} of events reached at the operating point; "
        f"{flagged} audit comparisons flagged"
    )


def run_summary(
    *,
    report: str,
    lists: str,
    n_list_files: int,
    headlines: Mapping[str, tuple[Mapping[str, object], Mapping[str, object]]],
) -> str:
    """The closing summary of ``make run``: where each output is and the headline figures.

    Parameters
    ----------
    report, lists
        Paths (relative to the project) of the equity report and of the outreach lists folder.
    n_list_files
        How many list files the lists folder holds.
    headlines
        target -> (``metrics/<target>/train.json``, ``metrics/<target>/audit.json``) contents.
    """
    lines = [
        "",
        "Pipeline done.",
        f"  equity report:   {report}  (open in a browser)",
        f"  outreach lists:  {lists}/  ({n_list_files} files, pseudonymised, one per ICB)",
        f"  models (MLflow): {MLFLOW_UI}  then http://127.0.0.1:5000",
        "  metrics, plots:  dvc metrics show; dvc plots show (dvc_plots/index.html)",
        "Headline figures (test split):",
        *(_headline_line(name, *pair) for name, pair in headlines.items()),
    ]
    return "\n".join(lines)
