"""The pure classifier training step, and the hook every training-time defense plugs into.

A defense is not a separate trainer. It is a `Defense`: it may replace the per-example task
loss (label smoothing, CALoR's confidence adaptation), add a regulariser computed from the
forward pass with optional extra state (BiDO, MID), swap the classification head (CALoR's
low-rank head, MID's VIB head), wrap the optimiser (TL-DMI's freeze mask, DP-SGD's
clip-and-noise aggregation), intercept module calls in the forward pass (TL-DMI runs frozen
BatchNorm layers in inference mode) or ask for per-example gradients (DP-SGD). The step below
is the same for all of them.
"""

from __future__ import annotations

import dataclasses
import contextlib
import functools
import typing
from typing import Any

import jax
import flax.linen as nn
import jax.numpy as jnp
import optax

from jaxmi.nets import ClassifierOutput
from jaxmi.train.state import TrainState


@dataclasses.dataclass(frozen=True)
class Defense:
  """No defense. Subclasses override what they change; all hooks are pure."""

  name: str = "none"

  def head(self, num_classes: int):
    """A Linen head module replacing the linear head, or None to keep it."""
    return None

  def init_state(self, variables: dict) -> Any:
    return {}

  def task_loss(self, logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-example task loss, shape [B]."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)

  def regularizer(self, out: ClassifierOutput, labels: jax.Array, *, images: jax.Array, params: Any,
                  state: Any, rng: jax.Array, step: jax.Array) -> tuple[jax.Array, Any, dict]:
    """Extra loss term added to the mean task loss: (scalar, new state, metrics)."""
    return jnp.zeros((), jnp.float32), state, {}

  def optimizer(self, tx: optax.GradientTransformation, params: Any) -> optax.GradientTransformation:
    return tx

  def bind(self, steps_per_epoch: int, total_steps: int, *, module=None, image_shape=None) -> "Defense":
    """The defense for this run: its length (schedules in epochs) and model (TL-DMI's layers); called once."""
    return self

  def interceptor(self, params: Any):
    """A flax method interceptor for the training forward pass (TL-DMI runs frozen BN in inference mode), or None."""
    return None

  # True: the optimiser receives per-example gradients (leading batch axis), as DP-SGD's clipping needs.
  per_example_grads: typing.ClassVar[bool] = False

  def check(self, cfg: Any) -> None:
    """Raises ConfigError when this defense cannot train the ClassifierConfig ``cfg`` (DP-SGD with BatchNorm)."""

  def report(self, *, steps: int, batch_size: int, num_examples: int) -> dict:
    """Extra facts for the run summary (DP-SGD: the privacy spent; NLS: the smoothing its schedule reached)."""
    return {}

  def warning(self, epochs: int) -> str:
    """One line when this setting cannot act in a run of ``epochs`` epochs (a schedule that never starts), else ""."""
    return ""

  def step_inputs(self) -> Any:
    """Arrays the jitted step takes as an argument on every call (a distillation teacher's variables), or None."""
    return None

  def targets(self, images: jax.Array, labels: jax.Array, inputs: Any) -> jax.Array:
    """The labels the loss sees, from the augmented batch and ``step_inputs()`` (distillation: the teacher's logits)."""
    return labels


@dataclasses.dataclass(frozen=True, kw_only=True)
class AugmentConfig:
  hflip: bool = False        # faces: random horizontal flip, as in the reference pipeline
  max_shift: int = 0         # random translation by up to this many pixels (edge padding)


def augment(images: jax.Array, rng: jax.Array, cfg: AugmentConfig) -> jax.Array:
  """Per-example random flip/shift on device (no host work, fixed shapes)."""
  if not cfg.hflip and not cfg.max_shift:
    return images
  flip_rng, shift_rng = jax.random.split(rng)
  b, h, w, _ = images.shape
  if cfg.hflip:
    flip = jax.random.bernoulli(flip_rng, 0.5, (b, 1, 1, 1))
    images = jnp.where(flip, images[:, :, ::-1, :], images)
  if cfg.max_shift:
    s = cfg.max_shift
    padded = jnp.pad(images, ((0, 0), (s, s), (s, s), (0, 0)), mode="edge")
    offsets = jax.random.randint(shift_rng, (b, 2), 0, 2 * s + 1)
    crop = lambda img, o: jax.lax.dynamic_slice(img, (o[0], o[1], 0), (h, w, img.shape[-1]))
    images = jax.vmap(crop)(padded, offsets)
  return images


def to_float(images: jax.Array) -> jax.Array:
  """uint8 batches travel to the device (4x less traffic) and become [0, 1] floats there."""
  return images.astype(jnp.float32) / 255.0 if images.dtype == jnp.uint8 else images


def make_train_step(model, tx: optax.GradientTransformation, defense: Defense = Defense(),
                    augment_cfg: AugmentConfig = AugmentConfig()):
  """Returns ``train_step(state, batch) -> (state, metrics)``, jitted, with ``state`` donated.

  ``model``, ``tx`` and ``defense`` are static definitions; parameters only enter through
  ``state`` (and the defense's ``step_inputs()``), so one compiled program serves every step.
  """

  def loss_fn(params, state: TrainState, images, labels, rngs):
    defense_rng, vib_rng = rngs
    interceptor = defense.interceptor(params)
    with nn.intercept_methods(interceptor) if interceptor else contextlib.nullcontext():
      # "vib": the stream a stochastic head (MID's VIB) samples from; other modules ignore it.
      out, mutated = model.apply({"params": params, "batch_stats": state.batch_stats}, images, train=True,
                                 mutable=["batch_stats"], rngs={"vib": vib_rng})
    task = jnp.mean(defense.task_loss(out.logits, labels))
    reg, defense_state, reg_metrics = defense.regularizer(
        out, labels, images=images, params=params, state=state.defense_state, rng=defense_rng, step=state.step)
    loss = task + reg
    # Soft labels ([B, K], e.g. a teacher's logits for distillation) count as their argmax class.
    hard = labels if labels.ndim == 1 else jnp.argmax(labels, -1)
    metrics = {"loss": loss, "task_loss": task, "acc": jnp.mean(jnp.argmax(out.logits, -1) == hard),
               **{f"defense/{k}": v for k, v in reg_metrics.items()}}
    return loss, (mutated.get("batch_stats", {}), defense_state, metrics)

  def per_example_grads(params, state, images, labels, rngs):
    """Gradients of each example's loss, stacked on a leading batch axis (each example forwarded alone)."""
    def one(image, label, defense_rng, vib_rng):
      return jax.grad(loss_fn, has_aux=True)(params, state, image[None], label[None], (defense_rng, vib_rng))
    keys = [jax.random.split(r, images.shape[0]) for r in rngs]
    grads, (batch_stats, defense_state, metrics) = jax.vmap(one)(images, labels, *keys)
    norms = jax.vmap(optax.global_norm)(grads)
    metrics = {**jax.tree.map(jnp.mean, metrics), "per_example_grad_norm": jnp.mean(norms)}
    # Per-example runs need per-example normalisation (no batch statistics): nothing to aggregate there.
    return grads, (state.batch_stats, jax.tree.map(lambda a: a[0], defense_state), metrics)

  @functools.partial(jax.jit, donate_argnums=(0,))
  def jitted_step(state: TrainState, batch: dict, inputs: Any) -> tuple[TrainState, dict]:
    rng = jax.random.fold_in(state.rng, state.step)
    aug_rng, defense_rng, vib_rng = jax.random.split(rng, 3)
    images = augment(to_float(batch["image"]), aug_rng, augment_cfg)
    # After augmentation: a teacher labels exactly the images the student sees.
    labels = defense.targets(images, batch["label"], inputs)
    grad_fn = per_example_grads if defense.per_example_grads else jax.grad(loss_fn, has_aux=True)
    grads, (batch_stats, defense_state, metrics) = grad_fn(state.params, state, images, labels,
                                                           (defense_rng, vib_rng))
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics["grad_norm"] = optax.global_norm(grads) if not defense.per_example_grads else optax.global_norm(updates)
    new_state = TrainState(step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state,
                           defense_state=defense_state, rng=state.rng)
    return new_state, metrics

  def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    # The defense's arrays (a teacher's variables) are arguments, not constants baked into the program.
    return jitted_step(state, batch, defense.step_inputs())

  train_step._cache_size = jitted_step._cache_size  # compilations so far: the no-recompile tests read it
  return train_step


def make_eval_step(model):
  """Returns ``eval_step(variables, batch) -> sums`` over the real (mask=1) rows of a padded batch."""

  @jax.jit
  def eval_step(variables: dict, batch: dict) -> dict:
    out = model.apply(variables, to_float(batch["image"]), train=False)
    labels, mask = batch["label"], batch["mask"]
    labels = labels if labels.ndim == 1 else jnp.argmax(labels, -1)  # soft labels: their top-1 class
    ce = optax.softmax_cross_entropy_with_integer_labels(out.logits, labels)
    top5 = jax.lax.top_k(out.logits, min(5, out.logits.shape[-1]))[1]
    return {
        "loss": jnp.sum(ce * mask),
        "correct": jnp.sum((jnp.argmax(out.logits, -1) == labels) * mask),
        "correct5": jnp.sum(jnp.any(top5 == labels[:, None], -1) * mask),
        "count": jnp.sum(mask),
    }

  return eval_step
