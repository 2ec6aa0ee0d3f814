"""How the synthetic record is coded: codes drawn from the shipped codelists, as a real one is.

Primary-care diagnoses are SNOMED CT codes of the condition's lists; medicines dm+d codes where a
dm+d list is shipped (else BNF); hospital diagnoses ICD-10 as HES carries them (4 characters, no
dot, a 3-character category X-padded: ``I10X``); measurements their SNOMED CT observable codes.
Within a pool, codes are used with Zipf-like frequencies (rank ``r`` has weight ``1 / r**ZIPF``),
the most generic code (shortest description) first, as a few codes carry most of real coding.
Noise codes (valid SNOMED CT codes in no codelist, and legacy Read codes that are no valid
SNOMED CT) come from :data:`SYMPTOM_CODES` and :data:`LEGACY_READ_CODES`
(docs/synthetic_world.md#coding).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Final

import numpy as np
import polars as pl

from pipeline.codelists import DEFAULT_FOLDER, Registry, code_valid_expr, read_registry

ZIPF: Final = 1.1
"""Exponent of the rank-frequency law of codes within a pool."""
TERM_COLUMNS: Final = ("term", "nm", "dmd_name", "description")
"""Description columns of OpenCodelists CSVs (ranked by length: generic concepts first)."""
PRESCRIBABLE_TYPES: Final = ("vmp",)
"""dm+d concept types a GP prescription carries (when a list says; VMPs, as prescribed)."""

MEASUREMENT_SNOMED: Final = {
    "sbp": ("271649006",),
    "dbp": ("271650006",),
    "bmi": ("60621009",),
    "hba1c": ("999791000000106",),
    "cholesterol": ("1005671000000105", "1017161000000104"),
}
"""SNOMED CT observable codes of each measurement (in the shipped lists; local units)."""
SMOKING_SNOMED_CONCEPT: Final = "smoking"
MOST_USED: Final = {
    # condition: (SNOMED CT code, HES ICD-10 code) coded most often, when its lists hold it
    "obesity": ("162864005", "E66X"),  # BMI 30+ - obesity
    "hypertension": ("59621000", "I10X"),  # essential hypertension
    "diabetes": ("44054006", "E119", "E11X"),  # type 2 diabetes mellitus
    "copd": ("13645005", "J449", "J44X"),  # chronic obstructive lung disease
    "asthma": ("195967001", "J459"),  # asthma
    "depression": ("35489007", "F329"),  # depressive disorder
    "severe_mental_illness": ("58214004", "F209"),  # schizophrenia
    "chd": ("53741008", "I251", "I25X"),  # coronary arteriosclerosis; atherosclerotic heart disease
    "stroke": ("230690007", "I639"),  # cerebrovascular accident; cerebral infarction
    "ckd": ("433144002", "N183"),  # chronic kidney disease stage 3
    "atrial_fibrillation": ("49436004", "I489"),  # atrial fibrillation
    "heart_failure": ("84114007", "I509"),  # heart failure
}
"""The generic code a clinician or coder reaches for first: rank 1 of its pool."""

# Hospital (HES) primary diagnoses of contacts not caused by a modelled condition: ICD-10 (WHO)
# 4-character codes, X-padded where the category has no subdivision.
GENERAL_HOSPITAL_CODES: Final = {
    "ae_attendance": (
        ("R074", 0.15),  # chest pain, unspecified
        ("S019", 0.1),  # open wound of head, part unspecified
        ("S525", 0.08),  # fracture of lower end of radius
        ("S934", 0.08),  # sprain of ankle
        ("R104", 0.14),  # other and unspecified abdominal pain
        ("J069", 0.1),  # acute upper respiratory infection, unspecified
        ("R55X", 0.07),  # syncope and collapse
        ("T149", 0.1),  # injury, unspecified
        ("N390", 0.06),  # urinary tract infection, site not specified
        ("J189", 0.05),  # pneumonia, unspecified
        ("R51X", 0.07),  # headache
    ),
    "emergency_admission": (
        ("R074", 0.14),
        ("J189", 0.14),
        ("N390", 0.1),
        ("R104", 0.12),
        ("S720", 0.06),  # fracture of neck of femur
        ("R55X", 0.08),
        ("A419", 0.06),  # sepsis, unspecified
        ("K922", 0.05),  # gastrointestinal haemorrhage, unspecified
        ("J22X", 0.1),  # unspecified acute lower respiratory infection
        ("R060", 0.08),  # dyspnoea
        ("T814", 0.07),  # infection following a procedure
    ),
    "elective_admission": (
        ("H259", 0.2),  # senile cataract, unspecified
        ("M179", 0.15),  # gonarthrosis, unspecified
        ("M169", 0.1),  # coxarthrosis, unspecified
        ("K802", 0.12),  # calculus of gallbladder without cholecystitis
        ("K409", 0.1),  # unilateral inguinal hernia
        ("N40X", 0.08),  # hyperplasia of prostate
        ("Z511", 0.1),  # chemotherapy session for neoplasm
        ("C449", 0.08),  # malignant neoplasm of skin, unspecified
        ("K635", 0.07),  # polyp of colon
    ),
    "outpatient": (
        ("Z098", 0.3),  # follow-up examination after other treatment
        ("H259", 0.1),
        ("M179", 0.1),
        ("K219", 0.1),  # gastro-oesophageal reflux disease without oesophagitis
        ("N40X", 0.08),
        ("L409", 0.07),  # psoriasis, unspecified
        ("R104", 0.1),
        ("M545", 0.15),  # low back pain
    ),
}
CONSULTATION_CODES: Final = (
    ("face_to_face", 0.6),
    ("telephone", 0.3),
    ("online", 0.08),
    ("home_visit", 0.02),
)
SYMPTOM_CODES: Final = (
    "54150009",  # upper respiratory infection
    "49727002",  # cough
    "279039007",  # low back pain
    "162397003",  # pain in throat
    "25064002",  # headache
    "267036007",  # dyspnoea
    "82272006",  # common cold
    "271807003",  # eruption of skin
    "68962001",  # muscle pain
    "22253000",  # pain
)
"""Valid SNOMED CT findings in no shipped codelist, as most real GP coding (features ignore
them)."""
LEGACY_READ_CODES: Final = ("G20..", "H33..", "C10E.", "XE0Uc", "246..")
"""Read v2 / CTV3 codes left in a SNOMED CT field by a migration: invalid, so validate excludes
and counts them."""


@dataclass(frozen=True)
class Pool:
    """Codes (indexes into :attr:`Coding.codes`) and their probabilities."""

    index: np.ndarray
    p: np.ndarray


@dataclass(frozen=True)
class Coding:
    """Every (code, code system) the generator emits, sorted, and the pools it draws from."""

    codes: tuple[str, ...]
    systems: tuple[str, ...]
    pools: dict[str, Pool]

    def draw(self, pool: str, size: int, rng: np.random.Generator) -> np.ndarray:
        """``size`` codes from a pool (indexes into :attr:`codes`)."""
        chosen = self.pools[pool]
        return chosen.index[rng.choice(len(chosen.index), size=size, p=chosen.p)].astype(np.int32)


def zipf_weights(n: int, *, exponent: float = ZIPF) -> np.ndarray:
    """Probabilities ``1 / r**exponent`` of ranks ``r = 1..n``, normalised.

    >>> zipf_weights(3, exponent=1.0).round(3)
    array([0.545, 0.273, 0.182])
    """
    weights = 1.0 / np.arange(1, n + 1) ** exponent
    return weights / weights.sum()


def hes_icd10(code: str) -> str:
    """An ICD-10 code as HES carries it: no dot, 4 characters, a 3-character category X-padded.

    >>> hes_icd10("I10"), hes_icd10("I25.1"), hes_icd10("M84.50")
    ('I10X', 'I251', 'M845')
    """
    plain = code.replace(".", "").strip().upper()
    return (plain + "X")[:4] if len(plain) == 3 else plain[:4]


def _ranked_list(folder: Path, file: str, column: str, system: str) -> pl.DataFrame:
    """One list's valid codes (``code``), generic first: by description length, then code.

    dm+d lists with a concept type keep the prescribable VMPs; ICD-10 lists drop a 3-character
    category whose subdivisions are listed too (HES carries the subdivision).
    """
    frame = pl.read_csv(folder / file, infer_schema=False)
    term = next((name for name in TERM_COLUMNS if name in frame.columns), column)
    kind = next((name for name in ("type", "dmd_type") if name in frame.columns), None)
    if system == "dmd" and kind is not None:
        frame = frame.filter(pl.col(kind).str.to_lowercase().is_in(PRESCRIBABLE_TYPES))
    ranked = (
        frame.select(
            pl.col(column).str.strip_chars().alias("code"),
            pl.col(term).fill_null("").str.len_chars().alias("length"),
        )
        .filter(code_valid_expr(pl.col("code"), pl.lit(system)).fill_null(False))
        .unique("code")
        .sort("length", "code")
    )
    if system == "icd10":
        codes = [hes_icd10(code) for code in ranked["code"]]
        parents = {code[:3] for code in codes if not code.endswith("X")}
        kept = [code for code in codes if not (code.endswith("X") and code[:3] in parents)]
        ranked = pl.DataFrame({"code": list(dict.fromkeys(kept))}, schema={"code": pl.String})
    return ranked.select("code")


def _concept_codes(
    registry: Registry, folder: Path, concept: str, systems: tuple[str, ...]
) -> tuple[str, list[str]]:
    """The first of ``systems`` the concept has lists of, and their codes (ranked; the
    concept's :data:`MOST_USED` code of that system first when a list holds it)."""
    entries = registry.concepts[concept].lists
    for system in systems:
        chosen = [entry for entry in entries if entry.system == system]
        if chosen:
            frames = [_ranked_list(folder, e.file, e.column, system) for e in chosen]
            codes = list(dict.fromkeys(pl.concat(frames)["code"].to_list()))
            first = [c for c in MOST_USED.get(concept, ()) if c in codes]
            return system, list(dict.fromkeys(first + codes))
    raise ValueError(f"codelists: concept {concept!r} has no list of {' or '.join(systems)}")


def _drop_shared(specs: dict[str, tuple[str, list[str], np.ndarray]], names: list[str]) -> None:
    """Keep in each of the pools ``names`` only the codes no other of them holds (``hypertensive
    CKD`` is in both refsets: it would record a second condition the world did not give), and
    renormalise their Zipf weights."""
    seen: dict[str, int] = {}
    for name in names:
        for code in specs[name][1]:
            seen[code] = seen.get(code, 0) + 1
    for name in names:
        system, codes, _ = specs[name]
        own = [code for code in codes if seen[code] == 1]
        specs[name] = (system, own, zipf_weights(len(own)))


def _pool_specs(
    registry: Registry, folder: Path, *, conditions: tuple[str, ...], medicines: tuple[str, ...]
) -> dict[str, tuple[str, list[str], np.ndarray]]:
    """Pool name -> (code system, codes, probabilities)."""

    def zipf(system: str, codes: list[str]) -> tuple[str, list[str], np.ndarray]:
        return system, codes, zipf_weights(len(codes))

    def fixed(
        system: str, pairs: tuple[tuple[str, float], ...]
    ) -> tuple[str, list[str], np.ndarray]:
        weights = np.asarray([w for _, w in pairs])
        return system, [c for c, _ in pairs], weights / weights.sum()

    specs = {}
    for condition in conditions:
        specs[f"diagnosis:{condition}"] = zipf(
            *_concept_codes(registry, folder, condition, ("snomed_ct",))
        )
        specs[f"episode:{condition}"] = zipf(
            *_concept_codes(registry, folder, condition, ("icd10",))
        )
    _drop_shared(specs, [f"diagnosis:{condition}" for condition in conditions])
    for medicine in medicines:
        specs[f"medicine:{medicine}"] = zipf(
            *_concept_codes(registry, folder, medicine, ("dmd", "bnf"))
        )
    specs["smoking"] = zipf(
        *_concept_codes(registry, folder, SMOKING_SNOMED_CONCEPT, ("snomed_ct", "icd10"))
    )
    for name, codes in MEASUREMENT_SNOMED.items():
        specs[f"measurement:{name}"] = zipf("snomed_ct", list(codes))
    for kind, pairs in GENERAL_HOSPITAL_CODES.items():
        specs[f"general:{kind}"] = fixed("icd10", pairs)
    specs["consultation"] = fixed("local", CONSULTATION_CODES)
    specs["symptom"] = zipf("snomed_ct", list(SYMPTOM_CODES))
    specs["legacy_read"] = zipf("snomed_ct", list(LEGACY_READ_CODES))
    return specs


def build_coding(
    *, conditions: tuple[str, ...], medicines: tuple[str, ...], folder: Path | None = None
) -> Coding:
    """The coding of a world from the codelist registry in ``folder`` (default: shipped).

    Parameters
    ----------
    conditions, medicines
        Registry concepts the generator codes (each condition needs a SNOMED CT and an ICD-10
        list; each medicine group a dm+d or BNF list).
    """
    folder = DEFAULT_FOLDER if folder is None else folder
    specs = _pool_specs(read_registry(folder), folder, conditions=conditions, medicines=medicines)
    pairs = sorted({(code, system) for system, codes, _ in specs.values() for code in codes})
    position = {pair: i for i, pair in enumerate(pairs)}
    pools = {
        name: Pool(np.asarray([position[(c, system)] for c in codes], dtype=np.int32), p)
        for name, (system, codes, p) in specs.items()
    }
    return Coding(codes=tuple(c for c, _ in pairs), systems=tuple(s for _, s in pairs), pools=pools)


@cache
def default_coding() -> Coding:
    """The coding of the default world (shipped codelists), built once per process."""
    from pipeline.synth.conditions import CONDITION_ORDER
    from pipeline.synth.events import medicine_groups

    return build_coding(conditions=CONDITION_ORDER, medicines=medicine_groups())
