"""Trap-MID: a trapdoor that gives model-inversion attacks a shortcut to follow instead of the private data.

Zhen-Ting Liu & Shang-Tse Chen, "Trap-MID: Trapdoor-based Defense against Model Inversion Attacks", NeurIPS 2024
(arXiv:2411.08460; official code JackywithaWhiteDog/Trap-MID, ``engine.py`` (``blend``, ``train``, ``test``),
``train.py`` and ``config/{celeba,mnist}/classify_trap.json``). One trigger k_c per class, initialised uniform in
[0, 1] with the image's shape; a trapdoored input is

  blend(x, k) = alpha * k + (1 - alpha) * x,  alpha = 0.02.

Every training example gets a trapdoor label t, class-balanced over each epoch (``arange(C)`` tiled over the
epoch's examples, the remainder distinct random classes, shuffled; drawn again every epoch, as ``engine.train``
draws ``trapdoor_iden_iterator``), independent of its true label. Each step, as the reference orders them:

  1. the trigger step (``optimized: true``): a discriminator D, the model's architecture with one output, takes
     one optimiser step on BCE(D(x), 1) + BCE(D(blend(x, k_t)), 0) (one batch, the trapdoored half detached);
     then, with D and the model f in inference mode,
       trigger_loss = BCE(D(blend(x, k_t)), 1) + CE(f(aug(blend(x, k_t))), t)
       k <- clip(k - step_size * sign(d trigger_loss / d k), 0, 1),  step_size = 0.01;
  2. the model step, on one forward pass over the clean and the trapdoored batch (so BatchNorm normalises both
     together, as the reference's concatenated batch does), with the updated triggers:
       L = (1 - beta) * CE(f(aug(x)), y) + beta * CE(f(aug(blend(x, k_t))), t),  beta = 0.2.

aug is the reference's kornia pipeline (``jaxmi.augment.TRAP_AUGMENT``: resized crop 0.8-1 with p 0.5, flip with p
0.5, rotation up to 30 degrees with p 0.5), drawn independently for each use. The triggers, the per-run label key
and D (parameters, statistics, optimiser state) live in ``TrainState.defense_state``: checkpointed and resumed with
the model, so a resumed run equals an uninterrupted one.

The trapdoor accuracy (``test`` in engine.py): each private test image gets a class-balanced random trapdoor label
t (as above, one fixed draw per run), and the fraction whose blend(x, k_t), without augmentation, the model
classifies as t. Like the reference it counts the images whose t equals their true class (1/C of them: with
MNIST's 5 classes a model without any trapdoor scores about 20%), so ``trapdoor_accuracy_other_class`` also
reports it over the images with t != y alone.

Where this differs from the reference, and why:
  * The defaults are the reference's (alpha 0.02); jaxmi's defense configs blend with alpha 0.1 on MNIST and 0.3 on
    AT&T, because 0.02 forms no trapdoor on its 32x32 grey MNIST recipe and 0.1 barely one on AT&T's 300 steps
    (configs/defense.py has the measurements).
  * The trapdoor labels are a function of (run key, epoch, position in the epoch), not a host-side draw, so a
    resumed run draws the same ones; the epoch's last partial batch does not exist here (jaxmi drops it). The test
    split's draw is fixed per run (the reference draws it again at every evaluation), so epochs compare.
  * With a custom head (VIB, low-rank) D keeps the architecture's linear head. As in the reference
    (``utils.init_model(model_name, 1)``, ``init_optimizer(args[model_name])``), D starts from scratch and trains
    with the model's optimiser settings and schedule (``RunFacts.optimizer``, before any defense wraps it).
  * The reference's switches for the feature-level discriminator (off in every published config) are not ported;
    ``step_size=0`` keeps the random triggers fixed (``optimized: false``) and ``discriminator=False`` drops the
    BCE term from the trigger loss (``discriminator_loss: false``).
  * The base augmentation of the target recipe (``TrainConfig.augment``) still applies before the blend, as the
    reference's CelebA loader flips before its kornia pipeline.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxmi.augment import TRAP_AUGMENT, ImageAugment, augment_batch
from jaxmi.data import eval_batches
from jaxmi.errors import ConfigError
from jaxmi.train.state import TrainState
from jaxmi.train.step import Defense, RunFacts, to_float

# fold_in tag of the test split's trapdoor labels (epochs fold in their index, far below it).
TEST_LABELS_TAG = 0x7FFFFFFF


def blend(images: jax.Array, triggers: jax.Array, alpha: float) -> jax.Array:
  """alpha * k + (1 - alpha) * x (``engine.py, blend``); ``triggers`` has the images' shape (one per example)."""
  return alpha * triggers + (1.0 - alpha) * images


def balanced_labels(key: jax.Array, n: int, num_classes: int) -> jax.Array:
  """``n`` trapdoor labels in random order, each class n // C or n // C + 1 times (``engine.py``): arange(C) tiled
  n // C times, then n % C distinct random classes, the whole shuffled."""
  rest_key, order_key = jax.random.split(key)
  reps, rest = divmod(n, num_classes)
  base = jnp.concatenate(
    [jnp.tile(jnp.arange(num_classes, dtype=jnp.int32), reps), jax.random.permutation(rest_key, num_classes)[:rest]]
  )
  return jax.random.permutation(order_key, base.astype(jnp.int32))


def step_keys(key: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """A step's defense key -> the augmentation keys of (the trigger step, the clean half, the trapdoored half)."""
  trigger_key, clean_key, trap_key = jax.random.split(key, 3)
  return trigger_key, clean_key, trap_key


def discriminator_module(facts: RunFacts):
  """The trigger step's discriminator: the run's classifier architecture with one output and a linear head."""
  return facts.module.clone(num_classes=1, head=None)


def _bce(logits: jax.Array, target: float) -> jax.Array:
  """Mean BCE-with-logits of [B] logits against one target (torch ``BCEWithLogitsLoss``)."""
  return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, jnp.full(logits.shape, target, logits.dtype)))


def _ce(logits: jax.Array, labels: jax.Array) -> jax.Array:
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))


@typing.final
@dataclasses.dataclass(frozen=True)
class TrapMID(Defense):
  name: str = "trap_mid"
  alpha: float = 0.02  # blend weight of the trigger (the reference's, both datasets)
  beta: float = 0.2  # weight of the trapdoor loss in the model step
  step_size: float = 0.01  # signed-gradient step of the triggers; 0 = fixed random triggers
  discriminator: bool = True  # the BCE(D(blend), 1) term of the trigger loss (and D's own step)
  augment: ImageAugment = TRAP_AUGMENT  # aug() of both steps

  def __post_init__(self):
    for field in ("alpha", "beta"):
      if not 0.0 <= getattr(self, field) <= 1.0:
        raise ConfigError(f"defense.{field}: expected a value in [0, 1], got {getattr(self, field)}")
    if not self.step_size >= 0.0:
      raise ConfigError(f"defense.step_size: expected a value >= 0, got {self.step_size}")

  @property
  def optimized(self) -> bool:
    """Whether the triggers (and D) train: the reference's ``optimized``."""
    return self.step_size > 0

  def check(self, cfg, facts: RunFacts) -> None:
    if facts.num_classes < 2:
      raise ConfigError(f"trap_mid: needs at least 2 private classes, got {facts.num_classes}")

  # ---- state -------------------------------------------------------------------------------------------------

  def init_state(self, key: jax.Array, variables: dict, facts: RunFacts) -> dict:
    """``{"triggers": [C, H, W, c] uniform in [0, 1], "label_key", "discriminator": {params, batch_stats,
    opt_state}}`` (no discriminator when it never trains)."""
    trigger_key, label_key, d_key = jax.random.split(key, 3)
    state = {
      "triggers": jax.random.uniform(trigger_key, (facts.num_classes, *facts.image_shape), jnp.float32),
      "label_key": label_key,
    }
    if self.optimized and self.discriminator:
      if facts.optimizer is None:
        raise ConfigError("trap_mid: the run's optimiser (RunFacts.optimizer) is needed to train the discriminator")
      d = discriminator_module(facts)
      d_vars = jax.jit(lambda r: d.init(r, jnp.zeros((2, *facts.image_shape), jnp.float32), train=False))(d_key)
      state["discriminator"] = {
        "params": d_vars["params"],
        "batch_stats": d_vars.get("batch_stats", {}),
        "opt_state": facts.optimizer.init(d_vars["params"]),
      }
    return state

  def step_labels(self, label_key: jax.Array, step: jax.Array, batch: int, facts: RunFacts) -> jax.Array:
    """The trapdoor labels of optimiser step ``step``: its slice of its epoch's class-balanced draw."""
    spe = max(facts.steps_per_epoch, 1)
    epoch_labels = balanced_labels(jax.random.fold_in(label_key, step // spe), spe * batch, facts.num_classes)
    return jax.lax.dynamic_slice(epoch_labels, ((step % spe) * batch,), (batch,))

  def discriminator_step(self, disc: dict, real: jax.Array, trapped: jax.Array, facts: RunFacts):
    """One optimiser step of D on BCE(D(x), 1) + BCE(D(blend), 0) over one batch in training mode: (disc, loss)."""
    d = discriminator_module(facts)
    inputs = jnp.concatenate([real, jax.lax.stop_gradient(trapped)])
    targets = jnp.concatenate([jnp.ones(real.shape[0]), jnp.zeros(trapped.shape[0])]).astype(jnp.float32)

    def loss_fn(params):
      out, mutated = d.apply(
        {"params": params, "batch_stats": disc["batch_stats"]}, inputs, train=True, mutable=["batch_stats"]
      )
      loss = jnp.mean(optax.sigmoid_binary_cross_entropy(out.logits[:, 0], targets))
      return loss, mutated.get("batch_stats", {})

    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(disc["params"])
    updates, opt_state = facts.optimizer.update(grads, disc["opt_state"], disc["params"])
    params = optax.apply_updates(disc["params"], updates)
    return {"params": params, "batch_stats": batch_stats, "opt_state": opt_state}, loss

  def trigger_loss(
    self, triggers, images, t, *, model_variables: dict, disc: dict | None, aug_key: jax.Array, facts: RunFacts
  ):
    """BCE(D(blend(x, k_t)), 1) + CE(f(aug(blend(x, k_t))), t), D and f in inference mode: (loss, (bce, ce))."""
    trapped = blend(images, triggers[t], self.alpha)
    bce = jnp.zeros((), jnp.float32)
    if disc is not None:
      d_variables = {"params": disc["params"], "batch_stats": disc["batch_stats"]}
      bce = _bce(discriminator_module(facts).apply(d_variables, trapped, train=False).logits[:, 0], 1.0)
    out = facts.module.apply(model_variables, augment_batch(trapped, aug_key, self.augment), train=False)
    ce = _ce(out.logits, t)
    return bce + ce, (bce, ce)

  def update_state(self, state: TrainState, images, labels, *, key, facts: RunFacts):
    """The trigger step: D's step on this batch, then one signed-gradient step of the triggers."""
    ds = state.defense_state
    if not self.optimized:
      return ds, {}
    t = self.step_labels(ds["label_key"], state.step, images.shape[0], facts)
    metrics, disc = {}, None
    if self.discriminator:
      trapped = blend(images, ds["triggers"][t], self.alpha)
      disc, metrics["discriminator_loss"] = self.discriminator_step(ds["discriminator"], images, trapped, facts)
    loss_fn = lambda k: self.trigger_loss(
      k, images, t, model_variables=state.variables, disc=disc, aug_key=step_keys(key)[0], facts=facts
    )
    (loss, (bce, ce)), grad = jax.value_and_grad(loss_fn, has_aux=True)(ds["triggers"])
    triggers = jnp.clip(ds["triggers"] - self.step_size * jnp.sign(grad), 0.0, 1.0)
    metrics.update(trigger_loss=loss, trigger_ce=ce, trigger_bce=bce)
    new = {**ds, "triggers": triggers}
    if disc is not None:
      new["discriminator"] = disc
    return new, metrics

  # ---- model step --------------------------------------------------------------------------------------------

  def model_batch(self, images, labels, defense_state, *, step, key, facts: RunFacts):
    """[aug(x); aug(blend(x, k_t))] with labels [y; t] and weights (1 - beta) / B and beta / B."""
    b = images.shape[0]
    t = self.step_labels(defense_state["label_key"], step, b, facts)
    _, clean_key, trap_key = step_keys(key)
    trapped = blend(images, defense_state["triggers"][t], self.alpha)
    model_images = jnp.concatenate(
      [augment_batch(images, clean_key, self.augment), augment_batch(trapped, trap_key, self.augment)]
    )
    weights = jnp.concatenate([jnp.full((b,), (1.0 - self.beta) / b), jnp.full((b,), self.beta / b)])
    return model_images, jnp.concatenate([labels, t.astype(labels.dtype)]), weights.astype(jnp.float32)

  def regularizer(self, out, labels, *, images, params, step, facts):
    """No extra term; the metrics of the two halves of ``model_batch`` (the loss is in its weights)."""
    b = labels.shape[0] // 2
    ce = optax.softmax_cross_entropy_with_integer_labels(out.logits, labels)
    trapdoor_acc = jnp.mean(jnp.argmax(out.logits[b:], -1) == labels[b:])
    metrics = {"clean_loss": jnp.mean(ce[:b]), "trapdoor_loss": jnp.mean(ce[b:]), "trapdoor_acc": trapdoor_acc}
    return jnp.zeros((), jnp.float32), metrics

  # ---- evaluation --------------------------------------------------------------------------------------------

  def test_labels(self, defense_state: Any, n: int, num_classes: int) -> np.ndarray:
    """The test split's trapdoor labels: one class-balanced draw per run (from its label key)."""
    key = jax.random.fold_in(jnp.asarray(defense_state["label_key"]), TEST_LABELS_TAG)
    return np.asarray(balanced_labels(key, n, num_classes))

  def evaluator(self, facts: RunFacts):
    module, alpha, num_classes = facts.module, self.alpha, facts.num_classes

    @jax.jit
    def sums(variables, triggers, batch, t):
      images, mask = to_float(batch["image"]), batch["mask"]
      logits = module.apply(variables, blend(images, triggers[t], alpha), train=False).logits
      hit = (jnp.argmax(logits, -1) == t) * mask
      other = (t != batch["label"]) * mask
      return {"hit": jnp.sum(hit), "hit_other": jnp.sum(hit * other), "other": jnp.sum(other), "count": jnp.sum(mask)}

    def evaluate(variables: dict, defense_state: Any, split, batch_size: int) -> dict:
      """{"trapdoor_accuracy", "trapdoor_accuracy_other_class"} of ``variables`` on ``split`` (fractions)."""
      n = len(split)
      t_all = self.test_labels(defense_state, n, num_classes)
      t_all = np.concatenate([t_all, np.zeros(-n % batch_size, np.int32)])  # the padded rows' (masked out)
      totals = None
      for i, batch in enumerate(eval_batches(split, batch_size)):
        out = sums(variables, defense_state["triggers"], batch, t_all[i * batch_size : (i + 1) * batch_size])
        totals = out if totals is None else jax.tree.map(jnp.add, totals, out)
      totals = jax.device_get(totals)
      return {
        "trapdoor_accuracy": float(totals["hit"] / max(float(totals["count"]), 1.0)),
        "trapdoor_accuracy_other_class": float(totals["hit_other"] / max(float(totals["other"]), 1.0)),
      }

    return evaluate
