"""The IR (improved-residual) face networks of the MI literature, and import of their PyTorch checkpoints.

Deng, Guo, Xue & Zafeiriou, "ArcFace: Additive Angular Margin Loss for Deep Face Recognition", CVPR 2019 (the
IR backbone); as the MI papers publish it: Zhang, Jia, Pei, Wang, Li & Song, "The Secret Revealer: Generative
Model-Inversion Attacks Against Deep Neural Networks", CVPR 2020 (GMI), and the code of KEDMI and
Re-thinking_MI (``models/evolve.py``, ``models/classify.py``), whose released weights every paper reuses:

  * ``ir152_64``: ``IR152`` (target ``IR152_91.16.tar``): IR-152 at 64 px;
  * ``facenet64``: ``FaceNet64`` (target ``FaceNet64_88.50.tar``): IR-50 at 64 px;
  * ``facenet112``: ``FaceNet`` (evaluation model ``FaceNet_95.88.tar``): IR-50 at 112 px.

Structure (identical in all three; only the depth and the input size differ): an input layer Conv3x3(3, 64) ->
BN -> PReLU(64) at full resolution; four stages of ``bottleneck_IR`` units (64, 128, 256, 512 channels; IR-50:
3, 4, 14, 3 units, IR-152: 3, 8, 36, 3), the first unit of each stage with stride 2; an output layer BN2d(512) ->
Dropout(0.5) -> Flatten -> Linear(512 * h * w, 512) -> BN1d(512) whose output is the 512-d embedding (the
``features``); then ``fc_layer`` Linear(512, num_classes) (the ``head``). A unit is
``res_layer`` = BN(in) -> Conv3x3(in, d) -> PReLU(d) -> Conv3x3(d, d, stride) -> BN(d), plus a shortcut that is
MaxPool(1, stride) (a subsample) when in == d, else Conv1x1(in, d, stride) -> BN(d). None of the reference models
resizes or normalises its input: images in [0, 1] go in as they are (the attack code upsamples 64 -> 112 px for
the evaluation model, ``utils.low2high``; jaxmi's ``resize_to`` does the same outside the network).

With ``ModelConfig.head == "vib"`` the head is MID's ``IR152_vib`` / ``IR50_vib`` (``st_layer`` Linear(512, 512)
-> mu = first 256, sigma = softplus(rest - 5) -> ``fc_layer.0`` Linear(256, num_classes)). BiDO's hidden codes
are the four stage outputs.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxmi.errors import ConfigError
from jaxmi.nets.classifiers import SAMPLE_RNG, LinearHead, _norm, _output
from jaxmi.nets.gan import conv_s2_space_to_depth
from jaxmi.nets.torch_import import (
  StrictStateDict,
  batch_norm,
  chw_to_hwc_rows,
  conv_kernel,
  dense_kernel,
)

# Units per stage (evolve.py's ``get_blocks``); every stage starts with a stride-2 unit.
STAGE_UNITS = {50: (3, 4, 14, 3), 152: (3, 8, 36, 3)}
STAGE_WIDTHS = (64, 128, 256, 512)
EMBEDDING = 512

# arch -> (depth, where the output layer lives in the state dict): FaceNet (112 px) keeps it inside ``feature``
# (evolve.py's Backbone112), IR152 / FaceNet64 beside it (classify.py).
IRSE_ARCHS = {
  "ir152_64": (152, "output_layer"),
  "facenet64": (50, "output_layer"),
  "facenet112": (50, "feature.output_layer"),
}

_xavier = nn.initializers.xavier_uniform()  # the reference's ``_initialize_weights`` (convs and linears)


class PReLU(nn.Module):
  """torch's PReLU(C): one slope per channel (the last axis), 0.25 at initialisation."""

  @nn.compact
  def __call__(self, x):
    slope = self.param("slope", nn.initializers.constant(0.25), (x.shape[-1],), jnp.float32)
    slope = slope.astype(x.dtype).reshape((1,) * (x.ndim - 1) + (-1,))  # explicit rank: no implicit promotion
    return jnp.where(x >= 0, x, slope * x)


class StridedConv3x3(nn.Module):
  """Conv3x3(stride 2, padding 1, no bias) in the space-to-depth form (a stride-1 conv on 2x2 phase channels).

  Same values as the strided conv; its input gradient is a plain convolution, which XLA:CPU runs several times
  faster than the strided conv's (what every inversion step needs). The kernel is an ordinary HWIO ``kernel``.
  """

  features: int

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", _xavier, (3, 3, x.shape[-1], self.features), jnp.float32)
    dtype = jnp.result_type(x.dtype, kernel.dtype)
    return conv_s2_space_to_depth(x.astype(dtype), kernel.astype(dtype), jnp.zeros((self.features,), dtype))


class IRUnit(nn.Module):
  """``bottleneck_IR``: BN -> Conv3x3 -> PReLU -> Conv3x3(stride) -> BN, plus a subsample or Conv1x1+BN shortcut."""

  depth: int
  stride: int = 1
  norm: str = "batch"

  @nn.compact
  def __call__(self, x, train: bool):
    if x.shape[-1] == self.depth:
      shortcut = x[:, :: self.stride, :: self.stride]  # MaxPool2d(1, stride): one element per window
    else:
      # A 1x1 conv with stride s reads only every s-th pixel: subsample, then a stride-1 1x1 conv (same values).
      shortcut = nn.Conv(self.depth, (1, 1), use_bias=False, kernel_init=_xavier, name="shortcut_conv")(
        x[:, :: self.stride, :: self.stride]
      )
      shortcut = _norm(shortcut, train, self.norm, "shortcut_bn")
    y = _norm(x, train, self.norm, "bn_in")
    y = nn.Conv(self.depth, (3, 3), padding=((1, 1), (1, 1)), use_bias=False, kernel_init=_xavier, name="conv1")(y)
    y = PReLU(name="prelu")(y)
    if self.stride == 2 and y.shape[1] % 2 == 0 and y.shape[2] % 2 == 0:
      y = StridedConv3x3(self.depth, name="conv2")(y)
    else:  # odd sizes: the direct form (the same ``kernel``)
      y = nn.Conv(
        self.depth,
        (3, 3),
        (self.stride, self.stride),
        padding=((1, 1), (1, 1)),
        use_bias=False,
        kernel_init=_xavier,
        name="conv2",
      )(y)
    y = _norm(y, train, self.norm, "bn_out")
    return y + shortcut


class InputLayer(nn.Module):
  """``input_layer``: Conv3x3(3, 64) -> BN -> PReLU(64), at full resolution."""

  norm: str = "batch"

  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.Conv(64, (3, 3), padding=((1, 1), (1, 1)), use_bias=False, kernel_init=_xavier, name="conv")(x)
    return PReLU(name="prelu")(_norm(x, train, self.norm, "bn"))


class OutputLayer(nn.Module):
  """``output_layer``: BN2d(512) -> Dropout(0.5) -> Flatten -> Linear(512 * h * w, 512) -> BN1d(512): the embedding."""

  norm: str = "batch"
  dropout: float = 0.5  # nn.Dropout()'s default

  @nn.compact
  def __call__(self, x, train: bool):
    x = _norm(x, train, self.norm, "bn2d")
    x = nn.Dropout(self.dropout, rng_collection=SAMPLE_RNG)(x, deterministic=not train)
    x = x.reshape(x.shape[0], -1)  # (H, W, C) order: ``from_torch`` reorders the Linear's (C, H, W) rows
    x = nn.Dense(EMBEDDING, kernel_init=_xavier, bias_init=nn.initializers.zeros, name="fc")(x)
    return _norm(x, train, self.norm, "bn1d")


class IRNet(nn.Module):
  """IR-50 / IR-152 with the MI papers' output layer (module docstring); ``depth`` is 50 or 152.

  Called as ``module.apply(variables, images, train=...)``: images [B, H, W, 3] floats in [0, 1], H and W
  multiples of 16 (64 or 112 px as published); ``train`` selects batch statistics and the output layer's dropout
  (rng stream ``SAMPLE_RNG``). Returns a ``ClassifierOutput`` whose features are the 512-d BN1d embedding.
  """

  num_classes: int
  depth: int = 50
  head: nn.Module | None = None
  norm: str = "batch"

  @nn.compact
  def __call__(self, x, train: bool = False):
    # Top-level modules in call order, one per TL-DMI layer: the input layer, each unit, the output layer, the head.
    x = InputLayer(self.norm, name="input_layer")(x, train)
    hidden = []
    unit = 0
    for width, units in zip(STAGE_WIDTHS, STAGE_UNITS[self.depth]):
      for i in range(units):
        x = IRUnit(width, 2 if i == 0 else 1, self.norm, name=f"unit{unit}")(x, train)
        unit += 1
      x = self.perturb(f"hidden{len(hidden)}", x)  # d(output)/d(hidden): Grad-CAM; BiDO's codes
      hidden.append(x)
    features = OutputLayer(self.norm, name="output_layer")(x, train)
    head = self.head or LinearHead(self.num_classes, name="head")
    return _output(head(features, train), features, hidden)


# --- PyTorch import -------------------------------------------------------------------------------------------------


def _conv(sd, key: str, hwio: tuple[int, int, int, int]) -> dict:
  return {"kernel": conv_kernel(sd, key, hwio)}


def _bn(sd, prefix: str, n: int, params: dict, stats: dict, name: str) -> None:
  params[name], stats[name] = batch_norm(sd, prefix, n)


def _linear(sd, prefixes: Sequence[str], shape_io: tuple[int, int]) -> dict:
  """A torch Linear under the first of ``prefixes`` the checkpoint has (``fc_layer`` or ``fc_layer.0``)."""
  prefix = next((p for p in prefixes if f"{p}.weight" in sd.tensors), prefixes[0])
  return {"kernel": dense_kernel(sd, f"{prefix}.weight", shape_io), "bias": sd.take(f"{prefix}.bias", (shape_io[1],))}


def _unit(sd, prefix: str, cin: int, depth: int) -> tuple[dict, dict]:
  params: dict = {}
  stats: dict = {}
  if cin != depth:
    params["shortcut_conv"] = _conv(sd, f"{prefix}.shortcut_layer.0.weight", (1, 1, cin, depth))
    _bn(sd, f"{prefix}.shortcut_layer.1", depth, params, stats, "shortcut_bn")
  _bn(sd, f"{prefix}.res_layer.0", cin, params, stats, "bn_in")
  params["conv1"] = _conv(sd, f"{prefix}.res_layer.1.weight", (3, 3, cin, depth))
  params["prelu"] = {"slope": sd.take(f"{prefix}.res_layer.2.weight", (depth,))}
  params["conv2"] = _conv(sd, f"{prefix}.res_layer.3.weight", (3, 3, depth, depth))
  _bn(sd, f"{prefix}.res_layer.4", depth, params, stats, "bn_out")
  return params, stats


def from_torch(tensors: dict, cfg, num_classes: int, image_shape, source: str) -> dict:
  """``{"params", "batch_stats"}`` of ``build_classifier(cfg, num_classes)`` from a Re-thinking_MI / KEDMI state dict.

  Args:
    tensors: the checkpoint's tensors (``read_checkpoint(path).tensors``: torch layout, ``module.`` stripped).
    cfg: a ModelConfig whose arch is ``ir152_64``, ``facenet64`` or ``facenet112``; head ``linear`` (``IR152``,
      ``FaceNet64``, ``FaceNet``) or ``vib`` (``IR152_vib``, ``IR50_vib``).
    num_classes: rows of ``fc_layer``.
    image_shape: (H, W, C) the model sees (64 or 112 px): sets the output Linear's input size.
    source: the file's name for messages.

  Returns:
    The variables, every leaf filled. A missing, mis-shaped or unexpected key is a CheckpointError naming it.
  """
  if cfg.arch not in IRSE_ARCHS:
    raise ConfigError(f"model.arch: '{cfg.arch}' is not an IR network; expected one of {', '.join(IRSE_ARCHS)}")
  if cfg.norm != "batch":
    raise ConfigError(f"model.norm: the published {cfg.arch} uses BatchNorm; expected 'batch', got '{cfg.norm}'")
  if cfg.head not in ("linear", "vib"):
    raise ConfigError(f"model.head: the published {cfg.arch} has a linear or VIB head; got '{cfg.head}'")
  depth, out_prefix = IRSE_ARCHS[cfg.arch]
  h, w = image_shape[0] // 16, image_shape[1] // 16
  sd = StrictStateDict(tensors, source)
  params: dict = {}
  stats: dict = {}
  in_params: dict = {"conv": _conv(sd, "feature.input_layer.0.weight", (3, 3, image_shape[2], 64))}
  in_stats: dict = {}
  _bn(sd, "feature.input_layer.1", 64, in_params, in_stats, "bn")
  in_params["prelu"] = {"slope": sd.take("feature.input_layer.2.weight", (64,))}
  params["input_layer"], stats["input_layer"] = in_params, in_stats
  unit, cin = 0, 64
  for width, units in zip(STAGE_WIDTHS, STAGE_UNITS[depth]):
    for _ in range(units):
      params[f"unit{unit}"], stats[f"unit{unit}"] = _unit(sd, f"feature.body.{unit}", cin, width)
      unit, cin = unit + 1, width
  out_params: dict = {}
  out_stats: dict = {}
  _bn(sd, f"{out_prefix}.0", 512, out_params, out_stats, "bn2d")
  fc = dense_kernel(sd, f"{out_prefix}.3.weight", (512 * h * w, EMBEDDING))
  out_params["fc"] = {"kernel": chw_to_hwc_rows(fc, 512, h, w), "bias": sd.take(f"{out_prefix}.3.bias", (EMBEDDING,))}
  _bn(sd, f"{out_prefix}.4", EMBEDDING, out_params, out_stats, "bn1d")
  params["output_layer"], stats["output_layer"] = out_params, out_stats
  if out_prefix == "output_layer" and "feature.output_layer.3.weight" in sd.tensors:
    # models/facenet.py's Backbone64 builds an output layer for 56x56 maps (Linear(512*14*14, 512)) that its
    # forward never calls; a checkpoint saved from it carries those weights: consume them, shapes checked.
    batch_norm(sd, "feature.output_layer.0", 512)
    sd.take("feature.output_layer.3.weight", (EMBEDDING, 512 * 14 * 14))
    sd.take("feature.output_layer.3.bias", (EMBEDDING,))
    batch_norm(sd, "feature.output_layer.4", EMBEDDING)
  # fc_layer is a Linear in classify.py and Sequential(Linear, Softmax) in facenet.py / the VIB models.
  if cfg.head == "vib":
    k = cfg.vib_dim or EMBEDDING // 2
    params["head"] = {
      "encoder": {
        "kernel": dense_kernel(sd, "st_layer.weight", (EMBEDDING, 2 * k)),
        "bias": sd.take("st_layer.bias", (2 * k,)),
      },
      "fc": _linear(sd, ("fc_layer.0", "fc_layer"), (k, num_classes)),
    }
  else:
    params["head"] = {"fc": _linear(sd, ("fc_layer", "fc_layer.0"), (EMBEDDING, num_classes))}
  sd.finish()
  f32 = lambda a: jnp.asarray(np.asarray(a, np.float32))
  return {"params": jax.tree.map(f32, params), "batch_stats": jax.tree.map(f32, stats)}


__all__ = ["IRSE_ARCHS", "IRNet", "IRUnit", "PReLU", "from_torch"]
