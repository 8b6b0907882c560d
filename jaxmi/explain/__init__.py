"""Explanations of jaxmi classifiers: gradient, SmoothGrad, Integrated Gradients, Grad-CAM, LRP (z+).

One call explains a whole batch; ``make_explainer`` returns the jitted form, with the
parameters passed as an argument so one compilation serves every model of the same shape:

  explain_fn = make_explainer("gradcam", clf.module)
  maps = explain_fn(clf.variables, images, targets, key)   # targets None: the predicted class
  released = postprocess(maps)                             # |e|, min-max per example and channel

Standard definitions by default; GNIME's deviations (batch-pooled Grad-CAM weights, LRP from
all logits) are ``variant="gnime"`` options of those methods. ``mask`` ([B], 1 = real row)
marks the padding of a fixed-size batch; only batch-pooled Grad-CAM has a batch statistic,
and it pools over the real rows only. Every other method treats examples independently.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxmi.explain.gradcam import feature_map, grad_cam, spatial_layer
from jaxmi.explain.gradients import gradient, integrated_gradients, smoothgrad, target_logits
from jaxmi.explain.lrp import lrp

METHODS = ("grad", "smoothgrad", "ig", "gradcam", "lrp")


def predicted(module, variables, images):
  """[B] index of each image's largest logit."""
  return jnp.argmax(module.apply(variables, images, train=False).logits, axis=-1)


def explain(method: str, module, variables, images, targets=None, key=None, mask=None, **options):
  """Raw attributions of ``method`` for each image's target (default: predicted) class.

  Args:
    method: one of METHODS.
    module, variables: a jaxmi classifier and its ``{"params", "batch_stats"}`` (run in inference mode).
    images: [B, H, W, C] floats in [0, 1].
    targets: [B] class indices; None explains the predicted class.
    key: SmoothGrad's noise key (None: PRNGKey(0)); the other methods ignore it.
    mask: [B], 1 for the real rows of a padded batch (batch-pooled Grad-CAM only).
    **options: the method's keyword options (``variant``, ``layer``, ``samples``, ``steps``, ...).

  Returns:
    Signed attributions [B, H, W, C], or Grad-CAM maps [B, h, w]; ``postprocess`` makes the released form.
  """
  if method not in METHODS:
    raise ValueError(f"explanation method: expected one of {', '.join(METHODS)}, got '{method}'")
  targets = predicted(module, variables, images) if targets is None else targets
  if method == "grad":
    return gradient(module, variables, images, targets)
  if method == "smoothgrad":
    return smoothgrad(module, variables, images, targets, jax.random.PRNGKey(0) if key is None else key, **options)
  if method == "ig":
    return integrated_gradients(module, variables, images, targets, **options)
  if method == "gradcam":
    return grad_cam(module, variables, images, targets, mask=mask, **options)
  return lrp(module, variables, images, targets, **options)


def make_explainer(method: str, module, **options):
  """``explain`` for one method and module, jitted; ``options`` are static.

  Returns:
    ``fn(variables, images, targets=None, key=None, mask=None)`` with ``explain``'s arguments and result.
  """
  if method not in METHODS:
    raise ValueError(f"explanation method: expected one of {', '.join(METHODS)}, got '{method}'")

  @jax.jit
  def fn(variables, images, targets=None, key=None, mask=None):
    return explain(method, module, variables, images, targets, key, mask, **options)

  return fn


def postprocess(attributions):
  """|e| min-max normalised to [0, 1] per example and channel (GNIME's released form).

  Grad-CAM maps ([B, h, w]) are normalised per example.
  """
  e = jnp.abs(attributions)
  axes = (1, 2) if e.ndim == 4 else tuple(range(1, e.ndim))
  lo, hi = jnp.min(e, axis=axes, keepdims=True), jnp.max(e, axis=axes, keepdims=True)
  return (e - lo) / jnp.maximum(hi - lo, 1e-12)


__all__ = [
  "METHODS",
  "explain",
  "feature_map",
  "grad_cam",
  "gradient",
  "integrated_gradients",
  "lrp",
  "make_explainer",
  "postprocess",
  "predicted",
  "smoothgrad",
  "spatial_layer",
  "target_logits",
]
