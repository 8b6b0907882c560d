"""Adapting images to a network's input shape: what every consumer of a generator or dataset needs."""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp


def resize_to(images: jax.Array, shape: Sequence[int]) -> jax.Array:
  """Adapts generator output [..., H, W, C] to a model's input (H', W', C'): bilinear + channels."""
  h, w, c = shape
  if images.shape[-3:-1] != (h, w):
    images = jax.image.resize(images, (*images.shape[:-3], h, w, images.shape[-1]), "bilinear")
  if images.shape[-1] != c:
    if c == 1:
      images = jnp.tensordot(images, jnp.array([0.299, 0.587, 0.114]), axes=([-1], [0]))[..., None]
    else:
      images = jnp.repeat(images, c, axis=-1)
  return images
