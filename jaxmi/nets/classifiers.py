"""Image classifiers that expose logits, penultimate features and hidden activations.

Every classifier maps images in [0, 1] (NHWC, no mean/std normalisation, as in the MI
literature) to a ``ClassifierOutput``. Attacks need the logits, metrics (KNN distance,
feature-FID) and LOMMA need the penultimate ``features``, BiDO needs the ``hidden``
block outputs; so all three come out of every forward pass.

Architectures:
  * ``cnn``: a small conv net for MNIST-scale inputs (28-32 px).
  * ``resnet``: a ResNet with basic blocks for 32-112 px faces (``resnet18`` layout by default).
  * ``vgg``: VGG with BatchNorm (``vgg16`` layout by default), the standard MI target; at 64 px
    its features are 512x2x2 = 2048 as in the reference VGG16 target. Its hidden codes are the
    pooled blocks but the last, then BN1d(flatten(last block)) = the features, as BiDO's VGG16.
Heads are a separate module so defenses can swap them (CALoR's low-rank head, MID's VIB).
Each hidden output passes through ``self.perturb("hidden<i>")``: an identity unless a
``perturbations`` collection is supplied, whose gradient is then d(output)/d(hidden<i>)
(Grad-CAM's channel weights) without a second forward pass.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

VGG16_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class Posterior(NamedTuple):
  """A stochastic head's Gaussian code N(mu, sigma^2), each [B, k] (the VIB head's: MID's KL reads it)."""

  mu: Any
  sigma: Any


class ClassifierOutput(NamedTuple):
  """What every classifier's forward pass returns."""

  logits: Any  # [B, num_classes]
  features: Any  # [B, feature_dim] penultimate representation
  hidden: tuple  # block outputs, shallow to deep, each [B, ...]
  posterior: Posterior | None = None  # the head's code when it has one (VIB), else None


# The random stream stochastic layers sample from in training mode (the VIB head's z); the train step supplies it.
SAMPLE_RNG = "sample"


def _output(head_out, features, hidden) -> ClassifierOutput:
  """A head returns its logits, or (logits, Posterior) when its code is stochastic (the VIB head)."""
  logits, posterior = head_out if isinstance(head_out, tuple) else (head_out, None)
  return ClassifierOutput(logits, features, tuple(hidden), posterior)


NORMS = ("batch", "group")


def _norm(x, train: bool, kind: str = "batch", name: str | None = None):
  """BatchNorm (the MI literature's default) or GroupNorm (per-example: what DP-SGD needs).

  Call inside a compact method. ``use_running_average`` is passed at call time so a method
  interceptor can run chosen layers in inference mode (TL-DMI's frozen layers).
  """
  if kind == "group":
    # Feature vectors ([B, D]) have no spatial extent: one group (layer norm), or each value would be
    # normalised alone to 0. Feature maps: up to 32 groups.
    groups = 1 if x.ndim == 2 else math.gcd(x.shape[-1], 32)
    return nn.GroupNorm(num_groups=groups, epsilon=1e-5, name=name)(x)
  # PyTorch-equivalent BN (momentum 0.1 there == 0.9 here) so imported weights behave the same.
  return nn.BatchNorm(momentum=0.9, epsilon=1e-5, name=name)(x, use_running_average=not train)


def max_pool_2x2(x):
  """``nn.max_pool(x, (2, 2), (2, 2))`` as a reshape and a max.

  Same values. Its gradient is an elementwise comparison instead of XLA's select-and-scatter,
  which XLA:CPU runs ~20x slower than the forward pass (the SmallCNN's input gradient, what
  every inversion step needs, took 50 ms against 2.5 ms forward at batch 64). Ties share the
  gradient instead of giving it to the first maximum; after a ReLU the only ties are zeros,
  whose gradient the ReLU stops anyway.
  """
  n, h, w, c = x.shape
  x = x[:, : h // 2 * 2, : w // 2 * 2]  # VALID pooling drops an odd last row/column
  return jnp.max(x.reshape(n, h // 2, 2, w // 2, 2, c), axis=(2, 4))


class LinearHead(nn.Module):
  """The default head: Dense(num_classes) on the features; ``train`` is unused (heads share one signature)."""

  num_classes: int

  @nn.compact
  def __call__(self, features, train: bool = False):
    return nn.Dense(self.num_classes, name="fc")(features)


ACTIVATIONS = {
  "tanh": jnp.tanh,
  "relu": nn.relu,
  "relu6": nn.relu6,
  "sigmoid": nn.sigmoid,
  "leaky_relu": nn.leaky_relu,
  "none": lambda x: x,
}


class LowRankHead(nn.Module):
  """CALoR's low-rank compression: BN1d(d) -> Linear(d, r) -> activation -> Linear(r, C).

  Yu, Qiu, Fang, Chen, Yu, Wang, Xia & Xu, "CALoR: Towards Comprehensive Model Inversion Defense",
  arXiv:2410.05814, 2024 (low-rank compression of the head; the official code's ``NeckWrapper``).

  The r-dimensional bottleneck (r = 40-50, tanh) filters the feature directions an inversion
  attack can exploit; the saturating activation also damps the attack's gradients.
  """

  num_classes: int
  rank: int = 40
  activation: str = "tanh"
  norm: str = "batch"

  @nn.compact
  def __call__(self, features, train: bool = False):
    x = _norm(features, train, self.norm, "bn")
    x = ACTIVATIONS[self.activation](nn.Dense(self.rank, name="down")(x))
    return nn.Dense(self.num_classes, name="fc")(x)


def vib_statistics(encoded, dim: int):
  """MID's posterior: mu = first ``dim`` outputs, sigma = softplus(rest - 5) (the reference's offset)."""
  return encoded[:, :dim], jax.nn.softplus(encoded[:, dim:] - 5.0)


class VIBHead(nn.Module):
  """MID's variational information bottleneck: Linear(d, 2k) -> N(mu, sigma^2) -> Linear(k, C).

  Wang, Zhang & Jia, "Improving Robustness to Model Inversion Attacks via Mutual Information Regularization",
  AAAI 2021 (the official code's ``VGG16_vib``: mu = the first k encoder outputs, sigma = softplus(rest - 5)).

  Training samples z = mu + sigma * eps (rng stream ``SAMPLE_RNG``); evaluation uses z = mu, so the
  released model is deterministic (the reference also samples at test time). Returns (logits,
  Posterior(mu, sigma)): the classifier's output carries mu and sigma, for MID's KL term.
  """

  num_classes: int
  dim: int = 0  # k; 0 = half the feature dimension

  @nn.compact
  def __call__(self, features, train: bool = False):
    k = self.dim or max(features.shape[-1] // 2, 1)
    encoder = nn.Dense(2 * k, name="encoder")
    mu, sigma = vib_statistics(encoder(features), k)
    z = mu + sigma * jax.random.normal(self.make_rng(SAMPLE_RNG), mu.shape, mu.dtype) if train else mu
    logits = nn.Dense(self.num_classes, name="fc")(z)
    # The posterior is a second application of the encoder (same weights, same values): the KL's gradient reaches
    # the encoder through its own product, as the MID models were trained before the head returned it; sharing one
    # product would add the two gradients before the product's transpose and change results in the last bits.
    return logits, Posterior(*vib_statistics(encoder(features), k))


class SmallCNN(nn.Module):
  """Two conv-BN-ReLU-pool blocks and a dense feature layer (MNIST scale).

  Called as ``module.apply(variables, images, train=...)``: images [B, H, W, C] floats in [0, 1]; ``train`` selects
  batch statistics (and updates them when ``batch_stats`` is mutable). Returns a ``ClassifierOutput``.
  """

  num_classes: int
  width: int = 32
  feature_dim: int = 128
  head: nn.Module | None = None
  norm: str = "batch"

  @nn.compact
  def __call__(self, x, train: bool = False) -> ClassifierOutput:
    hidden = []
    for i, ch in enumerate((self.width, 2 * self.width)):
      x = nn.Conv(ch, (3, 3), padding="SAME", use_bias=False, name=f"conv{i}")(x)
      x = nn.relu(_norm(x, train, self.norm, f"bn{i}"))
      x = max_pool_2x2(x)
      x = self.perturb(f"hidden{len(hidden)}", x)  # d(output)/d(hidden): Grad-CAM
      hidden.append(x)
    x = x.reshape(x.shape[0], -1)
    x = nn.Dense(self.feature_dim, use_bias=False, name="fc_feat")(x)
    features = nn.relu(_norm(x, train, self.norm, "bn_feat"))
    features = self.perturb(f"hidden{len(hidden)}", features)
    hidden.append(features)
    head = self.head or LinearHead(self.num_classes, name="head")
    return _output(head(features, train), features, hidden)


class BasicBlock(nn.Module):
  channels: int
  stride: int = 1
  norm: str = "batch"

  @nn.compact
  def __call__(self, x, train: bool):
    residual = x
    y = nn.Conv(self.channels, (3, 3), (self.stride, self.stride), padding=((1, 1), (1, 1)), use_bias=False)(x)
    y = nn.relu(_norm(y, train, self.norm))
    y = nn.Conv(self.channels, (3, 3), padding=((1, 1), (1, 1)), use_bias=False)(y)
    y = _norm(y, train, self.norm)
    if residual.shape != y.shape:
      residual = nn.Conv(self.channels, (1, 1), (self.stride, self.stride), use_bias=False, name="proj")(residual)
      residual = _norm(residual, train, self.norm, "proj_bn")
    return nn.relu(y + residual)


class ResNet(nn.Module):
  """ResNet with basic blocks; the stem downsamples only for inputs larger than 32 px.

  Called as ``module.apply(variables, images, train=...)``: images [B, H, W, C] floats in [0, 1]; ``train`` selects
  batch statistics (and updates them when ``batch_stats`` is mutable). Returns a ``ClassifierOutput``.
  """

  num_classes: int
  width: int = 64
  blocks: Sequence[int] = (2, 2, 2, 2)
  head: nn.Module | None = None
  norm: str = "batch"

  @nn.compact
  def __call__(self, x, train: bool = False) -> ClassifierOutput:
    large = x.shape[1] > 32
    x = nn.Conv(self.width, (3, 3), (2, 2) if large else (1, 1), padding=((1, 1), (1, 1)), use_bias=False, name="stem")(
      x
    )
    x = nn.relu(_norm(x, train, self.norm, "stem_bn"))
    hidden = []
    for stage, n in enumerate(self.blocks):
      for b in range(n):
        stride = 2 if (b == 0 and stage > 0) else 1
        x = BasicBlock(self.width * 2**stage, stride, self.norm, name=f"stage{stage}_block{b}")(x, train)
      x = self.perturb(f"hidden{len(hidden)}", x)  # d(output)/d(hidden): Grad-CAM
      hidden.append(x)
    features = jnp.mean(x, axis=(1, 2))
    head = self.head or LinearHead(self.num_classes, name="head")
    return _output(head(features, train), features, hidden)


class VGG(nn.Module):
  """VGG with BatchNorm; ``width_divisor`` shrinks every stage for small data and fast tests.

  Called as ``module.apply(variables, images, train=...)``: images [B, H, W, C] floats in [0, 1]; ``train`` selects
  batch statistics (and updates them when ``batch_stats`` is mutable). Returns a ``ClassifierOutput``.
  """

  num_classes: int
  layout: Sequence[Any] = VGG16_LAYOUT
  width_divisor: int = 1
  head: nn.Module | None = None
  norm: str = "batch"
  feature_bn: bool = True  # False: no BN1d after the flattening, as the reference's VGG16_vib (MID)

  @nn.compact
  def __call__(self, x, train: bool = False) -> ClassifierOutput:
    hidden = []
    conv = 0
    blocks = sum(item == "M" for item in self.layout)
    for item in self.layout:
      if item == "M":
        x = max_pool_2x2(x)
        if len(hidden) < blocks - 1:  # the last block's code is its BN1d'd flattening, below
          x = self.perturb(f"hidden{len(hidden)}", x)  # d(output)/d(hidden): Grad-CAM
          hidden.append(x)
        continue
      x = nn.Conv(max(int(item) // self.width_divisor, 1), (3, 3), padding=((1, 1), (1, 1)), name=f"conv{conv}")(x)
      x = nn.relu(_norm(x, train, self.norm, f"bn{conv}"))
      conv += 1
    x = x.reshape(x.shape[0], -1)
    # As in the reference VGG16 target: flattened features -> BatchNorm1d -> linear head. BiDO's VGG16
    # (hsic_training=True) returns this BN1d output, not the pooled block, as its last hidden code.
    features = _norm(x, train, self.norm, "bn_feat") if self.feature_bn else x
    features = self.perturb(f"hidden{len(hidden)}", features)
    hidden.append(features)
    head = self.head or LinearHead(self.num_classes, name="head")
    return _output(head(features, train), features, hidden)
