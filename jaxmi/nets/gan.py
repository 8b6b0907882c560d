"""GMI's GAN prior: the DCGAN generator and the WGAN-GP critic, at 64 px and at 28-32 px.

GMI: Zhang, Jia, Pei, Wang, Li & Song, "The Secret Revealer: Generative Model-Inversion Attacks
Against Deep Neural Networks", CVPR 2020 (official code: AI-secure/GMI-Attack).

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
KEDMI's discriminator (``KEDMIDiscriminator``) shares the conv trunk style and predicts the
target's K classes. Both expose ``realism(x)``, the score the attacks' prior maximises.
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


def space_to_depth_kernel(w, padding: int):
  """(K, K, Cin, Cout) stride-2 weights -> (T, T, 4*Cin, Cout) stride-1 weights on space-to-depth input.

  Input row i = 2o + k - padding = 2(o + j) + p (offset j, phase p in {0, 1}) meets tap k, so
  k + padding % 2 = 2(j + ceil(padding / 2)) + p; the kernel is zero-padded in front (odd
  padding) and at the back to an even length 2T, whose missing taps read zeros. K = 5, padding
  2 gives T = 3; K = 3, padding 1 (KEDMI's last stage) gives T = 2.
  """
  size, _, cin, cout = w.shape
  front = padding % 2
  taps = -(-(size + front) // 2)
  back = 2 * taps - size - front
  padded = jnp.pad(w, ((front, back), (front, back), (0, 0), (0, 0)))  # [2T, 2T, Cin, Cout]
  v = padded.reshape(taps, 2, taps, 2, cin, cout)  # [jy, py, jx, px, Cin, Cout]
  return v.transpose(0, 2, 1, 3, 4, 5).reshape(taps, taps, 4 * cin, cout)


def _s2d_padding(size: int, padding: int) -> tuple[int, int]:
  low = -(-padding // 2)
  return low, -(-(size + padding % 2) // 2) - 1 - low


def conv_s2_reference(x, w, b):
  """KxK stride-2 conv with padding (K-1)/2 (PyTorch ``Conv2d(k, s=2, p=(k-1)//2)``), HWIO weights."""
  pad = (w.shape[0] - 1) // 2
  return (
    lax.conv_general_dilated(x, w, (2, 2), ((pad, pad), (pad, pad)), dimension_numbers=_DN) + b[None, None, None, :]
  )


def conv_s2_space_to_depth(x, w, b):
  n, h, wd, c = x.shape
  pad = (w.shape[0] - 1) // 2
  x = x.reshape(n, h // 2, 2, wd // 2, 2, c).transpose(0, 1, 3, 2, 4, 5).reshape(n, h // 2, wd // 2, 4 * c)
  lo_hi = _s2d_padding(w.shape[0], pad)
  y = lax.conv_general_dilated(x, space_to_depth_kernel(w, pad), (1, 1), (lo_hi, lo_hi), dimension_numbers=_DN)
  return y + b[None, None, None, :]


DOWNSAMPLE = {"direct": conv_s2_reference, "space_to_depth": conv_s2_space_to_depth}


class DownConv(nn.Module):
  """KxK stride-2 conv that halves H and W, same parameters as ``nn.Conv(f, (K, K), 2, padding=(K-1)//2)``.

  Its input gradient (needed by WGAN-GP and by every inversion step) is an lhs-dilated conv in
  the direct form, which XLA:CPU runs ~8x slower than the forward pass; the space-to-depth form
  is a stride-1 conv whose gradients are stride-1 convs too.
  """

  features: int
  downsample: str = "space_to_depth"
  kernel_size: int = 5

  @nn.compact
  def __call__(self, x):
    k = self.kernel_size
    w = self.param("kernel", nn.initializers.lecun_normal(), (k, k, x.shape[-1], self.features))
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
  base_width: int = 64  # d: the last hidden stage's channels; the first has d * 2**(stages-1)
  stages: int = 4  # upsampling stages after 4x4: 4 -> 64 px, 3 -> 32 px
  channels: int = 3
  upsample: str = "subpixel"  # subpixel | transpose (same weights)

  @property
  def image_size(self) -> int:
    return 4 * 2**self.stages


def statistics_dtype(x) -> jnp.dtype:
  """Normalisation statistics are computed in at least float32 (bfloat16 loses them to cancellation) and in
  float64 when the input is: the float64 comparisons with PyTorch then hold to float64 rounding."""
  return jnp.promote_types(x.dtype, jnp.float32)


class TorchBatchNorm(nn.Module):
  """BatchNorm with ``nn.BatchNorm``'s variables whose running variance averages the UNBIASED batch variance.

  PyTorch's BatchNorm does (x n/(n-1), n = values per channel); Flax's averages the biased one. Normalisation
  itself (biased batch variance in training, running statistics in eval) is the same in both.
  """

  use_running_average: bool
  momentum: float = 0.9
  epsilon: float = 1e-5

  @nn.compact
  def __call__(self, x):
    n = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (n,))
    bias = self.param("bias", nn.initializers.zeros, (n,))
    ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((n,), jnp.float32))
    ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((n,), jnp.float32))
    stat = statistics_dtype(x)
    h = x.astype(stat)
    row = lambda v: v.reshape((1,) * (x.ndim - 1) + (n,))
    if self.use_running_average:
      mean, var = ra_mean.value, ra_var.value
    else:
      axes = tuple(range(x.ndim - 1))
      mean = jnp.mean(h, axes)
      var = jnp.mean(jnp.square(h - row(mean)), axes)
      if not self.is_initializing():
        count = h.size // n
        ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
        ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var * (count / max(count - 1, 1))
    y = (h - row(mean)) * row(scale.astype(stat) * lax.rsqrt(var + self.epsilon)) + row(bias.astype(stat))
    return y.astype(jnp.result_type(x, scale))


class Generator(nn.Module):
  cfg: GANConfig
  # True: BatchNorm running variances update as PyTorch's do (TorchBatchNorm), for training on from imported
  # weights; same variables, same eval-mode output. False (the default) keeps nn.BatchNorm and existing results.
  torch_batch_norm: bool = False

  @nn.compact
  def __call__(self, z, train: bool = False):
    c = self.cfg
    if c.upsample not in UPSAMPLE:
      raise ConfigError(f"gan.upsample: unknown '{c.upsample}'; expected one of {', '.join(UPSAMPLE)}")
    top = c.base_width * 2 ** (c.stages - 1)
    norm = TorchBatchNorm if self.torch_batch_norm else nn.BatchNorm
    bn = lambda name: norm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name=name)
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
    # Statistics (and their backward pass, a difference of near-equal sums) in float32 even under
    # bfloat16 compute: in bf16 they lose most of the gradient to cancellation.
    stat = statistics_dtype(x)
    h = x.astype(stat)
    mean = jnp.mean(h, axis=(1, 2), keepdims=True)
    var = jnp.var(h, axis=(1, 2), keepdims=True)
    scale = self.param("scale", nn.initializers.ones, (x.shape[-1],))
    bias = self.param("bias", nn.initializers.zeros, (x.shape[-1],))
    h = (h - mean) * lax.rsqrt(var + self.epsilon) * scale[None, None, None, :].astype(stat)
    return (h + bias[None, None, None, :].astype(stat)).astype(x.dtype)


class Critic(nn.Module):
  """WGAN-GP critic; also used as the prior term -D(G(z)) in the attacks."""

  base_width: int = 64
  stages: int = 4  # stride-2 stages down to 4x4: 4 for 64 px, 3 for 32 px
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

  def realism(self, x):
    """The attack prior's score s(x) (the loss is -s): the critic value D(x)."""
    return self(x)


class MinibatchDiscrimination(nn.Module):
  """Salimans et al. (2016): per example, how close the others in its batch are.

  M = x T ([N, kernels, kernel_dim]); o_i,b = sum_{j != i} exp(-||M_i,b - M_j,b||_1);
  returns [x, o]. T ~ N(0, 1) as in KEDMI, which makes the L1 distances between distinct
  4096-d features so large that o is ~0 unless two examples nearly coincide. With a batch of
  one (how the attack engine applies the prior, per latent) o is exactly 0.
  """

  kernels: int = 64
  kernel_dim: int = 50

  @nn.compact
  def __call__(self, x):
    t = self.param("T", nn.initializers.normal(1.0), (x.shape[-1], self.kernels, self.kernel_dim))
    m = jnp.einsum("na,abc->nbc", x, t.astype(x.dtype))

    def closeness_of(m_i):  # [kernels, kernel_dim] -> [kernels]
      return jnp.sum(jnp.exp(-jnp.sum(jnp.abs(m_i[None] - m), axis=-1)), axis=0)

    # One row at a time: XLA:CPU materialises the [N, N, kernels, kernel_dim] difference of the
    # broadcast form and its gradient (0.19 s per batch of 64); row by row it stays in cache (0.025 s).
    closeness = jax.lax.map(closeness_of, m) - 1.0  # drop the self term exp(0)
    return jnp.concatenate([x, closeness], axis=-1)


class KEDMIDiscriminator(nn.Module):
  """KEDMI's inversion-specific discriminator: K class logits, realness from their logsumexp.

  5x5 stride-2 convs (d, 2d, 4d) with instance norm and LeakyReLU(0.2) after each, plus a 3x3
  stride-2 conv (4d -> 4d) at 64 px, down to 4x4x4d = ``feat`` (4096-d at d = 64), then
  minibatch discrimination (+64) and Linear(-> K). The "K+1" formulation: with Z = sum_k
  exp(l_k), P(real | x) = Z / (Z + 1) = sigmoid(logsumexp(l)). Chen, Kahla, Jia & Qi, "Knowledge-
  Enriched Distributional Model Inversion Attacks", ICCV 2021 (official code: SCccc21/Knowledge-
  Enriched-DMI, ``k+1_gan.py``, ``MinibatchDiscriminator``).
  """

  num_classes: int
  base_width: int = 64
  stages: int = 4  # 4 for 64 px (three 5x5 + one 3x3 stage), 3 for 32 px
  mbd_kernels: int = 64
  mbd_kernel_dim: int = 50
  downsample: str = "space_to_depth"

  @nn.compact
  def __call__(self, x):
    """Returns (feat [N, 16 * 4d], logits [N, K])."""
    widths = [self.base_width * 2**i for i in range(3)] + [self.base_width * 4] * (self.stages - 3)
    for i, width in enumerate(widths):
      x = DownConv(width, self.downsample, kernel_size=5 if i < 3 else 3, name=f"conv{i}")(x)
      x = nn.leaky_relu(InstanceNorm(name=f"in{i}")(x), 0.2)
    # PyTorch flattens NCHW; keep that order so imported weights mean the same.
    feat = x.transpose(0, 3, 1, 2).reshape(x.shape[0], -1)
    h = MinibatchDiscrimination(self.mbd_kernels, self.mbd_kernel_dim, name="mbd")(feat)
    return feat, nn.Dense(self.num_classes, name="fc")(h)

  def realism(self, x):
    """log P(real | x) = log sigmoid(logsumexp(l)); KEDMI's prior loss is its negative."""
    _, logits = self(x)
    return jax.nn.log_sigmoid(jax.nn.logsumexp(logits, axis=-1))


GAN_KINDS = ("gmi", "kedmi")


def build_gan(cfg: GANConfig, critic_width: int | None = None, *, kind: str = "gmi", num_classes: int = 0):
  """(generator, critic): GMI's WGAN-GP critic, or KEDMI's K-class discriminator (``num_classes`` = K)."""
  if cfg.stages not in (3, 4):
    raise ConfigError(f"gan.stages: expected 3 (32 px) or 4 (64 px), got {cfg.stages}")
  width = critic_width or cfg.base_width
  if kind == "gmi":
    return Generator(cfg), Critic(base_width=width, stages=cfg.stages)
  if kind == "kedmi":
    if num_classes <= 0:
      raise ConfigError("kind: a KEDMI discriminator predicts the target's classes; num_classes must be positive")
    return Generator(cfg), KEDMIDiscriminator(num_classes, base_width=width, stages=cfg.stages)
  raise ConfigError(f"kind: unknown GAN kind '{kind}'; expected one of {', '.join(GAN_KINDS)}")
