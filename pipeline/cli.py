"""Command line: ``python -m pipeline <stage>``; one command per DVC stage."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from pipeline import console as stage_console
from pipeline.config import load_params
from pipeline.errors import ParamsError, PipelineError
from pipeline.io import Paths, hold_stage_lock, sweep_project

app = typer.Typer(
    help="Risk stratification for prevention, with an equity audit in the same run.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)

RootOption = Annotated[Path, typer.Option("--root", help="Project root (holds params.yaml).")]
TargetOption = Annotated[str, typer.Option("--target", help="A target named in params.yaml.")]


def _params(root: Path):
    return load_params(Paths.at(root).params)


LOCK_WAIT_ENV = "PHM_STAGE_LOCK_WAIT"
"""Seconds a direct run waits for another run of the same stage (default 5)."""
_held_locks: list[int] = []


def _begin(root: Path, stage: str, target: str | None = None) -> None:
    """Take the stage's lock (held until the process ends), then sweep a killed run's temporaries.

    Two runs of the same stage (and target) never overlap: the second waits
    ``PHM_STAGE_LOCK_WAIT`` seconds, then stops with a message naming the first.
    """
    name = stage if target is None else f"{stage}-{target}"
    try:
        wait = float(os.environ.get(LOCK_WAIT_ENV) or 5)
    except ValueError:
        raise ParamsError(f"{LOCK_WAIT_ENV}: expected a number of seconds") from None
    _held_locks.append(hold_stage_lock(Paths.at(root).root, name, wait=wait))
    sweep_project(Paths.at(root).root)


def _checked_target(params, target: str) -> str:
    if target not in params.targets:
        known = ", ".join(sorted(params.targets))
        raise ParamsError(f"--target: unknown target {target!r} (params.yaml targets: {known})")
    return target


@app.command()
def synthesize(root: RootOption = Path(".")) -> None:
    """Generate the synthetic population, its event history, outcomes and ground truth."""
    params = _params(root)
    _begin(root, "synthesize")
    from pipeline.synth import run

    run(params, Paths.at(root))


@app.command()
def validate(
    extract: Annotated[
        Path | None, typer.Argument(help="Folder to check (default: data/population).")
    ] = None,
    root: RootOption = Path("."),
) -> None:
    """Check a population folder (synthetic or a real extract) against the data contract."""
    params = _params(root)
    _begin(root, "validate")
    from pipeline.validate import run

    run(params, Paths.at(root), extract=extract)


@app.command()
def codelists(root: RootOption = Path(".")) -> None:
    """List the codelist registry (codelists/registry.yaml): every list with its code count."""
    from rich.table import Table

    from pipeline.codelists import load_codelists, summary

    rows = summary(load_codelists(Paths.at(root).root / "codelists"))
    table = Table("concept", "kind", "system", "file", "codes", "invalid", title="Codelists")
    for row in rows.iter_rows(named=True):
        table.add_row(
            row["concept"], row["kind"], row["system"], row["file"],
            str(row["codes"]), str(row["invalid"]),
        )  # fmt: skip
    Console(width=200).print(table)


@app.command()
def features(root: RootOption = Path(".")) -> None:
    """Engineer one row of features per person at the index date from the event records."""
    params = _params(root)
    _begin(root, "features")
    from pipeline.features import run

    run(params, Paths.at(root))


@app.command()
def train(target: TargetOption, root: RootOption = Path(".")) -> None:
    """Train, calibrate, score and register the LightGBM risk model for one target."""
    params = _params(root)
    checked_target = _checked_target(params, target)
    _begin(root, "train", checked_target)
    from pipeline.train import run

    run(params, Paths.at(root), target=checked_target)


@app.command()
def need(target: TargetOption, root: RootOption = Path(".")) -> None:
    """Train the need-based model for one target and score its eligible cohort."""
    params = _params(root)
    checked_target = _checked_target(params, target)
    _begin(root, "need", checked_target)
    from pipeline.need import run

    run(params, Paths.at(root), target=checked_target)


@app.command()
def audit(target: TargetOption, root: RootOption = Path(".")) -> None:
    """Audit one target's scores for equity across deprivation, geography and ethnicity."""
    params = _params(root)
    checked_target = _checked_target(params, target)
    _begin(root, "audit", checked_target)
    from pipeline.audit import run

    run(params, Paths.at(root), target=checked_target)


@app.command()
def keyfp(root: RootOption = Path(".")) -> None:
    """Record the pseudonymisation key's fingerprint (a keyed hash, never the key) for DVC."""
    params = _params(root)
    _begin(root, "keyfp")
    from pipeline.pseudonyms import read_secret, write_key_fingerprint

    outreach = params.outreach
    key = read_secret(secret_env=outreach.secret_env, secret_file=outreach.secret_file)
    write_key_fingerprint(key, Paths.at(root).key_fingerprint)
    stage_console.stage_done("keyfp", did="pseudonymisation key fingerprint recorded")


@app.command()
def outreach(root: RootOption = Path(".")) -> None:
    """Export capacity-limited, pseudonymised outreach lists per ICB, with reasons."""
    params = _params(root)
    _begin(root, "outreach")
    from pipeline.outreach import run

    run(params, Paths.at(root))


@app.command()
def export(
    icb: Annotated[str, typer.Option("--icb", help="ODS code of the ICB, e.g. QHM.")],
    practice: Annotated[
        list[str] | None,
        typer.Option("--practice", help="Only this practice (repeat for several)."),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Workbook path (default: data/exports/outreach_<ICB>.xlsx)."),
    ] = None,
    root: RootOption = Path("."),
) -> None:
    """Write one ICB's outreach lists (optionally some practices) as an Excel workbook."""
    params = _params(root)
    from pipeline.export import export_icb, export_path
    from pipeline.outreach.stage import outreach_targets

    paths = Paths.at(root)
    practices = tuple(practice or ())
    target = out or export_path(paths.root, icb=icb, practices=practices)
    targets = outreach_targets(params.outreach.targets, known=tuple(params.targets))
    written = export_icb(paths.outreach, target, targets=targets, icb=icb, practices=practices)
    console.print(f"export: {icb} lists written to {written}", highlight=False)


@app.command()
def report(root: RootOption = Path(".")) -> None:
    """Build the self-contained, disclosure-controlled equity report (HTML)."""
    params = _params(root)
    _begin(root, "report")
    from pipeline.report import run

    run(params, Paths.at(root))


@app.command()
def promote(
    target: TargetOption,
    version: Annotated[
        str | None,
        typer.Option("--version", help="Model version to promote (default: the candidate)."),
    ] = None,
    root: RootOption = Path("."),
) -> None:
    """After review: move the MLflow alias ``champion`` of phm-<target> to a version."""
    params = _params(root)
    checked_target = _checked_target(params, target)
    from pipeline.train.registry import promote as promote_version

    promoted = promote_version(root=Paths.at(root).root, target=checked_target, version=version)
    console.print(f"phm-{checked_target}: alias champion -> version {promoted}", highlight=False)


@app.command()
def summary(root: RootOption = Path(".")) -> None:
    """Where the outputs are and the headline figures (the end of ``make run``)."""
    from pipeline.headline import target_folder
    from pipeline.io import read_json

    params = _params(root)
    paths = Paths.at(root)
    headlines = {}
    for name in params.targets:
        files = [target_folder(paths.root, name) / f"{part}.json" for part in ("train", "audit")]
        train, audit = (read_json(file) if file.exists() else {} for file in files)
        headlines[name] = (train, audit)
    lists = paths.outreach
    text = stage_console.run_summary(
        report=str((paths.reports / "equity_report.html").relative_to(paths.root)),
        lists=str(lists.relative_to(paths.root)),
        n_list_files=sum(1 for f in lists.rglob("*") if f.is_file()) if lists.is_dir() else 0,
        headlines=headlines,
    )
    print(text)


def single_threaded_blas() -> None:
    """Run BLAS (numpy's OpenBLAS) on one thread, for outputs that hash the same on any machine.

    OpenBLAS splits a dot product across as many threads as the machine has cores, so the last
    bits of a metric (``weights @ p``) or of a calibration fit depended on the core count: the
    committed ``dvc.lock`` was not reproduced on a machine with another number of cores. The
    stages' BLAS work is small (vector products), so one thread costs little.
    """
    from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

    threadpool_limits(limits=1, user_api="blas")


def main() -> None:
    """Entry point: run the app, turning user-fixable errors into a clear message and exit 2."""
    stage_console.quiet_third_party()
    single_threaded_blas()
    try:
        app()
    except PipelineError as error:
        console.print(f"[bold red]error:[/] {error}", highlight=False, markup=True)
        sys.exit(2)
