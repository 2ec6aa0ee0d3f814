"""dvc.yaml's code deps cannot drift: each stage lists exactly the code its command runs.

A stage's code is the import closure of its module (the ``from pipeline.X import run`` in its
command in ``pipeline/cli.py``) plus what the command line itself imports for every stage
(params, errors, IO), and the non-Python files (templates) in the packages of that closure. The
dispatcher ``pipeline/cli.py`` / ``__main__.py`` is left out on purpose: it only maps a command
name to a stage's ``run()``, and listing it would re-run every stage whenever a command is added.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "pipeline"
DISPATCH = {"pipeline/cli.py", "pipeline/__main__.py", "pipeline/__init__.py"}


def _module_file(module: str) -> Path | None:
    base = ROOT / Path(*module.split("."))
    if (base / "__init__.py").exists():
        return base / "__init__.py"
    if base.with_suffix(".py").exists():
        return base.with_suffix(".py")
    return None


def _imported(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    """``pipeline.*`` modules a module imports (at any depth: lazy imports run too)."""
    found: set[str] = set()
    parent = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = parent.rsplit(".", node.level - 1)[0] if node.level > 1 else parent
                stem = f"{base}.{node.module}" if node.module else base
            else:
                stem = node.module or ""
            found.add(stem)
            # `from pipeline import contract` imports the module pipeline.contract
            found |= {f"{stem}.{alias.name}" for alias in node.names}
    return {name for name in found if name.split(".")[0] == PACKAGE}


def closure(*modules: str) -> set[str]:
    """Project-relative files of the modules, their parent packages and everything imported."""
    seen: set[str] = set()
    files: set[str] = set()
    todo = list(modules)
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        parts = module.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))  # parents run first
        path = _module_file(module)
        if path is None:
            continue  # a name imported from a module, not a module
        files.add(path.relative_to(ROOT).as_posix())
        tree = ast.parse(path.read_text(encoding="utf-8"))
        todo.extend(_imported(tree, module, path.name == "__init__.py"))
    for package in {Path(f).parent for f in files if f.endswith("__init__.py")}:
        files |= _data_files(ROOT / package)
    return files - DISPATCH


def _data_files(package: Path) -> set[str]:
    """Non-Python files of a package (templates), not those of its subpackages."""
    found = set()
    for path in package.iterdir():
        if path.is_dir() and path.name != "__pycache__" and not (path / "__init__.py").exists():
            found |= {p.relative_to(ROOT).as_posix() for p in path.rglob("*") if p.is_file()}
        elif path.is_file() and path.suffix not in {".py", ".pyc"}:
            found.add(path.relative_to(ROOT).as_posix())
    return found


def _commands() -> dict[str, set[str]]:
    """Command name -> the stage modules its function imports (from pipeline/cli.py)."""
    tree = ast.parse((ROOT / "pipeline/cli.py").read_text(encoding="utf-8"))
    commands: dict[str, set[str]] = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and any(
            isinstance(d, ast.Call) and getattr(d.func, "attr", "") == "command"
            for d in node.decorator_list
        ):
            commands[node.name.replace("_", "-")] = _imported(node, "pipeline.cli", False)
    return commands


def _common() -> set[str]:
    """Modules the command line imports for every command (module level of cli.py)."""
    tree = ast.parse((ROOT / "pipeline/cli.py").read_text(encoding="utf-8"))
    top = ast.Module(body=[n for n in tree.body if not isinstance(n, ast.FunctionDef)])
    return _imported(top, "pipeline.cli", False)


def _stages() -> dict[str, dict[str, Any]]:
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    return {name: stage.get("do", stage) for name, stage in stages.items()}


def _code_deps(stage: dict[str, Any]) -> set[str]:
    return {d.rstrip("/") for d in stage.get("deps", []) if str(d).startswith(f"{PACKAGE}/")}


def _covered(file: str, deps: set[str]) -> bool:
    return any(file == dep or file.startswith(f"{dep}/") for dep in deps)


def _expected(name: str, stage: dict[str, Any]) -> set[str]:
    words = stage["cmd"].split()
    assert words[:3] == ["python", "-m", PACKAGE], f"{name}: cmd must be `python -m pipeline ...`"
    commands = _commands()
    assert words[3] in commands, f"{name}: no command {words[3]!r} in pipeline/cli.py"
    return closure(*_common(), *commands[words[3]])


@pytest.mark.parametrize("name", sorted(_stages()))
def test_stage_lists_every_file_of_its_code(name: str) -> None:
    stage = _stages()[name]
    deps = _code_deps(stage)
    missing = sorted(f for f in _expected(name, stage) if not _covered(f, deps))
    assert not missing, f"dvc.yaml stage {name!r}: add to deps {missing}"


@pytest.mark.parametrize("name", sorted(_stages()))
def test_stage_lists_no_code_it_does_not_run(name: str) -> None:
    stage = _stages()[name]
    needed = _expected(name, stage)
    extra = []
    for dep in sorted(_code_deps(stage)):
        path = ROOT / dep
        files = (
            {p.relative_to(ROOT).as_posix() for p in path.rglob("*") if p.is_file()}
            if path.is_dir()
            else {dep}
        )
        files = {f for f in files if "__pycache__" not in f}
        if files - needed:
            extra.append(f"{dep}: {sorted(files - needed)}")
    assert not extra, f"dvc.yaml stage {name!r}: deps hold code the stage never runs: {extra}"


@pytest.mark.parametrize("name", sorted(_stages()))
def test_stage_lists_each_dependency_once(name: str) -> None:
    deps = [str(d).rstrip("/") for d in _stages()[name].get("deps", [])]
    twice = sorted({d for d in deps if deps.count(d) > 1})
    assert not twice, f"dvc.yaml stage {name!r}: deps listed more than once: {twice}"


def test_closure_follows_lazy_relative_and_package_imports() -> None:
    files = closure("pipeline.audit")
    assert "pipeline/audit/__init__.py" in files
    assert "pipeline/audit/cells.py" in files  # `from pipeline.audit import cells as ...`
    assert "pipeline/contract.py" in files and "pipeline/io.py" in files
    assert not files & DISPATCH
    report = closure("pipeline.report")
    assert any(f.endswith(".j2") for f in report)  # templates count as the report's code
