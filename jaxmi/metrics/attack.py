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
  the evaluation model's; pass ``feature_fn`` to use other features.
* FID as the papers compute it (``fid_features``, pytorch-fid's Inception-v3 from ``jaxmi.metrics.fid``): the
  *successful* reconstructions (the evaluation model's top-1 correct, all restarts) against the attacked
  identities' private images (KEDMI/LOMMA/PLG-MI's ``calc_fid``/``eval_fid``).
* PRDC (``jaxmi.metrics.prdc``, k = 3): all reconstructions against the attacked identities' private images, in
  the FID's feature space (Inception when given, else the evaluation model's).
* The evaluation model sees reconstructions of another size as the reference's ``utils.low2high`` makes them
  (``pil_resize``), or, with ``resize="bilinear"``, through the in-graph bilinear resize.
"""

from __future__ import annotations

import math
import warnings
from typing import Callable, Literal

import jax.numpy as jnp
import numpy as np
import scipy.linalg

from jaxmi.attacks.engine import InversionResult
from jaxmi.metrics.prdc import prdc
from jaxmi.nets.resize import resize_to
from jaxmi.records import Kept, fingerprint
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


def over_seeds(runs: list[tuple[dict, dict | None]]) -> dict:
  """One table row's numbers from attack runs (one per seed): ``runs`` holds each run's (metrics, prior-baseline
  metrics or None) as in results.json. Means, and sample stds (ddof=1; None for one run), of acc@1 / acc@5 / KNN
  distance over all reconstructions and the selected restart's acc@1; the baseline's means and the attack's gain
  over it, from the runs that have a baseline (``baseline_seeds``; the baseline keys are None without any)."""
  col = lambda name, rs=runs: [float(v[name]) for v, _ in rs]
  mean = lambda values: float(np.mean(values)) if values else None
  paired = [(v, b) for v, b in runs if b is not None]
  base = lambda name: [float(b.get(name, math.nan)) for _, b in paired]
  delta = lambda name: [float(v[name]) - float(b.get(name, math.nan)) for v, b in paired]
  row = {
    "acc1": mean(col("acc1_all_restarts_mean")),
    "acc1_std": sample_std(col("acc1_all_restarts_mean")),
    "acc5": mean(col("acc5_all_restarts_mean")),
    "acc5_std": sample_std(col("acc5_all_restarts_mean")),
    "selected_acc1": mean(col("acc1")) if all("acc1" in v for v, _ in runs) else None,
    "knn_dist": mean(col("knn_dist_all_restarts")),
    "knn_dist_std": sample_std(col("knn_dist_all_restarts")),
    "baseline_acc1": None,
    "baseline_acc5": None,
    "baseline_knn_dist": None,
    "delta_acc1": None,
    "delta_acc1_std": None,
    "delta_acc5": None,
    "delta_acc5_std": None,
    "baseline_seeds": len(paired),
    "seeds": len(runs),
  }
  if paired:
    row.update(
      {
        "baseline_acc1": mean(base("acc1_all_restarts_mean")),
        "baseline_acc5": mean(base("acc5_all_restarts_mean")),
        "baseline_knn_dist": mean(base("knn_dist_all_restarts")),
        "delta_acc1": mean(delta("acc1_all_restarts_mean")),
        "delta_acc1_std": sample_std(delta("acc1_all_restarts_mean")),
        "delta_acc5": mean(delta("acc5_all_restarts_mean")),
        "delta_acc5_std": sample_std(delta("acc5_all_restarts_mean")),
      }
    )
  return row


def topk_correct(logits: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
  k = min(k, logits.shape[-1])
  topk = np.argsort(-logits, axis=-1)[..., :k]
  return np.any(topk == labels[..., None], axis=-1)


def pil_resize(images, size: tuple[int, int]) -> np.ndarray:
  """The reference's 64 -> 112 resize for the evaluation model (``utils.low2high`` in KEDMI, LOMMA and PLG-MI's
  baselines), per image: ``ToPILImage`` (float * 255 truncated to uint8, torch's ``.mul(255).byte()``) ->
  ``Resize((h, w))`` (PIL bilinear) -> ``ToTensor`` (uint8 / 255).

  Args:
    images: [N, H, W, C] floats in [0, 1] (clipped first: torch's byte cast of values outside is undefined) or
      uint8 (used as they are); C is 1 (PIL mode L) or 3 (RGB). Bilinear is per channel, so low2high's
      ``convert("RGB")`` of a grey image commutes with it and is left to the evaluation model's channel adapter.
    size: (h, w) of the output.

  Returns:
    [N, h, w, C] float32 in [0, 1], multiples of 1/255.
  """
  from PIL import Image

  images = np.asarray(images)
  if images.dtype != np.uint8:
    images = (np.clip(images.astype(np.float32), 0.0, 1.0) * np.float32(255.0)).astype(np.uint8)  # truncates
  h, w = size
  out = np.empty((len(images), h, w, images.shape[-1]), np.float32)
  for i, img in enumerate(images):
    resized = Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).resize((w, h), Image.BILINEAR)
    out[i] = np.asarray(resized, np.float32).reshape(h, w, -1) / np.float32(255.0)
  return out


def evaluation_inputs(images: np.ndarray, evaluator, resize: Literal["pil", "bilinear"]) -> np.ndarray:
  """``images`` as the evaluation model gets them: ``pil_resize``d to its input size when that differs and
  ``resize="pil"``; otherwise unchanged (``classifier_outputs`` resizes in-graph, bilinear)."""
  if resize not in ("pil", "bilinear"):
    raise ValueError(f"resize: expected 'pil' or 'bilinear', got {resize!r}")
  h, w = evaluator.image_shape[:2]
  if resize == "pil" and len(images) and tuple(images.shape[1:3]) != (h, w):
    return pil_resize(images, (h, w))
  return images


def batch_std(per_identity: np.ndarray, batch: int = 60) -> float | None:
  """The reference's std over restarts: identities in consecutive batches of ``batch`` (as attacked, 5 x 60 in the
  protocol), each batch's per-restart accuracy, its ddof=1 std over restarts, averaged over batches (LOMMA's
  ``statistics.stdev`` per batch then ``aver_std += std / 5``; PLG-MI/KEDMI the same with ``variance``).

  Args:
    per_identity: [identities, restarts] 0/1 hits.
  """
  if per_identity.shape[1] < 2:
    return None
  stds = [sample_std(per_identity[i : i + batch].mean(axis=0)) for i in range(0, len(per_identity), batch)]
  return float(np.mean(stds))


# The private set's evaluation outputs, kept by content for the next evaluation against the same set: an attack's
# and its prior baseline's evaluations, and every attack of a sweep on one evaluation model, judge against the
# same images (30,000 MNIST images: ~20 s of evaluation-model forward passes each time on 2 cores).
_KEPT = Kept(3)  # the evaluation model's outputs and the FID features of one private set, and one more


def evaluate_inversion(
  result: InversionResult,
  evaluator,
  private_images: np.ndarray,
  private_labels: np.ndarray,
  *,
  feature_fn: Callable | None = None,
  fid_features: Callable | None = None,
  resize: Literal["pil", "bilinear"] = "pil",
  prdc_k: int = 3,
  std_batch: int = 60,
) -> dict:
  """Metrics of ``result`` judged by ``evaluator`` against the private training images.

  ``private_images``/``private_labels``: the target's private training split (labels are target
  class indices, the same index space as ``result.labels``). ``acc1``/``acc5``/``knn_dist`` are
  for each identity's ``result.best_restart``; ``*_all_restarts_std`` is the ddof=1 std across
  restart index of the per-restart accuracy over identities (``None`` with one restart);
  ``*_protocol_std`` the reference's (``batch_std`` over batches of ``std_batch`` identities; the same when
  there are at most ``std_batch``).

  ``fid_features``: pytorch-fid's Inception-v3 (``jaxmi.metrics.fid.InceptionFeatures``) or a stand-in with a
  ``space`` name; with it, ``fid`` is the papers' FID (successful reconstructions vs the attacked identities'
  private images) in that space, and PRDC is computed there. ``resize``: how reconstructions (and private
  images) of another size reach the evaluation model: ``"pil"`` the reference's uint8 PIL bilinear
  (``pil_resize``), the default because the papers' accuracies and KNN distances were measured through it;
  ``"bilinear"`` jaxmi's in-graph float resize. Images of the evaluation model's size are never resized.
  """
  num_ids, restarts = result.images.shape[:2]
  flat = result.images.reshape(num_ids * restarts, *result.images.shape[2:])
  logits, feats = classifier_outputs(evaluator, evaluation_inputs(flat, evaluator, resize))
  labels = np.repeat(result.labels, restarts)
  top1 = topk_correct(logits, labels, 1).reshape(num_ids, restarts)
  top5 = topk_correct(logits, labels, 5).reshape(num_ids, restarts)
  best = result.best_restart
  rows = np.arange(num_ids)

  attacked = np.isin(private_labels, result.labels)
  private = private_images[attacked]
  private_key = fingerprint(private)
  evaluator_key = ("evaluator", fingerprint(evaluator.variables), repr(evaluator.module), tuple(evaluator.image_shape))
  priv_logits, priv_feats = _KEPT.get(
    (*evaluator_key, resize, private_key),
    lambda: classifier_outputs(evaluator, evaluation_inputs(private, evaluator, resize)),
  )
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
    fid_rec, fid_space = feature_fn(flat), "custom features"
    fid_priv = _KEPT.get(("feature_fn", private_key), lambda: feature_fn(private), owner=feature_fn)
  per_restart_acc1 = top1.mean(axis=0)
  predictions = np.argmax(logits, -1).reshape(num_ids, restarts)
  per_restart_acc5 = top5.mean(axis=0)
  paper = {}
  prdc_rec, prdc_priv, prdc_space = feats, priv_feats, "evaluation-model features"
  if fid_features is not None:
    prdc_rec = fid_features(flat)
    prdc_priv = _KEPT.get(("fid_features", private_key), lambda: fid_features(private), owner=fid_features)
    prdc_space = getattr(fid_features, "space", "custom features")
    success = top1.reshape(-1)  # identity-major, as ``flat``
    fid = frechet_distance(prdc_rec[success], prdc_priv) if success.sum() >= 2 else None  # a covariance needs 2
    paper = {"fid": fid, "fid_feature_space": prdc_space, "fid_successful_samples": int(success.sum())}
  paper["prdc"] = prdc(prdc_priv, prdc_rec, prdc_k)
  paper["prdc_k"] = prdc_k
  paper["prdc_feature_space"] = prdc_space
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
    **({"feature_fid_space": fid_space} if fid_features is not None else {}),
    **paper,
    "acc1_protocol_std": batch_std(top1, std_batch),
    "acc5_protocol_std": batch_std(top5, std_batch),
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
