"""DVC knows which pseudonymisation key made the lists (issue 14, item 5).

The key's fingerprint (a keyed hash, never the key) is an uncached output of the ``keyfp`` stage
and a dependency of ``outreach``. The end-to-end test runs the real ``dvc`` in a temporary
repository with the project's ``keyfp`` stage and a small stand-in for outreach (a pseudonym
under the key, at a capacity): run with key A, then key B at another capacity, then go back to
the first capacity: DVC must not restore the list made with key A.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.errors import StageError
from pipeline.pseudonyms import (
    FINGERPRINT_LABEL,
    check_key_fingerprint,
    key_fingerprint,
    write_key_fingerprint,
)
from tests.fixture_params import fixture_raw

PROJECT = Path(__file__).resolve().parents[1]
FINGERPRINT = "data/keys/pseudonym_key.fingerprint"
STAND_IN = """\
import hmac, hashlib, os, pathlib, yaml
from pipeline.pseudonyms import check_key_fingerprint, read_secret
capacity = yaml.safe_load(open("params.yaml"))["outreach"]["capacity"]
key = read_secret(secret_env="PHM_PSEUDONYM_KEY", secret_file="/nonexistent")
check_key_fingerprint(key, pathlib.Path("data/keys/pseudonym_key.fingerprint"))
pathlib.Path("lists").mkdir(exist_ok=True)
pseudonym = hmac.new(key, b"P1", hashlib.sha256).hexdigest()
pathlib.Path("lists/list.csv").write_text(f"{capacity},{pseudonym}\\n")
"""


def test_fingerprint_is_keyed_and_stable() -> None:
    assert key_fingerprint(b"k") == key_fingerprint(b"k")
    assert key_fingerprint(b"k") != key_fingerprint(b"k2")
    assert b"k".hex() not in key_fingerprint(b"k")
    assert len(key_fingerprint(b"k")) == 64
    assert FINGERPRINT_LABEL not in (b"P1",)  # the label is not an id: never a pseudonym


def test_outreach_refuses_a_key_other_than_the_recorded_one(tmp_path: Path) -> None:
    recorded = write_key_fingerprint(b"key A", tmp_path / "fp")
    check_key_fingerprint(b"key A", recorded)
    check_key_fingerprint(b"key B", tmp_path / "missing")  # direct runs without keyfp
    with pytest.raises(StageError, match=r"not the one recorded in .*python -m pipeline keyfp"):
        check_key_fingerprint(b"key B", recorded)


def test_outreach_depends_on_the_fingerprint_and_it_is_not_cached() -> None:
    stages = yaml.safe_load((PROJECT / "dvc.yaml").read_text())["stages"]
    assert FINGERPRINT in stages["outreach"]["deps"]
    assert stages["keyfp"]["outs"] == [{FINGERPRINT: {"cache": False}}]


def _repo(root: Path) -> None:
    shutil.copytree(PROJECT / "pipeline", root / "pipeline")
    shutil.copy(PROJECT / ".dvcignore", root / ".dvcignore")
    params = fixture_raw()
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (root / "stand_in.py").write_text(STAND_IN)
    project_stages = yaml.safe_load((PROJECT / "dvc.yaml").read_text())["stages"]
    stages = {
        "keyfp": project_stages["keyfp"],
        "lists": {
            "cmd": "python stand_in.py",
            "deps": ["stand_in.py", FINGERPRINT, "pipeline/pseudonyms.py"],
            "params": ["outreach.capacity"],
            "outs": ["lists"],
        },
    }
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))


def _run(root: Path, *command: str, key: str, check: bool = True) -> str:
    env = os.environ | {
        "PHM_PSEUDONYM_KEY": key,
        "DVC_NO_ANALYTICS": "1",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    result = subprocess.run(command, check=False, cwd=root, env=env, capture_output=True, text=True)
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def _set_capacity(root: Path, capacity: float) -> None:
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["outreach"]["capacity"] = capacity
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def _make_run(root: Path, *, key: str, capacity: float) -> str:
    """What ``make run`` does: record the key's fingerprint, then ``dvc repro``."""
    _set_capacity(root, capacity)
    _run(root, sys.executable, "-m", "pipeline", "keyfp", key=key)
    _run(root, "dvc", "repro", key=key)
    return (root / "lists" / "list.csv").read_text()


@pytest.mark.slow
def test_dvc_never_restores_lists_made_with_another_key(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    root.mkdir()
    _repo(root)
    _run(root, "dvc", "init", "--no-scm", "-q", key="")
    key_a, key_b = "a" * 64, "b" * 64
    made_with_a = _make_run(root, key=key_a, capacity=0.05)
    made_with_b = _make_run(root, key=key_b, capacity=0.02)
    assert made_with_b.split(",")[1] != made_with_a.split(",")[1]
    back = _make_run(root, key=key_b, capacity=0.05)  # the run-cache holds (A, 0.05)
    assert back.split(",")[1] == made_with_b.split(",")[1], "restored a list made with key A"
    assert back.startswith("0.05,")
    # going back to key A restores A's lists (correct: same key, same inputs)
    assert _make_run(root, key=key_a, capacity=0.05) == made_with_a
    # a killed run's temporaries inside an output are invisible to DVC (.dvcignore)
    (root / "lists" / ".tmp" / "list.csv.0123").mkdir(parents=True)
    (root / "lists" / ".tmp" / "list.csv.0123" / "list.csv").write_text("half")
    status = _run(root, "dvc", "status", key=key_a)
    assert "up to date" in status, status
    # a changed key that was not recorded: the lists stage refuses rather than mix keys
    _set_capacity(root, 0.03)
    refused = _run(root, "dvc", "repro", key=key_b, check=False)
    assert "is not the one recorded in" in refused
