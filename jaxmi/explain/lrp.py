"""Layer-wise relevance propagation with the z+ rule for sequential ReLU nets.

LRP: Bach, Binder, Montavon, Klauschen, Mueller & Samek, "On Pixel-Wise Explanations for Non-Linear
Classifier Decisions by Layer-Wise Relevance Propagation", PLoS ONE 2015. The z+ rule below:
Montavon, Lapuschkin, Binder, Samek & Mueller, "Explaining nonlinear classification decisions with
deep Taylor decomposition", Pattern Recognition 65, 2017.

The classifier is rewritten as a list of layers with BatchNorm folded into the adjacent linear
layer (inference mode), so the folded network computes exactly the module's logits (tested).
Relevance starts at the target logit (one-hot) and each linear layer redistributes it to its
non-negative inputs a in proportion to a_i * w_ij^+:

    R_i = a_i * sum_j w_ij^+ * R_j / (sum_i' a_i' w_i'j^+ + eps)

computed as a * vjp(x -> W^+ x)(R / z) for convolutions and dense layers alike; max-pooling
passes relevance to the maximum. z+ ignores biases, so relevance is conserved layer to layer.

``variant="gnime"`` reproduces GNIME's code (Jeong, Lee, Hwang & Son, NeurIPS 2022; official
code WSP-LAB/GNIME, ``scripts/xai.py``): relevance starts from the
whole logit vector, max-pools redistribute like average pools, and the first layer sees ones
instead of the pixels.

Supported: ``cnn`` and ``vgg`` classifiers with BatchNorm and the linear head. Residual
networks need their own rules for the skip connections and are refused.
"""

from __future__ import annotations

from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxmi.nets.classifiers import VGG, LinearHead, SmallCNN

VARIANTS = ("standard", "gnime")
EPS = 1e-9
BN_EPS = 1e-5


class Layer(NamedTuple):
  kind: str  # linear | relu | maxpool | flatten
  kernel: jax.Array | None = None
  bias: jax.Array | None = None


def _fold(kernel, bias, stats, bn):
  """Linear layer followed by inference-mode BatchNorm -> one linear layer (kernel's last axis = channels)."""
  scale = bn["scale"] / jnp.sqrt(stats["var"] + BN_EPS)
  bias = jnp.zeros(kernel.shape[-1], kernel.dtype) if bias is None else bias
  return kernel * scale.reshape((1,) * (kernel.ndim - 1) + (-1,)), (bias - stats["mean"]) * scale + bn["bias"]


def layers_of(module, variables) -> list[Layer]:
  """The folded layer list of a supported classifier."""
  if getattr(module, "norm", "batch") != "batch" or not isinstance(module.head, (type(None), LinearHead)):
    raise ValueError("lrp: supports BatchNorm classifiers with the linear head (not group norm, vib or low_rank)")
  p, s = variables["params"], variables["batch_stats"]
  head = p["head"]["fc"]
  out = []
  if isinstance(module, SmallCNN):
    for i in range(2):
      k, b = _fold(p[f"conv{i}"]["kernel"], None, s[f"bn{i}"], p[f"bn{i}"])
      out += [Layer("linear", k, b), Layer("relu"), Layer("maxpool")]
    k, b = _fold(p["fc_feat"]["kernel"], None, s["bn_feat"], p["bn_feat"])
    out += [Layer("flatten"), Layer("linear", k, b), Layer("relu"), Layer("linear", head["kernel"], head["bias"])]
    return out
  if isinstance(module, VGG):
    conv = 0
    for item in module.layout:
      if item == "M":
        out.append(Layer("maxpool"))
        continue
      k, b = _fold(p[f"conv{conv}"]["kernel"], p[f"conv{conv}"]["bias"], s[f"bn{conv}"], p[f"bn{conv}"])
      out += [Layer("linear", k, b), Layer("relu")]
      conv += 1
    # Flattened features -> BatchNorm1d -> head: the BN folds into the head from the left.
    scale = p["bn_feat"]["scale"] / jnp.sqrt(s["bn_feat"]["var"] + BN_EPS)
    shift = p["bn_feat"]["bias"] - s["bn_feat"]["mean"] * scale
    out += [Layer("flatten"), Layer("linear", head["kernel"] * scale[:, None], shift @ head["kernel"] + head["bias"])]
    return out
  raise ValueError(f"lrp: supports the cnn and vgg classifiers, not {type(module).__name__}")


def _linear(x, kernel):
  if kernel.ndim == 2:
    return x @ kernel
  return jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _maxpool(x):
  return nn.max_pool(x, (2, 2), (2, 2))


def _avgpool(x):
  return nn.avg_pool(x, (2, 2), (2, 2))


def forward(layers: list[Layer], images):
  """Logits of the folded network and the input of every layer."""
  inputs, x = [], images
  for layer in layers:
    inputs.append(x)
    if layer.kind == "linear":
      x = _linear(x, layer.kernel) + layer.bias.reshape((1,) * (x.ndim - 1) + (-1,))
    elif layer.kind == "relu":
      x = jax.nn.relu(x)
    elif layer.kind == "maxpool":
      x = _maxpool(x)
    else:
      x = x.reshape(x.shape[0], -1)
  return x, inputs


def _redistribute(fn, a, relevance):
  """a * vjp(fn)(R / fn(a)): the z-rule through a positive linear map ``fn``."""
  z, vjp = jax.vjp(fn, a)
  z = z + EPS * jnp.where(z >= 0, 1.0, -1.0)
  return a * vjp(relevance / z)[0]


def lrp(module, variables, images, targets, *, variant: str = "standard"):
  """Relevance of every input pixel [B, H, W, C] for each example's target class.

  Args:
    module, variables: a ``cnn`` or ``vgg`` classifier with BatchNorm and the linear head (others: ValueError).
    images: [B, H, W, C] floats in [0, 1].
    targets: [B] class indices (``variant="gnime"`` starts from all logits and ignores them).
    variant: "standard" (z+ from the target logit) or "gnime" (GNIME's code, module docstring).

  Returns:
    Relevance [B, H, W, C]; under "standard" with zero (folded) biases it sums to the target logit.
  """
  if variant not in VARIANTS:
    raise ValueError(f"lrp variant: expected one of {VARIANTS}, got '{variant}'")
  layers = layers_of(module, variables)
  logits, inputs = forward(layers, images)
  if variant == "standard":
    relevance = jax.nn.one_hot(targets, logits.shape[-1], dtype=logits.dtype) * logits
  else:
    relevance = logits
  first_linear = next(i for i, layer in enumerate(layers) if layer.kind == "linear")
  for i in reversed(range(len(layers))):
    layer, a = layers[i], inputs[i]
    if layer.kind == "linear":
      if variant == "gnime" and i == first_linear:
        a = jnp.ones_like(a)
      positive = jnp.maximum(layer.kernel, 0.0)
      relevance = _redistribute(lambda x: _linear(x, positive), a, relevance)
    elif layer.kind == "maxpool":
      if variant == "gnime":
        relevance = _redistribute(_avgpool, a, relevance)
      else:  # winner takes all: the gradient of max-pool routes each value to its argmax
        relevance = jax.vjp(_maxpool, a)[1](relevance)[0]
    elif layer.kind == "flatten":
      relevance = relevance.reshape(a.shape)
  return relevance
