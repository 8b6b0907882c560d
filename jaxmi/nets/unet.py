"""GNIME's ExpMI network (U-Net + flattened-input hybrid) and the prediction-only inverter PredMI.

ExpMI attacks explanations as Zhao, Zhang, Xiao & Lim, "Exploiting Explanations for Model Inversion
Attacks", ICCV 2021, do (their combined flatten + U-Net inverter); the network is the one of
Jeong, Lee, Hwang & Son, "Learning to Generate Inversion-Resistant Model Explanations", NeurIPS 2022.
It maps an explanation [B, h, w, c] and the target's logits [B, K] to an
output of any size: the attack's image (inverter) or a perturbed explanation (GNIME's noise
generator, same family). Encoder: while the side k > 2, Conv(2048/k) + ReLU, keep a skip,
max-pool. Bottleneck: Dense(64) of the encoder, concatenated with the flattened raw input
and the logits, Dense(512), reshaped to 1x1 and upsampled to 4x4. Decoder: for k = 4, 8, ...
below the output side, concatenate the skip of side k (if any), Conv(1024/k) + ReLU, upsample
x2; at the output side, the skip (if any) and a final linear 3x3 conv. At width_divisor=1 every
kernel has the shape of WSP-LAB/GNIME scripts/models.py (``ExpMI(bottleneck_size=2048)``: decoder
256/128/64 channels at 4/8/16 px; ``predmi_*``: 1024/512/256(/128/64) channels at 4/8/16(/32/64)
px, i.e. 4096/k), checked layer by layer in tests/test_gnime.py. Upsampling is
nearest-neighbour + conv, as the reference's UpSampling2D, so no transposed convolution
(XLA:CPU's slow path) is involved.

``width_divisor`` divides every conv channel count and the 512-wide bottleneck (not the
64-wide encoder dense layer), never below 4. The reference's widths cost ~0.35 GFLOP (ExpMI)
and ~1.5 GFLOP (PredMI) per 32-px image forward; CPU configs use 4, tests 16.
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
  out_size: int  # output side (square)
  out_channels: int
  with_logits: bool = True  # False: the explanation alone
  width_divisor: int = 1

  def _ch(self, n: int) -> int:
    return max(n // self.width_divisor, 4)

  @nn.compact
  def __call__(self, explanation, logits=None):
    x = explanation if explanation.ndim == 4 else explanation[..., None]  # Grad-CAM maps: [B, h, w]
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
      y = nn.relu(nn.Conv(self._ch(1024 // side), (3, 3), name=f"dec{side}")(y))
      y = _upsample(y, 2)
      side *= 2
    if side in skips:
      y = jnp.concatenate([y, skips[side]], axis=-1)
    y = nn.Conv(self.out_channels, (3, 3), name="out")(y)
    if side != self.out_size:  # sides that are not 4 * 2^n
      y = jax.image.resize(y, (y.shape[0], self.out_size, self.out_size, self.out_channels), "bilinear")
    return y


class PredMI(nn.Module):
  """Prediction-only inversion: logits -> Dense(1024) -> 4x4 -> [Conv(4096/k) + upsample]* -> image.

  GNIME's baseline (Jeong et al., NeurIPS 2022; ``predmi_*`` in WSP-LAB/GNIME ``scripts/models.py``).

  The reference's ``predmi_mnist``/``predmi_cifar10`` (32 px: 1024, 512, 256 channels at 4, 8, 16 px)
  and ``predmi_celeba`` (128 px: then 128, 64 at 32, 64 px) follow 4096/k at every side k.
  """

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
      y = nn.relu(nn.Conv(ch(4096 // side), (3, 3), name=f"dec{side}")(y))
      y = _upsample(y, 2)
      side *= 2
    y = nn.Conv(self.out_channels, (3, 3), name="out")(y)
    if side != self.out_size:
      y = jax.image.resize(y, (y.shape[0], self.out_size, self.out_size, self.out_channels), "bilinear")
    return y
