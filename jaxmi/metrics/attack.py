"""How well an inversion attack worked, judged by an independent evaluation model.

* acc@1 / acc@5: the evaluation model's top-1 / top-5 on the reconstructions, (a) for each
  identity's selected restart (GMI's "Acc") and (b) over all restarts, as mean +/- std across
  restart index (the KEDMI/LOMMA protocol). The std is the sample std (ddof=1, as the reference's
  ``statistics.stdev``) and ``None`` when there is a single restart. acc@5 is real top-5 (the
  reference code's "Acc5" is success in any seed, reported separately as ``any_restart_acc``).
* KNN distance: squared L2 in the evaluation model's penultimate features from each
  reconstruction to the nearest private *training* image of the same identity, averaged.
* feature-FID: Frechet distance between Gaussian fits of reconstruction features and private
  image features. Inception weights cannot be downloaded here, so the default feature space is
  the evaluation model's; pass ``feature_fn`` to use real Inception features.
"""

from __future__ import annotations

import warnings
from typing import Callable

import jax.numpy as jnp
import numpy as np
import scipy.linalg

from jaxmi.attacks.engine import InversionResult
from jaxmi.nets.resize import resize_to
from jaxmi.train.inference import batched_apply, classifier_outputs  # re-exported by jaxmi.metrics


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
  """FID formula between the Gaussian fits of feature sets ``a`` [N, D] and ``b`` [M, D]."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  mu1, mu2 = a.mean(0), b.mean(0)
  s1, s2 = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
  with warnings.catch_warnings():  # a singular product (fewer samples than dimensions) is handled below
    warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
    # No ``disp=False``: deprecated, and in SciPy 1.17 it returns a bare array for 1x1 inputs.
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():  # the usual FID fix for near-singular products
      offset = np.eye(len(s1)) * 1e-6
      covmean = scipy.linalg.sqrtm((s1 + offset) @ (s2 + offset))
  covmean = np.real(covmean)
  return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def sample_std(values) -> float | None:
  """Standard deviation over restarts or seeds with ddof=1 (the reference's); ``None`` for fewer
  than two values, where it is undefined (never NaN, which would be reported as a number)."""
  values = np.asarray(values, np.float64)
  return float(values.std(ddof=1)) if values.size > 1 else None


def topk_correct(logits: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
  k = min(k, logits.shape[-1])
  topk = np.argsort(-logits, axis=-1)[..., :k]
  return np.any(topk == labels[..., None], axis=-1)


def evaluate_inversion(
  result: InversionResult,
  evaluator,
  private_images: np.ndarray,
  private_labels: np.ndarray,
  *,
  feature_fn: Callable | None = None,
) -> dict:
  """Metrics of ``result`` judged by ``evaluator`` against the private training images.

  ``private_images``/``private_labels``: the target's private training split (labels are target
  class indices, the same index space as ``result.labels``). ``acc1``/``acc5``/``knn_dist`` are
  for each identity's ``result.best_restart``; ``*_all_restarts_std`` is the ddof=1 std across
  restart index of the per-restart accuracy over identities (``None`` with one restart).
  """
  num_ids, restarts = result.images.shape[:2]
  flat = result.images.reshape(num_ids * restarts, *result.images.shape[2:])
  logits, feats = classifier_outputs(evaluator, flat)
  labels = np.repeat(result.labels, restarts)
  top1 = topk_correct(logits, labels, 1).reshape(num_ids, restarts)
  top5 = topk_correct(logits, labels, 5).reshape(num_ids, restarts)
  best = result.best_restart
  rows = np.arange(num_ids)

  attacked = np.isin(private_labels, result.labels)
  priv_logits, priv_feats = classifier_outputs(evaluator, private_images[attacked])
  priv_labels = private_labels[attacked]
  knn = np.zeros(num_ids * restarts)
  for i, label in enumerate(result.labels):
    same = priv_feats[priv_labels == label]
    rec = feats[i * restarts : (i + 1) * restarts]
    d2 = np.sum(rec**2, 1)[:, None] + np.sum(same**2, 1)[None, :] - 2 * rec @ same.T
    knn[i * restarts : (i + 1) * restarts] = np.maximum(d2.min(axis=1), 0.0)
  knn = knn.reshape(num_ids, restarts)

  if feature_fn is None:
    fid_rec, fid_priv, fid_space = feats, priv_feats, "evaluation-model features"
  else:
    fid_rec, fid_priv, fid_space = feature_fn(flat), feature_fn(private_images[attacked]), "custom features"
  per_restart_acc1 = top1.mean(axis=0)
  predictions = np.argmax(logits, -1).reshape(num_ids, restarts)
  per_restart_acc5 = top5.mean(axis=0)
  return {
    "identities": int(num_ids),
    "restarts": int(restarts),
    "chance_acc1": 1.0 / evaluator.num_classes,
    "acc1": float(top1[rows, best].mean()),
    "acc5": float(top5[rows, best].mean()),
    "acc1_all_restarts_mean": float(per_restart_acc1.mean()),
    "acc1_all_restarts_std": sample_std(per_restart_acc1),
    "acc5_all_restarts_mean": float(per_restart_acc5.mean()),
    "acc5_all_restarts_std": sample_std(per_restart_acc5),
    "any_restart_acc": float(top1.any(axis=1).mean()),
    "successful_samples": int(top1.sum()),  # reconstructions (all restarts) the evaluation model calls right
    "knn_dist": float(knn[rows, best].mean()),
    "knn_dist_all_restarts": float(knn.mean()),
    "feature_fid": frechet_distance(fid_rec, fid_priv),
    "fid_feature_space": fid_space,
    "target_confidence": float(result.target_confidence[rows, best].mean()),
    "evaluator_private_train_acc": float(topk_correct(priv_logits, priv_labels, 1).mean()),
    "eval_predictions": predictions,
    "per_identity": [
      {
        "label": int(result.labels[i]),
        "best_restart": int(best[i]),
        "target_confidence": float(result.target_confidence[i, best[i]]),
        "eval_prediction": int(np.argmax(logits[i * restarts + best[i]])),
        "correct": bool(top1[i, best[i]]),
        "knn_dist": float(knn[i, best[i]]),
      }
      for i in range(num_ids)
    ],
  }


def real_images_of(labels, images: np.ndarray, image_labels: np.ndarray, shape) -> np.ndarray:
  """The first private image of each label, in [0, 1], adapted to ``shape`` (H, W, C): the real column of a grid."""
  first = [images[np.flatnonzero(image_labels == int(label))[0]].astype(np.float32) / 255.0 for label in labels]
  return np.stack([np.asarray(resize_to(jnp.asarray(img), tuple(shape))) for img in first])
