"""Command line: ``python -m pipeline <stage>``; one command per DVC stage."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from pipeline.config import load_params
from pipeline.errors import ParamsError, PipelineError
from pipeline.io import Paths

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


def _checked_target(params, target: str) -> str:
    if target not in params.targets:
        known = ", ".join(sorted(params.targets))
        raise ParamsError(f"--target: unknown target {target!r} (params.yaml targets: {known})")
    return target


@app.command()
def synthesize(root: RootOption = Path(".")) -> None:
    """Generate the synthetic population, its event history, outcomes and ground truth."""
    params = _params(root)
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
    from pipeline.validate import run

    run(params, Paths.at(root), extract=extract)


@app.command()
def features(root: RootOption = Path(".")) -> None:
    """Engineer one row of features per person at the index date from the event records."""
    params = _params(root)
    from pipeline.features import run

    run(params, Paths.at(root))


@app.command()
def train(target: TargetOption, root: RootOption = Path(".")) -> None:
    """Train, calibrate, score and register the LightGBM risk model for one target."""
    params = _params(root)
    checked_target = _checked_target(params, target)
    from pipeline.train import run

    run(params, Paths.at(root), target=checked_target)


@app.command()
def need(target: TargetOption, root: RootOption = Path(".")) -> None:
    """Train the need-based model for one target and score its eligible cohort."""
    params = _params(root)
    checked_target = _checked_target(params, target)
    from pipeline.need import run

    run(params, Paths.at(root), target=checked_target)


@app.command()
def audit(target: TargetOption, root: RootOption = Path(".")) -> None:
    """Audit one target's scores for equity across deprivation, geography and ethnicity."""
    params = _params(root)
    checked_target = _checked_target(params, target)
    from pipeline.audit import run

    run(params, Paths.at(root), target=checked_target)


@app.command()
def explain(target: TargetOption, root: RootOption = Path(".")) -> None:
    """Compute each eligible person's largest feature contributions (for outreach reasons)."""
    params = _params(root)
    checked_target = _checked_target(params, target)
    from pipeline.explain import run

    run(Paths.at(root), target=checked_target)


@app.command()
def outreach(root: RootOption = Path(".")) -> None:
    """Export capacity-limited, pseudonymised outreach lists per ICB, with reasons."""
    params = _params(root)
    from pipeline.outreach import run

    run(params, Paths.at(root))


@app.command()
def report(root: RootOption = Path(".")) -> None:
    """Build the self-contained, disclosure-controlled equity report (HTML)."""
    params = _params(root)
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


def main() -> None:
    """Entry point: run the app, turning user-fixable errors into a clear message and exit 2."""
    try:
        app()
    except PipelineError as error:
        console.print(f"[bold red]error:[/] {error}", highlight=False, markup=True)
        sys.exit(2)
