"""Benchmark: is the audit right about the biases planted in the synthetic world? (#13 item 8)

Runs the real stages (``python -m pipeline synthesize | validate | features | train | need |
audit --root <temp project>``) on temporary projects whose ``params.yaml`` is this project's
with the planted biases changed, and reads only the *published* audit tables' flag columns
(``group_metrics.parquet``: ``flagged``; ``need_gaps.parquet``: ``disadvantaged``), so it keeps
working when the flag rules change.

Scenarios (``--scenarios``):

``a``  every bias strength 0 (``under_recording``, ``access``, ``intersectional``): the share of
       shown comparisons flagged (after the audit's multiplicity control) should be <= 5%.
``b``  the default biases: the planted disadvantaged groups (IMD quintile 1, the ethnic groups
       with a planted recording / access penalty: Mixed, Asian, Black, Other) should be flagged
       with the right sign (need at the same score higher than the reference's; reach lower,
       O/E above 1).
``c``  only the intersectional bias (``--intersection-group`` in IMD quintile 1, recording and
       access strength ``--intersection-strength``): found in the ``ethnicity_group_x_imd_quintile``
       rows, and how much leaks into the marginal groups.
``d``  detection power: the default biases scaled by each of ``--strengths``, at each of
       ``--power-people``; the smallest strength at which IMD quintile 1 is flagged.

Run: ``nice .venv/bin/python benchmarks/bench_planted_truth.py [--people 200000]
[--scenarios abcd] [--target emergency_admission_12m]``. Each run takes 1-3 minutes at 200k
people on the 2-core machine (4-6 at 1M); ``--keep`` leaves the temp projects behind.
"""

from __future__ import annotations

import argparse
import copy
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Final

import polars as pl
import yaml

REPO: Final = Path(__file__).resolve().parents[1]
STAGES: Final = ("synthesize", "validate", "features")
TARGET_STAGES: Final = ("train", "need", "audit")
INTERSECTION: Final = "ethnicity_group_x_imd_quintile"
PLANTED: Final = {"imd_quintile": ("1",), "ethnicity_group": ("Mixed", "Asian", "Black", "Other")}
"""Groups with a planted recording / access penalty (docs/synthetic_world.md)."""
DISADVANTAGED_SIGN: Final = {
    "tpr": -1,
    "fnr": 1,
    "selection_rate": -1,
    "oe_ratio": 1,
    "need_reached": -1,
    "case_tpr": -1,
}
"""Direction of a group metric's ratio to the reference (or value against 1 for O/E) that
means the group is under-served; metrics not listed have no sign to check."""


def _params(base: dict[str, Any], *, people: int, bias: dict[str, Any], target: str) -> dict:
    raw = copy.deepcopy(base)
    raw["population"]["n_people"] = people
    raw["population"]["bias"] = {**raw["population"].get("bias", {}), **bias}
    raw["targets"] = {target: raw["targets"][target]}
    dimensions = raw["audit"].get("label_choice_dimensions", [])
    raw["audit"]["label_choice_dimensions"] = [*dimensions, INTERSECTION]
    return raw


def run_project(raw: dict, *, target: str, keep: bool) -> tuple[Path, float]:
    """Run the stages on a temp project holding ``raw`` as params.yaml; its audit folder."""
    root = Path(tempfile.mkdtemp(prefix="phm-planted-"))
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    env = os.environ | {"MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}"}
    started = time.perf_counter()
    commands = [[stage] for stage in STAGES] + [[s, "--target", target] for s in TARGET_STAGES]
    for command in commands:
        done = subprocess.run(
            [sys.executable, "-m", "pipeline", *command, "--root", str(root)],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(command)} failed in {root}:\n{done.stderr[-3000:]}")
    elapsed = time.perf_counter() - started
    folder = root / "reports" / "audit" / target
    kept = root.parent / f"{root.name}-audit"
    shutil.copytree(folder, kept)
    oracle_need_ratio(root, target=target).write_parquet(kept / "oracle_need_ratio.parquet")
    if not keep:
        shutil.rmtree(root, ignore_errors=True)
    return kept, elapsed


def oracle_need_ratio(root: Path, *, target: str, bins: int = 50) -> pl.DataFrame:
    """True need per IMD quintile against quintile 5 at the same *oracle* risk (the exact
    probability of the recorded outcome, what a perfect model would score), standardised over
    ``bins`` quantile bins: the need-versus-outcome gap the world itself holds, whatever the
    model."""
    oracle = pl.read_parquet(root / "data" / "truth" / "oracle.parquet").filter(
        pl.col("target") == target
    )
    quintile = pl.read_parquet(root / "features" / "features.parquet").select(
        "person_id", "imd_quintile"
    )
    cells = (
        oracle.join(quintile, on="person_id")
        .with_columns((pl.col("oracle_risk").rank("ordinal") * bins // (pl.len() + 1)).alias("b"))
        .group_by("imd_quintile", "b")
        .agg(pl.len().alias("n"), pl.col("true_need").mean().alias("need"))
    )
    reference = cells.filter(pl.col("imd_quintile").cast(pl.String) == "5").select(
        "b", pl.col("need").alias("ref")
    )
    return (
        cells.join(reference, on="b")
        .group_by("imd_quintile")
        .agg(
            ((pl.col("n") * pl.col("need")).sum() / (pl.col("n") * pl.col("ref")).sum()).alias(
                "need_ratio_at_same_oracle_risk"
            )
        )
        .sort("imd_quintile")
    )


def flags(folder: Path) -> pl.DataFrame:
    """Shown comparisons of ``group_metrics.parquet`` (O/E rows of reference groups too: they
    are compared with 1) with a ``flagged`` column (whatever the flag rule) and a ``sign``
    (+1 / -1) of the group against its comparator."""
    metrics = pl.read_parquet(folder / "group_metrics.parquet")
    flag = "flagged" if "flagged" in metrics.columns else "flag"
    # calibration is judged against 1 for every group, the reference group included
    compared = ~pl.col("is_reference").fill_null(False) | (pl.col("metric") == "oe_ratio")
    shown = metrics.filter(compared & pl.col(flag).is_not_null())
    if "comparison_suppressed" in shown.columns:
        shown = shown.filter(~pl.col("comparison_suppressed").fill_null(False))
    against_one = pl.col("metric") == "oe_ratio"
    ratio = pl.when(against_one).then(pl.col("value")).otherwise(pl.col("ratio"))
    return shown.select(
        "dimension",
        "group",
        "metric",
        pl.col(flag).fill_null(False).alias("flagged"),
        (ratio - 1.0).sign().alias("sign"),
        ratio.alias("ratio"),
    )


def need_flags(folder: Path) -> pl.DataFrame:
    """``need_gaps.parquet``'s true-need rows: ``disadvantaged`` (need at the same score higher
    than the reference's) and the need ratio."""
    gaps = pl.read_parquet(folder / "need_gaps.parquet")
    measure = "true_need" if (gaps["need_measure"] == "true_need").any() else "recorded_need"
    return gaps.filter(pl.col("need_measure") == measure).select(
        "dimension",
        "group",
        pl.col("disadvantaged").fill_null(False),
        "need_ratio",
        "need_ratio_ci_low",
    )


def false_positive_share(folder: Path) -> tuple[int, int]:
    """Flagged and shown comparisons (group metrics and need gaps together)."""
    shown, need = flags(folder), need_flags(folder).filter(pl.col("need_ratio").is_not_null())
    return int(shown["flagged"].sum() + need["disadvantaged"].sum()), shown.height + need.height


def planted_found(folder: Path, groups: dict[str, Iterable[str]]) -> list[dict[str, Any]]:
    """Per planted group: flagged metrics with the right and the wrong sign, and the need flag."""
    shown, need = flags(folder), need_flags(folder)
    rows = []
    for dimension, members in groups.items():
        for group in members:
            mine = shown.filter((pl.col("dimension") == dimension) & (pl.col("group") == group))
            flagged = mine.filter(pl.col("flagged"))
            right, wrong = [], []
            for row in flagged.iter_rows(named=True):
                expected = DISADVANTAGED_SIGN.get(row["metric"])
                if expected is None:
                    continue
                (right if row["sign"] == expected else wrong).append(
                    f"{row['metric']} {row['ratio']:.2f}"
                )
            gap = need.filter((pl.col("dimension") == dimension) & (pl.col("group") == group))
            rows.append(
                {
                    "dimension": dimension,
                    "group": group,
                    "need_flagged": bool(gap["disadvantaged"].any()) if gap.height else False,
                    "need_ratio": gap["need_ratio"][0] if gap.height else None,
                    "need_ratio_ci_low": gap["need_ratio_ci_low"][0] if gap.height else None,
                    "right_sign": right,
                    "wrong_sign": wrong,
                }
            )
    return rows


def _print_planted(rows: list[dict[str, Any]]) -> None:
    for r in rows:
        ratio = "n/a" if r["need_ratio"] is None else f"{r['need_ratio']:.3f}"
        print(
            f"  {r['dimension']:32s} {r['group']:16s} need flagged={r['need_flagged']!s:5s} "
            f"(ratio {ratio}); flagged right sign: {r['right_sign'] or '-'}; "
            f"wrong sign: {r['wrong_sign'] or '-'}"
        )


def scenario_a(base: dict, args: argparse.Namespace) -> None:
    zero = {
        "under_recording": 0.0,
        "access": 0.0,
        "intersectional": {"recording": 0.0, "access": 0.0},
    }
    folder, seconds = run_project(
        _params(base, people=args.people, bias=zero, target=args.target),
        target=args.target,
        keep=args.keep,
    )
    flagged, shown = false_positive_share(folder)
    share = flagged / shown if shown else float("nan")
    print(
        f"(a) all biases 0, {args.people:,} people ({seconds:.0f} s): {flagged} of {shown} "
        f"comparisons flagged = {share:.1%} (target <= 5%)"
    )
    listed = flags(folder).filter(pl.col("flagged"))
    need = need_flags(folder).filter(pl.col("disadvantaged"))
    print(
        f"  by family: {listed.height} group-metric flags "
        f"({dict(listed.group_by('metric').len().sort('metric').iter_rows())}), "
        f"{need.height} need-at-same-score flags"
    )
    for row in listed.iter_rows(named=True):
        print(
            f"    flagged: {row['dimension']} {row['group']} {row['metric']} ({row['ratio']:.2f})"
        )
    for row in need.iter_rows(named=True):
        print(f"    need flagged: {row['dimension']} {row['group']} ({row['need_ratio']:.3f})")
    ideal = pl.read_parquet(folder / "oracle_need_ratio.parquet")
    print(
        "  true need at the same oracle risk (a perfect model), IMD quintile vs 5: "
        + ", ".join(
            f"{q}: {r:.3f}" for q, r in ideal.iter_rows() if str(q) != "5" and r is not None
        )
    )


def scenario_b(base: dict, args: argparse.Namespace) -> None:
    folder, seconds = run_project(
        _params(base, people=args.people, bias={}, target=args.target),
        target=args.target,
        keep=args.keep,
    )
    print(f"(b) default biases, {args.people:,} people ({seconds:.0f} s): planted groups")
    _print_planted(planted_found(folder, PLANTED))


def scenario_c(base: dict, args: argparse.Namespace) -> None:
    s = args.intersection_strength
    bias = {
        "under_recording": 0.0,
        "access": 0.0,
        "intersectional": {
            "ethnicity_group": args.intersection_group,
            "imd_quintile": 1,
            "recording": s,
            "access": s,
        },
    }
    folder, seconds = run_project(
        _params(base, people=args.people, bias=bias, target=args.target),
        target=args.target,
        keep=args.keep,
    )
    group = f"{args.intersection_group}, IMD 1"
    print(
        f"(c) only an intersectional bias ({group}, recording = access = {s}), "
        f"{args.people:,} people ({seconds:.0f} s):"
    )
    _print_planted(
        planted_found(
            folder,
            {
                INTERSECTION: (group,),
                "ethnicity_group": (args.intersection_group,),
                "imd_quintile": ("1",),
            },
        )
    )
    others = flags(folder).filter(
        (pl.col("dimension") == INTERSECTION) & (pl.col("group") != group) & pl.col("flagged")
    )
    print(
        f"  other intersection groups flagged: {others['group'].unique().sort().to_list() or '-'}"
    )


def scenario_d(base: dict, args: argparse.Namespace) -> None:
    """Detection power, relative to the unplanted world: with every strength 0, IMD quintile 1
    already has more true need at the same score (recording is incomplete for everybody and the
    most deprived have the most conditions), so a planted strength counts as found when the
    group's need ratio is flagged and its lower confidence limit exceeds the strength-0 ratio."""
    print("(d) detection power: default biases scaled by s; is IMD quintile 1's excess found?")
    for people in args.power_people:
        baseline = None
        smallest = None
        for s in [0.0, *sorted(args.strengths)]:
            bias = {"under_recording": s, "access": s}
            folder, seconds = run_project(
                _params(base, people=people, bias=bias, target=args.target),
                target=args.target,
                keep=args.keep,
            )
            found = planted_found(folder, {"imd_quintile": ("1",)})[0]
            if s == 0.0:
                baseline = found["need_ratio"]
                print(f"  {people:>9,} people, s = 0 ({seconds:.0f} s): need ratio {baseline}")
                continue
            low = found["need_ratio_ci_low"]
            hit = bool(found["need_flagged"]) and None not in (low, baseline) and low > baseline
            print(
                f"  {people:>9,} people, s = {s:<5} ({seconds:.0f} s): need flagged "
                f"{found['need_flagged']} (ratio {found['need_ratio']}, CI low {low}); "
                f"metrics {found['right_sign'] or '-'} -> {'found' if hit else 'missed'}"
            )
            if hit:
                smallest = s
                break  # stronger biases are found too; their runs are skipped
        print(f"  smallest strength found beyond the unplanted baseline at {people:,}: {smallest}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--people", type=int, default=200_000)
    parser.add_argument("--scenarios", default="abcd")
    parser.add_argument("--target", default="emergency_admission_12m")
    parser.add_argument("--intersection-group", default="Asian")
    parser.add_argument("--intersection-strength", type=float, default=1.0)
    parser.add_argument("--strengths", type=float, nargs="+", default=[0.05, 0.1, 0.25, 0.5, 1.0])
    parser.add_argument("--power-people", type=int, nargs="+", default=[200_000, 1_000_000])
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    base = yaml.safe_load((REPO / "params.yaml").read_text())
    for key in args.scenarios:
        {"a": scenario_a, "b": scenario_b, "c": scenario_c, "d": scenario_d}[key](base, args)


if __name__ == "__main__":
    main()
