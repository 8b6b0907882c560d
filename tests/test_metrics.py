"""evaluate_inversion against a hand-made case: top-k, selection, std over restarts (ddof=1), KNN pairing, FID inputs.

The fake evaluation model is linear and readable by hand: features = 2 * pixels (8 of them, a 2x4x1 image) and
logits = the first 7 features, so each reconstruction's pixels *are* its (halved) logits. Pixel values are multiples
of 1/16 (exact in float32); private images are uint8 (the real splits' dtype, divided by 255 inside). Expected values
are computed here independently, in float64.
"""

from types import SimpleNamespace
from typing import NamedTuple

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmi.attacks.engine import InversionResult
from jaxmi.metrics import attack as metrics

NUM_CLASSES = 7


class Out(NamedTuple):
  logits: jnp.ndarray
  features: jnp.ndarray


class LinearEvaluator(nn.Module):
  @nn.compact
  def __call__(self, x, train: bool = False):
    a = self.param("a", nn.initializers.zeros, (8, 8))
    features = x.reshape(x.shape[0], -1) @ a
    return Out(logits=features[:, :NUM_CLASSES], features=features)


def evaluator():
  return SimpleNamespace(
    module=LinearEvaluator(),
    variables={"params": {"a": 2.0 * jnp.eye(8)}},
    image_shape=(2, 4, 1),
    num_classes=NUM_CLASSES,
  )


# Identity 0 attacks class 2, identity 1 class 5; 3 restarts each. Pixels 0..6 are the logits / 2, pixel 7 an extra
# feature. Where the attacked class ranks is noted per row.
RECON = np.array(
  [
    [
      [0.125, 0.25, 0.875, 0.5, 0.0625, 0.375, 0.1875, 0.5],  # class 2 ranks 1st
      [0.75, 0.625, 0.5, 0.25, 0.125, 0.0625, 0.375, 0.25],  # 3rd: top-5, not top-1
      [0.5, 0.4375, 0.0, 0.625, 0.75, 0.25, 0.375, 0.875],
    ],  # 7th: neither
    [
      [0.5, 0.625, 0.75, 0.375, 0.875, 0.0625, 0.25, 0.125],  # class 5 ranks 7th
      [0.25, 0.125, 0.375, 0.0625, 0.5, 0.9375, 0.1875, 0.625],  # 1st
      [0.375, 0.25, 0.125, 0.5, 0.1875, 0.6875, 0.875, 0.0],
    ],  # 2nd
  ]
)
TOP1 = np.array([[1, 0, 0], [0, 1, 0]], bool)
TOP5 = np.array([[1, 1, 0], [0, 1, 1]], bool)
BEST = np.array([2, 1])  # the selection the attack made
CONFIDENCE = np.array([[0.9, 0.2, 0.4], [0.1, 0.6, 0.8]])  # argmax differs from BEST for identity 1: BEST must be used


def private_set():
  """uint8 private images: two of class 2, three of class 5, and decoys of classes 0 and 3 that are copies of
  reconstructions (a wrong pairing would find them at distance ~0); one class-5 image copies an identity-0
  reconstruction (pairing must be by the reconstruction's own identity)."""
  rng = np.random.default_rng(0)
  labels = np.array([2, 0, 5, 2, 3, 5, 5])
  images = rng.integers(0, 256, (len(labels), 8)).astype(np.uint8)
  images[1] = np.round(255 * RECON[0, 0])
  images[4] = np.round(255 * RECON[1, 1])
  images[6] = np.round(255 * RECON[0, 2])
  return images.reshape(-1, 2, 4, 1), labels


def result(recon=RECON, best=BEST, confidence=CONFIDENCE):
  num_ids, restarts = recon.shape[:2]
  return InversionResult(
    labels=np.array([2, 5])[:num_ids],
    latents=np.zeros((num_ids, restarts, 4), np.float32),
    images=recon.reshape(num_ids, restarts, 2, 4, 1).astype(np.float32),
    target_confidence=confidence,
    best_restart=best,
    loss_curve=np.zeros(1),
    loss_parts={},
  )


def expected_knn(recon, labels, priv_images, priv_labels):
  """[I, R] squared L2 in evaluation features (2 * pixels) to the nearest private image of the same identity."""
  priv = 2.0 * priv_images.reshape(len(priv_images), -1).astype(np.float64) / 255.0
  out = np.zeros(recon.shape[:2])
  for i, label in enumerate(labels):
    for r in range(recon.shape[1]):
      rec = 2.0 * recon[i, r].astype(np.float64)
      out[i, r] = min(np.sum((rec - p) ** 2) for p in priv[priv_labels == label])
  return out


def test_evaluate_inversion_matches_hand_computed_metrics(monkeypatch):
  # The hand-made logits rank as the comments say (a test of the test's own data).
  labels = np.array([2, 5])
  ranks = np.array([[np.sum(RECON[i, r, :NUM_CLASSES] > RECON[i, r, labels[i]]) for r in range(3)] for i in range(2)])
  np.testing.assert_array_equal(ranks == 0, TOP1)
  np.testing.assert_array_equal(ranks < 5, TOP5)

  priv_images, priv_labels = private_set()
  fid_inputs = []
  monkeypatch.setattr(metrics, "frechet_distance", lambda a, b: fid_inputs.append((a, b)) or 1.5)
  m = metrics.evaluate_inversion(result(), evaluator(), priv_images, priv_labels)

  assert m["identities"] == 2 and m["restarts"] == 3 and m["chance_acc1"] == pytest.approx(1 / 7)
  # Selected restart (BEST, not the highest confidence): identity 0 restart 2 fails both; identity 1 restart 1 hits.
  assert m["acc1"] == pytest.approx(0.5) and m["acc5"] == pytest.approx(0.5)
  # Over all restarts: per-restart acc@1 [1/2, 1/2, 0], acc@5 [1/2, 1, 1/2]; sample std (ddof=1) sqrt(1/12) for
  # both (ddof=0 would give sqrt(1/18)).
  assert m["acc1_all_restarts_mean"] == pytest.approx(1 / 3) and m["acc5_all_restarts_mean"] == pytest.approx(2 / 3)
  assert m["acc1_all_restarts_std"] == pytest.approx(np.std([0.5, 0.5, 0.0], ddof=1)) == pytest.approx(12**-0.5)
  assert m["acc5_all_restarts_std"] == pytest.approx(12**-0.5)
  assert m["any_restart_acc"] == pytest.approx(1.0)
  np.testing.assert_array_equal(m["eval_predictions"], np.argmax(RECON[..., :NUM_CLASSES], -1))

  # KNN: float32 |a|^2 + |b|^2 - 2ab on features of squared norm <= 32: error ~ 32 * 6e-8 * a few, so atol 1e-4.
  knn = expected_knn(RECON, labels, priv_images, priv_labels)
  assert knn.min() > 0.05  # the decoys (distance ~0) were not used
  assert m["knn_dist_all_restarts"] == pytest.approx(knn.mean(), abs=1e-4)
  assert m["knn_dist"] == pytest.approx(knn[[0, 1], BEST].mean(), abs=1e-4)
  assert m["target_confidence"] == pytest.approx(np.mean([0.4, 0.6]))
  assert [p["best_restart"] for p in m["per_identity"]] == [2, 1]
  assert [p["correct"] for p in m["per_identity"]] == [False, True]
  assert [p["eval_prediction"] for p in m["per_identity"]] == [4, 5]
  np.testing.assert_allclose([p["knn_dist"] for p in m["per_identity"]], knn[[0, 1], BEST], atol=1e-4)

  # The evaluation model's accuracy on the attacked identities' private images only (classes 2 and 5).
  attacked = np.isin(priv_labels, labels)
  priv_logits = priv_images.reshape(len(priv_images), -1)[attacked, :NUM_CLASSES].astype(np.float64)
  assert m["evaluator_private_train_acc"] == pytest.approx(np.mean(np.argmax(priv_logits, -1) == priv_labels[attacked]))

  # FID inputs: evaluation features of all 6 reconstructions (identity-major) vs the attacked identities' private
  # images (not the decoys of classes 0 and 3).
  ((rec_feats, priv_feats),) = fid_inputs
  np.testing.assert_allclose(rec_feats, 2.0 * RECON.reshape(6, 8), atol=1e-6)
  np.testing.assert_allclose(priv_feats, 2.0 * priv_images.reshape(-1, 8)[attacked] / 255.0, atol=1e-6)
  assert m["feature_fid"] == 1.5 and m["fid_feature_space"] == "evaluation-model features"


def test_evaluate_inversion_custom_fid_features_get_the_same_images():
  priv_images, priv_labels = private_set()
  seen = []
  feature_fn = lambda x: seen.append(np.asarray(x)) or np.asarray(x, np.float64).reshape(len(x), -1)[:, :2]
  m = metrics.evaluate_inversion(result(), evaluator(), priv_images, priv_labels, feature_fn=feature_fn)
  np.testing.assert_array_equal(seen[0].reshape(6, 8), RECON.astype(np.float32).reshape(6, 8))
  np.testing.assert_array_equal(seen[1], priv_images[np.isin(priv_labels, [2, 5])])
  assert m["fid_feature_space"] == "custom features"
  assert m["feature_fid"] == pytest.approx(
    metrics.frechet_distance(seen[0].reshape(6, 8)[:, :2], seen[1].reshape(-1, 8)[:, :2].astype(np.float64))
  )


def test_std_over_one_restart_is_absent_not_nan():
  priv_images, priv_labels = private_set()
  m = metrics.evaluate_inversion(
    result(RECON[:, :1], np.array([0, 0]), CONFIDENCE[:, :1]), evaluator(), priv_images, priv_labels
  )
  assert m["acc1_all_restarts_std"] is None and m["acc5_all_restarts_std"] is None
  assert m["acc1_all_restarts_mean"] == pytest.approx(0.5)
  assert metrics.sample_std([0.2, 0.4, 0.3]) == pytest.approx(0.1)
  assert metrics.sample_std([0.7]) is None


def test_frechet_distance_hand_computed():
  # 1-D: N(1, 2) vs N(3, 4) (sample variances): (1-3)^2 + 2 + 4 - 2 sqrt(8).
  assert metrics.frechet_distance(np.array([[0.0], [2.0]]), np.array([[1.0], [3.0], [5.0]])) == pytest.approx(
    4 + 6 - 2 * np.sqrt(8)
  )
  # 2-D: the points (+-1, +-2) have cov diag(4/3, 16/3); swapped and shifted by (1, 1): diag(16/3, 4/3), so
  # sqrt(s1 s2) = 8/3 I and FID = 2 + 20/3 + 20/3 - 2 * 16/3 = 2 + 8/3.
  a = np.array([[-1.0, -2.0], [1.0, 2.0], [-1.0, 2.0], [1.0, -2.0]])
  b = a[:, ::-1] + 1.0
  assert metrics.frechet_distance(a, b) == pytest.approx(2 + 8 / 3)
