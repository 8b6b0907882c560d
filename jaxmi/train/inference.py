"""A trained classifier's outputs on many images, in fixed-size batches (one compilation per batch size).

Below the attacks, defenses and metrics that all need them: LOMMA's p_reg and distillation labels, the
ExpMI attacker's reconstructions, GNIME's victim queries and the evaluation model's metrics.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxmi.nets.resize import resize_to


def batched_apply(fn: Callable, variables, images, batch_size: int = 256):
  """``fn(variables, *batch)`` over ``images`` in fixed-size zero-padded batches (one compilation).

  Args:
    fn: ``fn(variables, *arrays) -> pytree`` of arrays with a leading batch axis; jitted by the caller.
    variables: passed to ``fn`` unchanged (an argument, not a constant of the compiled program).
    images: an array [N, ...], or a tuple of arrays of equal length N (batched together).
    batch_size: rows per call; the last batch is zero-padded to it.

  Returns:
    ``fn``'s output pytree as numpy arrays, concatenated over batches and cut back to N rows.
  """
  arrays = images if isinstance(images, tuple) else (images,)
  n = len(arrays[0])
  batch_size = min(batch_size, max(n, 1))
  outs = []
  for start in range(0, n, batch_size):
    chunks = []
    for a in arrays:
      chunk = np.asarray(a[start : start + batch_size])
      pad = batch_size - len(chunk)
      chunks.append(np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), chunk.dtype)]) if pad else chunk)
    outs.append(jax.device_get(fn(variables, *(jnp.asarray(c) for c in chunks))))
  return jax.tree.map(lambda *xs: np.concatenate(xs)[:n], *outs)


def classifier_outputs(classifier, images: np.ndarray, batch_size: int = 256):
  """(logits, features) of a loaded ``Classifier`` in inference mode.

  Args:
    classifier: a ``jaxmi.train.Classifier`` (its ``module``, ``variables`` and ``image_shape`` are used).
    images: [N, H, W, C] floats in [0, 1] or uint8; resized to the classifier's input shape when they differ.
    batch_size: images per compiled call.

  Returns:
    ``(logits [N, K], features [N, D])`` as numpy arrays.
  """

  @jax.jit
  def apply(variables, x):
    x = x.astype(jnp.float32) / 255.0 if x.dtype == jnp.uint8 else x
    out = classifier.module.apply(variables, resize_to(x, classifier.image_shape), train=False)
    return out.logits, out.features

  return batched_apply(apply, classifier.variables, images, batch_size)
