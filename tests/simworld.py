"""A small synthetic world with planted recording and access bias, for tests and benchmarks.

(Test-only code: lives in tests/, benchmarks put tests/ on their path.)

Not the project's population synthesiser (``pipeline.synth``): a few vectorised lines whose
ground truth is known exactly, so tests can check that the audit finds the planted effect and
nothing else.

World: true need ``L`` (log-normal, higher in deprived areas when ``need_gradient`` > 0, never
by ethnicity); recorded need ``R = L x (1 - u_imd) x (1 - u_eth)`` with under-recording
``u_imd = 0.25 x under_recording`` in IMD quintile 1 (half that in quintile 2) and
``u_eth = 0.2 x under_recording`` for Black and Asian people; the event probability is
``sigmoid(-3.6 + 0.7 L)`` (the oracle risk), recorded only with probability
``exp(-0.3 x access x d)`` (``d`` = 1 in quintile 1 / Black / Asian, 0.5 in quintile 2). The
"model" is a logistic regression of the recorded outcome on ``R`` fitted on the train split, so
in an unbiased world (``under_recording = access = 0``) the score is exactly the oracle risk
for every group. At the same score, quintile 1 therefore has ``1 / (1 - 0.25 x
under_recording)`` times the true need of quintile 5: the planted effect.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

import numpy as np
import polars as pl

from pipeline import contract, io
from pipeline.config import Params
from tests.manifests import write_manifest

ICBS: Final = tuple(f"Q{index:02d}" for index in range(42))
ETHNICITY_SHARES: Final = {
    "White": 0.78,
    "Asian": 0.09,
    "Black": 0.04,
    "Mixed": 0.03,
    "Other": 0.02,
    "Not recorded": 0.04,
}
PLANTED_IMD_UNDER_RECORDING: Final = 0.25
PLANTED_ETHNICITY_UNDER_RECORDING: Final = 0.2
DISADVANTAGED: Final = {"imd_quintile": ("1", "2"), "ethnicity_group": ("Asian", "Black")}


def simulate_world(
    n_people: int,
    *,
    under_recording: float = 1.0,
    access: float = 1.0,
    need_gradient: float = 1.0,
    seed: int = 0,
    targets: tuple[str, ...] = ("sim_target",),
) -> dict[str, pl.DataFrame]:
    """Scores, features (sensitive columns + recorded need), truth and oracle of a small world.

    Returns
    -------
    dict of polars.DataFrame
        ``scores`` (contract.SCORES_SCHEMA), ``features`` (person_id, split, the sensitive
        columns, n_recorded_conditions, recorded_measure), ``truth`` (person_id,
        n_true_conditions, true_need) and ``oracle`` (person_id, target, oracle_risk, true_need;
        the same risk and need for each of ``targets``).
    """
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(seed)
    n = n_people
    imd_decile = rng.integers(1, 11, n)
    quintile = (imd_decile + 1) // 2
    ethnicity = rng.choice(list(ETHNICITY_SHARES), n, p=list(ETHNICITY_SHARES.values()))
    age = rng.integers(18, 96, n)
    icb = rng.integers(0, len(ICBS), n)
    sex = rng.choice(["F", "M"], n)
    split = rng.choice(["train", "validation", "test"], n, p=[0.6, 0.2, 0.2])

    need = np.exp(rng.normal(0.3 + 0.015 * (age - 50) + 0.12 * need_gradient * (3 - quintile), 0.6))
    u_imd = np.select(
        [quintile == 1, quintile == 2],
        [PLANTED_IMD_UNDER_RECORDING, PLANTED_IMD_UNDER_RECORDING / 2],
        0.0,
    )
    minority = np.isin(ethnicity, ["Black", "Asian"])
    u_eth = np.where(minority, PLANTED_ETHNICITY_UNDER_RECORDING, 0.0)
    recorded = need * (1 - under_recording * u_imd) * (1 - under_recording * u_eth)
    disadvantage = np.select([quintile == 1, quintile == 2], [1.0, 0.5], 0.0) + minority
    oracle = 1.0 / (1.0 + np.exp(-(-3.6 + 0.7 * need)))
    reach = np.exp(-0.3 * access * disadvantage)
    outcome = (rng.random(n) < oracle * reach).astype(np.int8)

    train = split == "train"
    model = LogisticRegression(C=1e6, max_iter=500)
    model.fit(recorded[train, None], outcome[train])
    score = model.predict_proba(recorded[:, None])[:, 1]

    person_id = np.char.add("P", np.char.zfill(np.arange(n).astype(str), 8))
    order = np.argsort(-score, kind="stable")
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(1, n + 1)
    scores = pl.DataFrame(
        {
            "person_id": person_id,
            "split": split,
            "outcome": outcome,
            "risk_score": score,
            "risk_rank": rank,
        }
    ).with_columns(
        (10 - (pl.col("risk_rank") - 1) * 10 // n).cast(pl.Int8).alias("risk_decile"),
        pl.when(pl.col("risk_rank") <= 0.05 * n)
        .then(pl.lit("very high"))
        .when(pl.col("risk_rank") <= 0.2 * n)
        .then(pl.lit("high"))
        .when(pl.col("risk_rank") <= 0.5 * n)
        .then(pl.lit("moderate"))
        .otherwise(pl.lit("low"))
        .alias("risk_tier"),
    )
    icb_codes = np.asarray(ICBS)[icb]
    features = pl.DataFrame(
        {
            "person_id": person_id,
            "split": split,
            "sex": sex,
            "age": age.astype(np.int16),
            "imd_decile": imd_decile.astype(np.int8),
            "region": np.asarray(contract.REGIONS)[icb % len(contract.REGIONS)],
            "icb_code": icb_codes,
            "practice_id": np.char.add(icb_codes, (rng.integers(0, 20, n)).astype(str)),
            "ethnicity_group": ethnicity,
            "rural_urban": rng.choice(["urban", "rural"], n, p=[0.8, 0.2]),
            contract.RECORDED_MULTIMORBIDITY: np.clip(np.round(recorded), 0, 12).astype(np.int8),
            "recorded_measure": recorded,
        }
    ).with_columns(
        contract.age_band_expr(pl.col("age")).alias("age_band"),
        contract.imd_quintile_expr(pl.col("imd_decile")).alias("imd_quintile"),
    )
    truth = pl.DataFrame(
        {
            "person_id": person_id,
            "n_true_conditions": np.clip(np.round(need), 0, 12).astype(np.int8),
            "true_need": need,
        }
    )
    oracle_frame = pl.concat(
        pl.DataFrame(
            {"person_id": person_id, "target": target, "oracle_risk": oracle, "true_need": need}
        )
        for target in targets
    )
    return {"scores": scores, "features": features, "truth": truth, "oracle": oracle_frame}


def write_world(root: Path, world: dict[str, pl.DataFrame], *, targets: tuple[str, ...]) -> None:
    """Write ``world`` where the audit reads it: each target's scores (the same world's),
    features with a manifest, and truth."""
    for target in targets:
        io.write_parquet(
            world["scores"], root / "data/scores" / f"{target}.parquet", sort_by="person_id"
        )
    io.write_parquet(world["features"], root / "features/features.parquet", sort_by="person_id")
    inputs = ["age", "imd_decile", "recorded_measure", contract.RECORDED_MULTIMORBIDITY]
    write_manifest(world["features"], root / "features/manifest.json", inputs=inputs)
    io.write_parquet(world["truth"], root / "data/truth/people.parquet", sort_by="person_id")
    io.write_parquet(
        world["oracle"], root / "data/truth/oracle.parquet", sort_by=["target", "person_id"]
    )


def audit_world(
    world: dict[str, pl.DataFrame], params: Params, *, with_truth: bool = False
) -> tuple[pl.DataFrame, dict[str, pl.DataFrame], dict[str, pl.DataFrame]]:
    """The audit's pure steps on a simulated world, everybody audited at the top 5%:
    ``(cohort, tables, published tables)`` for the target ``sim_target``."""
    from pipeline.audit import audit_tables, published_tables
    from pipeline.audit.cohort import build_cohort

    truth = {"truth": world["truth"].lazy(), "oracle": world["oracle"].lazy()} if with_truth else {}
    cohort = build_cohort(
        world["scores"].lazy(),
        world["features"].lazy(),
        dimensions=params.audit.dimensions,
        capacity_mode="share",
        capacity=0.05,
        split="all",
        **truth,
    )
    tables = audit_tables(
        cohort,
        audit=params.audit,
        operating_point=params.operating_point,
        outreach=params.outreach,
        seed=params.seed,
        target="sim_target",
    )
    return cohort, tables, published_tables(tables, audit=params.audit, rule=params.disclosure)


def generate_synthetic_chunk(params: Params, *, geography_seed: int) -> dict[str, Any]:
    """One chunk of the real synthetic world for ``params`` (its calibration fitted first):
    ``pipeline.synth.generate_chunk``'s frames, everyone in chunk 0."""
    from pipeline.synth import generate_chunk
    from pipeline.synth.calibration import fit_calibration
    from pipeline.synth.geography import build_geography

    pop = params.population
    calibration = fit_calibration(
        seed=params.seed,
        area_size=pop.area_size,
        practice_size=pop.practice_size,
        history_years=pop.history_years,
        not_recorded_share=pop.bias.ethnicity_not_recorded,
        targets=dict(params.targets),
    )
    geo = build_geography(
        pop.n_people,
        area_size=pop.area_size,
        practice_size=pop.practice_size,
        rng=np.random.default_rng(geography_seed),
    )
    return generate_chunk(
        geo,
        calibration,
        0,
        pop.n_people,
        population=pop,
        targets=params.targets,
        chunk=0,
        seed=params.seed,
        index_date=params.index_date,
    )
