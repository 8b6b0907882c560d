"""The batched inversion engine: every identity x restart optimised at once, in one compiled program.

A latent attack is (latent parametrisation, loss terms, optimiser). The engine optimises a
latent tensor of shape [identities * restarts, ...] in compiled blocks of unrolled steps; the loss is
``vmap``-ed over latents, so each latent is an independent problem (generator, critic and
targets run in inference mode, so no BatchNorm couples them). Networks and their variables
enter the compiled program as arguments, never as closed-over constants.

When there are more latents than ``max_batch`` (or, with ``max_batch`` = 0, than fit the
memory budget by XLA's own memory analysis of the program), they are processed in equal
chunks (the last one padded) by the same compiled function. Each chunk's latent axis is
sharded over a device mesh (``jaxmi.parallel``; network variables replicated), so one program
runs on 1 CPU, N GPUs or several hosts. On CPU the compiled function runs ``unroll`` steps as
straight-line code (no while loop: XLA:CPU runs convolutions inside while loops several times
slower, see README "XLA:CPU notes"); on accelerators one rolled loop covers a log interval. A host loop calls it with the carry donated, and the loss history leaves the device
once per ``log_every`` steps so a progress bar can advance: one trace in total.

Networks may compute in bfloat16 (``compute_dtype``) while latents, optimiser state and the
loss stay float32, and may be rematerialised in the backward pass (``remat``) to fit larger
chunks.

Long attacks are resumable: with an ``AttackState`` (``jaxmi.attacks.resume``) each chunk's carry
is saved every ``checkpoint_every`` steps and its outputs when it finishes, and a rerun continues
from there with exactly the uninterrupted result. The loss terms are checked for NaN/inf each time
they leave the device (once per log interval), the carry before it is saved and the outputs at the
end: a diverged run raises ``NonFiniteError`` naming the step and the quantity, and nothing is
saved from a non-finite state.

Every run also evaluates its initial latents the same way (``InversionResult.baseline``): the prior
baseline, what un-optimised samples of the prior already score.

Randomness is keyed per latent: latent (identity i, restart r) starts from
``fold_in(fold_in(key, i), r)``, so results do not depend on how latents are chunked.

The latent parametrisation is pluggable: ``PointLatent`` (GMI: one z per restart) or
``DistributionalLatent`` (KEDMI: a learned Gaussian per identity, a fresh reparameterised
sample every step, several images drawn from it for evaluation).

GMI's optimiser is ``optax.sgd(lr, momentum, nesterov=True)`` followed by clipping z to
[-1, 1] (identical to its hand-written Nesterov update; attacks.md section 2). GMI takes the
*mean* loss over a batch of B identities, which scales each latent's gradient by 1/B and
matters for a scale-sensitive optimiser; per-latent losses here are divided by
``reference_batch`` (60 in the CelebA protocol) to keep the reference dynamics.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxmi import parallel
from jaxmi.errors import ConfigError, NonFiniteError

COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass(frozen=True, kw_only=True)
class InversionConfig:
  steps: int = 1500
  restarts: int = 5
  optimizer: typing.Literal["nesterov", "adam"] = "nesterov"  # nesterov (GMI) | adam (KEDMI)
  eval_draws: int = 5              # distributional latents (KEDMI): images drawn per learned distribution
  init_logvar: float = 1.0         # distributional latents: initial log-variance (mean starts at 0)
  learning_rate: float = 0.02
  momentum: float = 0.9
  clip_z: float = 1.0              # GMI: clip z to [-c, c] after every step; KEDMI: clamp sampled z before G; 0 = never
  prior_weight: float = 1.0        # weight of the prior: -D(G(z)) (WGAN critic) or -log P(real) (KEDMI)
  identity_weight: float = 100.0   # lambda of the identity term
  identity_loss: typing.Literal["ce", "logit"] = "ce"  # ce (GMI) | logit (LOMMA: negative target logit)
  feature_reg_weight: float = 0.0  # LOMMA: weight of mean (phi_T(x) - p_reg)^2 (identity_weight * lam = 100)
  p_reg: typing.Literal["global", "per_class"] = "global"  # global: one public-feature mean (official); per_class: by target prediction
  reference_batch: int = 60        # per-latent losses / this = the reference's batch-mean gradient scale
  max_batch: int = 4096            # latents per compiled chunk (all devices together); 0 = as many as fit the budget
  memory_budget_gb: float = 0.0    # max_batch 0: memory per device for a chunk; 0 = 90% of free device memory
  log_every: int = 100             # steps between host transfers of the loss (progress, loss curve)
  unroll: int = 0                  # steps per compiled call, fully unrolled; 0 = auto: 10 on CPU, else a rolled
                                   # loop over each log interval (one call per interval, one step's memory)
  devices: int = 0                 # latents are sharded over this many devices; 0 = all (every host's)
  compute_dtype: typing.Literal["float32", "bfloat16"] = "float32"  # for the networks; latents, optimiser state, losses stay float32
  remat: bool = False              # recompute each network's forward in the backward pass (keeps only its input)
  # Restart kept per identity: "logit" = highest raw target logit of the attacked class, the reference's
  # score[i, y_i] (attacks.md section 2); "probability" = highest softmax probability, which also rewards
  # lowering the other classes' logits and saturates at 1, so confident restarts tie.
  select_by: typing.Literal["logit", "probability"] = "logit"
  checkpoint_every: int = 500      # steps between saved chunk states (latents + optimiser state); 0 = never
  seed: int = 0


SELECT_BY = ("logit", "probability")


class Forward(NamedTuple):
  """What loss terms see for one latent."""
  image: jax.Array                 # [H, W, C] the generated image
  critic_score: jax.Array          # scalar realism s(G(z)): D(G(z)) or KEDMI's log P(real); 0 without a critic
  target_logits: tuple             # per target: [num_classes]
  target_features: tuple           # per target: [feature_dim]


@dataclasses.dataclass(frozen=True)
class PriorTerm:
  """The GAN prior: minus the critic's realism score, -D(G(z)) for GMI's WGAN critic and
  -log sigmoid(LSE(l(G(z)))) = softplus(LSE) - LSE for KEDMI's discriminator."""
  weight: float = 1.0
  name: str = "prior"
  needs_critic: bool = True

  def __call__(self, f: Forward, label: jax.Array, extras: dict) -> jax.Array:
    return -f.critic_score


@dataclasses.dataclass(frozen=True)
class IdentityTerm:
  """lambda * identity loss, averaged over the attacked models (the target, plus surrogates later)."""
  weight: float = 100.0
  loss: str = "ce"                 # ce | logit
  name: str = "identity"
  needs_critic: bool = False

  def __call__(self, f: Forward, label: jax.Array, extras: dict) -> jax.Array:
    per_model = []
    for logits in f.target_logits:
      if self.loss == "ce":
        per_model.append(optax.softmax_cross_entropy_with_integer_labels(logits, label))
      elif self.loss == "logit":
        per_model.append(-logits[label])
      else:
        raise ConfigError(f"inversion.identity_loss: unknown '{self.loss}'; expected ce or logit")
    return jnp.mean(jnp.stack(per_model))


@dataclasses.dataclass(frozen=True)
class FeatureRegTerm:
  """LOMMA's feature regulariser: mean_d (phi_T(x)_d - p_reg_d)^2 on the target's penultimate features.

  ``extras["p_reg"]`` is either one public-feature mean [D] (the official code's behaviour and the
  default: it needs no labels for the public data) or per-class means [num_classes, D].
  """
  weight: float = 1.0
  name: str = "feature_reg"
  needs_critic: bool = False

  def __call__(self, f: Forward, label: jax.Array, extras: dict) -> jax.Array:
    p_reg = extras["p_reg"]
    centre = p_reg[label] if p_reg.ndim == 2 else p_reg
    return jnp.mean((f.target_features[0] - centre) ** 2)


@dataclasses.dataclass(frozen=True)
class PointLatent:
  """One z per latent (GMI): z0 ~ N(0, I), optimised directly, clipped after each step.

  The latent interface: ``init(key)`` -> params, ``sample(params, key)`` -> the z fed to G
  in a step, ``project(params)`` after each update, ``final(params, key)`` -> [draws, z_dim]
  latents whose images are evaluated.
  """
  z_dim: int
  clip: float = 1.0
  draws: int = 1

  def init(self, key: jax.Array) -> jax.Array:
    return jax.random.normal(key, (self.z_dim,))

  def sample(self, params: jax.Array, key: jax.Array) -> jax.Array:
    return params

  def project(self, params: jax.Array) -> jax.Array:
    return jnp.clip(params, -self.clip, self.clip) if self.clip else params

  def final(self, params: jax.Array, key: jax.Array) -> jax.Array:
    return self.project(params)[None]


@dataclasses.dataclass(frozen=True)
class DistributionalLatent:
  """KEDMI: a Gaussian N(mu, exp(logvar)) per latent, learned by reparameterisation.

  mu starts at 0 and logvar at ``init_logvar`` (1, i.e. std e^0.5); each step draws a fresh
  z = mu + eps * exp(logvar / 2). ``clip`` > 0 clamps the sampled z to [-clip, clip] before the
  generator (LOMMA's KEDMI path); KEDMI itself does not clip (attacks.md section 3.2).
  Evaluation draws ``draws`` z per distribution, clamped the same way as in training.
  """
  z_dim: int
  clip: float = 0.0
  init_logvar: float = 1.0
  draws: int = 5

  def init(self, key: jax.Array) -> dict:
    # Explicit dtypes: a weakly typed start would change type after one update and force a retrace.
    return {"mu": jnp.zeros((self.z_dim,), jnp.float32), "logvar": jnp.full((self.z_dim,), self.init_logvar, jnp.float32)}

  def _draw(self, params: dict, eps: jax.Array) -> jax.Array:
    """eps: [..., z_dim] standard normal."""
    mu = jnp.broadcast_to(params["mu"], eps.shape)
    z = mu + eps * jnp.broadcast_to(jnp.exp(0.5 * params["logvar"]), eps.shape)
    return jnp.clip(z, -self.clip, self.clip) if self.clip else z

  def sample(self, params: dict, key: jax.Array) -> jax.Array:
    return self._draw(params, jax.random.normal(key, (self.z_dim,)))

  def project(self, params: dict) -> dict:
    return params

  def final(self, params: dict, key: jax.Array) -> jax.Array:
    return self._draw(params, jax.random.normal(key, (self.draws, self.z_dim)))


def resize_to(images: jax.Array, shape: Sequence[int]) -> jax.Array:
  """Adapts generator output [..., H, W, C] to a model's input (H', W', C'): bilinear + channels."""
  h, w, c = shape
  if images.shape[-3:-1] != (h, w):
    images = jax.image.resize(images, (*images.shape[:-3], h, w, images.shape[-1]), "bilinear")
  if images.shape[-1] != c:
    if c == 1:
      images = jnp.tensordot(images, jnp.array([0.299, 0.587, 0.114]), axes=([-1], [0]))[..., None]
    else:
      images = jnp.repeat(images, c, axis=-1)
  return images


@dataclasses.dataclass(frozen=True)
class AttackModels:
  """Static network definitions; their variables travel separately as a pytree argument."""
  generator: Any
  critic: Any | None
  targets: tuple                   # Linen classifier modules; the first is the target itself
  target_shapes: tuple             # each target's input (H, W, C)


def cast_floats(tree, dtype):
  """Floating leaves of ``tree`` in ``dtype`` (the networks' compute dtype); others unchanged."""
  return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


class Inverter:
  """Builds the compiled segment function once and runs any number of identities through it."""

  def __init__(self, models: AttackModels, latent, terms: Sequence[Any], cfg: InversionConfig):
    self.models, self.latent, self.terms, self.cfg = models, latent, tuple(terms), cfg
    if cfg.optimizer == "nesterov":
      self.tx = optax.sgd(cfg.learning_rate, momentum=cfg.momentum, nesterov=True)
    elif cfg.optimizer == "adam":
      self.tx = optax.adam(cfg.learning_rate)
    else:
      raise ConfigError(f"inversion.optimizer: unknown '{cfg.optimizer}'; expected nesterov or adam")
    if cfg.select_by not in SELECT_BY:
      raise ConfigError(f"inversion.select_by: unknown '{cfg.select_by}'; expected one of {', '.join(SELECT_BY)}")
    if cfg.checkpoint_every < 0:
      raise ConfigError(f"inversion.checkpoint_every: expected >= 0 (0 = never), got {cfg.checkpoint_every}")
    for field in ("steps", "restarts", "log_every", "reference_batch", "eval_draws"):
      if getattr(cfg, field) <= 0:
        raise ConfigError(f"inversion.{field}: expected a positive integer, got {getattr(cfg, field)}")
    if cfg.unroll < 0:
      raise ConfigError(f"inversion.unroll: expected >= 0 (0 = auto), got {cfg.unroll}")
    if cfg.max_batch < 0 or cfg.memory_budget_gb < 0:
      raise ConfigError("inversion.max_batch / memory_budget_gb: expected >= 0 (max_batch 0 = fit the memory budget)")
    if cfg.compute_dtype not in COMPUTE_DTYPES:
      raise ConfigError(f"inversion.compute_dtype: unknown '{cfg.compute_dtype}'; expected one of "
                        f"{', '.join(COMPUTE_DTYPES)}")
    self.dtype = COMPUTE_DTYPES[cfg.compute_dtype]
    self.segment = jax.jit(self._segment, static_argnames=("num_steps", "rolled"), donate_argnums=(0,))
    self._starts = {}
    self.finish = jax.jit(self._finish)
    self.traces = 0           # compilations of the step program (tests assert there is one)
    self._probing = False     # memory probes for max_batch = 0 compile too, but are not counted
    self.chunk_size = None    # latents per chunk in the last run (all devices together)
    self.mesh = None

  # -- per-latent pieces -------------------------------------------------------------------
  def _apply(self, module, variables, x, **kwargs):
    fn = lambda v, inputs: module.apply(v, inputs, **kwargs)
    return (jax.checkpoint(fn) if self.cfg.remat else fn)(variables, x)

  def _forward(self, variables: dict, z: jax.Array) -> Forward:
    """Networks in the compute dtype; what the loss terms see comes back as float32."""
    m = self.models
    f32 = lambda x: x.astype(jnp.float32)
    image = self._apply(m.generator, variables["generator"], z[None].astype(self.dtype), train=False)
    score = jnp.zeros(())
    if m.critic is not None and any(getattr(t, "needs_critic", False) for t in self.terms):
      score = f32(self._apply(m.critic, variables["critic"], image, method="realism")[0])
    logits, feats = [], []
    for module, shape, tvars in zip(m.targets, m.target_shapes, variables["targets"]):
      out = self._apply(module, tvars, resize_to(image, shape).astype(self.dtype), train=False)
      logits.append(f32(out.logits[0]))
      feats.append(f32(out.features[0]))
    return Forward(f32(image[0]), score, tuple(logits), tuple(feats))

  def _loss(self, params, label, key, variables):
    z = self.latent.sample(params, key)
    f = self._forward(variables, z)
    parts = {t.name: t.weight * t(f, label, variables.get("extras", {})) for t in self.terms}
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

  def _segment(self, carry, variables, labels, keys, mask, *, num_steps: int, rolled: bool = False):
    """``num_steps`` optimisation steps for a chunk (unrolled, or a loop if ``rolled``); returns the
    carry and per-step mean losses."""
    if not self._probing:
      self.traces += 1  # runs at trace time only: counts compilations

    def one_step(carry, _):
      params, opt_state, step = carry
      step_keys = jax.vmap(lambda k: jax.random.fold_in(k, step))(keys)
      (_, parts), grads = jax.vmap(jax.value_and_grad(self._loss, has_aux=True), in_axes=(0, 0, 0, None))(
          params, labels, step_keys, variables)
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

  def _finish(self, params, keys, variables):
    """Final images and the target's logits for a chunk of optimised latents, ``draws`` per latent.

    Always float32: the reported reconstructions are G(z) at full precision.
    """
    z = jax.vmap(self.latent.final)(params, keys)
    z = z.reshape(-1, *z.shape[2:])  # [chunk * draws, z_dim], draws of a latent adjacent
    images = self.models.generator.apply(variables["generator"], z, train=False)
    module, shape, tvars = self.models.targets[0], self.models.target_shapes[0], variables["targets"][0]
    logits = module.apply(tvars, resize_to(images, shape), train=False).logits
    return z, images, logits

  def plan(self, mesh) -> tuple[int, int, bool]:
    """(steps per log interval, steps per compiled call, whether that call loops rather than unrolls).

    Log intervals are equal so one compiled program serves them all: the largest divisor of
    ``steps`` not above ``log_every``. XLA:CPU runs convolutions inside a while loop several
    times slower than at top level, so on CPU each call is a fully unrolled block of ``unroll``
    (default 10) steps; on accelerators (``unroll`` = 0) one rolled loop covers the interval.
    """
    cfg = self.cfg
    seg = max(d for d in range(1, min(cfg.log_every, cfg.steps) + 1) if cfg.steps % d == 0)
    rolled = cfg.unroll == 0 and mesh.devices.flat[0].platform != "cpu"
    unroll = cfg.unroll or (seg if rolled else 10)
    block = max(d for d in range(1, min(unroll, seg) + 1) if seg % d == 0)
    return seg, block, rolled

  # -- chunk size ------------------------------------------------------------------------------
  def _chunk_for(self, total: int, mesh, compute_vars, block: int, rolled: bool) -> int:
    """Latents per chunk: a multiple of the device count, at most ``max_batch`` or what fits memory."""
    n_dev = mesh.size
    needed = -(-total // n_dev) * n_dev
    if self.cfg.max_batch:
      return min(needed, max(n_dev, self.cfg.max_batch // n_dev * n_dev))
    return min(needed, self.fitting_chunk(mesh, compute_vars, block, rolled))

  def fitting_chunk(self, mesh, compute_vars, block: int, rolled: bool = False) -> int:
    """The largest chunk whose compiled step program fits ``memory_budget_gb`` per device.

    XLA's own memory analysis of the program (``parallel.program_bytes``) at two probe sizes
    gives bytes per latent; the budget divided by it,
    less the fixed part (replicated network variables), is the chunk.
    """
    n_dev = mesh.size
    budget = parallel.memory_budget_bytes(mesh, self.cfg.memory_budget_gb)
    row = parallel.rows(mesh)

    def bytes_per_device(n: int) -> float:
      keys = jax.ShapeDtypeStruct((n, 2), jnp.uint32, sharding=row)
      vec = lambda dtype: jax.ShapeDtypeStruct((n,), dtype, sharding=row)
      self._probing = True
      try:
        compiled = self.segment.lower(self._abstract_carry(n, mesh), compute_vars, vec(jnp.int32), keys,
                                      vec(jnp.float32), num_steps=block, rolled=rolled).compile()
      finally:
        self._probing = False
      return parallel.program_bytes(compiled)

    small, large = 4 * n_dev, 8 * n_dev
    at_small, at_large = bytes_per_device(small), bytes_per_device(large)
    per_latent = max((at_large - at_small) / (large - small), 1.0)  # per latent of the chunk (all devices)
    fixed = at_small - per_latent * small
    return max(n_dev, int((budget - fixed) / per_latent) // n_dev * n_dev)

  # -- host driver ---------------------------------------------------------------------------
  def run(self, variables: dict, labels: Sequence[int], *, progress=None, state=None,
          stop_at_step: int | None = None) -> "InversionResult | None":
    """Inverts each class in ``labels`` (target class indices) with ``cfg.restarts`` restarts.

    Latents are sharded over ``cfg.devices`` devices (network variables replicated); every
    process of a multi-host run calls this with the same arguments and gets the whole result.

    ``state`` (a ``resume.AttackState``): each chunk's carry is saved every ``cfg.checkpoint_every``
    steps (at the end of a log interval) and its outputs when it finishes; what it holds is
    resumed, giving exactly the uninterrupted run's result. ``stop_at_step`` returns None once
    chunk index * steps + step reaches it, as a kill would there (for tests).

    Every log interval the loss terms are checked on the host (they leave the device then anyway),
    every saved carry and the final latents, images and logits too: a non-finite value raises
    ``NonFiniteError`` naming the step and quantity, before anything is saved from that state.
    """
    cfg = self.cfg
    labels = np.asarray(labels, np.int32)
    num_ids, restarts = len(labels), cfg.restarts
    total = num_ids * restarts
    mesh = self.mesh = parallel.latent_mesh(cfg.devices)
    row, rep = parallel.rows(mesh), parallel.replicated(mesh)
    variables = parallel.put_tree(variables, rep)
    compute_vars = cast_floats(variables, self.dtype)

    seg, block, rolled = self.plan(mesh)
    segments = [seg] * (cfg.steps // seg)
    chunk = self.chunk_size = self._chunk_for(total, mesh, compute_vars, block, rolled)
    num_chunks = -(-total // chunk)
    padded = num_chunks * chunk
    flat_labels = np.zeros(padded, np.int32)
    flat_labels[:total] = np.repeat(labels, restarts)
    mask = np.zeros(padded, np.float32)
    mask[:total] = 1.0
    root = jax.random.PRNGKey(cfg.seed)
    pairs = [(i, r) for i in range(num_ids) for r in range(restarts)]
    pairs += [(0, 0)] * (padded - total)
    keys = np.asarray(jax.vmap(lambda ir: jax.random.fold_in(jax.random.fold_in(root, ir[0]), ir[1]))(
        jnp.asarray(np.array(pairs, np.uint32))))
    if state is not None:
      state.bind_layout({"latents per chunk": chunk, "chunks": num_chunks, "devices": mesh.size,
                         "steps per call": block, "log interval": seg, "rolled": rolled})
    abstract = jax.tree.leaves(self._abstract_carry(chunk, mesh))
    param_def = jax.tree.structure(self._abstract_carry(chunk, mesh)[0])

    def where(c: int, bad_rows) -> str:
      """' (identity i, restart r)' of the first latent of chunk ``c`` flagged in ``bad_rows`` [chunk]."""
      hits = np.flatnonzero(bad_rows)
      if not len(hits):
        return ""
      i, r = pairs[c * chunk + hits[0]]
      return f" (identity {int(labels[i])}, restart {r})"

    def bad_rows_of(tree) -> np.ndarray:
      leaves = [np.asarray(x).reshape(chunk, -1) for x in jax.tree.leaves(tree) if np.ndim(x)]
      return ~np.all([np.isfinite(x).all(1) for x in leaves], axis=0)

    history = np.zeros((num_chunks, cfg.steps), np.float32)
    history_parts: dict[str, np.ndarray] = {}
    outs, params_out, base_outs = [], [], []
    self.steps_computed = 0   # optimisation steps this call ran (a resumed run skips the saved ones)
    for c in range(num_chunks):
      sl = slice(c * chunk, (c + 1) * chunk)
      chunk_keys, chunk_labels, chunk_mask = (parallel.put(a[sl], row) for a in (keys, flat_labels, mask))
      n_real = min(chunk, total - c * chunk)
      final_keys = jax.vmap(lambda k: jax.random.fold_in(k, cfg.steps))(chunk_keys)  # steps used 0..steps-1
      carry = self.start(chunk_keys, mesh)
      # The prior baseline: the initial latents, evaluated exactly as the optimised ones are.
      base_outs.append(parallel.to_host(self.finish(carry[0], final_keys, variables)))
      saved = state.load(c) if state is not None else None
      done = 0
      if saved is not None:
        done = int(saved["step"])
        for k in [k[5:] for k in saved if k.startswith("hist_")]:
          history_parts.setdefault(k, np.zeros((num_chunks, cfg.steps), np.float32))[c, :done] = saved["hist_" + k]
        history[c, :done] = saved["history"]
        if progress is not None:
          progress(done * n_real, {})
        if bool(saved["done"]):
          outs.append(tuple(saved[k] for k in ("out_z", "out_images", "out_logits")))
          params_out.append(jax.tree.unflatten(param_def, [saved[f"param_{k}"] for k in range(param_def.num_leaves)]))
          continue
        carry = jax.tree.unflatten(jax.tree.structure(carry), [
            parallel.put(saved[f"carry_{k}"], a.sharding) for k, a in enumerate(abstract)])

      def save(done_flag: bool, extra: dict) -> None:
        arrays = {"step": np.int64(done), "done": np.bool_(done_flag), "history": history[c, :done],
                  **{"hist_" + k: v[c, :done] for k, v in history_parts.items()}, **extra}
        state.save(c, arrays)

      for n in segments[done // seg:]:
        blocks = []
        for _ in range(n // block):
          carry, parts = self.segment(carry, compute_vars, chunk_labels, chunk_keys, chunk_mask, num_steps=block,
                                      rolled=rolled)
          blocks.append(parts)
        # once per segment (the log interval): the losses of its steps leave the device
        parts = parallel.to_host(jax.tree.map(lambda *b: jnp.concatenate(b), *blocks))
        for k, v in parts.items():
          if not np.all(np.isfinite(v)):
            step = done + int(np.argmin(np.isfinite(v))) + 1
            bad = bad_rows_of(parallel.to_host(carry[0]))
            raise NonFiniteError(f"non-finite {k} loss at step {step}{where(c, bad)}")
        for k, v in parts.items():
          history_parts.setdefault(k, np.zeros((num_chunks, cfg.steps), np.float32))[c, done:done + n] = v
        history[c, done:done + n] = sum(parts.values())
        done += n
        self.steps_computed += n
        if progress is not None:
          progress(n * n_real, {k: float(v[-1]) for k, v in parts.items()})
        every = cfg.checkpoint_every
        if state is not None and every and done < cfg.steps and done // every > (done - n) // every:
          host = parallel.to_host(carry)
          bad = bad_rows_of(host)
          if bad.any() or not all(np.all(np.isfinite(x)) for x in jax.tree.leaves(host) if not np.ndim(x)):
            raise NonFiniteError(f"non-finite latents or optimiser state at step {done}{where(c, bad)}")
          save(False, {f"carry_{k}": x for k, x in enumerate(jax.tree.leaves(host))})
        if stop_at_step is not None and c * cfg.steps + done >= stop_at_step:
          return None
      out = parallel.to_host(self.finish(carry[0], final_keys, variables))
      params = parallel.to_host(carry[0])
      for name, x in (("latents", params), ("latents", out[0]), ("images", out[1]), ("target logits", out[2])):
        bad = bad_rows_of(x)
        if bad[:n_real].any():
          raise NonFiniteError(f"non-finite final {name} after step {cfg.steps}{where(c, bad)}")
      outs.append(out)
      params_out.append(params)
      if state is not None:
        save(True, {"out_z": out[0], "out_images": out[1], "out_logits": out[2],
                    **{f"param_{k}": x for k, x in enumerate(jax.tree.leaves(params))}})
    draws = self.latent.draws
    weights = mask.reshape(num_chunks, chunk).sum(1)
    mean_curve = lambda h: (h * weights[:, None]).sum(0) / weights.sum()
    latent_params = jax.tree.map(lambda *xs: np.concatenate(xs)[:total].reshape(num_ids, restarts, *xs[0].shape[1:]),
                                 *params_out)
    baseline = self._result(labels, base_outs, flat_labels)
    return self._result(labels, outs, flat_labels, loss_curve=mean_curve(history),
                        loss_parts={k: mean_curve(v) for k, v in history_parts.items()}, latent_params=latent_params,
                        baseline=baseline)

  def _result(self, labels, outs, flat_labels, **fields) -> "InversionResult":
    """An ``InversionResult`` from per-chunk (z, images, logits); restarts selected by ``cfg.select_by``."""
    draws, num_ids = self.latent.draws, len(labels)
    total = num_ids * self.cfg.restarts
    per_id = self.cfg.restarts * draws  # reconstructions per identity: restart-major, then draws
    z, images, logits = (np.concatenate([o[i] for o in outs])[:total * draws] for i in range(3))
    attacked = np.repeat(flat_labels[:total], draws)
    probs = np.asarray(jax.nn.softmax(logits, -1))
    conf = probs[np.arange(total * draws), attacked].reshape(num_ids, per_id)
    target_logit = logits[np.arange(total * draws), attacked].reshape(num_ids, per_id)
    best = np.argmax(target_logit if self.cfg.select_by == "logit" else conf, axis=1)
    fields.setdefault("loss_curve", np.zeros(0, np.float32))
    fields.setdefault("loss_parts", {})
    return InversionResult(
        labels=labels, latents=z.reshape(num_ids, per_id, *z.shape[1:]),
        images=images.reshape(num_ids, per_id, *images.shape[1:]), target_confidence=conf,
        best_restart=best, target_logit=target_logit, draws=draws, **fields)


@dataclasses.dataclass(frozen=True)
class InversionResult:
  """Reconstructions per identity: R = restarts x draws (GMI: 5 restarts x 1; KEDMI: 1 x 5 draws)."""
  labels: np.ndarray               # [I] attacked target classes
  latents: np.ndarray              # [I, R, z_dim] the latents of the evaluated images
  images: np.ndarray               # [I, R, H, W, C] reconstructions in [0, 1]
  target_confidence: np.ndarray    # [I, R] target softmax probability of the attacked class
  best_restart: np.ndarray         # [I] the selected reconstruction (``InversionConfig.select_by``)
  loss_curve: np.ndarray           # [steps] mean total loss over latents
  loss_parts: dict                 # name -> [steps] mean weighted term
  latent_params: Any = None        # optimised parameters, leaves [I, restarts, ...] (z, or KEDMI's mu/logvar)
  draws: int = 1                   # images drawn per optimised latent
  target_logit: np.ndarray | None = None  # [I, R] the target's raw logit of the attacked class
  baseline: Any = None             # InversionResult of the initial (un-optimised) latents: the prior baseline

  @property
  def best_images(self) -> np.ndarray:
    return self.images[np.arange(len(self.labels)), self.best_restart]
