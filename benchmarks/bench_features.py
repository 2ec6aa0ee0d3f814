"""Benchmark the ``features`` stage (Polars, streaming) against a pandas peer on the same data.

Usage (from the project root, niced - the machine is shared)::

    nice -n 10 .venv/bin/python benchmarks/bench_features.py                 # 1M people
    nice -n 10 .venv/bin/python benchmarks/bench_features.py --n-people 10000000 --big
                                                  # 10M: Polars only, peak memory vs 8 GB

The population comes from ``pipeline.synth`` when it is available (``--generator synth``),
otherwise from a small vectorised generator in this file (``--generator local``); it is written
once under ``--data-dir`` and reused. Each engine runs in its own subprocess so that its peak
resident memory (``ru_maxrss``) is its own. The two outputs are compared on a seeded sample of
people: integers and strings exactly, floats to 1e-9, nulls in the same places.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from pipeline import contract, io  # noqa: E402
from pipeline.config import Params, load_params  # noqa: E402
from pipeline.features import write_features  # noqa: E402

TARGET_SECONDS_1M = 30.0
TARGET_SPEEDUP = 10.0
TARGET_PEAK_GB_10M = 8.0

ICBS = (
    ("QHM", 0), ("QOQ", 0), ("QF7", 0), ("QWO", 0), ("QE1", 1), ("QYG", 1), ("QOP", 1),
    ("QJ2", 2), ("QT1", 2), ("QK1", 2), ("QHL", 2), ("QUE", 3), ("QM7", 3), ("QMJ", 4),
    ("QMF", 4), ("QRV", 4), ("QKS", 5), ("QNX", 5), ("QRL", 5), ("QSL", 6), ("QT6", 6),
)  # fmt: skip
EVENT_MIX = {  # share of events per type (local generator only)
    "gp_consultation": 0.40, "prescription": 0.25, "measurement": 0.15, "diagnosis": 0.06,
    "outpatient": 0.07, "ae_attendance": 0.04, "emergency_admission": 0.02,
    "elective_admission": 0.01,
}  # fmt: skip
DIAGNOSIS_CODES = (
    "I10", "E11", "E109", "J44", "J45", "I251", "N183", "I50", "I48", "F32", "F20", "I63",
    "E66", "K21", "M54", "R05", "F17",
)  # fmt: skip
ADMISSION_CODES = ("I21", "J18", "N39", "R07", "S72", "I50", "J44")


def peak_rss_gb() -> float:
    """Peak resident memory of this process (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


# --- populations -------------------------------------------------------------------------------


def generate_local(folder: Path, *, n_people: int, seed: int, index_date, chunk: int) -> None:
    """A contract-shaped population with ~40 events per person over 3 years (vectorised)."""
    rng = np.random.default_rng(seed)
    n_areas = max(n_people // 1_600, 50)
    n_practices = max(n_people // 8_000, 20)
    area_icb = rng.integers(0, len(ICBS), n_areas)
    areas = pl.DataFrame(
        {
            "area_id": [f"E{i:08d}" for i in range(n_areas)],
            "icb_code": [ICBS[i][0] for i in area_icb],
            "icb_name": [f"ICB {ICBS[i][0]}" for i in area_icb],
            "region": [contract.REGIONS[ICBS[i][1]] for i in area_icb],
            "imd_decile": rng.integers(1, 11, n_areas).astype(np.int8),
            "rural_urban": np.where(rng.random(n_areas) < 0.2, "rural", "urban"),
        },
        schema=contract.AREAS_SCHEMA,
    )
    practice_icb = rng.integers(0, len(ICBS), n_practices)
    practices = pl.DataFrame(
        {
            "practice_id": [f"G{i:06d}" for i in range(n_practices)],
            "icb_code": [ICBS[i][0] for i in practice_icb],
        },
        schema=contract.PRACTICES_SCHEMA,
    )
    folder.mkdir(parents=True, exist_ok=True)
    areas.write_parquet(folder / "areas.parquet")
    practices.write_parquet(folder / "practices.parquet")
    (folder / "events").mkdir(exist_ok=True)
    ethnic_codes = np.array(list(contract.ETHNICITY_GROUPS))
    types = np.array(list(EVENT_MIX))
    type_p = np.array(list(EVENT_MIX.values()))
    index_day = (np.datetime64(index_date) - np.datetime64("1970-01-01")).astype(int)
    people_parts = []
    for part, start in enumerate(range(0, n_people, chunk)):
        n = min(chunk, n_people - start)
        ids = pl.int_range(start, start + n, eager=True).cast(pl.String).str.zfill(10)
        person_id = ("P" + ids).alias("person_id")
        age = rng.integers(0, 100, n)
        people_parts.append(
            pl.DataFrame(
                {
                    "person_id": person_id,
                    "sex": rng.choice(["F", "M", "U"], n, p=[0.505, 0.49, 0.005]),
                    "age": age.astype(np.int16),
                    "ethnicity": rng.choice(ethnic_codes, n),
                    "area_id": areas["area_id"].gather(rng.integers(0, n_areas, n)),
                    "practice_id": practices["practice_id"].gather(rng.integers(0, n_practices, n)),
                },
                schema=contract.PEOPLE_SCHEMA,
            )
        )
        per_person = rng.negative_binomial(2, 2 / (2 + 14 + age * 0.5))
        owner = np.repeat(np.arange(n), per_person)
        m = len(owner)
        etype = types[rng.choice(len(types), m, p=type_p)]
        days_back = rng.integers(0, 3 * 365, m)
        code = np.full(m, "", dtype=object)
        value = np.full(m, np.nan)
        is_diag = etype == "diagnosis"
        code[is_diag] = rng.choice(DIAGNOSIS_CODES, is_diag.sum())
        is_adm = np.isin(etype, ["emergency_admission", "elective_admission", "ae_attendance"])
        code[is_adm] = rng.choice(ADMISSION_CODES, is_adm.sum())
        is_rx = etype == "prescription"
        code[is_rx] = rng.choice(list(contract.BNF_SECTIONS), is_rx.sum())
        is_gp = np.isin(etype, ["gp_consultation", "outpatient"])
        code[is_gp] = "Z09"
        is_consult = etype == "gp_consultation"
        code[is_consult] = rng.choice(contract.CONSULTATION_CODES, is_consult.sum())
        is_meas = etype == "measurement"
        meas_codes = np.array(list(contract.MEASUREMENT_CODES))
        picked = rng.choice(meas_codes, is_meas.sum())
        code[is_meas] = picked
        low = np.array([contract.MEASUREMENT_CODES[c][1] for c in picked])
        high = np.array([contract.MEASUREMENT_CODES[c][2] for c in picked])
        value[is_meas] = np.round(low + (high - low) * rng.beta(3, 6, is_meas.sum()), 1)
        events = pl.DataFrame(
            {
                "person_id": person_id.gather(owner),
                "date": (index_day - days_back).astype("datetime64[D]"),
                "event_type": etype,
                "code": code.astype(str),
                "value": pl.Series(value, nan_to_null=True),
            },
            schema=contract.EVENTS_SCHEMA,
        )
        events.write_parquet(folder / "events" / f"part-{part:05d}.parquet")
    pl.concat(people_parts).write_parquet(folder / "people.parquet")
    # outcomes are not read by the features stage; an empty, typed table keeps the contract shape
    pl.DataFrame(schema=contract.OUTCOMES_SCHEMA).write_parquet(folder / "outcomes.parquet")


def generate_synth(folder: Path, *, params: Params, n_people: int) -> None:
    """The synth package's generator (``pipeline.synth.run``) at ``n_people``; keeps only the
    population folder (the benchmark never reads truth)."""
    from pipeline import synth

    population = params.population.model_copy(update={"n_people": n_people})
    root = folder.with_name(folder.name + ".root")
    synth.run(params.model_copy(update={"population": population}), io.Paths.at(root))
    (root / "data" / "population").rename(folder)
    shutil.rmtree(root)


def ensure_population(args: argparse.Namespace, params: Params) -> Path:
    folder = Path(args.data_dir) / f"{args.generator}_{args.n_people}"
    if (folder / "people.parquet").exists() or (folder / "people").is_dir():
        print(f"reusing {folder}")
        return folder
    started = time.perf_counter()
    tmp = folder.with_name(folder.name + ".tmp")
    if args.generator == "synth":
        generate_synth(tmp, params=params, n_people=args.n_people)
    else:
        generate_local(
            tmp,
            n_people=args.n_people,
            seed=params.seed,
            index_date=params.index_date,
            chunk=250_000,
        )
    tmp.rename(folder)
    print(f"generated {folder} in {time.perf_counter() - started:.1f} s")
    return folder


# --- engines (each in its own subprocess) ------------------------------------------------------


def run_polars(folder: Path, out: Path, params: Params) -> dict:
    """The stage's own writer (validation excluded: the peer does not validate either)."""
    started = time.perf_counter()
    chunks = write_features(
        folder, out, features=params.features, index_date=params.index_date, seed=params.seed
    )
    return {"seconds": time.perf_counter() - started, "chunks": chunks}


def run_pandas(folder: Path, out: Path, params: Params) -> dict:
    from pandas_features_peer import compute_features

    started = time.perf_counter()
    frame = compute_features(folder, params)
    frame.to_parquet(out, index=False)
    return {"seconds": time.perf_counter() - started}


def child(args: argparse.Namespace) -> None:
    params = load_params(ROOT / "params.yaml")
    engine = run_polars if args.engine == "polars" else run_pandas
    result = engine(Path(args.folder), Path(args.out), params)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result["cpu_seconds"] = usage.ru_utime + usage.ru_stime  # all threads, whole process
    result["peak_rss_gb"] = peak_rss_gb()
    print("RESULT " + json.dumps(result))


def spawn(engine: str, folder: Path, out: Path) -> dict:
    print(f"{engine}: running (load average {os.getloadavg()[0]:.1f})", flush=True)
    command = [sys.executable, __file__, "--child", engine, str(folder), str(out)]
    done = subprocess.run(command, capture_output=True, text=True, check=False, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"{engine} run failed:\n{done.stderr[-4000:]}")
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


# --- comparison --------------------------------------------------------------------------------


def compare_sample(polars_out: Path, pandas_out: Path, *, n: int, seed: int) -> list[str]:
    """Columns that differ between the two outputs on a seeded sample of people."""
    ids = pl.read_parquet(polars_out, columns=["person_id"])["person_id"]
    rng = np.random.default_rng(seed)
    sample = ids.gather(np.sort(rng.choice(len(ids), min(n, len(ids)), replace=False)))
    ours = pl.scan_parquet(polars_out).filter(pl.col("person_id").is_in(sample.implode())).collect()
    chosen = pd.read_parquet(pandas_out, filters=[("person_id", "in", sample.to_list())])
    peer = pl.from_pandas(chosen).sort("person_id")
    problems = []
    if ours.columns != peer.columns:
        problems.append(f"column lists differ: {set(ours.columns) ^ set(peer.columns)}")
    if ours.height != peer.height:
        problems.append(f"sample rows: polars {ours.height}, pandas {peer.height}")
        return problems
    for name in ours.columns:
        if name not in peer.columns:
            continue
        left, right = ours[name], peer[name]
        if left.is_null().to_list() != right.is_null().to_list():
            problems.append(f"{name}: nulls differ")
        elif left.dtype.is_float():
            a, b = left.drop_nulls().to_numpy(), right.drop_nulls().cast(pl.Float64).to_numpy()
            if not np.allclose(a, b, rtol=1e-9, atol=1e-12):
                problems.append(f"{name}: values differ")
        elif left.cast(pl.String).to_list() != right.cast(pl.String).to_list():
            problems.append(f"{name}: values differ")
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-people", type=int, default=1_000_000)
    parser.add_argument("--generator", choices=["synth", "local"], default="synth")
    parser.add_argument("--data-dir", default=str(Path("/tmp") / "phm_bench_features"))
    parser.add_argument("--sample", type=int, default=5_000)
    parser.add_argument(
        "--big", action="store_true", help="Polars only (the 10M memory check; no pandas peer)"
    )
    parser.add_argument("--prepare", action="store_true", help="only generate the population")
    parser.add_argument("--child", nargs=3, metavar=("ENGINE", "FOLDER", "OUT"))
    args = parser.parse_args()
    if args.child:
        args.engine, args.folder, args.out = args.child
        child(args)
        return
    if args.generator == "synth":
        try:
            from pipeline import synth  # noqa: F401
        except ImportError:
            print("pipeline.synth not available: using the local generator")
            args.generator = "local"
    if args.n_people >= 5_000_000 and not args.big:
        raise SystemExit("populations of 5M+ run Polars only: add --big")
    params = load_params(ROOT / "params.yaml")
    folder = ensure_population(args, params)
    if args.prepare:
        return
    n_events = io.scan_table(folder, "events").select(pl.len()).collect().item()
    print(f"population: {args.n_people:,} people, {n_events:,} events ({args.generator})")
    print(
        f"machine: {os.cpu_count()} cores (shared), POLARS_MAX_THREADS="
        f"{os.environ.get('POLARS_MAX_THREADS', 'default')}"
    )
    out_dir = folder.parent / f"out_{folder.name}"
    out_dir.mkdir(exist_ok=True)
    ours = spawn("polars", folder, out_dir / "polars.parquet")
    print(
        f"polars : {ours['seconds']:8.1f} s wall, {ours['cpu_seconds']:7.1f} s CPU (process), "
        f"peak RSS {ours['peak_rss_gb']:.2f} GB, {ours['chunks']} chunk(s)"
    )
    if args.big:
        ok = ours["peak_rss_gb"] <= TARGET_PEAK_GB_10M
        print(f"target : peak <= {TARGET_PEAK_GB_10M} GB -> {'met' if ok else 'MISSED'}")
        return
    peer = spawn("pandas", folder, out_dir / "pandas.parquet")
    print(
        f"pandas : {peer['seconds']:8.1f} s wall, {peer['cpu_seconds']:7.1f} s CPU (process), "
        f"peak RSS {peer['peak_rss_gb']:.2f} GB"
    )
    speedup = peer["seconds"] / ours["seconds"]
    print(f"speed-up: {speedup:.1f}x")
    scale = args.n_people / 1_000_000
    print(
        f"targets: <= {TARGET_SECONDS_1M * scale:.0f} s -> "
        f"{'met' if ours['seconds'] <= TARGET_SECONDS_1M * scale else 'MISSED'}; "
        f">= {TARGET_SPEEDUP:.0f}x -> {'met' if speedup >= TARGET_SPEEDUP else 'MISSED'}"
    )
    problems = compare_sample(
        out_dir / "polars.parquet", out_dir / "pandas.parquet", n=args.sample, seed=params.seed
    )
    if problems:
        print("EQUALITY CHECK FAILED on the sample:\n  " + "\n  ".join(problems))
        raise SystemExit(1)
    print(f"equality: all columns equal on a sample of {args.sample:,} people")


if __name__ == "__main__":
    main()
