"""Which features explain a score: each person's largest LightGBM contributions (TreeSHAP).

The one place that turns a model and people's model inputs into the ``EXPLAINED_FEATURES``
largest ``pred_contrib`` values per person (``contract.EXPLANATIONS_SCHEMA``, log-odds), never
naming ethnicity. Outreach calls it for the people it selects only, inside each ICB's task
(``pipeline.outreach.stage.partition_lists``): TreeSHAP of one row does not depend on the other
rows of its batch, so explaining the selected people gives them exactly the contributions that
explaining the whole eligible cohort would (``docs/outreach.md``).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import pandas as pd
import polars as pl

from pipeline import contract
from pipeline.errors import ContractError, StageError

__all__ = [
    "BATCH_ROWS",
    "TreePaths",
    "contributions",
    "explain_cohort",
    "explainable",
    "load_booster",
    "load_explainer",
    "model_matrix",
    "top_contributions",
    "tree_paths",
]

BATCH_ROWS: Final = 100_000
"""People explained together: bounds memory (rows x features x 8 bytes, three times: 200 MB
at 80 features); larger batches share more tree paths (``docs/outreach.md``)."""
NEVER_EXPLAINED: Final = ("ethnic",)
"""Name fragments of features that may be model inputs but must never appear on a list."""


def explainable(feature_names: Sequence[str]) -> np.ndarray:
    """Which features may be named as a reason (never ethnicity), as a boolean mask.

    Examples
    --------
    >>> explainable(["age", "ethnicity_code"]).tolist()
    [True, False]
    """
    return np.array(
        [not any(word in name.lower() for word in NEVER_EXPLAINED) for name in feature_names],
        dtype=bool,
    )


def top_contributions(
    person_ids: pl.Series,
    contributions: np.ndarray,
    feature_names: Sequence[str],
    *,
    top: int = contract.EXPLAINED_FEATURES,
) -> pl.DataFrame:
    """The largest feature contributions per person (long: one row per position).

    Parameters
    ----------
    person_ids
        The people, in the row order of ``contributions``.
    contributions
        ``Booster.predict(X, pred_contrib=True)`` (columns after ``feature_names``, i.e. the
        bias, are ignored).
    feature_names
        The model's features, in column order.
    top
        Contributions kept per person (at most the number of explainable features).

    Returns
    -------
    pl.DataFrame
        ``contract.EXPLANATIONS_SCHEMA``, in the row order of ``person_ids``.
    """
    names = np.array(feature_names, dtype=object)
    contrib = np.array(contributions, dtype=np.float64).reshape(len(person_ids), -1)
    contrib = contrib[:, : len(names)]
    allowed = explainable(feature_names)
    contrib[:, ~allowed] = -np.inf
    top = min(top, int(allowed.sum()))
    # Stable sort of the negated contributions: equal contributions keep the feature order.
    order = np.argsort(-contrib, axis=1, kind="stable")[:, :top]
    return pl.DataFrame(
        {
            "person_id": np.repeat(person_ids.to_numpy(), top),
            "position": np.tile(np.arange(1, top + 1, dtype=np.int8), len(person_ids)),
            "feature": names[order.reshape(-1)],
            "contribution": np.take_along_axis(contrib, order, axis=1).reshape(-1),
        },
        schema=contract.EXPLANATIONS_SCHEMA,
    )


@dataclass(frozen=True)
class TreePaths:
    """What decides a booster's paths, parsed once per model.

    TreeSHAP of a row in one tree reads the row only through the side it takes at each of the
    tree's splits, so rows that fall in the same interval between the tree's thresholds on each
    of its split features (and are alike in being missing or zero) get the same contributions
    from that tree, bit for bit. :func:`contributions` computes each tree once per such group.
    """

    thresholds: tuple[np.ndarray, ...]
    """Per feature: every threshold of the model on it, sorted (empty when categorical)."""
    categorical: frozenset[int]
    """Features with a categorical split anywhere: grouped by exact value."""
    trees: tuple[tuple[tuple[int, np.ndarray | None], ...], ...]
    """Per tree: (split feature, its model-wide code -> this tree's code; None: categorical)."""


def _value_code(interval: np.ndarray, values: np.ndarray, n_thresholds: int) -> np.ndarray:
    """A value's interval among ``n_thresholds`` thresholds (``value <= threshold`` goes left),
    with a bit for zero (LightGBM's zero-as-missing tests ``|value| <= 1e-35``) and a last code
    for missing: finer than any split's missing-value rule, never coarser."""
    zero = np.abs(values) <= 1e-35
    return np.where(np.isnan(values), 2 * n_thresholds + 2, 2 * interval + zero)


def tree_paths(booster: Any) -> TreePaths:
    """Parse a booster's splits (``Booster.dump_model``) into :class:`TreePaths`."""
    if booster.num_model_per_iteration() != 1:
        raise ContractError("explanations need a binary model (one tree per iteration)")
    per_tree: list[dict[int, set[float]]] = []
    categorical: set[int] = set()
    for tree in booster.dump_model()["tree_info"]:
        splits: dict[int, set[float]] = {}
        stack = [tree["tree_structure"]]
        while stack:
            node = stack.pop()
            if "split_feature" not in node:
                continue
            feature = int(node["split_feature"])
            if node["decision_type"] == "==":
                categorical.add(feature)
                splits.setdefault(feature, set())
            else:
                splits.setdefault(feature, set()).add(float(node["threshold"]))
            stack += [node["left_child"], node["right_child"]]
        per_tree.append(splits)
    model_wide: list[set[float]] = [set() for _ in booster.feature_name()]
    for splits in per_tree:
        for feature, values in splits.items():
            model_wide[feature] |= values
    thresholds = tuple(np.array(sorted(values), dtype=np.float64) for values in model_wide)

    def tree_codes(feature: int, values: set[float]) -> np.ndarray | None:
        if feature in categorical:
            return None
        everywhere = thresholds[feature]
        # a value in the model's interval k lies in the tree's interval below everywhere[k]
        upper = np.append(everywhere, np.inf).repeat(2)
        ranks = np.searchsorted(np.array(sorted(values)), upper, side="left")
        codes = _value_code(ranks, np.tile([1.0, 0.0], len(everywhere) + 1), len(values))
        return np.append(codes, 2 * len(values) + 2)

    return TreePaths(
        thresholds,
        frozenset(categorical),
        tuple(
            tuple(
                (feature, tree_codes(feature, values)) for feature, values in sorted(splits.items())
            )
            for splits in per_tree
        ),
    )


def _model_codes(matrix: np.ndarray, paths: TreePaths) -> list[np.ndarray | None]:
    """Each split feature's code per row among the model's thresholds (exact value when
    categorical); None for features no tree splits on."""
    used = {feature for splits in paths.trees for feature, _ in splits}
    codes: list[np.ndarray | None] = []
    for feature, thresholds in enumerate(paths.thresholds):
        values = matrix[:, feature]
        if feature not in used:
            codes.append(None)
        elif feature in paths.categorical:
            codes.append(np.unique(values, return_inverse=True)[1])
        else:
            interval = np.searchsorted(thresholds, values, side="left")
            codes.append(_value_code(interval, values, len(thresholds)))
    return codes


_KEY_LIMIT: Final = 2**62
"""Largest mixed-radix path key before the key is renumbered densely (no int64 overflow)."""


def _path_groups(
    codes: list[np.ndarray | None], splits: tuple[tuple[int, np.ndarray | None], ...]
) -> tuple[np.ndarray, np.ndarray]:
    """Rows that take the same sides at every split of one tree: (the first row of each group,
    the group of each row)."""
    key = np.zeros(len(next(code for code in codes if code is not None)), dtype=np.int64)
    key_space = 1
    for feature, tree_code in splits:
        code = codes[feature]
        assert code is not None
        if tree_code is not None:
            code = tree_code[code]
        radix = int(code.max(initial=0)) + 1
        if key_space * radix >= _KEY_LIMIT:
            key = pd.factorize(key)[0]
            key_space = int(key.max(initial=0)) + 1
        key = key * radix + code
        key_space *= radix
    # hashing, not sorting: 7x faster than np.unique (groups numbered in order of first row)
    group, keys = pd.factorize(key)
    one_row = np.empty(len(keys), dtype=np.int64)
    one_row[group[::-1]] = np.arange(len(key) - 1, -1, -1)  # the last write wins: first rows
    return one_row, group


def contributions(matrix: np.ndarray, booster: Any, paths: TreePaths) -> np.ndarray:
    """TreeSHAP contributions of every row, as ``booster.predict(matrix, pred_contrib=True)``
    without the bias column, computed once per group of rows that share a tree's path.

    Each tree's contributions come from LightGBM (``pred_contrib`` of that tree alone, for one
    row of each group: among 50,000 people about 1 row in 17 per tree, ``docs/outreach.md``) and
    are added tree by tree, so a row's values depend on that row alone (whatever the batch) and
    equal LightGBM's all-trees sum to about 1e-15 (the same terms added in another order).

    Parameters
    ----------
    matrix
        Model inputs as float64, columns in the booster's feature order.
    booster
        A binary ``lightgbm.Booster``.
    paths
        :func:`tree_paths` of ``booster``.

    Returns
    -------
    np.ndarray
        ``(rows, features)`` float64.
    """
    by_feature = np.zeros((matrix.shape[1], matrix.shape[0]), dtype=np.float64)
    if matrix.shape[0] == 0:
        return by_feature.T
    codes = _model_codes(matrix, paths)
    for tree, splits in enumerate(paths.trees):
        if not splits:
            continue  # a one-leaf tree contributes only to the bias
        one_row, group = _path_groups(codes, splits)
        tree_contrib = booster.predict(
            matrix[one_row], pred_contrib=True, start_iteration=tree, num_iteration=1
        )
        by_tree_feature = np.ascontiguousarray(tree_contrib.T)  # one row per feature: fast gathers
        for feature, _ in splits:
            by_feature[feature] += by_tree_feature[feature][group]
    return by_feature.T


def model_matrix(frame: pl.DataFrame, names: Sequence[str]) -> np.ndarray:
    """Model inputs as the float64 matrix LightGBM compares with its thresholds (missing: NaN).

    Raises
    ------
    ContractError
        A model input that is not numeric or boolean.
    """
    text = [
        name
        for name in names
        if not (frame.schema[name].is_numeric() or frame.schema[name] == pl.Boolean)
    ]
    if text:
        raise ContractError(
            f"features/features.parquet: model input column {text[0]!r} is "
            f"{frame.schema[text[0]]}, not numeric or boolean"
        )
    return frame.select(pl.col(names).cast(pl.Float64)).to_numpy()


def explain_cohort(
    inputs: pl.DataFrame,
    booster: Any,
    *,
    paths: TreePaths | None = None,
    batch_rows: int = BATCH_ROWS,
) -> pl.DataFrame:
    """Top contributions of every person in ``inputs``, computed in batches.

    Parameters
    ----------
    inputs
        ``person_id`` and the booster's features (in any column order), one row per person.
    booster
        A binary ``lightgbm.Booster``.
    paths
        :func:`tree_paths` of ``booster`` (parsed here when not given).
    batch_rows
        People per batch (:func:`contributions`).

    Returns
    -------
    pl.DataFrame
        ``contract.EXPLANATIONS_SCHEMA`` rows, in the row order of ``inputs``.
    """
    names = booster.feature_name()
    missing = [name for name in names if name not in inputs.columns]
    if missing:
        raise ContractError(
            f"features/features.parquet: missing model input column(s) {', '.join(missing)}"
        )
    paths = tree_paths(booster) if paths is None else paths
    parts = [pl.DataFrame(schema=contract.EXPLANATIONS_SCHEMA)]
    for batch in inputs.iter_slices(batch_rows):
        contrib = contributions(model_matrix(batch, names), booster, paths)
        parts.append(top_contributions(batch["person_id"], contrib, names))
    return pl.concat(parts)


def load_explainer(path: Path) -> tuple[Any, TreePaths]:
    """A trained model and its :func:`tree_paths`, loaded once per process and model file.

    Every ICB's task explains its people with the same model: parsing the paths of a few hundred
    trees takes about 0.1 s, so a worker keeps the last few models, keyed by the file's path,
    size and modification time (a retrained model is a new file: DVC removes a stage's outputs
    before it runs). Raises as :func:`load_booster`.
    """
    _require_model(path)
    stat = path.stat()
    return _explainer(str(path.resolve()), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=4)
def _explainer(path: str, modified_ns: int, size: int) -> tuple[Any, TreePaths]:
    """:func:`load_explainer` of one version of a model file (the key's last two parts)."""
    booster = load_booster(Path(path))
    return booster, tree_paths(booster)


def load_booster(path: Path) -> Any:
    """A trained model (``models/<target>/model.txt``) as a ``lightgbm.Booster``.

    Raises
    ------
    StageError
        No model at ``path``.
    """
    _require_model(path)
    import lightgbm as lgb

    return lgb.Booster(model_file=str(path))


def _require_model(path: Path) -> None:
    if not path.exists():
        raise StageError(f"model not found at {path}; run the train stage first")
