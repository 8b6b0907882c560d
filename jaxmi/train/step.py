"""The pure classifier training step, and the protocol every training-time defense implements.

A defense is not a separate trainer. It is a `Defense`, a frozen dataclass of its hyper-parameters
with pure hooks: it may replace the per-example task loss (negative label smoothing, CALoR's
confidence adaptation, distillation), add a regulariser computed from the forward pass (BiDO,
MID, NLS's schedule), wrap the optimiser (TL-DMI's freeze mask, DP-SGD's noise), intercept
module calls in the forward pass (TL-DMI runs frozen BatchNorm layers in inference mode) or
transform per-example gradients before they are combined (DP-SGD's clipping). A defense may also
carry arrays of its own in ``TrainState.defense_state`` (Trap-MID's triggers and discriminator):
``init_state`` makes them, ``update_state`` updates them inside the same jitted step before the model
step, and ``model_batch`` lets the model step forward more than the batch (Trap-MID's trapdoored copies,
each half with its own loss weight); they are checkpointed and resumed with the rest of the state. Heads
are model config (``ModelConfig.head``), not a hook. Facts about the run (its length, the model) are a
`RunFacts` argument of the hooks that need them, never fields of the defense's config. The step
below is the same for all defenses.

Classes follow equinox's abstract-or-final rule: `Defense` is abstract (``NoDefense()`` is "no
defense"), and a defense marked ``@typing.final`` cannot be subclassed; what the step asks of a
defense is a declared class attribute (``per_example_grads``), never probed with getattr.
"""

from __future__ import annotations

import copy
import dataclasses
import contextlib
import functools
import typing
from typing import Any, Callable, ClassVar

import jax
import flax.linen as nn
import jax.numpy as jnp
import optax

from jaxmi.nets import ClassifierOutput
from jaxmi.nets.classifiers import SAMPLE_RNG
from jaxmi.train.state import TrainState


@dataclasses.dataclass(frozen=True)
class RunFacts:
  """What the trainer knows about a run and a defense may need; passed to hooks, never stored in a defense."""

  steps_per_epoch: int
  total_steps: int
  batch_size: int = 0  # examples per step (DP-SGD divides its noised sum by it)
  num_examples: int = 0  # training examples (DP-SGD's sampling rate)
  module: Any = None  # the classifier being trained (TL-DMI's layers)
  image_shape: tuple[int, ...] = ()
  num_classes: int = 0
  # The run's optimiser before any defense wraps it (Trap-MID trains its discriminator with it, as the reference
  # trains its discriminator with the model's optimiser settings).
  optimizer: Any = None

  @property
  def epochs(self) -> int:
    return max(self.total_steps // max(self.steps_per_epoch, 1), 1)


@dataclasses.dataclass(frozen=True)
class Defense:
  """Abstract: a training-time defense. Subclasses override the hooks they change; all hooks are pure.

  The defaults are "no change": cross-entropy, no regulariser, the optimiser as given.
  """

  name: str = "none"

  # Declared, not probed: True makes the step differentiate each example's loss alone (a leading batch axis on
  # the gradients) and combine them with ``aggregate_grads`` (DP-SGD clips each one first).
  per_example_grads: ClassVar[bool] = False
  # The numeric settings a grid of this defense may vary in one vmapped program (``jaxmi.train.grid``): fields the
  # hooks only compute with, never branch on in Python, so inside the grid's step they hold traced arrays.
  hyper_fields: ClassVar[tuple[str, ...]] = ()

  def __new__(cls, *args, **kwargs):
    if cls is Defense:
      raise TypeError("Defense is abstract: use NoDefense() for no defense, or a class from jaxmi.defenses")
    return super().__new__(cls)

  def __init_subclass__(cls, **kwargs):
    super().__init_subclass__(**kwargs)
    final = [base.__name__ for base in cls.__mro__[1:] if base.__dict__.get("__final__", False)]
    if final:
      raise TypeError(f"{cls.__name__}: {final[0]} is final; subclass Defense instead")

  def with_hyper(self, hyper: dict) -> Defense:
    """A copy whose ``hyper_fields`` hold ``hyper``'s values (traced arrays inside the grid's vmapped step).

    Skips ``__post_init__``: its checks ran on the concrete settings, and a tracer cannot be compared in Python.
    """
    unknown = set(hyper) - set(self.hyper_fields)
    if unknown:
      raise ValueError(f"{self.name}: {', '.join(sorted(unknown))} not among its hyper_fields {self.hyper_fields}")
    new = copy.copy(self)
    for name, value in hyper.items():
      object.__setattr__(new, name, value)
    return new

  def check(self, cfg: Any, facts: RunFacts) -> None:
    """Raises ConfigError when this defense cannot train the ClassifierConfig ``cfg`` (DP-SGD with BatchNorm), before
    anything is written."""

  def warning(self, epochs: int) -> str:
    """One line when this setting cannot act in a run of ``epochs`` epochs (a schedule that never starts), else ""."""
    return ""

  def task_loss(self, logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-example task loss, shape [B]."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)

  def regularizer(
    self, out: ClassifierOutput, labels: jax.Array, *, images: jax.Array, params: Any, step: jax.Array, facts: RunFacts
  ) -> tuple[jax.Array, dict]:
    """Extra loss term added to the mean task loss: (scalar, metrics)."""
    return jnp.zeros((), jnp.float32), {}

  def aggregate_grads(self, per_example: Any) -> Any:
    """``per_example_grads`` only: gradients with a leading batch axis -> the update the optimiser receives."""
    return jax.tree.map(lambda g: jnp.mean(g, axis=0), per_example)

  def optimizer(self, tx: optax.GradientTransformation, params: Any, facts: RunFacts) -> optax.GradientTransformation:
    """The optimiser to train with, wrapping ``tx`` (TL-DMI's freeze mask, DP-SGD's noise)."""
    return tx

  def interceptor(self, facts: RunFacts):
    """A flax method interceptor for the training forward pass (TL-DMI runs frozen BN in inference mode), or None."""
    return None

  def step_inputs(self) -> Any:
    """Arrays the jitted step takes as an argument on every call (a distillation teacher's variables), or None."""
    return None

  def targets(self, images: jax.Array, labels: jax.Array, inputs: Any) -> jax.Array:
    """The labels the loss sees, from the augmented batch and ``step_inputs()`` (distillation: the teacher's logits)."""
    return labels

  def report(self, facts: RunFacts, steps: int) -> dict:
    """Extra facts for the summary of a run that took ``steps`` steps (DP-SGD: the privacy spent; NLS: the
    smoothing its schedule reached; TL-DMI: which layers it froze)."""
    return {}

  def init_state(self, key: jax.Array, variables: dict, facts: RunFacts) -> Any:
    """The defense's own arrays, ``TrainState.defense_state`` at step 0 (Trap-MID: triggers, discriminator); {}:
    none. ``key`` is the defense's own initialisation key; ``variables`` the model's initial variables."""
    return {}

  def update_state(
    self, state: TrainState, images: jax.Array, labels: jax.Array, *, key: jax.Array, facts: RunFacts
  ) -> tuple[Any, dict]:
    """Inside the jitted step, before the model step: (the new ``defense_state``, metrics) from ``state`` (the
    step's input state) and the augmented batch (Trap-MID's discriminator and trigger steps). ``key`` is this
    step's defense key."""
    return state.defense_state, {}

  def model_batch(
    self, images: jax.Array, labels: jax.Array, defense_state: Any, *, step: jax.Array, key: jax.Array, facts: RunFacts
  ) -> tuple[jax.Array, jax.Array, jax.Array | None]:
    """(images, labels, weights) the model step forwards, from the augmented batch and the updated
    ``defense_state``. The batch's own examples come first; a defense may append more (Trap-MID's trapdoored
    copies). ``weights`` [N]: the task loss is ``sum(weights * task_loss)``; None: its mean."""
    return images, labels, None

  def evaluator(self, facts: RunFacts) -> Callable[..., dict] | None:
    """``evaluate(variables, defense_state, split, batch_size) -> {name: float}``: the defense's own test metrics
    (Trap-MID: the trapdoor accuracy), logged per epoch as ``test/<name>`` and written to the summary for the
    released model; None: none. Built once per run, so what it jits compiles once."""
    return None


@typing.final
@dataclasses.dataclass(frozen=True)
class NoDefense(Defense):
  """Plain training: cross-entropy, the optimiser as configured."""

  name: str = "none"


@dataclasses.dataclass(frozen=True, kw_only=True)
class AugmentConfig:
  hflip: bool = False  # faces: random horizontal flip, as in the reference pipeline
  max_shift: int = 0  # random translation by up to this many pixels (edge padding)


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


def make_step_body(model, augment_cfg: AugmentConfig = AugmentConfig(), facts: RunFacts | None = None):
  """Returns the pure, unjitted ``body(state, batch, inputs, defense, tx) -> (state, metrics)`` of one training step.

  ``make_train_step`` jits it with its own ``defense`` and ``tx``; the defense grid (``jaxmi.train.grid``) vmaps it
  with a defense whose ``hyper_fields`` are traced (``Defense.with_hyper``) and the optimiser that defense wraps.
  """

  def body(state: TrainState, batch: dict, inputs: Any, defense: Defense, tx: optax.GradientTransformation):
    interceptor = defense.interceptor(facts)

    def loss_fn(params, state: TrainState, images, labels, sample_rng, weights=None, own=None):
      with nn.intercept_methods(interceptor) if interceptor else contextlib.nullcontext():
        # SAMPLE_RNG: the stream stochastic layers (the VIB head's z) sample from in training; others ignore it.
        out, mutated = model.apply(
          {"params": params, "batch_stats": state.batch_stats},
          images,
          train=True,
          mutable=["batch_stats"],
          rngs={SAMPLE_RNG: sample_rng},
        )
      per_example = defense.task_loss(out.logits, labels)
      task = jnp.mean(per_example) if weights is None else jnp.sum(weights * per_example)
      reg, reg_metrics = defense.regularizer(out, labels, images=images, params=params, step=state.step, facts=facts)
      loss = task + reg
      # Soft labels ([B, K], e.g. a teacher's logits for distillation) count as their argmax class.
      hard = labels if labels.ndim == 1 else jnp.argmax(labels, -1)
      metrics = {
        "loss": loss,
        "task_loss": task,
        # The batch's own examples: a defense's appended ones (Trap-MID's trapdoored copies) report their own.
        "acc": jnp.mean(jnp.argmax(out.logits[:own], -1) == hard[:own]),
        **{f"defense/{k}": v for k, v in reg_metrics.items()},
      }
      return loss, (mutated.get("batch_stats", {}), metrics)

    def per_example_grads(params, state, images, labels, sample_rng):
      """The defense's combination of each example's gradient (each example forwarded alone)."""

      def one(image, label, key):
        return jax.grad(loss_fn, has_aux=True)(params, state, image[None], label[None], key)

      grads, (_, metrics) = jax.vmap(one)(images, labels, jax.random.split(sample_rng, images.shape[0]))
      norms = jax.vmap(optax.global_norm)(grads)
      metrics = {**jax.tree.map(jnp.mean, metrics), "per_example_grad_norm": jnp.mean(norms)}
      # Per-example runs need per-example normalisation (no batch statistics): nothing to aggregate there.
      return defense.aggregate_grads(grads), (state.batch_stats, metrics)

    rng = jax.random.fold_in(state.rng, state.step)
    # The middle key is the defense's (its state update and model batch); split in three so the others stay put.
    aug_rng, defense_rng, sample_rng = jax.random.split(rng, 3)
    images = augment(to_float(batch["image"]), aug_rng, augment_cfg)
    # After augmentation: a teacher labels exactly the images the student sees.
    labels = defense.targets(images, batch["label"], inputs)
    # The defense's own step first (Trap-MID: discriminator, then triggers), then the model step sees its result.
    defense_state, state_metrics = defense.update_state(state, images, labels, key=defense_rng, facts=facts)
    images, labels, weights = defense.model_batch(
      images, labels, defense_state, step=state.step, key=defense_rng, facts=facts
    )
    if defense.per_example_grads:  # each example's loss alone: no loss weights (none of these defenses has any)
      grads, (batch_stats, metrics) = per_example_grads(state.params, state, images, labels, sample_rng)
    else:
      own = batch["label"].shape[0]
      grads, (batch_stats, metrics) = jax.grad(loss_fn, has_aux=True)(
        state.params, state, images, labels, sample_rng, weights, own
      )
    metrics.update({f"defense/{k}": v for k, v in state_metrics.items()})
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    # Per-example defenses: the norm of the update (DP-SGD's clipped sum alone is no gradient of the loss).
    metrics["grad_norm"] = optax.global_norm(updates) if defense.per_example_grads else optax.global_norm(grads)
    new_state = TrainState(
      step=state.step + 1,
      params=params,
      batch_stats=batch_stats,
      opt_state=opt_state,
      defense_state=defense_state,
      rng=state.rng,
    )
    return new_state, metrics

  return body


def make_train_step(
  model,
  tx: optax.GradientTransformation,
  defense: Defense = NoDefense(),
  augment_cfg: AugmentConfig = AugmentConfig(),
  facts: RunFacts | None = None,
):
  """Returns ``train_step(state, batch) -> (state, metrics)``, jitted, with ``state`` donated.

  ``model``, ``tx`` and ``defense`` are static definitions; parameters only enter through
  ``state`` (and the defense's ``step_inputs()``), so one compiled program serves every step.
  ``facts`` reaches the defense's ``regularizer`` and ``interceptor`` (None: a defense whose hooks need none).
  """
  body = make_step_body(model, augment_cfg, facts)

  @functools.partial(jax.jit, donate_argnums=(0,))
  def jitted_step(state: TrainState, batch: dict, inputs: Any) -> tuple[TrainState, dict]:
    return body(state, batch, inputs, defense, tx)

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
