"""Precision, recall, density and coverage (Naeem et al., "Reliable Fidelity and Diversity Metrics for Generative
Models", ICML 2020), with k nearest neighbours in a feature space.

Each real point i gets the ball B(x_i, r_i) with r_i the distance to its k-th nearest *other* real point (each fake
point j likewise, radius s_j among the fakes). With N real and M fake points (the paper's Eqs. 1-4, as its official
``prdc.compute_prdc`` computes them, strict ``<``):

  precision = 1/M sum_j 1[exists i: |y_j - x_i| < r_i]       (fakes inside the real manifold)
  recall    = 1/N sum_i 1[exists j: |x_i - y_j| < s_j]       (reals inside the fake manifold)
  density   = 1/(kM) sum_j sum_i 1[|y_j - x_i| < r_i]        (how many real balls hold each fake, / k)
  coverage  = 1/N sum_i 1[min_j |x_i - y_j| < r_i]           (real balls that hold at least one fake)

PPA (Struppek et al., ICML 2022, ``metrics/prcd.py``) computes these per target class and averages the classes, with
``<=`` and precision/recall tested against the *nearest* point's ball only; jaxmi reports the paper's definitions
on the pooled sets (``jaxmi.metrics.attack.evaluate_inversion`` says which sets).
"""

from __future__ import annotations

import numpy as np

from jaxmi.records import Kept, fingerprint

PRDC_KEYS = ("precision", "recall", "density", "coverage")


def pairwise_sq_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """[N, M] squared Euclidean distances in float64, as |a|^2 + |b|^2 - 2ab (sklearn's form, which the official code
  uses): [N, M, D] differences would not fit for thousands of 2048-d features. float64 keeps the cancellation error
  (~1e-16 of the squared norms) far below any radius of distinct float32 features. Clipped at 0."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  d2 = np.sum(a**2, 1)[:, None] + np.sum(b**2, 1)[None, :] - 2.0 * a @ b.T
  return np.maximum(d2, 0.0, out=d2)


def pairwise_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """[N, M] Euclidean distances in float64 (``pairwise_sq_distances``' square roots)."""
  return np.sqrt(pairwise_sq_distances(a, b))


_RADII = Kept(4)  # (content hash, k, block) -> radii of the last few point sets, see kth_neighbour_radii


def kth_neighbour_radii(points: np.ndarray, k: int, block_bytes: int = 2**28) -> np.ndarray:
  """Distance from each point to its k-th nearest other point (entry k of the sorted row: entry 0 is itself).

  Row blocks of at most ``block_bytes`` of distances: the whole [N, N] matrix of an MNIST attack's 30,000 private
  images is 7 GB in float64, and its temporaries took a run to 22 GB and the kernel's OOM killer. The k-th entry is
  selected among squared distances (the square root is monotone: the same radius, without N^2 square roots).
  The radii of the last few point sets are kept, keyed by their bytes: the real set is the same for an attack's and
  its prior baseline's evaluation and for every attack of a sweep on one evaluation model, and at 30,000 points it
  costs about a minute of CPU."""
  points = np.ascontiguousarray(points, np.float64)
  key = (fingerprint(points), k, block_bytes)
  rows = max(1, block_bytes // (8 * len(points)))

  def radii():
    return np.sqrt(
      np.concatenate(
        [
          np.partition(pairwise_sq_distances(points[i : i + rows], points), k, axis=1)[:, k]
          for i in range(0, len(points), rows)
        ]
      )
    )

  return _RADII.get(key, radii).copy()


def prdc(real: np.ndarray, fake: np.ndarray, k: int = 3) -> dict | None:
  """The four metrics of ``fake`` [M, D] against ``real`` [N, D]; ``None`` when either set has at most k points
  (a k-th neighbour radius needs k + 1 of them)."""
  real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
  if k < 1 or len(real) <= k or len(fake) <= k:
    return None
  real_radii, fake_radii = kth_neighbour_radii(real, k), kth_neighbour_radii(fake, k)
  d = pairwise_distances(real, fake)  # [N, M]
  in_real_ball = d < real_radii[:, None]
  return {
    "precision": float(in_real_ball.any(axis=0).mean()),
    "recall": float((d < fake_radii[None, :]).any(axis=1).mean()),
    "density": float(in_real_ball.sum(axis=0).mean() / k),
    "coverage": float((d.min(axis=1) < real_radii).mean()),
  }
