"""Image-similarity metrics as the explanation-inversion papers compute them (tf.image semantics).

SSIM: Wang, Bovik, Sheikh & Simoncelli, "Image Quality Assessment: From Error Visibility to
Structural Similarity", IEEE TIP 2004, Eq. 13. PSNR and SSIM with max value 1 on images in [0, 1];
SSIM uses an 11x11 Gaussian window
(sigma 1.5), K1 = 0.01, K2 = 0.03, VALID filtering, averaged over pixels and channels, as
``tf.image.ssim``. All per image: [B, H, W, C] -> [B].
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def mse(a, b):
  """Mean squared error of each image pair, [B, ...] x 2 -> [B]."""
  return jnp.mean(jnp.square(a - b), axis=tuple(range(1, a.ndim)))


def psnr(a, b, max_val: float = 1.0):
  """Peak signal-to-noise ratio in dB of each image pair, [B, ...] x 2 -> [B] (MSE floored at 1e-12)."""
  return 10.0 * jnp.log10(max_val**2 / jnp.maximum(mse(a, b), 1e-12))


def _gaussian_window(size: int, sigma: float):
  x = jnp.arange(size, dtype=jnp.float32) - (size - 1) / 2
  g = jnp.exp(-(x**2) / (2 * sigma**2))
  return g / jnp.sum(g)


def _filter(x, window):
  """Separable VALID filtering of every channel independently."""
  c = x.shape[-1]
  size = window.shape[0]
  rows = jnp.tile(window.reshape(size, 1, 1, 1), (1, 1, 1, c))
  cols = jnp.tile(window.reshape(1, size, 1, 1), (1, 1, 1, c))
  conv = lambda v, k: jax.lax.conv_general_dilated(
    v, k, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=c
  )
  return conv(conv(x, rows), cols)


def ssim(a, b, max_val: float = 1.0, window: int = 11, sigma: float = 1.5):
  """SSIM of each image pair, [B, H, W, C] x 2 -> [B], as ``tf.image.ssim`` (module docstring).

  ``window`` (the Gaussian's side, at most the image's) and ``sigma`` set the local statistics; ``max_val`` the range.
  """
  size = min(window, a.shape[1], a.shape[2])
  g = _gaussian_window(size, sigma)
  c1, c2 = (0.01 * max_val) ** 2, (0.03 * max_val) ** 2
  mu_a, mu_b = _filter(a, g), _filter(b, g)
  var_a = _filter(a * a, g) - mu_a**2
  var_b = _filter(b * b, g) - mu_b**2
  cov = _filter(a * b, g) - mu_a * mu_b
  luminance = (2 * mu_a * mu_b + c1) / (mu_a**2 + mu_b**2 + c1)
  contrast_structure = (2 * cov + c2) / (var_a + var_b + c2)
  return jnp.mean(luminance * contrast_structure, axis=(1, 2, 3))


def spearman(a, b):
  """Per-example Spearman rank correlation of two maps (explanation fidelity: rank agreement)."""
  flat = lambda v: v.reshape(v.shape[0], -1)

  def rank(v):  # average ranks of ties (clipped explanations have many), as scipy.stats.spearmanr
    def one(row):
      s = jnp.sort(row)
      return (jnp.searchsorted(s, row, "left") + jnp.searchsorted(s, row, "right") - 1).astype(jnp.float32) / 2

    return jax.vmap(one)(v)

  ra, rb = rank(flat(a)), rank(flat(b))
  ra, rb = ra - jnp.mean(ra, -1, keepdims=True), rb - jnp.mean(rb, -1, keepdims=True)
  return jnp.sum(ra * rb, -1) / jnp.sqrt(jnp.sum(ra**2, -1) * jnp.sum(rb**2, -1) + 1e-12)
