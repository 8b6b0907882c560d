"""Metrics the MI papers report: attack accuracy by an evaluation model, KNN distance, FID."""

from jaxmi.metrics.attack import (
  batched_apply,
  classifier_outputs,
  evaluate_inversion,
  frechet_distance,
  real_images_of,
  sample_std,
  topk_correct,
)

__all__ = [
  "batched_apply",
  "classifier_outputs",
  "evaluate_inversion",
  "frechet_distance",
  "real_images_of",
  "sample_std",
  "topk_correct",
]
