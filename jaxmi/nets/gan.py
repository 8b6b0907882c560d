"""GMI's GAN prior: the DCGAN generator and the WGAN-GP critic, at 64 px and at 28-32 px.

Generator (GMI/KEDMI/LOMMA ``generator.py``): z (100) -> Linear (no bias) + BN + ReLU to
4x4x(8d) -> stride-2 5x5 transposed convs (8d->4d->2d->d, no bias, BN, ReLU) -> a last
transposed conv with bias -> sigmoid. ``stages`` = 4 gives 64x64 (the reference, d = 64);
3 gives 32x32 (the MNIST-scale variant; 28-px data is resized to 32).

Transposed-conv kernels are stored in PyTorch's ``ConvTranspose2d`` layout (Cin, Cout, 5, 5)
so reference checkpoints load as they are. ``upsample`` picks how they run:
  * "transpose": ``lax.conv_general_dilated`` with lhs dilation, the literal definition;
  * "subpixel": a stride-1 3x3 conv to 4*Cout channels + depth-to-space, computed from the
    same weights. XLA:CPU runs the first (4x4, 512->256) transposed conv pathologically
    slowly (~3 s for batch 64); the sub-pixel form avoids that path. Both are equal up to
    float rounding (tested).

Critic (GMI ``DGWGAN``): 5x5 stride-2 convs, instance norm (affine) after all but the first,
LeakyReLU 0.2, and a final 4x4 valid conv to one score. No BatchNorm, as WGAN-GP requires.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxmi.errors import ConfigError

_DN = ("NHWC", "HWIO", "NHWC")
# Per output phase r (0/1) and 3x3 tap t, the 5x5 kernel index that the stride-2 transposed
# conv (padding 2, output padding 1) uses: k = 4 + r - 2t; 5 means "no tap" (a zero row).
_SUBPIXEL_TAPS = np.array([[4 + r - 2 * t for r in (0, 1)] for t in range(3)])  # [t, r]


def convtranspose_reference(x, w, b=None):
  """PyTorch ``ConvTranspose2d(k=5, s=2, p=2, output_padding=1)`` with weight (Cin, Cout, 5, 5)."""
  k = jnp.flip(w, (2, 3)).transpose(2, 3, 0, 1)
  y = lax.conv_general_dilated(x, k, (1, 1), ((2, 3), (2, 3)), lhs_dilation=(2, 2), dimension_numbers=_DN)
  return y if b is None else y + b[None, None, None, :]


def subpixel_kernel(w):
  """(Cin, Cout, 5, 5) transposed-conv weight -> (3, 3, Cin, 4*Cout) conv weight (phase-major channels)."""
  cin, cout = w.shape[:2]
  padded = jnp.pad(w.transpose(2, 3, 0, 1), ((0, 1), (0, 1), (0, 0), (0, 0)))  # [6, 6, Cin, Cout], row 5 = 0
  ty, ry, tx, rx = np.ix_(range(3), range(2), range(3), range(2))
  v = padded[_SUBPIXEL_TAPS[ty, ry], _SUBPIXEL_TAPS[tx, rx]]  # [3(ty), 2(ry), 3(tx), 2(rx), Cin, Cout]
  return v.transpose(0, 2, 4, 1, 3, 5).reshape(3, 3, cin, 4 * cout)


def convtranspose_subpixel(x, w, b=None):
  n, h, wd, _ = x.shape
  cout = w.shape[1]
  y = lax.conv_general_dilated(x, subpixel_kernel(w), (1, 1), ((1, 1), (1, 1)), dimension_numbers=_DN)
  y = y.reshape(n, h, wd, 2, 2, cout).transpose(0, 1, 3, 2, 4, 5).reshape(n, 2 * h, 2 * wd, cout)
  return y if b is None else y + b[None, None, None, :]


UPSAMPLE = {"transpose": convtranspose_reference, "subpixel": convtranspose_subpixel}


def conv_s2_reference(x, w, b):
  """5x5 stride-2 conv, padding 2 (PyTorch ``Conv2d(k=5, s=2, p=2)``), HWIO weights."""
  return lax.conv_general_dilated(x, w, (2, 2), ((2, 2), (2, 2)), dimension_numbers=_DN) + b[None, None, None, :]


def space_to_depth_kernel(w):
  """(5, 5, Cin, Cout) stride-2 weights -> (3, 3, 4*Cin, Cout) stride-1 weights on space-to-depth input.

  Input row i = 2(o + j) + p (offset j in {-1, 0, 1}, phase p in {0, 1}) meets tap k = 2j + p + 2;
  k = 5 does not exist and reads the zero padding row.
  """
  cin, cout = w.shape[2:]
  padded = jnp.pad(w, ((0, 1), (0, 1), (0, 0), (0, 0)))  # [6, 6, Cin, Cout]
  v = padded.reshape(3, 2, 3, 2, cin, cout)               # [jy, py, jx, px, Cin, Cout]
  return v.transpose(0, 2, 1, 3, 4, 5).reshape(3, 3, 4 * cin, cout)


def conv_s2_space_to_depth(x, w, b):
  n, h, wd, c = x.shape
  x = x.reshape(n, h // 2, 2, wd // 2, 2, c).transpose(0, 1, 3, 2, 4, 5).reshape(n, h // 2, wd // 2, 4 * c)
  y = lax.conv_general_dilated(x, space_to_depth_kernel(w), (1, 1), ((1, 1), (1, 1)), dimension_numbers=_DN)
  return y + b[None, None, None, :]


DOWNSAMPLE = {"direct": conv_s2_reference, "space_to_depth": conv_s2_space_to_depth}


class DownConv(nn.Module):
  """5x5 stride-2 conv that halves H and W, same parameters as ``nn.Conv(f, (5, 5), 2, padding=2)``.

  Its input gradient (needed by WGAN-GP and by every inversion step) is an lhs-dilated conv in
  the direct form, which XLA:CPU runs ~8x slower than the forward pass; the space-to-depth form
  is a stride-1 conv whose gradients are stride-1 convs too.
  """
  features: int
  downsample: str = "space_to_depth"

  @nn.compact
  def __call__(self, x):
    w = self.param("kernel", nn.initializers.lecun_normal(), (5, 5, x.shape[-1], self.features))
    b = self.param("bias", nn.initializers.zeros, (self.features,))
    return DOWNSAMPLE[self.downsample](x, w.astype(x.dtype), b.astype(x.dtype))


class UpConv(nn.Module):
  """Stride-2 5x5 transposed conv that doubles H and W, with weights in PyTorch layout."""
  features: int
  use_bias: bool = False
  upsample: str = "subpixel"

  @nn.compact
  def __call__(self, x):
    cin = x.shape[-1]
    # PyTorch's default ConvTranspose2d init (kaiming-uniform, a=sqrt(5)) uses fan_in = Cout * 25.
    bound = 1.0 / np.sqrt(self.features * 25)
    init = lambda key, shape: jax.random.uniform(key, shape, jnp.float32, -bound, bound)
    w = self.param("kernel", init, (cin, self.features, 5, 5))
    b = self.param("bias", init, (self.features,)) if self.use_bias else None
    return UPSAMPLE[self.upsample](x, w.astype(x.dtype), None if b is None else b.astype(x.dtype))


@dataclasses.dataclass(frozen=True, kw_only=True)
class GANConfig:
  z_dim: int = 100
  base_width: int = 64        # d: the last hidden stage's channels; the first has d * 2**(stages-1)
  stages: int = 4             # upsampling stages after 4x4: 4 -> 64 px, 3 -> 32 px
  channels: int = 3
  upsample: str = "subpixel"  # subpixel | transpose (same weights)

  @property
  def image_size(self) -> int:
    return 4 * 2**self.stages


class Generator(nn.Module):
  cfg: GANConfig

  @nn.compact
  def __call__(self, z, train: bool = False):
    c = self.cfg
    if c.upsample not in UPSAMPLE:
      raise ConfigError(f"gan.upsample: unknown '{c.upsample}'; expected one of {', '.join(UPSAMPLE)}")
    top = c.base_width * 2 ** (c.stages - 1)
    bn = lambda name: nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name=name)
    x = nn.Dense(top * 16, use_bias=False, name="l1")(z)
    x = nn.relu(bn("l1_bn")(x))
    # PyTorch reshapes (N, C*16) to NCHW; keep that order so imported weights mean the same.
    x = x.reshape(-1, top, 4, 4).transpose(0, 2, 3, 1)
    for i in range(c.stages - 1):
      x = UpConv(top // 2 ** (i + 1), upsample=c.upsample, name=f"up{i}")(x)
      x = nn.relu(bn(f"up{i}_bn")(x))
    x = UpConv(c.channels, use_bias=True, upsample=c.upsample, name=f"up{c.stages - 1}")(x)
    return nn.sigmoid(x)


class InstanceNorm(nn.Module):
  """Per-example, per-channel normalisation with affine parameters (PyTorch InstanceNorm2d(affine=True))."""
  epsilon: float = 1e-5

  @nn.compact
  def __call__(self, x):
    mean = jnp.mean(x, axis=(1, 2), keepdims=True)
    var = jnp.var(x, axis=(1, 2), keepdims=True)
    scale = self.param("scale", nn.initializers.ones, (x.shape[-1],))
    bias = self.param("bias", nn.initializers.zeros, (x.shape[-1],))
    return (x - mean) * lax.rsqrt(var + self.epsilon) * scale[None, None, None, :] + bias[None, None, None, :]


class Critic(nn.Module):
  """WGAN-GP critic; also used as the prior term -D(G(z)) in the attacks."""
  base_width: int = 64
  stages: int = 4             # stride-2 stages down to 4x4: 4 for 64 px, 3 for 32 px
  downsample: str = "space_to_depth"  # space_to_depth | direct (same weights)

  @nn.compact
  def __call__(self, x):
    for i in range(self.stages):
      x = DownConv(self.base_width * 2**i, self.downsample, name=f"conv{i}")(x)
      if i > 0:
        x = InstanceNorm(name=f"in{i}")(x)
      x = nn.leaky_relu(x, 0.2)
    x = nn.Conv(1, (4, 4), padding="VALID", name="score")(x)
    return x.reshape(x.shape[0])


def build_gan(cfg: GANConfig, critic_width: int | None = None):
  if cfg.stages not in (3, 4):
    raise ConfigError(f"gan.stages: expected 3 (32 px) or 4 (64 px), got {cfg.stages}")
  return Generator(cfg), Critic(base_width=critic_width or cfg.base_width, stages=cfg.stages)
