"""Grad-CAM (Selvaraju et al. 2017) on a classifier's spatial hidden output.

Standard definition (``variant="standard"``): per example, channel weights
w_c = mean_{h,w} d logit_target / d A_c, map = ReLU(sum_c w_c A_c).
GNIME's code (``variant="gnime"``, gnime.md section 6): the channel weights are averaged over
the whole BATCH too, the map is mean_c(w_c A_c) with no ReLU, and its absolute value is taken,
so one example's explanation depends on the others in its batch. Maps stay at the feature
resolution unless ``size`` is given (bilinear resize, as for display).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

VARIANTS = ("standard", "gnime")


def spatial_layer(module, variables, image_shape, min_size: int = 4) -> int:
  """Index into ``hidden`` of the deepest feature map at least ``min_size`` wide (the usual "last conv").

  VGG16 at 64 px ends at 2x2, too coarse to localise anything; its 4x4 map (after conv4_3) is used.
  """
  out = jax.eval_shape(lambda v: module.apply(v, jnp.zeros((1, *image_shape)), train=False), variables)
  maps = [i for i, h in enumerate(out.hidden) if len(h.shape) == 4 and h.shape[1] > 1 and h.shape[2] > 1]
  if not maps:
    raise ValueError("grad_cam: the classifier has no hidden output with a spatial extent")
  large = [i for i in maps if min(out.hidden[i].shape[1:3]) >= min_size]
  return (large or maps)[-1]


def grad_cam(module, variables, images, targets, *, layer: int | None = None, variant: str = "standard",
             size: tuple[int, int] | None = None):
  """Class activation maps [B, h, w] (or [B, *size])."""
  if variant not in VARIANTS:
    raise ValueError(f"grad_cam variant: expected one of {VARIANTS}, got '{variant}'")
  layer = spatial_layer(module, variables, images.shape[1:]) if layer is None else layer
  name = f"hidden{layer}"
  hidden = jax.eval_shape(lambda v, x: module.apply(v, x, train=False), variables, images).hidden
  # flax wants every perturbation of the module present; only the chosen layer's gradient is used.
  zeros = {f"hidden{i}": jnp.zeros(h.shape, h.dtype) for i, h in enumerate(hidden)}

  def selected(perturbations):
    out = module.apply({**variables, "perturbations": perturbations}, images, train=False)
    score = jnp.take_along_axis(out.logits, targets[:, None], axis=-1)[:, 0]
    return jnp.sum(score), out.hidden[layer]

  grads, activations = jax.grad(selected, has_aux=True)(zeros)
  g = grads[name]
  if variant == "standard":
    weights = jnp.mean(g, axis=(1, 2), keepdims=True)
    cam = jax.nn.relu(jnp.sum(weights * activations, axis=-1))
  else:
    weights = jnp.mean(g, axis=(0, 1, 2), keepdims=True)
    cam = jnp.abs(jnp.mean(weights * activations, axis=-1))
  if size is not None:
    cam = jax.image.resize(cam, (cam.shape[0], *size), "bilinear")
  return cam
