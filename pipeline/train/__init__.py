"""Stage ``train``: one LightGBM risk model per prevention target.

features + outcomes -> ``models/<target>/`` (model.txt in LightGBM's text format, calibration.json,
metrics.json, feature_importance.json, model_card.md, plots/*.csv) and
``data/scores/<target>.parquet`` (every eligible person), plus one MLflow run registered as
``phm-<target>`` with the alias ``candidate``.

Modules, in the order the stage uses them: :mod:`~pipeline.train.cohort` (cohort, matrix,
splits), :mod:`~pipeline.train.fit` (LightGBM), :mod:`~pipeline.train.calibration`,
:mod:`~pipeline.train.scoring` (ranks, tiers, selection at the operating point),
:mod:`~pipeline.train.evaluation` (test metrics and CIs on :mod:`pipeline.metrics`),
:mod:`~pipeline.train.plots`, :mod:`~pipeline.train.importance`, :mod:`~pipeline.train.card`
(model card from a Jinja template), :mod:`~pipeline.train.registry` (MLflow);
:mod:`~pipeline.train.stage` strings them together and holds ``run``.

Design choices (documented in the model card too):

- Class imbalance: by default none (``train.class_weighting: none``). Outreach ranks people and the
  audit reads the probabilities, so they must stay calibrated; reweighting the rare class inflates
  every probability. ``balanced`` sets LightGBM's ``scale_pos_weight`` to negatives/positives for
  users who only need a ranking (the calibration step then has more to correct).
- Calibration: fitted on the validation split and kept only when it lowers the validation Brier
  score, judged by cross-fitting within the validation split. Stored as JSON, never pickle.
- Metrics on the test split with Poisson-bootstrap percentile 95% CIs (docs/metrics.md).
"""

from pipeline.train.stage import run

__all__ = ["run"]
