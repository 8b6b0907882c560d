"""Networks: classifiers (targets, evaluation models, surrogates); the GAN priors are in ``jaxmi.nets.gan``.

``build_classifier(ModelConfig, num_classes)`` returns a Linen module whose variables are
plain dicts ``{"params": ..., "batch_stats": ...}``; jitted code receives them as arguments.
"""

from __future__ import annotations

import dataclasses
import typing

import jax
import jax.numpy as jnp

from jaxmi.errors import ConfigError
from jaxmi.nets.classifiers import (
  ACTIVATIONS,
  NORMS,
  VGG,
  VGG16_LAYOUT,
  ClassifierOutput,
  LinearHead,
  LowRankHead,
  ResNet,
  SmallCNN,
  VIBHead,
  vib_statistics,
)
from jaxmi.nets.efficientnet import EFFICIENTNET_ARCHS, EfficientNet
from jaxmi.nets.irse import IRSE_ARCHS, IRNet

VGG_LAYOUTS = {
  "vgg16": VGG16_LAYOUT,
  # Three pooling stages: the VGG family at MNIST/32-px scale.
  "vgg_small": (64, 64, "M", 128, 128, "M", 256, 256, "M"),
}


# The choices of ModelConfig.arch; the published families register theirs in their own modules.
ARCHS = ("cnn", "resnet", "vgg", "vgg16", *IRSE_ARCHS, *EFFICIENTNET_ARCHS)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelConfig:
  """A classifier's architecture and head (``build_classifier``); the ``model`` field of a classifier config."""

  arch: typing.Literal[ARCHS] = "cnn"
  width: int = 32  # base channels (cnn, resnet)
  feature_dim: int = 128  # penultimate size (cnn)
  blocks: tuple[int, ...] = (2, 2, 2, 2)  # basic blocks per stage (resnet)
  vgg_layout: typing.Literal["vgg16", "vgg_small"] = "vgg16"  # a key of VGG_LAYOUTS (vgg)
  width_divisor: int = 1  # divides every VGG stage width (vgg)
  head: typing.Literal["linear", "low_rank", "vib"] = "linear"  # low_rank: CALoR; vib: MID
  head_rank: int = 40  # low_rank: bottleneck width r
  head_activation: str = "tanh"  # low_rank: activation after Linear(d, r)
  vib_dim: int = 0  # vib: latent size k (0 = feature_dim / 2)
  norm: typing.Literal["batch", "group"] = "batch"  # group: per-example statistics (DP-SGD)


HEADS = ("linear", "low_rank", "vib")


def build_head(cfg: ModelConfig, num_classes: int):
  """The head module ``cfg.head`` names, or None for the architecture's own linear head; ConfigError if unknown."""
  if cfg.head not in HEADS:
    raise ConfigError(f"model.head: unknown head '{cfg.head}'; expected one of {', '.join(HEADS)}")
  if cfg.head == "low_rank":
    if cfg.head_activation not in ACTIVATIONS:
      raise ConfigError(
        f"model.head_activation: unknown '{cfg.head_activation}'; expected one of {', '.join(ACTIVATIONS)}"
      )
    return LowRankHead(num_classes, rank=cfg.head_rank, activation=cfg.head_activation, norm=cfg.norm)
  if cfg.head == "vib":
    return VIBHead(num_classes, dim=cfg.vib_dim)
  return None  # the architecture's own linear head


def build_classifier(cfg: ModelConfig, num_classes: int):
  """A Linen classifier module (no parameters: those come from ``init_variables`` or a checkpoint).

  Args:
    cfg: architecture, widths, head and normalisation; an unknown choice is a ConfigError.
    num_classes: outputs of the head.

  Returns:
    ``SmallCNN``, ``ResNet`` or ``VGG``, whose ``apply(variables, images, train=...)`` returns a ``ClassifierOutput``.
  """
  head = build_head(cfg, num_classes)
  if cfg.norm not in NORMS:
    raise ConfigError(f"model.norm: unknown normalisation '{cfg.norm}'; expected one of {', '.join(NORMS)}")
  if cfg.arch == "cnn":
    return SmallCNN(num_classes, width=cfg.width, feature_dim=cfg.feature_dim, head=head, norm=cfg.norm)
  if cfg.arch == "resnet":
    return ResNet(num_classes, width=cfg.width, blocks=tuple(cfg.blocks), head=head, norm=cfg.norm)
  if cfg.arch == "vgg":
    if cfg.vgg_layout not in VGG_LAYOUTS:
      raise ConfigError(
        f"model.vgg_layout: unknown layout '{cfg.vgg_layout}'; expected one of {', '.join(VGG_LAYOUTS)}"
      )
    return VGG(
      num_classes, layout=VGG_LAYOUTS[cfg.vgg_layout], width_divisor=cfg.width_divisor, head=head, norm=cfg.norm
    )
  if cfg.arch == "vgg16":
    # The published target (Re-thinking_MI's VGG16) at full width; its VIB variant (VGG16_vib, MID) has no BN1d.
    feature_bn = cfg.head != "vib"
    return VGG(num_classes, layout=VGG16_LAYOUT, width_divisor=1, head=head, norm=cfg.norm, feature_bn=feature_bn)
  if cfg.arch in IRSE_ARCHS:
    # The published IR-152 / IR-50 targets and the evaluation model (jaxmi.nets.irse): fixed widths and depths.
    return IRNet(num_classes, depth=IRSE_ARCHS[cfg.arch][0], head=head, norm=cfg.norm)
  if cfg.arch in EFFICIENTNET_ARCHS:
    # LOMMA's distilled surrogates (jaxmi.nets.efficientnet): torchvision's widths and depths.
    return EfficientNet(num_classes, arch=cfg.arch, head=head, norm=cfg.norm)
  raise ConfigError(f"model.arch: unknown architecture '{cfg.arch}'; expected one of {', '.join(ARCHS)}")


def init_variables(model, rng: jax.Array, image_shape: tuple[int, int, int]) -> dict:
  """Initial ``{"params", "batch_stats"}`` for images of shape (H, W, C).

  Args:
    model: a module from ``build_classifier``.
    rng: the initialisation key.
    image_shape: (H, W, C) of one input image.

  Returns:
    The variables dict (``batch_stats`` is {} for a model without BatchNorm).
  """
  variables = jax.jit(lambda r: model.init(r, jnp.zeros((2, *image_shape), jnp.float32), train=False))(rng)
  return {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}


def shape_signature(tree) -> dict[str, list[int]]:
  """``{"path/to/leaf": shape}`` of every leaf of ``tree``: what a checkpoint must match to belong to this model."""
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {path_name(path): list(leaf.shape) for path, leaf in flat}


def path_name(path, sep: str = "/") -> str:
  """A pytree key path as text: ("head", "fc", "kernel") -> "head/fc/kernel"."""
  return sep.join(_key(k) for k in path)


def _key(k) -> str:
  return str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))


__all__ = [
  "ARCHS",
  "ClassifierOutput",
  "LinearHead",
  "LowRankHead",
  "ModelConfig",
  "ResNet",
  "SmallCNN",
  "VGG",
  "VIBHead",
  "vib_statistics",
  "build_classifier",
  "init_variables",
  "path_name",
  "shape_signature",
]
