"""The published VGG16 targets from their PyTorch state dicts (``VGG16_88.26.tar`` and MID's VIB variant).

Re-thinking_MI's ``models/classify.py`` (the code GMI, KEDMI, MID, LOMMA and PLG-MI train and attack with):

* ``VGG16``: ``feature`` = torchvision's ``vgg16_bn().features`` (conv3x3-BN2d-ReLU blocks and 2x2 max pools;
  the Sequential's indices count every module, so conv ``i`` is ``feature.<n>``, its BN ``feature.<n+1>``);
  at 64 px it ends in 512x2x2, flattened to 2048 -> ``bn`` = BatchNorm1d(2048), whose bias the training froze
  (``requires_grad_(False)``; it is imported as stored) -> ``fc_layer`` = Linear(2048, n_classes). The
  features it returns are the BN1d output.
* ``VGG16_vib``: the same ``feature`` flattened (no BN1d; the features are the flattening) -> ``st_layer`` =
  Linear(2048, 2k), k = 1024: mu = the first k outputs, std = softplus(rest - 5) -> ``fc_layer`` = Linear(k,
  n_classes) of mu + std * eps. The reference samples eps at test time too; jaxmi's ``VIBHead`` uses z = mu in
  evaluation, i.e. the reference's logits with eps = 0 (its expected code).

torch flattens the NCHW map in (C, H, W) order and jaxmi the NHWC map in (H, W, C) order, so the BN1d's
vectors and the first Linear's input rows are permuted to jaxmi's order; the features jaxmi returns are the
reference's with the same permutation.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from jaxmi.errors import ConfigError
from jaxmi.nets import VGG_LAYOUTS, ModelConfig
from jaxmi.nets.classifiers import VGG16_LAYOUT
from jaxmi.nets.torch_import import (
  StrictStateDict,
  batch_norm,
  chw_to_hwc,
  chw_to_hwc_rows,
  conv_kernel,
  dense_kernel,
)


def _layout(cfg: ModelConfig) -> tuple[tuple, int, bool]:
  """(layout, width divisor, whether a BN1d follows the flattening) of the jaxmi VGG ``cfg`` builds."""
  if cfg.arch == "vgg16":
    return VGG16_LAYOUT, 1, cfg.head != "vib"
  if cfg.arch != "vgg":
    raise ConfigError(f"model.arch: '{cfg.arch}' is not a VGG; expected vgg16 or vgg")
  if cfg.vgg_layout not in VGG_LAYOUTS:
    raise ConfigError(f"model.vgg_layout: unknown layout '{cfg.vgg_layout}'; expected one of {', '.join(VGG_LAYOUTS)}")
  return VGG_LAYOUTS[cfg.vgg_layout], cfg.width_divisor, True


def from_torch(tensors: dict, cfg: ModelConfig, num_classes: int, image_shape, source: str = "checkpoint") -> dict:
  """``{"params", "batch_stats"}`` of ``build_classifier(cfg, num_classes)`` from a Re-thinking_MI VGG16 state dict.

  Args:
    tensors: the state dict (``read_checkpoint(path).tensors``: numpy arrays, ``module.`` stripped).
    cfg: ``arch="vgg16"`` (head ``linear``: ``VGG16``; head ``vib``: ``VGG16_vib``), or ``arch="vgg"`` whose
      layout and widths the checkpoint must then match.
    num_classes: outputs of ``fc_layer``.
    image_shape: (H, W, C) of one input image (64x64x3 for the published files).
    source: the file's name, for error messages.

  Returns:
    The variables, every leaf float32; a missing, unexpected or mis-shaped key is one CheckpointError line.
  """
  if cfg.head not in ("linear", "vib"):
    raise ConfigError(f"model.head: the published VGG16 checkpoints have a linear or vib head, not '{cfg.head}'")
  layout, divisor, feature_bn = _layout(cfg)
  sd = StrictStateDict(tensors, source)
  params, stats = {}, {}
  h, w, channels = image_shape
  index = conv = 0  # position in torchvision's features Sequential; jaxmi's conv number
  for item in layout:
    if item == "M":  # MaxPool2d(2, 2): no parameters
      h, w = h // 2, w // 2
      index += 1
      continue
    out = max(int(item) // divisor, 1)
    params[f"conv{conv}"] = {
      "kernel": conv_kernel(sd, f"feature.{index}.weight", (3, 3, channels, out)),
      "bias": sd.take(f"feature.{index}.bias", (out,)),
    }
    params[f"bn{conv}"], stats[f"bn{conv}"] = batch_norm(sd, f"feature.{index + 1}", out)
    channels, index, conv = out, index + 3, conv + 1  # Conv2d, BatchNorm2d, ReLU
  dim = channels * h * w
  if feature_bn:  # BatchNorm1d over the (C, H, W)-ordered flattening
    bn_params, bn_stats = batch_norm(sd, "bn", dim)
    params["bn_feat"] = {k: chw_to_hwc(v, channels, h, w) for k, v in bn_params.items()}
    stats["bn_feat"] = {k: chw_to_hwc(v, channels, h, w) for k, v in bn_stats.items()}
  if cfg.head == "vib":
    k = cfg.vib_dim or max(dim // 2, 1)  # VIBHead's default: half the features (the reference's k = 1024)
    params["head"] = {
      "encoder": {
        "kernel": chw_to_hwc_rows(dense_kernel(sd, "st_layer.weight", (dim, 2 * k)), channels, h, w),
        "bias": sd.take("st_layer.bias", (2 * k,)),
      },
      "fc": {
        "kernel": dense_kernel(sd, "fc_layer.weight", (k, num_classes)),
        "bias": sd.take("fc_layer.bias", (num_classes,)),
      },
    }
  else:
    params["head"] = {
      "fc": {
        "kernel": chw_to_hwc_rows(dense_kernel(sd, "fc_layer.weight", (dim, num_classes)), channels, h, w),
        "bias": sd.take("fc_layer.bias", (num_classes,)),
      }
    }
  sd.finish()
  return {"params": _float32(params), "batch_stats": _float32(stats)}


def _float32(tree: dict) -> dict:
  return {k: _float32(v) if isinstance(v, dict) else jnp.asarray(np.asarray(v, np.float32)) for k, v in tree.items()}
