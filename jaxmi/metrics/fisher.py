"""Per-layer diagonal Fisher information of a classifier (TL-DMI's analysis, missing from its code).

TL-DMI: Ho, Hao, Chandrasegaran, Nguyen & Cheung, "Model Inversion Robustness: Can Transfer Learning
Help?", CVPR 2024.

For examples x with labels y, the diagonal Fisher of parameter theta_i is

    F_i = E_x E_y [ (d log p(y | x) / d theta_i)^2 ]

with y the true label ("empirical" Fisher, ``labels="true"``) or y drawn from the model's
own prediction (``labels="sampled"``, the Fisher of the model's distribution). Per layer
(TL-DMI's unit: a weight layer and its normalisation, ``defenses.tl_dmi.layer_groups``)
we report the mean over its parameters, the sum, and its share of the total. Gradients
are per example (``vmap``), in inference mode, and leave the device once per batch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxmi.data import ArraySplit, eval_batches
from jaxmi.defenses.tl_dmi import layer_groups  # the defense owns the definition of a layer
from jaxmi.train.step import to_float

LABELS = ("true", "sampled")


def layer_fisher(
  clf, split: ArraySplit, *, max_examples: int = 512, batch_size: int = 64, labels: str = "true", seed: int = 0
) -> list[dict]:
  """The diagonal Fisher of ``clf``'s parameters, summarised per TL-DMI layer.

  Args:
    clf: a loaded ``jaxmi.train.Classifier``.
    split: the examples x (with their labels y for ``labels="true"``).
    max_examples: use the first this many examples (0: all).
    batch_size: examples per compiled call.
    labels: "true" (empirical Fisher) or "sampled" (y drawn from the model's prediction, with ``seed``).
    seed: the sampling key.

  Returns:
    One row per layer in forward order, ``{"layer", "modules", "params", "mean", "total", "share"}``: the mean
    and sum of F_i over the layer's parameters and its share of the sum over all layers.
  """
  if labels not in LABELS:
    raise ValueError(f"labels: expected one of {LABELS}, got '{labels}'")
  n = min(max_examples, len(split)) if max_examples > 0 else len(split)
  split = ArraySplit(split.images[:n], split.labels[:n], split.identities[:n])
  module = clf.module

  @jax.jit
  def squared_grads(variables, images, targets, mask, key):
    def one(x, y, m, k):
      def log_likelihood(params, y):
        logits = module.apply({**variables, "params": params}, x[None], train=False).logits[0]
        return -optax.softmax_cross_entropy_with_integer_labels(logits, y)

      if labels == "sampled":
        logits = module.apply(variables, x[None], train=False).logits[0]
        y = jax.random.categorical(k, logits)
      g = jax.grad(log_likelihood)(variables["params"], y)
      return jax.tree.map(lambda a: m * jnp.square(a), g)

    keys = jax.random.split(key, images.shape[0])
    return jax.tree.map(lambda a: jnp.sum(a, 0), jax.vmap(one)(to_float(images), targets, mask, keys))

  total = None
  key = jax.random.PRNGKey(seed)
  for i, batch in enumerate(eval_batches(split, batch_size)):
    sums = squared_grads(clf.variables, batch["image"], batch["label"], batch["mask"], jax.random.fold_in(key, i))
    total = sums if total is None else jax.tree.map(jnp.add, total, sums)
  fisher = jax.tree.map(lambda a: np.asarray(a, np.float64) / n, jax.device_get(total))

  rows = []
  for group in layer_groups(module, clf.image_shape):
    leaves = [leaf for name in group for leaf in jax.tree.leaves(fisher[name])]
    count = int(sum(leaf.size for leaf in leaves))
    summed = float(sum(leaf.sum() for leaf in leaves))
    rows.append(
      {"layer": group[0], "modules": list(group), "params": count, "mean": summed / max(count, 1), "total": summed}
    )
  grand = sum(r["total"] for r in rows) or 1.0
  for r in rows:
    r["share"] = r["total"] / grand
  return rows


def format_table(rows: list[dict]) -> str:
  """``layer_fisher``'s rows as a fixed-width text table."""
  lines = [f"{'layer':<16}{'params':>10}{'mean F':>14}{'total F':>14}{'share':>9}"]
  for r in rows:
    lines.append(f"{r['layer']:<16}{r['params']:>10}{r['mean']:>14.4e}{r['total']:>14.4e}{100 * r['share']:>8.1f}%")
  return "\n".join(lines)
