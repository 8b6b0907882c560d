"""PLG-MI's conditional GAN: a ResNet generator with categorical conditional BatchNorm, an SN-ResNet projection
discriminator.

Yuan, Chen, Yang, Zhang & Wu, "Pseudo Label-Guided Model Inversion Attack via Conditional Generative Adversarial
Network", AAAI 2023 (official code: LetheSec/PLG-MI-Attack), which takes both networks from Miyato & Koyama,
"cGANs with Projection Discriminator", ICLR 2018, and the spectral normalisation of Miyato et al., ICLR 2018.

Generator (``models/generators/resnet64.py``, ``resblocks.py``): z -> Linear(z_dim -> 2^blocks * nf * 4 * 4) ->
``blocks`` residual up-blocks halving the width (x2 upsampling, categorical conditional BN, ReLU, 3x3 convs; the
shortcut upsamples then a 1x1 conv) -> BN -> ReLU -> Conv1x1(nf -> channels) -> tanh. The reference: nf = 64,
4 blocks (1024 -> 512 -> 256 -> 128 -> 64) to 64 px RGB, bilinear upsampling; 3 blocks give 32 px.
Its ``_initialize`` methods are never called, so its layers keep PyTorch's default init (as here).

Conditional BN (``links/conditional_batchnorm.py``): BatchNorm without its own affine, then per-class scale and
shift looked up in two [K, C] embeddings initialised to ones and zeros. Every BatchNorm here keeps PyTorch's
running statistics (momentum 0.1, UNBIASED running variance), which the eval-mode generator of the attack uses.

Discriminator (``models/discriminators/snresnet64.py``, ``resblocks.py``): OptimizedBlock(channels -> nf) then
``blocks`` residual down-blocks doubling the width (ReLU, SN 3x3 convs, 2x2 average pooling; the shortcut is an
SN 1x1 conv then pooling) -> ReLU -> global SUM pool -> h; output SN-Linear(h -> 1) + <SN-Embed(y), h>. Xavier-
uniform init (gain sqrt 2 in the residual convs) as its ``_initialize``.

Spectral normalisation follows ``torch.nn.utils.spectral_norm``, not ``flax.linen.SpectralNorm`` (which runs a
power iteration even in eval mode and stores no v): W is viewed as [out, fan_in]; a training forward does one
power iteration v = W^T u / |W^T u|, u = W v / |W v| and stores u and v; eval uses the stored ones as they are;
sigma = u^T W v with u, v treated as constants, and the layer uses W / sigma. u and v live in the mutable
collection ``"spectral"`` (apply with ``mutable=["spectral"]`` when ``train=True``).

Image ranges: the generator's ``output`` field. "unit" returns (tanh + 1) / 2 in [0, 1], what jaxmi's targets and
evaluation models are trained on; "tanh" returns the raw tanh output in [-1, 1], which the reference feeds to its
[0, 1]-trained target and which learns to lie in [0, 1]. The trainer's default is "tanh": "unit" collapses on MNIST
(``jaxmi.train.gan`` says why, and what each discriminator sees). These networks compute what the reference's do
(tests/test_plg.py compares a training step with a PyTorch model of the official code)."""

from __future__ import annotations

import math
import typing

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from jaxmi.errors import ConfigError
from jaxmi.nets.gan import TorchBatchNorm

_DN = ("NHWC", "HWIO", "NHWC")
SPECTRAL = "spectral"  # the collection holding the power-iteration vectors
PLG_UPSAMPLE = ("bilinear", "nearest")
PLG_OUTPUTS = ("unit", "tanh")


def torch_default_init(fan_in: int):
  """PyTorch's default Linear/Conv2d init for weights and biases: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  bound = 1.0 / math.sqrt(fan_in)
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


def xavier_uniform(gain: float = 1.0):
  """``torch.nn.init.xavier_uniform_``: U(+-gain sqrt(6 / (fan_in + fan_out))), receptive field included."""
  return nn.initializers.variance_scaling(gain**2, "fan_avg", "uniform")


def upsample2x(x: jax.Array, mode: str = "bilinear") -> jax.Array:
  """x [N, H, W, C] -> [N, 2H, 2W, C]. "bilinear" is ``F.interpolate(scale 2, mode="bilinear",
  align_corners=False)``: output 2i samples 0.75 x[i] + 0.25 x[i-1], output 2i+1 0.75 x[i] + 0.25 x[i+1], with
  the edge row repeated; written as shifted slices (no resampling matrices, fast on CPU in both directions)."""
  if mode == "nearest":
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
  if mode != "bilinear":
    raise ConfigError(f"gan.upsample: kind=plg upsamples with one of {', '.join(PLG_UPSAMPLE)}, got '{mode}'")

  def axis2x(x, axis):
    n = x.shape[axis]
    take = lambda start, stop: lax.slice_in_dim(x, start, stop, axis=axis)
    prev = jnp.concatenate([take(0, 1), take(0, n - 1)], axis=axis)
    nxt = jnp.concatenate([take(1, n), take(n - 1, n)], axis=axis)
    even, odd = 0.75 * x + 0.25 * prev, 0.75 * x + 0.25 * nxt
    stacked = jnp.stack([even, odd], axis=axis + 1)
    return stacked.reshape(*x.shape[:axis], 2 * n, *x.shape[axis + 1 :])

  return axis2x(axis2x(x, 1), 2)


def avg_pool2x(x: jax.Array) -> jax.Array:
  """2x2 average pooling, stride 2 (``F.avg_pool2d(x, 2)``) as a reshape-mean (XLA:CPU's reduce_window is slow)."""
  n, h, w, c = x.shape
  return x.reshape(n, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


class Conv(nn.Module):
  """Stride-1 'same' KxK conv with bias, PyTorch's default init (the generator's layers)."""

  features: int
  kernel_size: int = 3

  @nn.compact
  def __call__(self, x):
    k, cin = self.kernel_size, x.shape[-1]
    init = torch_default_init(cin * k * k)
    w = self.param("kernel", init, (k, k, cin, self.features))
    b = self.param("bias", init, (self.features,))
    p = (k - 1) // 2
    return lax.conv_general_dilated(x, w, (1, 1), ((p, p), (p, p)), dimension_numbers=_DN) + b[None, None, None, :]


def _normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  """``F.normalize(x, dim=0, eps)``: x / max(|x|, eps)."""
  return x / jnp.maximum(jnp.linalg.norm(x), eps)


def spectral_normalize(module: nn.Module, w: jax.Array, train: bool) -> jax.Array:
  """W / sigma(W) for W [out, fan_in] in ``torch.nn.utils.spectral_norm``'s layout, one power iteration per
  training forward (u [out], v [fan_in] stored in ``module``'s ``"spectral"`` collection)."""
  out, fan_in = w.shape
  # torch draws both from N(0, 1) and normalises them; the lambdas run only when the variables are created.
  u_var = module.variable(SPECTRAL, "u", lambda: _normalize(jax.random.normal(module.make_rng("params"), (out,))))
  v_var = module.variable(SPECTRAL, "v", lambda: _normalize(jax.random.normal(module.make_rng("params"), (fan_in,))))
  u, v = u_var.value, v_var.value
  if train:
    w_const = lax.stop_gradient(w)
    v = _normalize(w_const.T @ u)
    u = _normalize(w_const @ v)
    if not module.is_initializing():
      u_var.value, v_var.value = u, v
  u, v = lax.stop_gradient(u), lax.stop_gradient(v)
  sigma = u @ (w @ v)
  return w / sigma


class SNConv(nn.Module):
  """Spectrally normalised stride-1 'same' KxK conv with bias (``spectral_norm(nn.Conv2d(...))``)."""

  features: int
  kernel_size: int = 3
  gain: float = 1.0  # xavier-uniform gain of the weight

  @nn.compact
  def __call__(self, x, train: bool):
    k, cin = self.kernel_size, x.shape[-1]
    w = self.param("kernel", xavier_uniform(self.gain), (k, k, cin, self.features))
    b = self.param("bias", torch_default_init(cin * k * k), (self.features,))
    w = spectral_normalize(self, w.reshape(-1, self.features).T, train).T.reshape(w.shape)
    p = (k - 1) // 2
    return lax.conv_general_dilated(x, w, (1, 1), ((p, p), (p, p)), dimension_numbers=_DN) + b[None, None, None, :]


class SNDense(nn.Module):
  """Spectrally normalised Linear with bias, xavier-uniform weight."""

  features: int

  @nn.compact
  def __call__(self, x, train: bool):
    w = self.param("kernel", xavier_uniform(), (x.shape[-1], self.features))
    b = self.param("bias", torch_default_init(x.shape[-1]), (self.features,))
    return x @ spectral_normalize(self, w.T, train).T + b[None, :]


class SNEmbed(nn.Module):
  """Spectrally normalised embedding table [K, F] (``spectral_norm(nn.Embedding(K, F))``: W is the table)."""

  num_embeddings: int
  features: int

  @nn.compact
  def __call__(self, labels, train: bool):
    table = self.param("embedding", xavier_uniform(), (self.num_embeddings, self.features))
    return spectral_normalize(self, table, train)[labels]


class CategoricalConditionalBatchNorm(nn.Module):
  """BatchNorm without affine, then per-class ``weights[y] * x_hat + biases[y]`` ([K, C] tables, init 1 and 0).

  Batch statistics (biased variance) in training, running ones in eval; running mean/var updated as PyTorch's
  (momentum 0.1, unbiased variance), eps 1e-5.
  """

  num_classes: int
  momentum: float = 0.1
  epsilon: float = 1e-5

  @nn.compact
  def __call__(self, x, labels, train: bool):
    c = x.shape[-1]
    weights = self.param("weights", nn.initializers.ones, (self.num_classes, c))
    biases = self.param("biases", nn.initializers.zeros, (self.num_classes, c))
    ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
    ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))
    if train:
      mean = jnp.mean(x, axis=(0, 1, 2))
      var = jnp.mean(jnp.square(x - mean[None, None, None, :]), axis=(0, 1, 2))
      if not self.is_initializing():
        count = x.size // c
        ra_mean.value = (1 - self.momentum) * ra_mean.value + self.momentum * mean
        ra_var.value = (1 - self.momentum) * ra_var.value + self.momentum * var * (count / max(count - 1, 1))
    else:
      mean, var = ra_mean.value, ra_var.value
    x_hat = (x - mean[None, None, None, :]) * lax.rsqrt(var + self.epsilon)[None, None, None, :]
    return weights[labels][:, None, None, :] * x_hat + biases[labels][:, None, None, :]


class GenBlock(nn.Module):
  """The generator's residual up-block: shortcut c_sc(up(x)); residual c2(relu(b2(c1(up(relu(b1(x, y)))), y)))."""

  features: int
  num_classes: int
  upsample: str = "bilinear"

  @nn.compact
  def __call__(self, x, labels, train: bool):
    shortcut = Conv(self.features, 1, name="c_sc")(upsample2x(x, self.upsample))
    h = nn.relu(CategoricalConditionalBatchNorm(self.num_classes, name="b1")(x, labels, train))
    h = Conv(self.features, 3, name="c1")(upsample2x(h, self.upsample))
    h = nn.relu(CategoricalConditionalBatchNorm(self.num_classes, name="b2")(h, labels, train))
    return shortcut + Conv(self.features, 3, name="c2")(h)


class ResNetGenerator(nn.Module):
  """PLG-MI's conditional generator: ``apply(variables, z [B, z_dim], labels int [B], train=...)`` -> images
  [B, S, S, channels], S = 4 * 2^blocks, in [0, 1] (``output="unit"``) or [-1, 1] (``output="tanh"``)."""

  num_classes: int
  z_dim: int = 128
  num_features: int = 64  # nf: the last block's width; the first has nf * 2^blocks
  blocks: int = 4  # up-blocks after 4x4: 4 -> 64 px (the reference), 3 -> 32 px
  channels: int = 3
  upsample: typing.Literal["bilinear", "nearest"] = "bilinear"
  output: typing.Literal["unit", "tanh"] = "unit"
  bottom_width: int = 4

  @nn.compact
  def __call__(self, z, labels, train: bool = False):
    if self.output not in PLG_OUTPUTS:
      raise ConfigError(f"plg.output: expected one of {', '.join(PLG_OUTPUTS)}, got '{self.output}'")
    top, s = self.num_features * 2**self.blocks, self.bottom_width
    h = nn.Dense(
      top * s * s, kernel_init=torch_default_init(self.z_dim), bias_init=torch_default_init(self.z_dim), name="l1"
    )(z)
    # PyTorch views (N, C*s*s) as NCHW; keep that order so the layout means the same.
    h = h.reshape(-1, top, s, s).transpose(0, 2, 3, 1)
    for i in range(self.blocks):
      h = GenBlock(top // 2 ** (i + 1), self.num_classes, self.upsample, name=f"block{i + 2}")(h, labels, train)
    h = nn.relu(TorchBatchNorm(use_running_average=not train, name=f"b{self.blocks + 2}")(h))
    h = jnp.tanh(Conv(self.channels, 1, name=f"conv{self.blocks + 2}")(h))
    return (h + 1.0) / 2.0 if self.output == "unit" else h


class OptimizedBlock(nn.Module):
  """The discriminator's first block: shortcut c_sc(pool(x)); residual pool(c2(relu(c1(x))))."""

  features: int

  @nn.compact
  def __call__(self, x, train: bool):
    shortcut = SNConv(self.features, 1, name="c_sc")(avg_pool2x(x), train)
    h = nn.relu(SNConv(self.features, 3, math.sqrt(2), name="c1")(x, train))
    return shortcut + avg_pool2x(SNConv(self.features, 3, math.sqrt(2), name="c2")(h, train))


class DisBlock(nn.Module):
  """The discriminator's residual down-block (hidden width = input width): shortcut pool(c_sc(x));
  residual pool(c2(relu(c1(relu(x)))))."""

  features: int

  @nn.compact
  def __call__(self, x, train: bool):
    shortcut = avg_pool2x(SNConv(self.features, 1, name="c_sc")(x, train))
    h = SNConv(x.shape[-1], 3, math.sqrt(2), name="c1")(nn.relu(x), train)
    h = SNConv(self.features, 3, math.sqrt(2), name="c2")(nn.relu(h), train)
    return shortcut + avg_pool2x(h)


class SNResNetProjectionDiscriminator(nn.Module):
  """PLG-MI's projection discriminator: ``apply(variables, x [B, S, S, C], labels int [B], train=...)`` -> [B]
  scores l6(h) + <l_y(y), h>, h the sum-pooled features. Images as the generator's raw scale (see the trainer)."""

  num_classes: int
  num_features: int = 64
  blocks: int = 4  # down-blocks after the optimized block: nf -> nf * 2^blocks

  @nn.compact
  def __call__(self, x, labels, train: bool = False):
    h = OptimizedBlock(self.num_features, name="block1")(x, train)
    for i in range(self.blocks):
      h = DisBlock(self.num_features * 2 ** (i + 1), name=f"block{i + 2}")(h, train)
    h = jnp.sum(nn.relu(h), axis=(1, 2))
    out = SNDense(1, name=f"l{self.blocks + 2}")(h, train)[:, 0]
    return out + jnp.sum(SNEmbed(self.num_classes, h.shape[-1], name="l_y")(labels, train) * h, axis=-1)


def max_margin(logits: jax.Array, label: jax.Array) -> jax.Array:
  """PLG-MI's max-margin identity loss, -l_y + max_{k != y} l_k, of one example's logits [K] (Yuan et al., AAAI 2023,
  Eq. 6; official ``losses.max_margin_loss``). Unlike cross-entropy its gradient does not fade once the class
  leads, and it rewards lowering only the strongest rival, not every other logit. Here, below both the GAN's
  training (``jaxmi.train.gan``) and the attacks' identity term (``jaxmi.attacks.terms``), which share it."""
  others = jnp.where(jnp.arange(logits.shape[-1]) == label, -jnp.inf, logits)
  return jnp.max(others, axis=-1) - logits[..., label]


def build_plg(
  num_classes: int,
  *,
  z_dim: int = 128,
  num_features: int = 64,
  critic_features: int | None = None,
  blocks: int = 4,
  channels: int = 3,
  upsample: str = "bilinear",
  output: str = "unit",
):
  """(ResNetGenerator, SNResNetProjectionDiscriminator) at the reference's widths by default (64 px RGB)."""
  if num_classes <= 0:
    raise ConfigError("kind: a PLG-MI GAN is conditioned on the target's classes; num_classes must be positive")
  if upsample not in PLG_UPSAMPLE:
    raise ConfigError(f"gan.upsample: kind=plg upsamples with one of {', '.join(PLG_UPSAMPLE)}, got '{upsample}'")
  if output not in PLG_OUTPUTS:
    raise ConfigError(f"plg.output: expected one of {', '.join(PLG_OUTPUTS)}, got '{output}'")
  gen = ResNetGenerator(num_classes, z_dim, num_features, blocks, channels, upsample, output)
  return gen, SNResNetProjectionDiscriminator(num_classes, critic_features or num_features, blocks)
