"""Metrics the MI papers report: attack accuracy by an evaluation model, KNN distance, FID, PRDC."""

from jaxmi.metrics.attack import (
  batch_std,
  batched_apply,
  classifier_outputs,
  evaluate_inversion,
  frechet_distance,
  pil_resize,
  real_images_of,
  over_seeds,
  sample_std,
  topk_correct,
)
from jaxmi.metrics.prdc import prdc

__all__ = [
  "batch_std",
  "batched_apply",
  "classifier_outputs",
  "evaluate_inversion",
  "frechet_distance",
  "pil_resize",
  "prdc",
  "real_images_of",
  "over_seeds",
  "sample_std",
  "topk_correct",
]
