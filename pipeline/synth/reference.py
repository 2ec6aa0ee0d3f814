"""Embedded calibration tables for the synthetic population (small summaries, not the sources).

Sources and attribution
-----------------------
Each figure's source and licence is listed in docs/synthetic_world.md#sources.

* ``LSOAS_BY_REGION_DECILE``, ``QOF_PREVALENCE_BY_DECILE``, ``QOF_PREVALENCE_BY_REGION`` and
  ``QOF_PREVALENCE_ENGLAND`` are derived from the House of Commons Library, "Local health
  conditions prevalence estimates based on QOF" (QOF 2019/20 practice registers apportioned to
  2011 LSOAs; files ``lsoa_geog_lookup.csv``, ``output_imd_prevalence.csv`` and
  ``output_region_prevalence.csv``). Contains Parliamentary information licensed under the Open
  Parliament Licence v3.0. ONS regions are grouped into NHS England regions (North East +
  Yorkshire and The Humber -> North East and Yorkshire; East + West Midlands -> Midlands);
  regional prevalence is register total / list total over the grouped ONS regions; Wales is
  dropped. Denominators follow QOF: DM 17+, CKD/DEP/OB 18+, the others all ages.
* ICB codes and names: NHS England (42 ICBs since 1 July 2022). ICB populations are rounded
  approximations (millions of registered patients) used only as sampling weights.
* Ethnicity and age mixes: Census 2021 (ONS), rounded; England, London and the published 65+
  shares (England, London, South West) as published, other regions approximate (ONS TS021 /
  TS007A, rounded to 0.1 point).
* Smoking 23.8% in the most deprived decile vs 6.8% in the least (ONS APS 2021); A&E attendances
  ~1.9x most vs least deprived decile (NHS Digital HES 2019/20); type 2 diabetes ~2x in South
  Asian and Black groups (no primary publication named; docs/synthetic_world.md#sources).
* ``EMERGENCY_ADMISSION_RATIO_BY_AGE``: Pereira Gray D, Henley W, Chenore T, Sidaway-Lee K,
  Evans P. What is the relationship between age and deprivation in influencing emergency
  hospital admissions? BMJ Open 2017;7:e014045 (doi:10.1136/bmjopen-2016-014045), table 1: 12-
  month emergency admissions per 1,000 patients by age quintile and English IMD quintile (765,861
  patients of NEW Devon CCG); ratios most / least deprived quintile computed from the published
  rates (docs/calibration_sources.md).

The QOF-derived literals were computed once with Polars from the three CSV files (decile rows
as given; regions = sum of register / sum of list over the grouped ONS regions; LSOAs counted
per NHS region and IMD_OVERALL decile) and rounded to 5 decimals.
"""

from __future__ import annotations

from typing import Final

from pipeline.contract import REGIONS

# --- QOF 2019/20 (House of Commons Library; Open Parliament Licence v3.0) -----------------------

QOF_REGISTERS: Final = (
    "HYP",
    "DM",
    "COPD",
    "AST",
    "CHD",
    "CKD",
    "HF",
    "AF",
    "DEP",
    "MH",
    "OB",
    "STIA",
)

# Register -> minimum age of its QOF denominator.
QOF_MIN_AGE: Final = {
    "HYP": 0,
    "DM": 17,
    "COPD": 0,
    "AST": 0,
    "CHD": 0,
    "CKD": 18,
    "HF": 0,
    "AF": 0,
    "DEP": 18,
    "MH": 0,
    "OB": 18,
    "STIA": 0,
}

# Recorded prevalence by IMD 2019 decile (1 = most deprived ... 10 = least deprived), England.
QOF_PREVALENCE_BY_DECILE: Final = {
    "HYP": (
        0.14070,
        0.13688,
        0.13534,
        0.13893,
        0.14247,
        0.14301,
        0.14422,
        0.14392,
        0.14382,
        0.13922,
    ),
    "DM": (
        0.08531,
        0.07932,
        0.07558,
        0.07300,
        0.07109,
        0.06861,
        0.06678,
        0.06506,
        0.06328,
        0.05842,
    ),
    "COPD": (
        0.02622,
        0.02154,
        0.01980,
        0.01945,
        0.01913,
        0.01843,
        0.01834,
        0.01786,
        0.01700,
        0.01505,
    ),
    "AST": (
        0.06871,
        0.06406,
        0.06254,
        0.06333,
        0.06423,
        0.06470,
        0.06521,
        0.06510,
        0.06517,
        0.06452,
    ),
    "CHD": (
        0.03337,
        0.03012,
        0.02910,
        0.03036,
        0.03112,
        0.03126,
        0.03155,
        0.03134,
        0.03109,
        0.02971,
    ),
    "CKD": (
        0.04221,
        0.03881,
        0.03798,
        0.03904,
        0.04045,
        0.04069,
        0.04171,
        0.04170,
        0.04177,
        0.04056,
    ),
    "HF": (
        0.00945,
        0.00882,
        0.00856,
        0.00878,
        0.00902,
        0.00901,
        0.00907,
        0.00911,
        0.00904,
        0.00865,
    ),
    "AF": (
        0.01779,
        0.01713,
        0.01733,
        0.01918,
        0.02082,
        0.02180,
        0.02242,
        0.02279,
        0.02323,
        0.02333,
    ),
    "DEP": (
        0.13754,
        0.12212,
        0.11516,
        0.11295,
        0.11329,
        0.11135,
        0.11300,
        0.11231,
        0.11039,
        0.10691,
    ),
    "MH": (
        0.01182,
        0.01115,
        0.01049,
        0.00981,
        0.00919,
        0.00872,
        0.00838,
        0.00806,
        0.00770,
        0.00720,
    ),
    "OB": (
        0.13198,
        0.11943,
        0.11160,
        0.10689,
        0.10437,
        0.10041,
        0.09967,
        0.09646,
        0.09337,
        0.08448,
    ),
    "STIA": (
        0.01798,
        0.01675,
        0.01647,
        0.01747,
        0.01820,
        0.01850,
        0.01876,
        0.01872,
        0.01871,
        0.01830,
    ),
}

# Recorded prevalence by NHS England region, in the order of contract.REGIONS.
QOF_PREVALENCE_BY_REGION: Final = {
    "HYP": (0.15063, 0.14836, 0.14867, 0.14428, 0.10922, 0.14170, 0.15036),
    "DM": (0.07480, 0.07362, 0.07759, 0.06819, 0.06698, 0.06399, 0.06816),
    "COPD": (0.02566, 0.02470, 0.01992, 0.01850, 0.01131, 0.01710, 0.02069),
    "AST": (0.06979, 0.07125, 0.06628, 0.06667, 0.04912, 0.06381, 0.07234),
    "CHD": (0.03723, 0.03606, 0.03266, 0.03061, 0.01929, 0.02853, 0.03579),
    "CKD": (0.04288, 0.04505, 0.04793, 0.03832, 0.02396, 0.03878, 0.05016),
    "HF": (0.01074, 0.01035, 0.00979, 0.00861, 0.00544, 0.00820, 0.01056),
    "AF": (0.02196, 0.02197, 0.02126, 0.02144, 0.01120, 0.02266, 0.02645),
    "DEP": (0.12275, 0.14042, 0.12215, 0.10769, 0.08143, 0.12000, 0.11911),
    "MH": (0.00915, 0.01048, 0.00872, 0.00852, 0.01090, 0.00841, 0.00866),
    "OB": (0.12770, 0.11772, 0.11572, 0.09876, 0.08369, 0.09068, 0.10148),
    "STIA": (0.02097, 0.01994, 0.01895, 0.01778, 0.01065, 0.01770, 0.02236),
}

QOF_PREVALENCE_ENGLAND: Final = {
    "HYP": 0.14077,
    "DM": 0.07072,
    "COPD": 0.01936,
    "AST": 0.06475,
    "CHD": 0.03090,
    "CKD": 0.04046,
    "HF": 0.00895,
    "AF": 0.02049,
    "DEP": 0.11546,
    "MH": 0.00930,
    "OB": 0.10496,
    "STIA": 0.01796,
}

# 2011 LSOAs per IMD 2019 decile (1..10) in each NHS England region (from lsoa_geog_lookup.csv).
LSOAS_BY_REGION_DECILE: Final = {
    "North East and Yorkshire": (969, 608, 529, 423, 419, 406, 460, 417, 395, 348),
    "North West": (967, 561, 458, 390, 354, 326, 376, 402, 358, 305),
    "Midlands": (780, 722, 615, 593, 617, 590, 591, 624, 593, 536),
    "East of England": (134, 229, 281, 361, 439, 446, 401, 399, 453, 471),
    "London": (107, 688, 811, 661, 559, 532, 438, 413, 407, 219),
    "South East": (165, 281, 346, 459, 506, 558, 604, 664, 722, 1077),
    "South West": (162, 195, 245, 397, 391, 426, 414, 366, 356, 329),
}

# Contract condition -> QOF register used to calibrate its recorded prevalence.
CONDITION_REGISTER: Final = {
    "hypertension": "HYP",
    "diabetes": "DM",
    "copd": "COPD",
    "asthma": "AST",
    "chd": "CHD",
    "ckd": "CKD",
    "heart_failure": "HF",
    "atrial_fibrillation": "AF",
    "depression": "DEP",
    "severe_mental_illness": "MH",
    "stroke": "STIA",
    "obesity": "OB",
}

# --- ICBs (NHS England, 2022): code, name, approximate registered population (millions) ---------

ICBS: Final = {
    "North East and Yorkshire": (
        ("QHM", "North East and North Cumbria", 3.1),
        ("QOQ", "Humber and North Yorkshire", 1.8),
        ("QF7", "South Yorkshire", 1.5),
        ("QWO", "West Yorkshire", 2.5),
    ),
    "North West": (
        ("QE1", "Lancashire and South Cumbria", 1.8),
        ("QYG", "Cheshire and Merseyside", 2.7),
        ("QOP", "Greater Manchester", 3.0),
    ),
    "Midlands": (
        ("QJ2", "Derby and Derbyshire", 1.1),
        ("QT1", "Nottingham and Nottinghamshire", 1.2),
        ("QK1", "Leicester, Leicestershire and Rutland", 1.2),
        ("QJM", "Lincolnshire", 0.8),
        ("QPM", "Northamptonshire", 0.8),
        ("QHL", "Birmingham and Solihull", 1.4),
        ("QUA", "Black Country", 1.3),
        ("QWU", "Coventry and Warwickshire", 1.0),
        ("QGH", "Herefordshire and Worcestershire", 0.8),
        ("QOC", "Shropshire, Telford and Wrekin", 0.5),
        ("QNC", "Staffordshire and Stoke-on-Trent", 1.2),
    ),
    "East of England": (
        ("QUE", "Cambridgeshire and Peterborough", 1.0),
        ("QM7", "Hertfordshire and West Essex", 1.6),
        ("QH8", "Mid and South Essex", 1.3),
        ("QMM", "Norfolk and Waveney", 1.1),
        ("QJG", "Suffolk and North East Essex", 1.0),
        ("QHG", "Bedfordshire, Luton and Milton Keynes", 1.1),
    ),
    "London": (
        ("QMJ", "North Central London", 1.6),
        ("QMF", "North East London", 2.1),
        ("QRV", "North West London", 2.2),
        ("QKK", "South East London", 1.9),
        ("QWE", "South West London", 1.6),
    ),
    "South East": (
        ("QKS", "Kent and Medway", 1.9),
        ("QNX", "Sussex", 1.8),
        ("QXU", "Surrey Heartlands", 1.1),
        ("QRL", "Hampshire and Isle of Wight", 1.9),
        ("QNQ", "Frimley", 0.8),
        ("QU9", "Buckinghamshire, Oxfordshire and Berkshire West", 1.9),
    ),
    "South West": (
        ("QSL", "Somerset", 0.6),
        ("QR1", "Gloucestershire", 0.7),
        ("QOX", "Bath and North East Somerset, Swindon and Wiltshire", 1.0),
        ("QUY", "Bristol, North Somerset and South Gloucestershire", 1.0),
        ("QVV", "Dorset", 0.8),
        ("QJK", "Devon", 1.2),
        ("QT6", "Cornwall and the Isles of Scilly", 0.6),
    ),
}

# Share of areas that are rural, by region (ONS rural-urban classification, rounded).
RURAL_SHARE: Final = {
    "North East and Yorkshire": 0.17,
    "North West": 0.11,
    "Midlands": 0.20,
    "East of England": 0.27,
    "London": 0.0,
    "South East": 0.18,
    "South West": 0.30,
}

# --- Census 2021 (ONS), rounded -----------------------------------------------------------------

# Broad ethnic group shares (%) by region: White, Mixed, Asian, Black, Other.
ETHNIC_GROUPS: Final = ("White", "Mixed", "Asian", "Black", "Other")
ETHNICITY_BY_REGION: Final = {
    "North East and Yorkshire": (88.0, 2.0, 7.5, 1.5, 1.0),
    "North West": (85.6, 2.3, 8.9, 2.0, 1.2),
    "Midlands": (81.3, 2.8, 10.9, 3.4, 1.6),
    "East of England": (86.5, 2.8, 5.9, 3.4, 1.4),
    "London": (53.8, 5.7, 20.7, 13.5, 6.3),
    "South East": (86.3, 2.8, 7.0, 2.4, 1.5),
    "South West": (93.1, 2.1, 2.7, 1.2, 0.9),
}
ENGLAND_ETHNICITY: Final = (81.0, 3.0, 9.6, 4.2, 2.2)

# Detailed NHS ethnic category codes within each broad group (Census 2021 England shares).
ETHNIC_CODES: Final = {
    "White": (("A", 0.918), ("B", 0.012), ("C", 0.070)),
    "Mixed": (("D", 0.29), ("E", 0.14), ("F", 0.27), ("G", 0.30)),
    "Asian": (("H", 0.32), ("J", 0.28), ("K", 0.115), ("L", 0.212), ("R", 0.073)),
    "Black": (("M", 0.24), ("N", 0.595), ("P", 0.165)),
    "Other": (("S", 1.0),),
}
SOUTH_ASIAN_CODES: Final = ("H", "J", "K", "L")

# England age structure (Census 2021, % in 5-year bands 0-4 ... 85-89, 90+).
AGE_BAND_STARTS: Final = (0, 5, 10, 15, 20, 25, 30, 35, 40, 45, 50, 55, 60, 65, 70, 75, 80, 85, 90)
AGE_BAND_SHARES: Final = (
    5.4,
    5.9,
    6.0,
    5.7,
    6.0,
    6.6,
    6.9,
    6.6,
    6.3,
    6.4,
    6.9,
    6.8,
    5.9,
    5.0,
    5.0,
    3.6,
    2.5,
    1.5,
    0.8,
)
# Share aged 65+ by region (%), Census 2021 (England 18.4, London 11.9, South West 22.3).
AGE_65_PLUS_BY_REGION: Final = {
    "North East and Yorkshire": 19.0,
    "North West": 18.6,
    "Midlands": 18.6,
    "East of England": 19.6,
    "London": 11.9,
    "South East": 19.4,
    "South West": 22.3,
}

# Smoking prevalence (adults) by IMD decile: 23.8% most deprived, 6.8% least (ONS 2021).
SMOKING_D1: Final = 0.238
SMOKING_D10: Final = 0.068

assert tuple(ETHNICITY_BY_REGION) == REGIONS  # one row per NHS region, contract order
assert tuple(LSOAS_BY_REGION_DECILE) == REGIONS
assert tuple(ICBS) == REGIONS


# --- Emergency admissions by age and deprivation (Pereira Gray et al., BMJ Open 2017) ------------

EMERGENCY_ADMISSION_RATES_PER_1000: Final = {
    # age band (first, last year): (most deprived IMD quintile, least deprived), table 1
    (0, 19): (66.47, 40.26),
    (20, 37): (67.98, 34.20),
    (38, 52): (84.61, 40.02),
    (53, 66): (107.83, 56.21),
    (67, 110): (282.15, 202.41),
}
EMERGENCY_ADMISSION_RATIO_BY_AGE: Final = {
    band: round(most / least, 3)
    for band, (most, least) in EMERGENCY_ADMISSION_RATES_PER_1000.items()
}
"""12-month emergency admissions, most / least deprived IMD quintile, by age band: 1.65 (0-19),
1.99 (20-37), 2.11 (38-52), 1.92 (53-66), 1.39 (67+)."""
