"""PLG-MI's pseudo-labels: per class, the public images the target is most confident belong to it.

Yuan et al., "Pseudo Label-Guided Model Inversion Attack via Conditional Generative Adversarial Network",
AAAI 2023, Sec. 3.2 (top-n selection); official ``top_n_selection.py``. For every class k independently, the n
public images with the highest target softmax probability of k get the label k. As in the reference:
  * classes are selected independently, so one image may be chosen for several classes (the reference copies
    it into each class folder) and some images for none;
  * the target sees the public images as they are (eval mode, no augmentation).
Here the whole public set goes through one jitted program: a batched forward over the set (``lax.map`` over
fixed-size chunks, the last padded and masked out), then ``lax.top_k`` down every class column.

Ranking uses the log-softmax, which orders images exactly as the softmax does but does not saturate: a float32
softmax rounds every very confident image to 1.0, turning the head of the ranking into ties. Remaining exact
ties go to the lower public index (``lax.top_k``); the reference's priority queue keeps the later-read image at
the boundary. Within a class the selected images are in decreasing confidence.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxmi.data import ArraySplit
from jaxmi.errors import ConfigError
from jaxmi.nets.resize import resize_to
from jaxmi.train.step import to_float


def top_n_per_class(scores: jax.Array, n: int) -> tuple[jax.Array, jax.Array]:
  """(indices [K, n], scores [K, n]): per class column of ``scores`` [N, K], its n highest rows, best first."""
  values, indices = jax.lax.top_k(scores.T, n)
  return indices, values


def _select(module, variables, images, valid, image_shape, n: int, chunk: int):
  """images uint8 [C * chunk, H, W, ch] (padded), valid bool [C * chunk] -> (indices [K, n], log-probs [K, n])."""

  def scores_of(x):
    logits = module.apply(variables, resize_to(to_float(x), image_shape), train=False).logits
    return jax.nn.log_softmax(logits.astype(jnp.float32))

  scores = jax.lax.map(scores_of, images.reshape(-1, chunk, *images.shape[1:]))
  scores = scores.reshape(images.shape[0], -1)
  scores = jnp.where(valid[:, None], scores, -jnp.inf)  # padding is never selected
  return top_n_per_class(scores, n)


def select_pseudo_labels(target, public: ArraySplit, top_n: int, *, chunk: int = 500) -> tuple[ArraySplit, dict]:
  """The pseudo-labelled public set: K * top_n images, class k's top_n labelled k (class-major, best first).

  Args:
    target: a loaded ``Classifier`` (``jaxmi.train.classifier.load_classifier``).
    public: the attacker's public images (uint8).
    top_n: images per class (the reference: 30).
    chunk: images per forward inside the one compiled pass.

  Returns:
    (split, info): ``split.identities`` holds each image's public index; ``info`` its counts and confidence.
  """
  n_public = len(public)
  if top_n < 1 or top_n > n_public:
    raise ConfigError(f"plg.top_n: expected 1 <= top_n <= {n_public} (the public split's images), got {top_n}")
  chunk = max(1, min(chunk, n_public))
  pad = -n_public % chunk
  images = np.concatenate([public.images, np.zeros((pad, *public.images.shape[1:]), public.images.dtype)])
  valid = np.arange(n_public + pad) < n_public
  select = jax.jit(
    functools.partial(_select, target.module, image_shape=tuple(target.image_shape), n=top_n, chunk=chunk)
  )
  indices, scores = jax.device_get(select(target.variables, images, valid))
  num_classes = indices.shape[0]
  flat = indices.reshape(-1)
  split = ArraySplit(
    public.images[flat], np.repeat(np.arange(num_classes, dtype=np.int32), top_n), flat.astype(np.int32)
  )
  info = {
    "top_n": top_n,
    "pseudo_labelled_images": int(flat.size),
    "distinct_public_images": int(np.unique(flat).size),
    "mean_confidence": float(np.mean(np.exp(scores))),
    "min_confidence": float(np.min(np.exp(scores))),
  }
  return split, info
