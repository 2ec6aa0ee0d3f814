"""The pandas peer of ``pipeline.features``: the same features, written the way a team would
without Polars (read whole tables, boolean masks, ``groupby``, ``merge``).

Used only by ``benchmarks/bench_features.py`` to time against and to check equality on a sample.
It follows ``pipeline/features.py`` definition by definition (windows, ties, nulls, dtypes).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline import contract
from pipeline.config import Params
from pipeline.features import (
    EXTERNAL_SPLIT,
    RECENCY_EVENTS,
    SMOKING_CODES,
    SMOKING_FEATURE,
    count_column,
    output_schema,
    seed_basis,
    window_starts,
)

_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_PRIME = np.uint64(0x100000001B3)


def _read(folder: Path, table: str, columns: list[str] | None = None) -> pd.DataFrame:
    single = folder / f"{table}.parquet"
    source = single if single.exists() else folder / table
    return pd.read_parquet(source, columns=columns)


def split_unit(person_ids: pd.Series, seed: int) -> np.ndarray:
    """The same seeded FNV-1a + splitmix64 as the stage, in numpy (vectorised over people)."""
    raw = person_ids.astype(str).to_numpy().astype("S")
    width = raw.dtype.itemsize
    lengths = np.char.str_len(raw)
    data = np.frombuffer(raw.tobytes(), dtype=np.uint8).reshape(len(raw), width)
    h = np.full(len(raw), seed_basis(seed), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for position in range(width):
            live = position < lengths
            h = np.where(live, (h ^ data[:, position].astype(np.uint64)) * _PRIME, h)
        h = (h ^ (h >> np.uint64(30))) * _MIX1
        h = (h ^ (h >> np.uint64(27))) * _MIX2
        h = h ^ (h >> np.uint64(31))
    return (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def _condition_of(codes: pd.Series) -> pd.Series:
    result = pd.Series(pd.NA, index=codes.index, dtype="object")
    by_length: dict[int, dict[str, str]] = {}
    for condition, prefixes in contract.CONDITION_CODES.items():
        for prefix in prefixes:
            by_length.setdefault(len(prefix), {})[prefix] = condition
    for length, mapping in sorted(by_length.items()):  # longest prefix applied last, so wins
        mapped = codes.str.slice(0, length).map(mapping)
        result = mapped.where(mapped.notna(), result)
    return result


# A benchmark peer, kept as one straight pass mirroring pipeline/features.py definition by
# definition so the two can be read side by side: long on purpose.
def compute_features(folder: Path, params: Params) -> pd.DataFrame:  # noqa: PLR0915
    """All features of the stage, one row per person, sorted by person_id.

    Parameters
    ----------
    folder
        A population folder following the data contract.
    params
        Pipeline params (seed, index_date, features).
    """
    fp = params.features
    index = pd.Timestamp(params.index_date)
    index_date: dt.date = params.index_date
    areas = _read(folder, "areas")
    people = _read(folder, "people")
    events = _read(folder, "events", ["person_id", "date", "event_type", "code", "value"])
    events["date"] = pd.to_datetime(events["date"])
    events = events[events["date"] <= index]

    out = people.merge(
        areas[["area_id", "icb_code", "region", "imd_decile", "rural_urban"]],
        on="area_id",
        how="left",
    )
    out["age_band"] = pd.cut(
        out["age"],
        bins=[low - 0.5 for low, _ in contract.AGE_BANDS] + [contract.AGE_RANGE[1] + 0.5],
        labels=[
            f"{low}+" if high >= contract.AGE_RANGE[1] else f"{low}-{high}"
            for low, high in contract.AGE_BANDS
        ],
    ).astype(str)
    out["imd_quintile"] = (out["imd_decile"] + 1) // 2
    out["ethnicity_group"] = out["ethnicity"].map(contract.ETHNICITY_GROUPS).fillna("Not recorded")
    out["sex_female"] = (out["sex"] == "F").astype("int8")
    out["rural"] = (out["rural_urban"] == "rural").astype("int8")
    out["ethnicity_code"] = out["ethnicity_group"].map(
        {g: i for i, g in enumerate(contract.BROAD_ETHNIC_GROUPS)}
    )
    out["region_code"] = out["region"].map({r: i for i, r in enumerate(contract.REGIONS)})
    out = out.set_index("person_id")

    starts = window_starts(index_date, sorted({*fp.windows_months, fp.polypharmacy_months}))
    for event_type in contract.EVENT_TYPES:
        of_type = events[events["event_type"] == event_type]
        for months in fp.windows_months:
            recent = of_type[of_type["date"] > pd.Timestamp(starts[months])]
            counts = recent.groupby("person_id").size()
            out[count_column(event_type, months)] = counts.reindex(out.index, fill_value=0)

    for event_type in RECENCY_EVENTS:
        last = events[events["event_type"] == event_type].groupby("person_id")["date"].max()
        last = last.reindex(out.index)
        out[f"days_since_last_{event_type}"] = (index - last).dt.days
        out[f"no_prior_{event_type}"] = last.isna().astype("int8")

    diagnoses = events[events["event_type"] == "diagnosis"].copy()
    diagnoses["condition"] = _condition_of(diagnoses["code"])
    flags = pd.crosstab(diagnoses["person_id"], diagnoses["condition"]) > 0
    for condition in contract.CONDITIONS:
        column = flags[condition] if condition in flags else pd.Series(dtype=bool)
        out[f"has_{condition}"] = column.reindex(out.index, fill_value=False).astype("int8")
    out[contract.RECORDED_MULTIMORBIDITY] = out[[f"has_{c}" for c in contract.CONDITIONS]].sum(
        axis=1
    )
    smokers = diagnoses.loc[diagnoses["code"].str.startswith(SMOKING_CODES), "person_id"].unique()
    out[SMOKING_FEATURE] = out.index.isin(smokers).astype("int8")

    readings = events[
        (events["event_type"] == "measurement")
        & events["code"].isin(fp.measurements)
        & events["value"].notna()
    ]
    readings = readings.sort_values(["person_id", "code", "date", "value"])
    latest = readings.groupby(["person_id", "code"]).tail(1).set_index(["person_id", "code"])
    for code in fp.measurements:
        one = latest.xs(code, level="code") if code in latest.index.get_level_values(1) else None
        value = one["value"] if one is not None else pd.Series(dtype=float)
        date = one["date"] if one is not None else pd.Series(dtype="datetime64[us]")
        out[f"latest_{code}"] = value.reindex(out.index)
        out[f"days_since_{code}"] = (index - date.reindex(out.index)).dt.days
        out[f"{code}_missing"] = out[f"latest_{code}"].isna().astype("int8")

    pp_start = pd.Timestamp(starts[fp.polypharmacy_months])
    recent = events[events["date"] > pp_start]
    prescriptions = recent[recent["event_type"] == "prescription"]
    sections = prescriptions["code"].str.slice(0, 4).groupby(prescriptions["person_id"]).nunique()
    out[f"n_bnf_sections_{fp.polypharmacy_months}m"] = sections.reindex(out.index, fill_value=0)
    admissions = recent[recent["event_type"] == "emergency_admission"].groupby("person_id").size()
    out["_admissions"] = admissions.reindex(out.index, fill_value=0)

    practice = out.groupby("practice_id").agg(
        practice_list_size=("age", "size"),
        **{f"practice_prevalence_{c}": (f"has_{c}", "mean") for c in contract.CONDITIONS},
        **{f"practice_emergency_admission_rate_{fp.polypharmacy_months}m": ("_admissions", "mean")},
    )
    out = out.reset_index().merge(practice, on="practice_id", how="left")

    unit = split_unit(out["person_id"], params.seed)
    train, validation, _ = fp.split_fractions
    out["split"] = np.where(
        unit < train,
        contract.SPLITS[0],
        np.where(unit < train + validation, contract.SPLITS[1], contract.SPLITS[2]),
    )
    if fp.holdout_icb is not None:
        out.loc[out["icb_code"] == fp.holdout_icb, "split"] = EXTERNAL_SPLIT

    schema = output_schema(fp)
    out = out[list(schema)].sort_values("person_id").reset_index(drop=True)
    for name, dtype in schema.items():  # the stage's dtypes, nullable where the stage has nulls
        if dtype.is_integer():
            out[name] = out[name].astype(str(dtype))
        elif dtype.is_float():
            out[name] = out[name].astype("float64")
    return out
