"""EfficientNet-B0/B1/B2 as LOMMA's surrogate models, and import of their PyTorch checkpoints.

Tan & Le, "EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks", ICML 2019 (the
architecture); Nguyen, Tran, Ho, Do, Zhao & Cheung, "Re-thinking Model Inversion Attacks Against Deep Neural
Networks", CVPR 2023 (LOMMA, whose distilled surrogates are ``EfficientNet_b0/b1/b2`` of its ``models/classify.py``).

The reference wraps torchvision's ``efficientnet_b*``: ``feature`` = Sequential(torchvision's ``features``, its
AdaptiveAvgPool2d(1)) -- torchvision's own Dropout + Linear classifier is dropped -- then ``fc_layer`` =
Linear(1280, n_classes) (B2: 1408). ``forward`` returns (feature, logits): the feature is the pooled, flattened
output of the last conv (jaxmi's ``features``), the logits ``fc_layer`` of it (jaxmi's ``head``).

torchvision's ``features`` (B0 base, scaled by width w and depth d: B0 (1.0, 1.0), B1 (1.0, 1.1), B2 (1.1, 1.2);
channels rounded to multiples of 8 by ``_make_divisible``, repeats ceil(n * d)):
  0: stem Conv3x3(3, 32w, stride 2) -> BN -> SiLU;
  1..7: stages of MBConv blocks (expand ratio, kernel, first stride, out channels, repeats):
     (1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3), (6, 5, 1, 112, 3), (6, 5, 2, 192, 4),
     (6, 3, 1, 320, 1); only a stage's first block has its stride and its input width;
  8: Conv1x1(320w, 4 * 320w) -> BN -> SiLU (1280 for B0/B1, 1408 for B2).
An MBConv block: [expand Conv1x1 -> BN -> SiLU, absent when the ratio is 1] -> depthwise Convkxk(stride, padding
(k-1)//2 on every side) -> BN -> SiLU -> squeeze-excitation (global average -> Conv1x1(e, max(1, in // 4)) + bias
-> SiLU -> Conv1x1 back to e + bias -> sigmoid -> scales the map) -> project Conv1x1 -> BN; with stride 1 and equal
widths, plus the input, the branch passing through stochastic depth in training (per-example drop with
probability 0.2 * block index / total blocks, survivors scaled by 1 / (1 - p); identity in evaluation). BatchNorm is
torch's default for B0-B2 (eps 1e-5, momentum 0.1; torchvision uses eps 1e-3 only for B3+ and V2). At 64 px the
last map is 2x2. The network does not normalise its input: images in [0, 1] go in as they are.

BiDO's hidden codes (and Grad-CAM's maps) are the seven stage outputs and the last conv's map. The depthwise convs
run as shifted multiply-adds (``DepthwiseConv``): XLA:CPU's grouped convolution is 10-50x slower.
"""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxmi.errors import ConfigError
from jaxmi.nets.classifiers import SAMPLE_RNG, LinearHead, _norm, _output
from jaxmi.nets.torch_import import StrictStateDict, batch_norm, conv_kernel, dense_kernel

# arch -> (width multiplier, depth multiplier): torchvision's efficientnet_b0/b1/b2.
EFFICIENTNET_ARCHS = {"efficientnet_b0": (1.0, 1.0), "efficientnet_b1": (1.0, 1.1), "efficientnet_b2": (1.1, 1.2)}

# B0's stages: (expand ratio, kernel, first stride, input channels, output channels, repeats).
B0_STAGES = (
  (1, 3, 1, 32, 16, 1),
  (6, 3, 2, 16, 24, 2),
  (6, 5, 2, 24, 40, 2),
  (6, 3, 2, 40, 80, 3),
  (6, 5, 1, 80, 112, 3),
  (6, 5, 2, 112, 192, 4),
  (6, 3, 1, 192, 320, 1),
)
STOCHASTIC_DEPTH = 0.2  # torchvision's stochastic_depth_prob for B0-B2

# torchvision's initialisation of every conv (the squeeze-excitation's too): kaiming-normal, fan out; biases zero.
_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def make_divisible(v: float, divisor: int = 8) -> int:
  """torchvision's ``_make_divisible``: the nearest multiple of ``divisor`` (at least it), never 10% below ``v``."""
  new = max(divisor, int(v + divisor / 2) // divisor * divisor)
  return new + divisor if new < 0.9 * v else new


@dataclasses.dataclass(frozen=True)
class BlockSpec:
  """One MBConv block: torchvision's ``features.<stage>.<index>``."""

  stage: int  # 1..7: the position in torchvision's ``features``
  index: int  # the block within its stage
  in_ch: int
  out_ch: int
  expanded: int  # the depthwise width (== in_ch: no expand conv)
  kernel: int
  stride: int
  squeeze: int  # the squeeze-excitation bottleneck
  drop: float  # stochastic depth probability in training


def block_specs(arch: str) -> tuple[tuple[BlockSpec, ...], int, int]:
  """(blocks, stem width, last conv width) of ``arch`` as torchvision's ``efficientnet_b*`` builds it."""
  width, depth = EFFICIENTNET_ARCHS[arch]
  stages = [
    (e, k, s, make_divisible(i * width), make_divisible(o * width), math.ceil(n * depth))
    for e, k, s, i, o, n in B0_STAGES
  ]
  total = sum(n for *_, n in stages)
  blocks, position = [], 0
  for stage, (ratio, kernel, stride, in_ch, out_ch, repeats) in enumerate(stages, start=1):
    for index in range(repeats):
      first = index == 0
      block_in = in_ch if first else out_ch
      blocks.append(
        BlockSpec(
          stage=stage,
          index=index,
          in_ch=block_in,
          out_ch=out_ch,
          expanded=make_divisible(block_in * ratio),
          kernel=kernel,
          stride=stride if first else 1,
          squeeze=max(1, block_in // 4),  # of the block's input width, not the expanded one
          drop=STOCHASTIC_DEPTH * position / total,
        )
      )
      position += 1
  return tuple(blocks), stages[0][3], 4 * stages[-1][4]


class DepthwiseConv(nn.Module):
  """A depthwise convolution (no bias) as the sum of k*k shifted views of the input, each scaled per channel.

  The values and the kernel ([k, k, 1, C]) of ``nn.Conv(C, feature_group_count=C)`` with padding (k-1)//2; XLA:CPU
  runs that grouped convolution 10-50x slower than these fused multiply-adds, and its gradient up to 30x slower
  (measured on EfficientNet-B0's shapes at batch 64).
  """

  kernel: int
  stride: int = 1

  @nn.compact
  def __call__(self, x):
    k, s, p = self.kernel, self.stride, (self.kernel - 1) // 2  # symmetric, unlike Flax's "SAME" at stride 2
    w = self.param("kernel", _conv_init, (k, k, 1, x.shape[-1]), jnp.float32)
    _, h, wd, _ = x.shape
    ho, wo = (h + 2 * p - k) // s + 1, (wd + 2 * p - k) // s + 1
    x = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    w = w.reshape(k, k, 1, 1, 1, -1)  # each tap [1, 1, 1, C]: broadcasts over NHW of the same rank
    out = 0
    for i in range(k):
      for j in range(k):
        out = out + x[:, i : i + s * (ho - 1) + 1 : s, j : j + s * (wo - 1) + 1 : s, :] * w[i, j]
    return out


class ConvNorm(nn.Module):
  """torchvision's ``Conv2dNormActivation``: Conv(k, stride, padding (k-1)//2 each side, no bias) -> BN [-> SiLU]."""

  channels: int
  kernel: int = 1
  stride: int = 1
  depthwise: bool = False  # groups == channels
  activation: bool = True
  norm: str = "batch"

  @nn.compact
  def __call__(self, x, train: bool):
    if self.depthwise:
      x = DepthwiseConv(self.kernel, self.stride, name="conv")(x)
    else:
      p = (self.kernel - 1) // 2
      x = nn.Conv(
        self.channels,
        (self.kernel, self.kernel),
        (self.stride, self.stride),
        padding=((p, p), (p, p)),
        use_bias=False,
        kernel_init=_conv_init,
        name="conv",
      )(x)
    x = _norm(x, train, self.norm, "bn")
    return nn.silu(x) if self.activation else x


class SqueezeExcitation(nn.Module):
  """Global average -> 1x1 conv (a Dense on the pooled vector) -> SiLU -> 1x1 conv -> sigmoid, scaling the map."""

  squeeze: int

  @nn.compact
  def __call__(self, x):
    s = jnp.mean(x, axis=(1, 2))
    s = nn.silu(nn.Dense(self.squeeze, kernel_init=_conv_init, name="fc1")(s))
    s = nn.sigmoid(nn.Dense(x.shape[-1], kernel_init=_conv_init, name="fc2")(s))
    return x * s[:, None, None, :]


class MBConv(nn.Module):
  """The inverted-residual block with squeeze-excitation (module docstring); ``spec`` gives its shape."""

  spec: BlockSpec
  norm: str = "batch"

  @nn.compact
  def __call__(self, x, train: bool):
    s = self.spec
    y = x
    if s.expanded != s.in_ch:
      y = ConvNorm(s.expanded, norm=self.norm, name="expand")(y, train)
    y = ConvNorm(s.expanded, s.kernel, s.stride, depthwise=True, norm=self.norm, name="depthwise")(y, train)
    y = SqueezeExcitation(s.squeeze, name="se")(y)
    y = ConvNorm(s.out_ch, activation=False, norm=self.norm, name="project")(y, train)
    if s.stride != 1 or s.in_ch != s.out_ch:
      return y
    if train and s.drop > 0:  # stochastic depth, "row" mode: drop the branch per example, rescale the survivors
      keep = 1.0 - s.drop
      mask = jax.random.bernoulli(self.make_rng(SAMPLE_RNG), keep, (y.shape[0], 1, 1, 1))
      y = y * mask.astype(y.dtype) / keep
    return y + x


class EfficientNet(nn.Module):
  """EfficientNet-B0/B1/B2 with LOMMA's head: pooled last-conv features -> ``head`` (Linear).

  Called as ``module.apply(variables, images, train=...)``: images [B, H, W, 3] floats in [0, 1] (64 px as
  published); ``train`` selects batch statistics and stochastic depth (rng stream ``SAMPLE_RNG``). Returns a
  ``ClassifierOutput`` whose features are the 1280-d (B2: 1408-d) pooled map.
  """

  num_classes: int
  arch: str = "efficientnet_b0"
  head: nn.Module | None = None
  norm: str = "batch"

  @nn.compact
  def __call__(self, x, train: bool = False):
    blocks, stem, last = block_specs(self.arch)
    # Flat top-level names in call order: TL-DMI's layer groups are the stem, each block, the last conv.
    x = ConvNorm(stem, 3, 2, norm=self.norm, name="stem")(x, train)
    hidden = []
    for i, spec in enumerate(blocks):
      x = MBConv(spec, self.norm, name=f"stage{spec.stage}_block{spec.index}")(x, train)
      if i + 1 == len(blocks) or blocks[i + 1].stage != spec.stage:  # a stage's output
        x = self.perturb(f"hidden{len(hidden)}", x)  # d(output)/d(hidden): Grad-CAM; BiDO's codes
        hidden.append(x)
    x = ConvNorm(last, norm=self.norm, name="top")(x, train)
    x = self.perturb(f"hidden{len(hidden)}", x)
    hidden.append(x)
    features = jnp.mean(x, axis=(1, 2))
    head = self.head or LinearHead(self.num_classes, name="head")
    return _output(head(features, train), features, hidden)


def _conv_norm(sd: StrictStateDict, prefix: str, in_ch: int, out_ch: int, kernel: int, groups: int = 1):
  """(params, batch_stats) of a ``ConvNorm`` from torch's ``<prefix>.0`` (Conv2d) and ``<prefix>.1`` (BatchNorm2d)."""
  bn_params, bn_stats = batch_norm(sd, f"{prefix}.1", out_ch)
  conv = {"kernel": conv_kernel(sd, f"{prefix}.0.weight", (kernel, kernel, in_ch // groups, out_ch))}
  return {"conv": conv, "bn": bn_params}, {"bn": bn_stats}


def from_torch(tensors: dict, cfg, num_classes: int, image_shape, source: str = "checkpoint") -> dict:
  """``{"params", "batch_stats"}`` of ``build_classifier(cfg, num_classes)`` from a Re-thinking_MI EfficientNet.

  Args:
    tensors: the state dict of ``EfficientNet_b0/b1/b2`` (``read_checkpoint(path).tensors``: numpy arrays,
      ``module.`` stripped): ``feature.0.*`` (torchvision's ``features``) and ``fc_layer.*``.
    cfg: a ModelConfig with ``arch`` one of ``EFFICIENTNET_ARCHS``, head ``linear``, norm ``batch``.
    num_classes: outputs of ``fc_layer``.
    image_shape: (H, W, C) of one input image (64x64x3 as published); the weights do not depend on H and W.
    source: the file's name, for error messages.

  Returns:
    The variables, every leaf float32; a missing, unexpected or mis-shaped key is one CheckpointError line.
  """
  if cfg.arch not in EFFICIENTNET_ARCHS:
    raise ConfigError(
      f"model.arch: '{cfg.arch}' is not an EfficientNet; expected one of {', '.join(EFFICIENTNET_ARCHS)}"
    )
  if cfg.head != "linear" or cfg.norm != "batch":
    raise ConfigError(
      f"model.head/norm: the published EfficientNets have head=linear and norm=batch, not {cfg.head}/{cfg.norm}"
    )
  if image_shape[-1] != 3:
    raise ConfigError(f"image shape {tuple(image_shape)}: the EfficientNet stem takes 3 channels")
  blocks, stem, last = block_specs(cfg.arch)
  sd = StrictStateDict(tensors, source)
  params, stats = {}, {}
  params["stem"], stats["stem"] = _conv_norm(sd, "feature.0.0", 3, stem, 3)
  for s in blocks:
    name, prefix = f"stage{s.stage}_block{s.index}", f"feature.0.{s.stage}.{s.index}.block"
    p, b, layer = {}, {}, 0  # ``layer``: the position in the block's Sequential (no expand conv: starts at depthwise)
    if s.expanded != s.in_ch:
      p["expand"], b["expand"] = _conv_norm(sd, f"{prefix}.0", s.in_ch, s.expanded, 1)
      layer = 1
    p["depthwise"], b["depthwise"] = _conv_norm(
      sd, f"{prefix}.{layer}", s.expanded, s.expanded, s.kernel, groups=s.expanded
    )
    se = f"{prefix}.{layer + 1}"
    p["se"] = {
      "fc1": {
        "kernel": conv_kernel(sd, f"{se}.fc1.weight", (1, 1, s.expanded, s.squeeze))[0, 0],
        "bias": sd.take(f"{se}.fc1.bias", (s.squeeze,)),
      },
      "fc2": {
        "kernel": conv_kernel(sd, f"{se}.fc2.weight", (1, 1, s.squeeze, s.expanded))[0, 0],
        "bias": sd.take(f"{se}.fc2.bias", (s.expanded,)),
      },
    }
    p["project"], b["project"] = _conv_norm(sd, f"{prefix}.{layer + 2}", s.expanded, s.out_ch, 1)
    params[name], stats[name] = p, b
  params["top"], stats["top"] = _conv_norm(sd, f"feature.0.{blocks[-1].stage + 1}", blocks[-1].out_ch, last, 1)
  params["head"] = {
    "fc": {
      "kernel": dense_kernel(sd, "fc_layer.weight", (last, num_classes)),
      "bias": sd.take("fc_layer.bias", (num_classes,)),
    }
  }
  sd.finish()
  return {"params": _float32(params), "batch_stats": _float32(stats)}


def _float32(tree: dict) -> dict:
  return {k: _float32(v) if isinstance(v, dict) else jnp.asarray(np.asarray(v, np.float32)) for k, v in tree.items()}
