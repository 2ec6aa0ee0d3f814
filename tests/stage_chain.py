"""Every stage from ``validate`` to ``report`` in DVC's order, in-process, for end-to-end tests
on a small extract (the caller has written ``data/population/`` and set the environment)."""

from __future__ import annotations

from collections.abc import Sequence

from pipeline import io
from pipeline.config import Params
from pipeline.pseudonyms import write_key_fingerprint


def run_from_validate(
    params: Params, paths: io.Paths, *, targets: Sequence[str], key: bytes
) -> None:
    """validate -> features -> (train, need, audit per target) -> keyfp -> outreach ->
    report (no MLflow logging of the report)."""
    from pipeline import audit, features, need, outreach, train, validate
    from pipeline.report.build import run as report_run

    validate.run(params, paths)
    features.run(params, paths)
    for target in targets:
        train.run(params, paths, target=target)
        need.run(params, paths, target=target)
        audit.run(params, paths, target=target)
    write_key_fingerprint(key, paths.key_fingerprint)
    outreach.run(params, paths)
    report_run(params, paths, log_mlflow=False)
