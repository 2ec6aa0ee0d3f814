"""params.yaml -> frozen pydantic models: unknown keys and bad values fail naming the key."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from pipeline.config import Params, ParamsError, load_params, parse_params
from tests.fixture_params import FIXTURE_PARAMS, fixture_raw

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def default_raw() -> dict:
    return fixture_raw()


def _keys(node: object, prefix: str = "") -> set[str]:
    if not isinstance(node, dict):
        return set()
    keys = {f"{prefix}{key}" for key in node}
    return keys.union(*(_keys(value, f"{prefix}{key}.") for key, value in node.items()))


def test_fixture_params_have_the_project_files_keys() -> None:
    # Tests build on tests/fixture_params.yaml, never on the working params.yaml (which
    # `dvc exp apply` changes); only its keys are compared here, so an experiment's values do
    # not matter, but a section added to the project's params must be added to the fixture.
    project = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert _keys(fixture_raw()) == _keys(project)


def test_project_params_load(default_raw: dict) -> None:
    params = parse_params(default_raw)
    assert params.population.n_people == 200_000
    assert set(params.targets) == {"emergency_admission_12m", "cvd_event_5y"}
    assert params.targets["cvd_event_5y"].exclude_prior == ("cvd",)


def test_params_are_frozen(default_raw: dict) -> None:
    params = parse_params(default_raw)
    with pytest.raises(ValidationError):
        params.train.learning_rate = 0.2  # type: ignore[misc]


@pytest.mark.parametrize(
    ("path", "value", "key"),
    [
        (("train", "learning_rate"), -0.1, "train.learning_rate"),
        (("train", "learnig_rate"), 0.1, "train.learnig_rate: unknown key"),
        (("population", "n_people"), 10, "population.n_people"),
        (("population", "bias", "access"), -1, "population.bias.access"),
        (("outreach", "policy"), "random", "outreach.policy"),
        (("outreach", "capacity"), 1.5, "outreach"),
        (("features", "windows_months"), [12, 3], "features.windows_months"),
        (("features", "split_fractions"), [0.5, 0.5, 0.5], "features.split_fractions"),
        (("audit", "dimensions"), ["postcode"], "audit.dimensions.0"),
        (("targets", "cvd_event_5y", "min_age"), 90, "targets.cvd_event_5y"),
        (("surprise",), 1, "surprise: unknown key"),
    ],
)
def test_bad_value_names_the_key(default_raw: dict, path: tuple, value: object, key: str) -> None:
    raw = copy.deepcopy(default_raw)
    node = raw
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    with pytest.raises(ParamsError) as caught:
        parse_params(raw)
    assert key in str(caught.value)


def test_targets_required() -> None:
    with pytest.raises(ParamsError, match="targets"):
        parse_params({"seed": 1})


def test_load_params_reports_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "params.yaml")
    broken = tmp_path / "params.yaml"
    broken.write_text("seed: [unclosed\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(broken)
    broken.write_text("- a list\n")
    with pytest.raises(ParamsError, match="mapping"):
        load_params(broken)


def test_cli_fails_before_work_on_bad_params(tmp_path: Path) -> None:
    import subprocess
    import sys

    raw = fixture_raw()
    raw["train"]["num_leaves"] = 1
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "synthesize", "--root", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert "train.num_leaves" in result.stderr
    assert not (tmp_path / "data").exists()


def test_params_schema_defaults_match_yaml(default_raw: dict) -> None:
    # The yaml documents every section; the model's defaults must agree with it so that a
    # section left out of a user's params file behaves as documented.
    params = parse_params(default_raw)
    for section in ("population", "features", "train", "audit", "outreach", "report"):
        assert getattr(params, section) == getattr(Params(targets=params.targets), section)


@pytest.mark.parametrize(
    ("path", "value", "key"),
    [
        (("seed",), True, "seed: Input should be a valid integer"),
        (("seed",), "20261123", "seed: Input should be a valid integer"),
        (("population", "n_people"), "200000", "population.n_people"),
        (("train", "learning_rate"), True, "train.learning_rate"),
        (("outreach", "plus_groups"), ["Martian"], "outreach.plus_groups.0"),
        (
            ("outreach", "targets"),
            ["no_such_target"],
            "outreach.targets: unknown target 'no_such_target'",
        ),
    ],
)
def test_values_of_the_wrong_kind_are_refused_not_coerced(
    default_raw: dict, path: tuple[str, ...], value: object, key: str
) -> None:
    raw = copy.deepcopy(default_raw)
    node = raw
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    with pytest.raises(ParamsError) as error:
        parse_params(raw)
    assert key in str(error.value)


def test_a_key_given_twice_is_refused(tmp_path: Path) -> None:
    text = FIXTURE_PARAMS.read_text()
    params_file = tmp_path / "params.yaml"
    params_file.write_text(text + "\nseed: 1\n")
    with pytest.raises(ParamsError, match="duplicate key 'seed'"):
        load_params(params_file)


def test_plus_groups_are_the_contracts_broad_groups() -> None:
    from typing import get_args

    from pipeline import contract
    from pipeline.config import EthnicGroup

    assert get_args(EthnicGroup) == contract.BROAD_ETHNIC_GROUPS
