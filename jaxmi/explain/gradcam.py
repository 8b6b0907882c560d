"""Grad-CAM on a classifier's last convolutional feature map.

Selvaraju, Cogswell, Das, Vedantam, Parikh & Batra, "Grad-CAM: Visual Explanations from Deep
Networks via Gradient-based Localization", ICCV 2017, Eqs. 1-2.

Standard definition (``variant="standard"``): per example, channel weights
w_c = mean_{h,w} d logit_target / d A_c, map = ReLU(sum_c w_c A_c).
GNIME's code (``variant="gnime"``; Jeong, Lee, Hwang & Son, "Learning to Generate Inversion-
Resistant Model Explanations", NeurIPS 2022, whose official code WSP-LAB/GNIME computes it in
``scripts/xai.py``): the channel weights are averaged over
the whole BATCH too, the map is mean_c(w_c A_c) with no ReLU, and its absolute value is taken,
so one example's explanation depends on the others in its batch. Fixed-size batches are padded:
pass ``mask`` (1 for real rows, 0 for padding) and the weights are averaged over the real rows
only, so padding never enters them. Maps stay at the feature resolution unless ``size`` is
given (bilinear resize, as for display).

Which map A (``layer``):
  * ``"last_conv"`` (default): the output of the last convolution (after its BatchNorm and ReLU),
    BEFORE its max-pooling. This is the reference's choice (GNIME's ``GradCAM`` takes the last
    ``Conv2D`` layer, whose output precedes the pool: 16x16 on the 32-px MNIST CNN) and the usual
    one: pooling halves the map's resolution without adding information. For ``cnn`` and ``vgg``
    classifiers A is recovered exactly: its value from the last norm layer's output, its gradient
    by pulling d logit / d(the pooled map's consumer input) back through the classifier's own
    max-pool and flattening. On VGG16 at 64 px this is conv5_3's 4x4 map. Other classifiers
    (ResNet, whose last stage output has no pool after it) use their deepest spatial hidden map.
  * ``"last_pool"``: the deepest pooled block output at least 4 px wide (jaxmi's former default:
    8x8 on the MNIST CNN, conv4_3 after pooling on VGG16 at 64 px).
  * an int: that index into the classifier's ``hidden`` outputs.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxmi.nets.classifiers import VGG, SmallCNN, max_pool_2x2

VARIANTS = ("standard", "gnime")
LAYERS = ("last_conv", "last_pool")


def spatial_layer(module, variables, image_shape, min_size: int = 4) -> int:
  """Index into ``hidden`` of the deepest feature map at least ``min_size`` wide ("last_pool").

  VGG16 at 64 px ends at 2x2, too coarse to localise anything; its 4x4 map (after conv4_3) is used.
  ``min_size=1`` gives the deepest spatial map.
  """
  out = jax.eval_shape(lambda v: module.apply(v, jnp.zeros((1, *image_shape)), train=False), variables)
  maps = [i for i, h in enumerate(out.hidden) if len(h.shape) == 4 and h.shape[1] > 1 and h.shape[2] > 1]
  if not maps:
    raise ValueError("grad_cam: the classifier has no hidden output with a spatial extent")
  large = [i for i in maps if min(out.hidden[i].shape[1:3]) >= min_size]
  return (large or maps)[-1]


def _last_conv_site(module):
  """(last norm layer, the module consuming its pooled+flattened map, pooled?) or None if unsupported."""
  if isinstance(module, SmallCNN):
    return "bn1", "fc_feat", True
  if isinstance(module, VGG):
    convs = sum(item != "M" for item in module.layout)
    return f"bn{convs - 1}", "bn_feat", module.layout[-1] == "M"
  return None


def _last_conv(module, variables, images, targets):
  """(A, d sum(target logits) / dA) for A = ReLU(last norm output), before the pool."""
  norm, consumer, pooled = _last_conv_site(module)

  def run(delta):
    seen = {}

    def interceptor(next_fun, args, kwargs, context):
      if context.method_name == "__call__" and context.module.path == (norm,):
        seen["z"] = next_fun(*args, **kwargs)
        return seen["z"]
      if context.method_name == "__call__" and context.module.path == (consumer,):
        seen["x"] = args[0]
        return next_fun(args[0] if delta is None else args[0] + delta, *args[1:], **kwargs)
      return next_fun(*args, **kwargs)

    with nn.intercept_methods(interceptor):
      logits = module.apply(variables, images, train=False).logits
    return jnp.sum(jnp.take_along_axis(logits, targets[:, None], axis=-1)[:, 0]), seen

  x_shape = jax.eval_shape(lambda: run(None)[1]["x"])
  # The consumer's input is d(score)/d(input) = d(score)/d(delta) at delta = 0.
  g_x, seen = jax.grad(run, has_aux=True)(jnp.zeros(x_shape.shape, x_shape.dtype))
  a = jax.nn.relu(seen["z"])
  to_x = lambda t: (max_pool_2x2(t) if pooled else t).reshape(t.shape[0], -1)
  if jax.eval_shape(to_x, a).shape != x_shape.shape:
    raise ValueError(f"grad_cam: {consumer} does not consume the flattened pooled {norm} map")
  return a, jax.vjp(to_x, a)[1](g_x.reshape(x_shape.shape))[0]


def _hidden(module, variables, images, targets, layer: int):
  """(hidden[layer], d sum(target logits) / d hidden[layer]) through the classifier's perturbations."""
  hidden = jax.eval_shape(lambda v, x: module.apply(v, x, train=False), variables, images).hidden
  # flax wants every perturbation of the module present; only the chosen layer's gradient is used.
  zeros = {f"hidden{i}": jnp.zeros(h.shape, h.dtype) for i, h in enumerate(hidden)}

  def selected(perturbations):
    out = module.apply({**variables, "perturbations": perturbations}, images, train=False)
    score = jnp.take_along_axis(out.logits, targets[:, None], axis=-1)[:, 0]
    return jnp.sum(score), out.hidden[layer]

  grads, activations = jax.grad(selected, has_aux=True)(zeros)
  return activations, grads[f"hidden{layer}"]


def feature_map(module, variables, images, targets, layer: str | int = "last_conv"):
  """(A [B, h, w, C], dA [B, h, w, C]): the map Grad-CAM weighs and the target logit's gradient there."""
  if isinstance(layer, str) and layer not in LAYERS:
    raise ValueError(f"grad_cam layer: expected one of {LAYERS} or a hidden index, got '{layer}'")
  if layer == "last_conv" and _last_conv_site(module) is not None:
    return _last_conv(module, variables, images, targets)
  if isinstance(layer, str):
    layer = spatial_layer(module, variables, images.shape[1:], min_size=1 if layer == "last_conv" else 4)
  return _hidden(module, variables, images, targets, layer)


def grad_cam(
  module,
  variables,
  images,
  targets,
  *,
  layer: str | int = "last_conv",
  variant: str = "standard",
  mask=None,
  size: tuple[int, int] | None = None,
):
  """Class activation maps [B, h, w] (or [B, *size]); ``mask`` [B] marks the real rows of a padded batch.

  Args:
    module, variables, images, targets: as ``jaxmi.explain.explain``; targets are [B] class indices.
    layer: the map A (module docstring): "last_conv", "last_pool" or an index into ``hidden``.
    variant: "standard" (per-example weights, ReLU) or "gnime" (batch-pooled weights over ``mask``, |map|).
    mask: [B], 1 for real rows; None: every row is real.
    size: (h, w) to resize the maps to (bilinear); None keeps the feature resolution.

  Returns:
    The maps, [B, h, w] float.
  """
  if variant not in VARIANTS:
    raise ValueError(f"grad_cam variant: expected one of {VARIANTS}, got '{variant}'")
  activations, g = feature_map(module, variables, images, targets, layer)
  if variant == "standard":
    weights = jnp.mean(g, axis=(1, 2), keepdims=True)
    cam = jax.nn.relu(jnp.sum(weights * activations, axis=-1))
  else:
    real = jnp.ones(g.shape[0], g.dtype) if mask is None else jnp.asarray(mask, g.dtype)
    # Mean over the real examples and all positions; padded rows are excluded, not just weighted 0.
    total = jnp.sum(jnp.where(real[:, None, None, None] > 0, g, 0.0), axis=(0, 1, 2), keepdims=True)
    weights = total / (jnp.maximum(jnp.sum(real), 1.0) * g.shape[1] * g.shape[2])
    cam = jnp.abs(jnp.mean(weights * activations, axis=-1))
  if size is not None:
    cam = jax.image.resize(cam, (cam.shape[0], *size), "bilinear")
  return cam
