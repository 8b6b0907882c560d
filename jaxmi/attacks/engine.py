"""The batched inversion engine: every identity x restart optimised at once, in one compiled program.

A latent attack is WHAT is optimised, ``InversionConfig`` and an ``Objective`` (a latent parametrisation,
loss terms and an optimiser; the interfaces are in ``jaxmi.attacks.terms``, the methods in ``gmi``,
``kedmi`` and ``lomma``), and HOW it runs, ``ExecutionConfig`` (devices, chunking, memory budget, compute
dtype, remat, unrolling, log and checkpoint intervals), which changes no result beyond float rounding.

The engine optimises a latent tensor of shape [identities * restarts, ...] in compiled blocks of unrolled
steps; the loss is ``vmap``-ed over latents, so each latent is an independent problem (generator, critic
and targets run in inference mode, so no BatchNorm couples them). Networks, their variables and the loss
terms' arrays enter the compiled program as arguments, never as closed-over constants.

When there are more latents than ``max_batch`` (or, with ``max_batch`` = 0, than fit the
memory budget by XLA's own memory analysis of the program), they are processed in equal
chunks (the last one padded) by the same compiled function. Each chunk's latent axis is
sharded over a device mesh (``jaxmi.parallel``; network variables replicated), so one program
runs on 1 CPU, N GPUs or several hosts. On CPU the compiled function runs ``unroll`` steps as
straight-line code (no while loop: XLA:CPU runs convolutions inside while loops several times
slower, see README "XLA:CPU notes"); on accelerators one rolled loop covers a log interval. A host loop calls
it with the carry donated, and the loss history leaves the device once per ``log_every`` steps so a progress
bar can advance: one compilation in total (``RunStats.compilations`` counts them, from jit's cache).

Networks may compute in bfloat16 (``compute_dtype``) while latents, optimiser state and the
loss stay float32, and may be rematerialised in the backward pass (``remat``) to fit larger
chunks.

Long attacks are resumable: with an ``AttackState`` (``jaxmi.attacks.resume``) each chunk's carry
is saved every ``checkpoint_every`` steps and its outputs when it finishes, and a rerun continues
from there with exactly the uninterrupted result; Ctrl-C saves the current chunk's carry at the end of its log
interval and raises ``Interrupted``. The loss terms are checked for NaN/inf each time
they leave the device (once per log interval), the carry before it is saved and the outputs at the
end: a diverged run raises ``NonFiniteError`` naming the step and the quantity, and nothing is
saved from a non-finite state.

Every run also evaluates its initial latents the same way (``InversionResult.baseline``): the prior
baseline, what un-optimised samples of the prior already score.

Randomness is keyed per latent: latent (identity i, restart r) starts from
``fold_in(fold_in(key, i), r)`` and step t uses ``fold_in`` of that with t (KEDMI's draws, and the augmented views
of ``inversion.augment_views`` on a stream of their own), so results do not depend on how latents are chunked.

Many targets of one architecture attacked with the same prior run as one program (``Inverter.run_many``,
``jaxmi.attacks.stacked``): their variables stacked along a leading axis K and the step program vmapped over it,
latents [K, rows, ...] with the rows (and their keys) of a single-target run, so each target gets the result a
separate ``run`` gives it, up to float rounding.

A class-conditional generator G(z, y) (PLG-MI's; ``AttackModels.conditional``) gets each latent's attacked class,
which stays fixed while z is optimised.

GMI takes the *mean* loss over a batch of B identities, which scales each latent's gradient by 1/B and
matters for a scale-sensitive optimiser; per-latent losses here are divided by ``reference_batch`` (60 in
the CelebA protocol) to keep the reference dynamics.
"""

from __future__ import annotations

import contextlib
import dataclasses
import typing
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxmi import parallel
from jaxmi.attacks.stacked import StackedProgram, stack_variables, stacked_size
from jaxmi.attacks.terms import Forward, Latent, LossTerm
from jaxmi.augment import ImageAugment, augment_image
from jaxmi.errors import ConfigError, Interrupted, NonFiniteError
from jaxmi.nets.resize import resize_to
from jaxmi.train.interrupt import StopOnInterrupt

COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
AUGMENT_STREAM = 0x61756720  # fold_in constant of the augmentation keys ("aug ")
SELECT_BY = ("logit", "probability")


@dataclasses.dataclass(frozen=True, kw_only=True)
class InversionConfig:
  """What is optimised: the attack's latents, objective, optimiser and restarts (``AttackConfig.inversion``)."""

  steps: int = 1500
  restarts: int = 5
  optimizer: typing.Literal["nesterov", "adam"] = "nesterov"  # nesterov (GMI) | adam (KEDMI)
  learning_rate: float = 0.02
  momentum: float = 0.9
  z_clip: float = 1.0  # GMI: z is clipped to [-c, c] after every update (and so evaluated); 0 = never
  draw_clamp: float = 0.0  # KEDMI: each sampled z is clamped to [-c, c] before the generator, in training
  # and evaluation (LOMMA's KEDMI path: 1); 0 = never (KEDMI's own setting)
  eval_draws: int = 5  # KEDMI: images drawn per learned distribution for evaluation
  init_logvar: float = 1.0  # KEDMI: initial log-variance of each distribution (its mean starts at 0)
  prior_weight: float = 1.0  # weight of the prior: -D(G(z)) (WGAN critic) or -log P(real) (KEDMI)
  identity_weight: float = 100.0  # lambda of the identity term
  identity_loss: typing.Literal["ce", "logit", "max_margin"] = "ce"  # ce (GMI) | logit (LOMMA) | max_margin (PLG-MI)
  feature_reg_weight: float = 0.0  # LOMMA: weight of mean (phi_T(x) - p_reg)^2 (identity_weight * lam = 100)
  p_reg: typing.Literal["global", "per_class"] = (
    "global"  # global: one public-feature mean (official); per_class: by target prediction
  )
  reference_batch: int = 60  # per-latent losses / this = the reference's batch-mean gradient scale
  # Restart kept per identity: "logit" = highest raw target logit of the attacked class, the reference's
  # score[i, y_i] (GMI's official attack.py); "probability" = highest softmax probability, which also rewards
  # lowering the other classes' logits and saturates at 1, so confident restarts tie.
  select_by: typing.Literal["logit", "probability"] = "logit"
  # Random augmentations of G(z) before the attacked models (PLG-MI: two views, kornia's crop/jitter/flip/rotation):
  # the terms then see each model's outputs on ``augment_views`` augmented copies, keyed per latent and step.
  # 0 views: the image as generated (the default). The prior and the final evaluation always see G(z) itself.
  augment_views: int = 0
  augment: ImageAugment = ImageAugment()
  seed: int = 0

  def validate(self) -> None:
    if self.select_by not in SELECT_BY:
      raise ConfigError(f"inversion.select_by: unknown '{self.select_by}'; expected one of {', '.join(SELECT_BY)}")
    for field in ("steps", "restarts", "reference_batch", "eval_draws"):
      if getattr(self, field) <= 0:
        raise ConfigError(f"inversion.{field}: expected a positive integer, got {getattr(self, field)}")
    if self.augment_views < 0:
      raise ConfigError(f"inversion.augment_views: expected >= 0 (0 = no augmentation), got {self.augment_views}")
    if self.augment_views and self.augment.identity:
      raise ConfigError("inversion.augment_views: views of an augmentation that changes nothing; set inversion.augment")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ExecutionConfig:
  """How an inversion runs (``AttackConfig.execution``): none of these changes the problem solved, only the
  rounding of its arithmetic (bfloat16 the most)."""

  max_batch: int = 4096  # latents per compiled chunk (all devices together); 0 = as many as fit the budget
  memory_budget_gb: float = 0.0  # max_batch 0: memory per device for a chunk; 0 = 90% of free device memory
  devices: int = 0  # latents are sharded over this many devices; 0 = all (every host's)
  compute_dtype: typing.Literal["float32", "bfloat16"] = (
    "float32"  # for the networks; latents, optimiser state, losses stay float32
  )
  remat: bool = False  # recompute each network's forward in the backward pass (keeps only its input)
  unroll: int = 0  # steps per compiled call, fully unrolled; 0 = auto: 10 on CPU, else a rolled
  # loop over each log interval (one call per interval, one step's memory)
  log_every: int = 100  # steps between host transfers of the loss (progress, loss curve)
  checkpoint_every: int = 500  # steps between saved chunk states (latents + optimiser state); 0 = never

  def validate(self) -> None:
    if self.checkpoint_every < 0:
      raise ConfigError(f"execution.checkpoint_every: expected >= 0 (0 = never), got {self.checkpoint_every}")
    if self.log_every <= 0:
      raise ConfigError(f"execution.log_every: expected a positive integer, got {self.log_every}")
    if self.unroll < 0:
      raise ConfigError(f"execution.unroll: expected >= 0 (0 = auto), got {self.unroll}")
    if self.max_batch < 0 or self.memory_budget_gb < 0:
      raise ConfigError("execution.max_batch / memory_budget_gb: expected >= 0 (max_batch 0 = fit the memory budget)")
    if self.compute_dtype not in COMPUTE_DTYPES:
      raise ConfigError(
        f"execution.compute_dtype: unknown '{self.compute_dtype}'; expected one of {', '.join(COMPUTE_DTYPES)}"
      )


class Objective(NamedTuple):
  """What a method module builds: one latent's parametrisation, the loss terms and the optimiser over it."""

  latent: Latent
  terms: tuple[LossTerm, ...]  # pytrees, summed in this order
  tx: optax.GradientTransformation


@dataclasses.dataclass(frozen=True)
class AttackModels:
  """Static network definitions; their variables travel separately as a pytree argument."""

  generator: Any
  critic: Any | None
  targets: tuple  # Linen classifier modules; the first is the target itself
  target_shapes: tuple  # each target's input (H, W, C)
  # A class-conditional generator G(z, y) (PLG-MI's): every latent generates in its attacked class, fixed; only z is
  # optimised. Called as generator.apply(v, z, labels, train=False).
  conditional: bool = False


@dataclasses.dataclass(frozen=True)
class RunStats:
  """How one ``Inverter.run`` went (not what it found): results.json reports these."""

  compilations: int  # new compilations of the step program in this run (1 at first, then 0)
  steps_run: int  # optimisation steps computed (a resumed run skips the saved ones)
  devices: int  # devices the latents were sharded over
  chunk_size: int  # latents per chunk (all devices together); rows per chunk of a stacked run (``Inverter.run_many``)
  targets: int = 1  # targets attacked in the program (a stacked run's K): a chunk holds chunk_size * targets latents


def cast_floats(tree, dtype):
  """Floating leaves of ``tree`` in ``dtype`` (the networks' compute dtype); others unchanged."""
  return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def plan(run: ExecutionConfig, steps: int, platform: str) -> tuple[int, int, bool]:
  """(steps per log interval, steps per compiled call, whether that call loops rather than unrolls).

  Log intervals are equal so one compiled program serves them all: the largest divisor of
  ``steps`` not above ``log_every``. XLA:CPU runs convolutions inside a while loop several
  times slower than at top level, so on CPU each call is a fully unrolled block of ``unroll``
  (default 10) steps; on accelerators (``unroll`` = 0) one rolled loop covers the interval.
  """
  seg = max(d for d in range(1, min(run.log_every, steps) + 1) if steps % d == 0)
  rolled = run.unroll == 0 and platform != "cpu"
  unroll = run.unroll or (seg if rolled else 10)
  block = max(d for d in range(1, min(unroll, seg) + 1) if seg % d == 0)
  return seg, block, rolled


@dataclasses.dataclass(frozen=True)
class Layout:
  """Where each latent sits: latent (identity i, restart r) is row i * restarts + r, padded to whole chunks."""

  labels: np.ndarray  # [I] attacked classes
  pairs: list  # per row: (identity index, restart); padding rows repeat (0, 0)
  chunk: int  # latents per chunk
  flat_labels: np.ndarray  # [padded] attacked class per row
  mask: np.ndarray  # [padded] 1 for real latents, 0 for padding
  keys: np.ndarray  # [padded, 2] fold_in(fold_in(PRNGKey(seed), i), r) per row

  @classmethod
  def of(cls, labels: np.ndarray, restarts: int, seed: int, chunk: int) -> "Layout":
    total = len(labels) * restarts
    padded = -(-total // chunk) * chunk
    flat_labels = np.zeros(padded, np.int32)
    flat_labels[:total] = np.repeat(labels, restarts)
    mask = np.zeros(padded, np.float32)
    mask[:total] = 1.0
    root = jax.random.PRNGKey(seed)
    pairs = [(i, r) for i in range(len(labels)) for r in range(restarts)]
    pairs += [(0, 0)] * (padded - total)
    keys = np.asarray(
      jax.vmap(lambda ir: jax.random.fold_in(jax.random.fold_in(root, ir[0]), ir[1]))(
        jnp.asarray(np.array(pairs, np.uint32))
      )
    )
    return cls(labels, pairs, chunk, flat_labels, mask, keys)

  @property
  def num_chunks(self) -> int:
    return len(self.pairs) // self.chunk

  def where(self, c: int, bad: np.ndarray) -> str:
    """' (identity i, restart r)' of the first latent of chunk ``c`` flagged in ``bad`` [chunk]."""
    hits = np.flatnonzero(bad)
    if not len(hits):
      return ""
    i, r = self.pairs[c * self.chunk + hits[0]]
    return f" (identity {int(self.labels[i])}, restart {r})"


def bad_rows(tree, chunk: int, lead: int = 0) -> np.ndarray:
  """[chunk] whether each latent's row of ``tree`` (per-latent leaves, rows on axis ``lead``: 1 behind a stacked
  run's target axis; leaves without that axis ignored) holds a NaN/inf (in any target's latent of a stacked run)."""
  leaves = [np.moveaxis(np.asarray(x), lead, 0).reshape(chunk, -1) for x in jax.tree.leaves(tree) if np.ndim(x) > lead]
  return ~np.all([np.isfinite(x).all(1) for x in leaves], axis=0)


def select_restarts(
  labels, outs, flat_labels, *, restarts: int, draws: int, select_by: str, **fields
) -> "InversionResult":
  """An ``InversionResult`` from per-chunk (z, images, logits); per identity the reconstruction with the
  highest target logit (``select_by="logit"``) or probability of the attacked class is selected."""
  num_ids = len(labels)
  total = num_ids * restarts
  per_id = restarts * draws  # reconstructions per identity: restart-major, then draws
  z, images, logits = (np.concatenate([o[i] for o in outs])[: total * draws] for i in range(3))
  attacked = np.repeat(flat_labels[:total], draws)
  probs = np.asarray(jax.nn.softmax(logits, -1))
  conf = probs[np.arange(total * draws), attacked].reshape(num_ids, per_id)
  target_logit = logits[np.arange(total * draws), attacked].reshape(num_ids, per_id)
  best = np.argmax(target_logit if select_by == "logit" else conf, axis=1)
  fields.setdefault("loss_curve", np.zeros(0, np.float32))
  fields.setdefault("loss_parts", {})
  return InversionResult(
    labels=labels,
    latents=z.reshape(num_ids, per_id, *z.shape[1:]),
    images=images.reshape(num_ids, per_id, *images.shape[1:]),
    target_confidence=conf,
    best_restart=best,
    target_logit=target_logit,
    draws=draws,
    **fields,
  )


class Inverter:
  """Compiles an ``Objective``'s step program once and runs any number of identities through it."""

  def __init__(
    self, models: AttackModels, objective: Objective, cfg: InversionConfig, run: ExecutionConfig = ExecutionConfig()
  ):
    cfg.validate()
    run.validate()
    self.models, self.cfg, self.execution = models, cfg, run
    self.latent, self.terms, self.tx = objective
    self.terms = tuple(self.terms)
    self.dtype = COMPUTE_DTYPES[run.compute_dtype]
    self.segment = jax.jit(self._segment, static_argnames=("num_steps", "rolled"), donate_argnums=(0,))
    self._starts = {}
    self.finish = jax.jit(self._finish)
    self._stacks = {}  # (K, convs) -> StackedProgram (run_many), each compiled once

  # -- per-latent pieces -------------------------------------------------------------------
  def _apply(self, module, variables, x, **kwargs):
    fn = lambda v, inputs: module.apply(v, inputs, **kwargs)
    return (jax.checkpoint(fn) if self.execution.remat else fn)(variables, x)

  def generate(self, generator_vars, z: jax.Array, labels: jax.Array, **kwargs) -> jax.Array:
    """G(z) for a batch of latents z [N, z_dim] attacking ``labels`` [N] (used by a conditional generator only)."""
    if self.models.conditional:
      return self._apply(self.models.generator, generator_vars, z, labels=labels, **kwargs)
    return self._apply(self.models.generator, generator_vars, z, **kwargs)

  def _forward(self, variables: dict, z: jax.Array, label: jax.Array, key: jax.Array) -> Forward:
    """Networks in the compute dtype; what the loss terms see comes back as float32. With ``augment_views`` the
    attacked models see that many augmented copies of the image (their outputs gain a leading view axis)."""
    m, cfg = self.models, self.cfg
    f32 = lambda x: x.astype(jnp.float32)
    image = self.generate(variables["generator"], z[None].astype(self.dtype), jnp.asarray(label)[None], train=False)
    score = jnp.zeros(())
    if m.critic is not None and any(t.needs_critic for t in self.terms):
      score = f32(self._apply(m.critic, variables["critic"], image, method="realism")[0])
    seen = image
    if cfg.augment_views:
      # Its own stream: the latent's sampling (KEDMI's draw) keeps ``key``; view v uses fold_in(., v).
      aug_key = jax.random.fold_in(key, AUGMENT_STREAM)
      views = [
        augment_image(f32(image[0]), jax.random.fold_in(aug_key, v), cfg.augment) for v in range(cfg.augment_views)
      ]
      seen = jnp.stack(views).astype(image.dtype)
    logits, feats = [], []
    for module, shape, tvars in zip(m.targets, m.target_shapes, variables["targets"]):
      out = self._apply(module, tvars, resize_to(seen, shape).astype(self.dtype), train=False)
      pick = (lambda x: x) if cfg.augment_views else (lambda x: x[0])
      logits.append(f32(pick(out.logits)))
      feats.append(f32(pick(out.features)))
    return Forward(f32(image[0]), score, tuple(logits), tuple(feats))

  def loss(self, params, label, key, variables, terms):
    """(total loss / reference_batch, {term name: weighted term}) of one latent; ``terms`` as ``self.terms``
    (passed in so their arrays enter the program as arguments)."""
    z = self.latent.sample(params, key)
    f = self._forward(variables, z, label, key)
    parts = {t.name: t.weight * t(f, label) for t in terms}
    return sum(parts.values()) / self.cfg.reference_batch, parts

  # -- compiled programs -------------------------------------------------------------------
  def _start(self, keys):
    params = jax.vmap(self.latent.init)(keys)
    return params, self.tx.init(params), jnp.zeros((), jnp.int32)

  def _abstract_carry(self, n: int, mesh):
    """The carry of an ``n``-latent chunk as shapes with shardings: per-latent leaves split over the
    mesh, scalars (step, Adam's count) replicated."""
    row, rep = parallel.rows(mesh), parallel.replicated(mesh)
    shapes = jax.eval_shape(self._start, jax.ShapeDtypeStruct((n, 2), jnp.uint32))
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=row if a.ndim else rep), shapes)

  def start(self, keys, mesh):
    """The initial carry, laid out as the step program returns it (so its first call is its only trace)."""
    key = (keys.shape[0], mesh)
    if key not in self._starts:
      shardings = jax.tree.map(lambda a: a.sharding, self._abstract_carry(keys.shape[0], mesh))
      self._starts[key] = jax.jit(self._start, out_shardings=shardings)
    return self._starts[key](keys)

  def _segment(self, carry, variables, terms, labels, keys, mask, *, num_steps: int, rolled: bool = False):
    """``num_steps`` optimisation steps for a chunk (unrolled, or a loop if ``rolled``); returns the
    carry and per-step mean losses."""

    def one_step(carry, _):
      params, opt_state, step = carry
      step_keys = jax.vmap(lambda k: jax.random.fold_in(k, step))(keys)
      (_, parts), grads = jax.vmap(jax.value_and_grad(self.loss, has_aux=True), in_axes=(0, 0, 0, None, None))(
        params, labels, step_keys, variables, terms
      )
      updates, opt_state = self.tx.update(grads, opt_state, params)
      params = jax.vmap(self.latent.project)(optax.apply_updates(params, updates))
      weight = mask / jnp.maximum(jnp.sum(mask), 1.0)
      return (params, opt_state, step + 1), {k: jnp.sum(v * weight) for k, v in parts.items()}

    if rolled:
      return jax.lax.scan(one_step, carry, None, length=num_steps)
    # Straight-line steps: XLA:CPU runs convolutions inside any while loop (even a scan of length 1) slowly.
    history = []
    for _ in range(num_steps):
      carry, parts = one_step(carry, None)
      history.append(parts)
    return carry, jax.tree.map(lambda *p: jnp.stack(p), *history)

  def _finish(self, params, keys, labels, variables):
    """Final images and the target's logits for a chunk of optimised latents, ``draws`` per latent.

    Always float32: the reported reconstructions are G(z) at full precision.
    """
    z = jax.vmap(self.latent.final)(params, keys)
    z = z.reshape(-1, *z.shape[2:])  # [chunk * draws, z_dim], draws of a latent adjacent
    images = self.generate(variables["generator"], z, jnp.repeat(labels, self.latent.draws), train=False)
    module, shape, tvars = self.models.targets[0], self.models.target_shapes[0], variables["targets"][0]
    logits = module.apply(tvars, resize_to(images, shape), train=False).logits
    return z, images, logits

  # -- host driver ---------------------------------------------------------------------------
  def run(
    self, variables: dict, labels: Sequence[int], *, progress=None, state=None, stop_at_step: int | None = None
  ) -> "InversionResult":
    """Inverts each class in ``labels`` (target class indices) with ``inversion.restarts`` restarts.

    Args:
      variables: ``{"generator", "critic", "targets": (per attacked model,)}`` network variables.
      labels: the target classes to attack.
      progress: ``progress(latent_steps_done, {term: last loss})``, called once per log interval.
      state: a ``resume.AttackState`` or None (see below).
      stop_at_step: for tests, see below.

    Returns:
      The ``InversionResult`` (with ``stats``, a ``RunStats``).

    Raises:
      Interrupted: stopped by Ctrl-C or ``stop_at_step`` (see below); ``.step`` = chunk index * steps + step.
      NonFiniteError: a NaN/inf loss, carry or output (see below).

    Latents are sharded over ``execution.devices`` devices (network variables replicated); every
    process of a multi-host run calls this with the same arguments and gets the whole result.

    ``state``: each chunk's carry is saved every ``execution.checkpoint_every``
    steps (at the end of a log interval) and its outputs when it finishes; what it holds is
    resumed, giving exactly the uninterrupted run's result. With a state, Ctrl-C stops the run at
    the end of the current log interval (a second one at once): the chunk's carry is saved there
    and ``Interrupted`` raised. ``stop_at_step`` raises ``Interrupted`` once chunk index * steps +
    step reaches it, without saving more, as a kill would there (for tests).

    Every log interval the loss terms are checked on the host (they leave the device then anyway),
    every saved carry and the final latents, images and logits too: a non-finite value raises
    ``NonFiniteError`` naming the step and quantity, before anything is saved from that state.
    """
    return self._drive(self, variables, self.terms, labels, progress, state, stop_at_step)

  def run_many(
    self,
    variables: dict,
    labels: Sequence[int],
    *,
    terms: Sequence | None = None,
    convs: str = "auto",
    progress=None,
    state=None,
    stop_at_step: int | None = None,
  ) -> list[InversionResult]:
    """Attacks K targets of one architecture with the same prior in one compiled program (``jaxmi.attacks.stacked``).

    Args:
      variables: as ``run``'s, but every leaf of ``variables["targets"]`` (each attacked model: the target, and
        LOMMA's surrogates, one set per target) has a leading axis K: ``stack_variables([t_0, ..., t_{K-1}])`` of
        the targets' variable trees. The generator's and critic's variables are shared.
      labels: the target classes to attack, the same for every target.
      terms: None (the inverter's loss terms, shared), or K tuples of loss terms of the inverter's structure, one
        per target (e.g. LOMMA's ``FeatureRegTerm`` with each target's p_reg).
      convs: how the targets' convolutions run over K: "grouped" (vmap's grouped convolutions), "matmul" (patches
        times kernels, batched matrix products), "auto" = matmul on CPU (XLA:CPU's grouped convolutions are ~8x
        slower), grouped elsewhere; see ``jaxmi.attacks.stacked``. Only the rounding differs.
      progress, state, stop_at_step: as ``run``'s; progress counts every target's latent-steps, its losses are
        the means over targets. ``state`` holds one file per chunk with every target's carry; its layout records K.

    Returns:
      K ``InversionResult``s, target k's equal to ``run`` of target k alone up to float rounding (the same initial
      latents and keys per identity x restart; a convolution batched over targets may sum in another order), each
      with the run's ``stats`` (``chunk_size`` counts rows, ``targets`` = K).

    ``execution.max_batch`` bounds the latents of a chunk over all targets (rows x K). Targets of different
    architectures cannot be stacked (``stack_variables`` raises ``ConfigError`` naming the mismatch): attack each
    group of one architecture with ``run_many`` and the rest one at a time with ``run``.
    """
    if len(variables.get("targets", ())) != len(self.models.targets):
      raise ConfigError(
        f"targets: {len(variables.get('targets', ()))} stacked variable sets for {len(self.models.targets)} "
        "attacked models (the target, then each surrogate)"
      )
    k = stacked_size(variables["targets"])
    if terms is None:
      terms = [self.terms] * k
    if len(terms) != k:
      raise ConfigError(f"terms: {len(terms)} sets of loss terms for {k} stacked targets")
    for i, t in enumerate(terms):
      if jax.tree.structure(tuple(t)) != jax.tree.structure(self.terms):
        raise ConfigError(f"terms[{i}]: other loss terms than the inverter's ({', '.join(x.name for x in self.terms)})")
    stacked_terms = stack_variables([tuple(t) for t in terms], "terms") if jax.tree.leaves(self.terms) else self.terms
    if (k, convs) not in self._stacks:
      self._stacks[k, convs] = StackedProgram(self, k, convs)
    return self._drive(self._stacks[k, convs], variables, stacked_terms, labels, progress, state, stop_at_step, k)

  def _drive(self, program, variables, terms, labels, progress, state, stop_at_step, targets: int | None = None):
    """``run`` (``program`` = self) or ``run_many`` (a ``StackedProgram`` of ``targets`` targets)."""
    cfg, run = self.cfg, self.execution
    labels = np.asarray(labels, np.int32)
    mesh = parallel.latent_mesh(run.devices)
    rep = parallel.replicated(mesh)
    variables = parallel.put_tree(variables, rep)
    compute_vars = cast_floats(variables, self.dtype)
    # The terms' arrays (LOMMA's p_reg) enter at the networks' compute dtype, as they always have.
    compute_terms = cast_floats(parallel.put_tree(terms, rep), self.dtype)
    compiled_before = program.segment._cache_size()  # new jit cache entries = compilations of the step program

    seg, block, rolled = plan(run, cfg.steps, mesh.devices.flat[0].platform)
    total = len(labels) * cfg.restarts
    chunk = chunk_size(program, total, mesh, compute_vars, compute_terms, block, rolled, width=targets or 1)
    lay = Layout.of(labels, cfg.restarts, cfg.seed, chunk)
    if state is not None:
      layout = {"latents per chunk": chunk, "chunks": lay.num_chunks, "devices": mesh.size}
      if targets is not None:
        layout.update({"targets": targets, "target convolutions": program.convs})
      state.bind_layout({**layout, "steps per call": block, "log interval": seg, "rolled": rolled})
    abstract = program._abstract_carry(chunk, mesh)
    r = _Run(
      program, mesh, variables, compute_vars, compute_terms, seg, block, rolled, lay, abstract, state, progress, targets
    )
    chunks = []
    # Ctrl-C sets a flag read at the end of each log interval (a donated carry is never left half-updated);
    # without a state there is nothing to save, so it interrupts at once.
    with StopOnInterrupt() if state is not None else contextlib.nullcontext(StopOnInterrupt()) as stop:
      for c in range(lay.num_chunks):
        if stop.requested:
          raise interrupted(c, 0, cfg.steps, state)
        chunks.append(invert_chunk(r, c, stop, stop_at_step))
    stats = RunStats(
      compilations=program.segment._cache_size() - compiled_before,
      steps_run=r.steps_run,
      devices=mesh.size,
      chunk_size=chunk,
      targets=targets or 1,
    )
    return r.result(*zip(*chunks), stats)


def interrupted(c: int, done: int, steps: int, state) -> Interrupted:
  """The ``Interrupted`` of a run stopped after step ``done`` of chunk ``c``; ``.step`` is c * steps + done."""
  kept = "no attack state kept (execution.checkpoint_every=0)" if state is None else f"state in {state.directory}"
  return Interrupted(
    f"interrupted at step {done} of chunk {c}; {kept}; run the same command again to resume", c * steps + done
  )


def chunk_size(
  inv: Inverter, total: int, mesh, compute_vars, compute_terms, block: int, rolled: bool, width: int = 1
) -> int:
  """Latents per chunk: a multiple of the device count, at most ``max_batch`` or what fits memory. With ``width``
  latents per row (a stacked run's K targets), rows per chunk, at most ``max_batch`` latents in all."""
  n_dev, max_batch = mesh.size, inv.execution.max_batch
  needed = -(-total // n_dev) * n_dev
  if max_batch:
    return min(needed, max(n_dev, max_batch // width // n_dev * n_dev))
  return min(needed, fitting_chunk(inv, mesh, compute_vars, compute_terms, block, rolled))


def fitting_chunk(inv: Inverter, mesh, compute_vars, compute_terms, block: int, rolled: bool = False) -> int:
  """The largest chunk whose compiled step program fits ``memory_budget_gb`` per device.

  XLA's own memory analysis of the program (``parallel.program_bytes``) at two probe sizes
  gives bytes per latent (per row of K latents for a stacked program); the budget divided by it,
  less the fixed part (replicated network variables), is the chunk.
  """
  n_dev = mesh.size
  budget = parallel.memory_budget_bytes(mesh, inv.execution.memory_budget_gb)
  row = parallel.rows(mesh)

  def bytes_per_device(n: int) -> float:
    keys = jax.ShapeDtypeStruct((n, 2), jnp.uint32, sharding=row)
    vec = lambda dtype: jax.ShapeDtypeStruct((n,), dtype, sharding=row)
    # Lowered and compiled ahead of time: not an entry of the jit cache, so not counted as a compilation.
    compiled = inv.segment.lower(
      inv._abstract_carry(n, mesh),
      compute_vars,
      compute_terms,
      vec(jnp.int32),
      keys,
      vec(jnp.float32),
      num_steps=block,
      rolled=rolled,
    ).compile()
    return parallel.program_bytes(compiled)

  small, large = 4 * n_dev, 8 * n_dev
  at_small, at_large = bytes_per_device(small), bytes_per_device(large)
  per_latent = max((at_large - at_small) / (large - small), 1.0)  # per latent of the chunk (all devices)
  fixed = at_small - per_latent * small
  return max(n_dev, int((budget - fixed) / per_latent) // n_dev * n_dev)


@dataclasses.dataclass
class _Run:
  """One ``Inverter.run`` (or ``run_many``): what every chunk needs, and the loss history (host arrays) filled chunk
  by chunk."""

  inv: Any  # the Inverter, or a StackedProgram of it (run_many)
  mesh: Any
  variables: Any  # float32, replicated over the mesh (for the final images)
  compute_vars: Any  # in the networks' compute dtype (for the steps)
  compute_terms: tuple
  seg: int  # steps per log interval
  block: int  # steps per compiled call
  rolled: bool
  lay: Layout
  abstract: Any  # the carry of a chunk as shapes with shardings
  state: Any  # resume.AttackState or None
  progress: Any
  targets: int | None = None  # K of a stacked run: host arrays then carry the target axis first, losses last
  steps_run: int = 0

  def __post_init__(self):
    # total loss per step ([..., K] in a stacked run)
    self.history = np.zeros(self.history_shape, np.float32)
    self.history_parts: dict[str, np.ndarray] = {}  # each term's

  @property
  def history_shape(self) -> tuple:
    return (self.lay.num_chunks, self.inv.cfg.steps) + ((self.targets,) if self.targets else ())

  @property
  def lead(self) -> int:
    """The axis of the rows in the carry and outputs: 1 behind a stacked run's target axis."""
    return 1 if self.targets else 0

  def part(self, name: str) -> np.ndarray:
    return self.history_parts.setdefault(name, np.zeros(self.history_shape, np.float32))

  def where(self, c: int, tree, bad: np.ndarray) -> str:
    """``Layout.where`` of the rows flagged ``bad``, naming the target too in a stacked run."""
    text = self.lay.where(c, bad)
    if self.targets and text:
      rows_of = lambda k: bad_rows(jax.tree.map(lambda x: x[k], tree), self.lay.chunk)
      per_target = [rows_of(k).any() for k in range(self.targets)]
      text = f"{text[:-1]}, target {int(np.argmax(per_target))})"
    return text

  def result(self, base_outs, outs, params_out, stats: RunStats):
    """The ``InversionResult`` of all chunks' host outputs (the prior baseline's, the final ones, the latents);
    a list of one per target in a stacked run."""
    if not self.targets:
      return self.one_result(base_outs, outs, params_out, self.history, self.history_parts, stats)
    take = lambda tree, k: jax.tree.map(lambda x: x[k], tree)
    return [
      self.one_result(
        [take(o, k) for o in base_outs],
        [take(o, k) for o in outs],
        [take(p, k) for p in params_out],
        self.history[..., k],
        {name: h[..., k] for name, h in self.history_parts.items()},
        stats,
      )
      for k in range(self.targets)
    ]

  def one_result(self, base_outs, outs, params_out, history, history_parts, stats: RunStats) -> InversionResult:
    cfg, lay = self.inv.cfg, self.lay
    num_ids, restarts = len(lay.labels), cfg.restarts
    total = num_ids * restarts
    weights = lay.mask.reshape(lay.num_chunks, lay.chunk).sum(1)
    mean_curve = lambda h: (h * weights[:, None]).sum(0) / weights.sum()
    latent_params = jax.tree.map(
      lambda *xs: np.concatenate(xs)[:total].reshape(num_ids, restarts, *xs[0].shape[1:]), *params_out
    )
    select = dict(restarts=restarts, draws=self.inv.latent.draws, select_by=cfg.select_by)
    baseline = select_restarts(lay.labels, base_outs, lay.flat_labels, **select)
    return select_restarts(
      lay.labels,
      outs,
      lay.flat_labels,
      **select,
      loss_curve=mean_curve(history),
      loss_parts={k: mean_curve(v) for k, v in history_parts.items()},
      latent_params=latent_params,
      baseline=baseline,
      stats=stats,
    )


def invert_chunk(r: _Run, c: int, stop, stop_at_step: int | None) -> tuple:
  """Chunk ``c`` of a run, from its saved state if any: (prior baseline outputs, final (z, images, logits),
  optimised latent parameters), on the host. Saves its carry and outputs in ``r.state`` and raises
  ``Interrupted`` when ``stop.requested`` or at ``stop_at_step`` (see ``Inverter.run``)."""
  inv, cfg, lay, state, chunk = r.inv, r.inv.cfg, r.lay, r.state, r.lay.chunk
  sl = slice(c * chunk, (c + 1) * chunk)
  chunk_keys, chunk_labels, chunk_mask = (
    parallel.put(a[sl], parallel.rows(r.mesh)) for a in (lay.keys, lay.flat_labels, lay.mask)
  )
  n_real = min(chunk, len(lay.labels) * cfg.restarts - c * chunk)
  width = r.targets or 1  # latents per row
  final_keys = jax.vmap(lambda k: jax.random.fold_in(k, cfg.steps))(chunk_keys)  # steps used 0..steps-1
  carry = inv.start(chunk_keys, r.mesh)
  # The prior baseline: the initial latents, evaluated exactly as the optimised ones are.
  base = parallel.to_host(inv.finish(carry[0], final_keys, chunk_labels, r.variables))
  saved = state.load(c) if state is not None else None
  done = 0
  if saved is not None:
    done = int(saved["step"])
    for k in [k[5:] for k in saved if k.startswith("hist_")]:
      r.part(k)[c, :done] = saved["hist_" + k]
    r.history[c, :done] = saved["history"]
    if r.progress is not None:
      r.progress(done * n_real * width, {})
    if bool(saved["done"]):
      param_def = jax.tree.structure(r.abstract[0])
      params = jax.tree.unflatten(param_def, [saved[f"param_{k}"] for k in range(param_def.num_leaves)])
      return base, tuple(saved[k] for k in ("out_z", "out_images", "out_logits")), params
    leaves = [parallel.put(saved[f"carry_{k}"], a.sharding) for k, a in enumerate(jax.tree.leaves(r.abstract))]
    carry = jax.tree.unflatten(jax.tree.structure(carry), leaves)

  def save(done_flag: bool, extra: dict) -> None:
    arrays = {
      "step": np.int64(done),
      "done": np.bool_(done_flag),
      "history": r.history[c, :done],
      **{"hist_" + k: v[c, :done] for k, v in r.history_parts.items()},
      **extra,
    }
    state.save(c, arrays)

  for n in [r.seg] * ((cfg.steps - done) // r.seg):
    blocks = []
    for _ in range(n // r.block):
      carry, parts = inv.segment(
        carry, r.compute_vars, r.compute_terms, chunk_labels, chunk_keys, chunk_mask, num_steps=r.block, rolled=r.rolled
      )
      blocks.append(parts)
    # once per segment (the log interval): the losses of its steps leave the device
    parts = parallel.to_host(jax.tree.map(lambda *b: jnp.concatenate(b), *blocks))
    for k, v in parts.items():
      if not np.all(np.isfinite(v)):
        step = done + int(np.argmin(np.isfinite(v).reshape(len(v), -1).all(1))) + 1
        params = parallel.to_host(carry[0])
        raise NonFiniteError(f"non-finite {k} loss at step {step}{r.where(c, params, bad_rows(params, chunk, r.lead))}")
    for k, v in parts.items():
      r.part(k)[c, done : done + n] = v
    r.history[c, done : done + n] = sum(parts.values())
    done += n
    r.steps_run += n
    if r.progress is not None:
      # a stacked run's losses: the mean over its targets
      r.progress(
        n * n_real * width, {k: float(v[-1]) if v.ndim == 1 else float(v[-1].mean()) for k, v in parts.items()}
      )
    every = inv.execution.checkpoint_every
    due = every and done // every > (done - n) // every
    if state is not None and done < cfg.steps and (due or stop.requested):
      host = parallel.to_host(carry)
      bad = bad_rows(host, chunk, r.lead)
      if bad.any() or not all(np.all(np.isfinite(x)) for x in jax.tree.leaves(host) if np.ndim(x) <= r.lead):
        raise NonFiniteError(f"non-finite latents or optimiser state at step {done}{r.where(c, host, bad)}")
      save(False, {f"carry_{k}": x for k, x in enumerate(jax.tree.leaves(host))})
    if (stop_at_step is not None and c * cfg.steps + done >= stop_at_step) or (stop.requested and done < cfg.steps):
      raise interrupted(c, done, cfg.steps, state)
  out = parallel.to_host(inv.finish(carry[0], final_keys, chunk_labels, r.variables))
  params = parallel.to_host(carry[0])
  for name, x in (("latents", params), ("latents", out[0]), ("images", out[1]), ("target logits", out[2])):
    bad = bad_rows(x, chunk, r.lead)
    if bad[:n_real].any():
      raise NonFiniteError(f"non-finite final {name} after step {cfg.steps}{r.where(c, x, bad)}")
  if state is not None:
    save(
      True,
      {
        "out_z": out[0],
        "out_images": out[1],
        "out_logits": out[2],
        **{f"param_{k}": x for k, x in enumerate(jax.tree.leaves(params))},
      },
    )
  return base, out, params


@dataclasses.dataclass(frozen=True)
class InversionResult:
  """Reconstructions per identity: R = restarts x draws (GMI: 5 restarts x 1; KEDMI: 1 x 5 draws)."""

  labels: np.ndarray  # [I] attacked target classes
  latents: np.ndarray  # [I, R, z_dim] the latents of the evaluated images
  images: np.ndarray  # [I, R, H, W, C] reconstructions in [0, 1]
  target_confidence: np.ndarray  # [I, R] target softmax probability of the attacked class
  best_restart: np.ndarray  # [I] the selected reconstruction (``InversionConfig.select_by``)
  loss_curve: np.ndarray  # [steps] mean total loss over latents
  loss_parts: dict  # name -> [steps] mean weighted term
  latent_params: Any = None  # optimised parameters, leaves [I, restarts, ...] (z, or KEDMI's mu/logvar)
  draws: int = 1  # images drawn per optimised latent
  target_logit: np.ndarray | None = None  # [I, R] the target's raw logit of the attacked class
  baseline: Any = None  # InversionResult of the initial (un-optimised) latents: the prior baseline
  stats: RunStats | None = None  # how the run went (compilations, steps run, devices, chunk size)

  @property
  def best_images(self) -> np.ndarray:
    return self.images[np.arange(len(self.labels)), self.best_restart]
