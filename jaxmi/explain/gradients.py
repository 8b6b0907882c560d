"""Gradient-based explanations: vanilla gradient, SmoothGrad, Integrated Gradients.

All take ``(module, variables, images, targets)`` with images [B, H, W, C] in [0, 1] and
targets [B] class indices, run the classifier in inference mode (examples are independent,
so one backward pass of the summed target logits gives every example's gradient), and return
raw signed attributions of the image's shape. ``postprocess`` turns them into the [0, 1]
maps the MI literature releases.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def target_logits(module, variables, images, targets):
  """Logit of each example's target class, [B]."""
  logits = module.apply(variables, images, train=False).logits
  return jnp.take_along_axis(logits, targets[:, None], axis=-1)[:, 0]


def gradient(module, variables, images, targets):
  """d logit_target / d x: Simonyan, Vedaldi & Zisserman, "Deep Inside Convolutional Networks", ICLR 2014 workshop."""
  return jax.grad(lambda x: jnp.sum(target_logits(module, variables, x, targets)))(images)


def smoothgrad(
  module, variables, images, targets, key, *, samples: int = 25, noise_level: float = 0.15, squared: bool = False
):
  """Mean gradient over Gaussian-perturbed copies; std = noise_level * (max - min) per image.

  Smilkov, Thorat, Kim, Viegas & Wattenberg, "SmoothGrad: removing noise by adding noise", arXiv:1706.03825, 2017.

  Defaults follow PAIR saliency (25 samples, 15% spread); ``squared`` averages squared gradients
  (their ``magnitude=True``).

  Args:
    module, variables, images, targets: as in the module docstring.
    key: the noise key; samples: noisy copies averaged; noise_level: the std as a fraction of each
      image's value range; squared: average g * g instead of g.

  Returns:
    Attributions of the images' shape.
  """
  spread = noise_level * (
    jnp.max(images, axis=(1, 2, 3), keepdims=True) - jnp.min(images, axis=(1, 2, 3), keepdims=True)
  )

  def one(k):
    noisy = images + spread * jax.random.normal(k, images.shape, images.dtype)
    g = gradient(module, variables, noisy, targets)
    return g * g if squared else g

  return jnp.mean(jax.vmap(one)(jax.random.split(key, samples)), axis=0)


def integrated_gradients(module, variables, images, targets, *, baseline=None, steps: int = 32):
  """(x - x0) * mean over the straight path of the gradient.

  Integrated Gradients: Sundararajan, Taly & Yan, "Axiomatic Attribution for Deep Networks", ICML 2017.

  Midpoint Riemann sum; completeness: the attributions sum to f(x) - f(x0) up to the
  discretisation error, exactly for a model linear in x.

  Args:
    module, variables, images, targets: as in the module docstring.
    baseline: x0, broadcast to the images' shape; None: black (zeros).
    steps: points of the Riemann sum.

  Returns:
    Attributions of the images' shape.
  """
  baseline = jnp.zeros_like(images) if baseline is None else jnp.broadcast_to(baseline, images.shape)
  alphas = (jnp.arange(steps, dtype=images.dtype) + 0.5) / steps
  grads = jax.vmap(lambda a: gradient(module, variables, baseline + a * (images - baseline), targets))(alphas)
  return (images - baseline) * jnp.mean(grads, axis=0)
