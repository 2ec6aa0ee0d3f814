"""A valid ``features/manifest.json`` (``contract.FeatureManifest``) for a test's feature frame."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import polars as pl

from pipeline import contract, features, io
from pipeline.config import parse_params


def write_manifest(
    frame: pl.DataFrame,
    target: Path,
    *,
    inputs: Iterable[str],
    categorical: Iterable[str] = (),
) -> contract.FeatureManifest:
    """The real manifest of the default params, cut down to ``frame``'s feature columns.

    Columns the real feature set does not have (a test's own measures) get a plain numeric
    entry; ``inputs`` and ``categorical`` set the flags.
    """
    inputs, categorical = list(inputs), set(categorical)
    params = parse_params(
        {"targets": {"t": {"outcome": "emergency_admission", "follow_up_months": 12}}}
    )
    document = features.build_manifest(
        params.features, index_date=params.index_date, seed=params.seed
    ).document()
    known = {entry["name"]: entry for entry in document["features"]}
    # sensitive columns are not features, except those that are both (age, imd_decile)
    keys = {"person_id", "split", *contract.SENSITIVE_SCHEMA} - set(known)
    entries = []
    for name in frame.columns:
        if name in keys:
            continue
        entry = known.get(name) or {
            "name": name,
            "description": name.replace("_", " "),
            "dtype": str(frame.schema[name]),
            "source_table": "events",
            "kind": "numeric",
        }
        entries.append({**entry, "model_input": name in inputs, "categorical": name in categorical})
    document["features"] = entries
    document["model_inputs"] = [entry["name"] for entry in entries if entry["model_input"]]
    document["columns"] = frame.columns
    manifest = contract.FeatureManifest.model_validate(document)
    io.write_json(manifest.document(), target)
    return manifest
