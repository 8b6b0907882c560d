"""GNIME's ExpMI network (U-Net + flattened-input hybrid) and the prediction-only inverter PredMI.

ExpMI (gnime.md 3.1) maps an explanation [B, h, w, c] and the target's logits [B, K] to an
output of any size: the attack's image (inverter) or a perturbed explanation (GNIME's noise
generator, same family). Encoder: while the side k > 2, Conv(2048/k) + ReLU, keep a skip,
max-pool. Bottleneck: Dense(64) of the encoder, concatenated with the flattened raw input
and the logits, Dense(512), reshaped to 1x1 and upsampled to 4x4. Decoder: while the side is
below the output's, concatenate the skip of the same size (if any), Conv(1024/2k) + ReLU,
upsample x2; a final linear 3x3 conv. Upsampling is nearest-neighbour + conv, so no
transposed convolution (XLA:CPU's slow path) is involved.

``width_divisor`` divides every channel count (the reference's widths cost ~0.15 GFLOP per
32-px image; CPU tests and demos use 4-8).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


def _upsample(x, factor: int):
  """Nearest-neighbour upsampling as a broadcast (jax.image.resize's gather is ~10x slower on CPU)."""
  b, h, w, c = x.shape
  x = jnp.broadcast_to(x[:, :, None, :, None, :], (b, h, factor, w, factor, c))
  return x.reshape(b, h * factor, w * factor, c)


class ExpMI(nn.Module):
  out_size: int                 # output side (square)
  out_channels: int
  with_logits: bool = True      # False: the explanation alone
  width_divisor: int = 1

  def _ch(self, n: int) -> int:
    return max(n // self.width_divisor, 4)

  @nn.compact
  def __call__(self, explanation, logits=None):
    x = explanation if explanation.ndim == 4 else explanation[..., None]   # Grad-CAM maps: [B, h, w]
    raw = x.reshape(x.shape[0], -1)
    skips = {}
    k = x.shape[1]
    while k > 2:
      x = nn.relu(nn.Conv(self._ch(2048 // k), (3, 3), name=f"enc{k}")(x))
      skips[k] = x
      x = nn.max_pool(x, (2, 2), (2, 2))
      k //= 2
    parts = [nn.relu(nn.Dense(64, name="enc_dense")(x.reshape(x.shape[0], -1))), raw]
    if self.with_logits:
      parts.append(logits)
    z = nn.relu(nn.Dense(self._ch(512), name="bottleneck")(jnp.concatenate(parts, axis=-1)))
    y = _upsample(z[:, None, None, :], 4)
    side = 4
    while side < self.out_size:
      if side in skips:
        y = jnp.concatenate([y, skips[side]], axis=-1)
      y = nn.relu(nn.Conv(self._ch(1024 // (2 * side)), (3, 3), name=f"dec{side}")(y))
      y = _upsample(y, 2)
      side *= 2
    if side in skips:
      y = jnp.concatenate([y, skips[side]], axis=-1)
    y = nn.Conv(self.out_channels, (3, 3), name="out")(y)
    if side != self.out_size:  # sides that are not 4 * 2^n
      y = jax.image.resize(y, (y.shape[0], self.out_size, self.out_size, self.out_channels), "bilinear")
    return y


class PredMI(nn.Module):
  """Prediction-only inversion (gnime.md 3.3): logits -> Dense(1024) -> 4x4 -> [conv + upsample]* -> image."""
  out_size: int
  out_channels: int
  width_divisor: int = 1

  @nn.compact
  def __call__(self, logits):
    ch = lambda n: max(n // self.width_divisor, 4)
    y = nn.relu(nn.Dense(ch(1024), name="dense")(logits))
    y = _upsample(y[:, None, None, :], 4)
    side = 4
    while side < self.out_size:
      y = nn.relu(nn.Conv(ch(1024 // (2 * side)), (3, 3), name=f"dec{side}")(y))
      y = _upsample(y, 2)
      side *= 2
    y = nn.Conv(self.out_channels, (3, 3), name="out")(y)
    if side != self.out_size:
      y = jax.image.resize(y, (y.shape[0], self.out_size, self.out_size, self.out_channels), "bilinear")
    return y
