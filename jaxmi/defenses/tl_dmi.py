"""TL-DMI: transfer learning as a model-inversion defense.

Sy-Tuyen Ho, Koh Jun Hao, Keshigeyan Chandrasegaran, Ngoc-Bao Nguyen & Ngai-Man Cheung, "Model Inversion
Robustness: Can Transfer Learning Help?", CVPR 2024 (official code hosytuyen/TL-DMI, ``models/classify.py``).
Pretrain on public data, then fine-tune only the last layers on private data: the first
``frozen_layers`` layers keep their public-data values, so the private data shape only the
layers the task needs (the paper relates inversion to the early layers through their Fisher
information). The rule it implements: a frozen layer's parameters stay theta_pretrained (zero
update); every other parameter takes the optimiser's step. A "layer" is one weight layer (conv, dense, or a
whole residual block) together with the normalisation that follows it, counted from the input in
the order the forward pass calls them; the classification head always trains (it is new: private
and public identities differ), and so does a normalisation of the flattened features in front of
it (VGG's BN1d: the reference's ``VGG16_TL`` always trains a fresh one).

Two deliberate departures from the official code:
  * frozen layers' BatchNorm statistics stay frozen: those layers run in inference mode during
    fine-tuning (``freeze_statistics=False`` reproduces the official drift, where the frozen
    layers' running statistics still follow the private data);
  * the freeze is an optax mask (``multi_transform`` with ``set_to_zero``), so frozen
    parameters get no update, no weight decay and no momentum.
"""

from __future__ import annotations

import dataclasses
import functools
import typing

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jaxmi.errors import ConfigError
from jaxmi.train.step import Defense, RunFacts

HEAD = "head"


def layer_groups(module, image_shape: tuple[int, int, int]) -> tuple[tuple[str, ...], ...]:
  """Top-level parameter modules grouped per layer, in forward (call) order, the head group last.

  The call order comes from tracing one forward pass, not from dict order, which a
  checkpoint round trip may sort ("conv10" before "conv2"). A normalisation joins the weight
  layer before it when it normalises that layer's output; one that normalises the flattened
  features of a conv stack (VGG's BN1d) belongs to the head group, ``("head", "bn_feat")``:
  the reference's TL model always trains a fresh BN1d with its new classifier, whatever it freezes.
  """
  called: list[str] = []
  input_rank: dict[str, int] = {}

  def record(next_fun, args, kwargs, context):
    path = context.module.path
    if path and path[0] not in called:
      called.append(path[0])
      input_rank[path[0]] = getattr(args[0], "ndim", -1) if args else -1
    return next_fun(*args, **kwargs)

  def init():  # initialisation runs the forward pass once: record its calls there
    with nn.intercept_methods(record):
      return module.init(jax.random.PRNGKey(0), jnp.zeros((1, *image_shape), jnp.float32), train=False)["params"]

  params = jax.eval_shape(init)
  groups: list[list[str]] = []
  head_group = [HEAD] if HEAD in params else []
  for name in called:
    if name not in params or name == HEAD:
      continue
    has_weights = any(
      getattr(p[-1], "key", None) == "kernel" for p, _ in jax.tree_util.tree_flatten_with_path(params[name])[0]
    )
    if has_weights or not groups:
      groups.append([name])
    elif input_rank[name] == input_rank[groups[-1][0]]:  # normalises the output of the weight layer before it
      groups[-1].append(name)
    else:  # normalises the flattened features of a conv stack: part of the head, always trained
      head_group.append(name)
  if head_group:
    groups.append(head_group)
  return tuple(tuple(g) for g in groups)


def _frozen_bn_interceptor(frozen: frozenset[str]):
  def run_in_inference_mode(next_fun, args, kwargs, context):
    module = context.module
    if (
      isinstance(module, nn.BatchNorm)
      and context.method_name == "__call__"
      and module.path
      and module.path[0] in frozen
    ):
      kwargs = {**kwargs, "use_running_average": True}
    return next_fun(*args, **kwargs)

  return run_in_inference_mode


# The hooks of one run ask for the same model's layers: trace its forward pass once.
_cached_layer_groups = functools.lru_cache(maxsize=4)(layer_groups)


@typing.final
@dataclasses.dataclass(frozen=True)
class TransferLearning(Defense):
  name: str = "tl_dmi"
  frozen_layers: int = 8  # k: the first k layers keep their pretrained values; -1 = all but the head
  freeze_statistics: bool = True  # False: frozen layers' BN statistics adapt to private data (official code)

  def layers(self, facts: RunFacts) -> tuple[tuple[str, ...], ...]:
    """The model's layer groups, head last (``layer_groups``); ConfigError when ``frozen_layers`` does not fit."""
    layers = _cached_layer_groups(facts.module, tuple(facts.image_shape))
    trainable_body = len(layers) - 1  # the head always trains
    if self.frozen_layers > trainable_body or self.frozen_layers < -1:
      raise ConfigError(
        f"defense.frozen_layers: this model has {trainable_body} layers before its head; expected "
        f"0..{trainable_body} (or -1 for all of them), got {self.frozen_layers}"
      )
    return layers

  def frozen(self, facts: RunFacts) -> frozenset[str]:
    """Names of the top-level modules whose parameters (and statistics) stay as pretrained."""
    body = self.layers(facts)[:-1]
    k = len(body) if self.frozen_layers == -1 else self.frozen_layers
    return frozenset(name for group in body[:k] for name in group)

  def check(self, cfg, facts: RunFacts) -> None:
    if not cfg.init_from:
      raise ConfigError("tl_dmi: needs pretrained weights: set init_from (or a pretrain stage in the defend config)")
    self.layers(facts)  # frozen_layers must fit this model

  def optimizer(self, tx: optax.GradientTransformation, params, facts: RunFacts) -> optax.GradientTransformation:
    frozen = self.frozen(facts)
    labels = {
      name: jax.tree.map(lambda _: "frozen" if name in frozen else "train", sub) for name, sub in params.items()
    }
    return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)

  def interceptor(self, facts: RunFacts):
    frozen = self.frozen(facts)
    return _frozen_bn_interceptor(frozen) if self.freeze_statistics and frozen else None

  def report(self, facts: RunFacts, steps: int) -> dict:
    layers, frozen = self.layers(facts), self.frozen(facts)
    return {
      "frozen_layers": [list(g) for g in layers[:-1] if g[0] in frozen],
      "trained_layers": [list(g) for g in layers if g[0] not in frozen],
    }
