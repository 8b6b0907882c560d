"""GAN priors, trained on the PUBLIC split only: GMI's WGAN-GP and KEDMI's inversion-specific GAN.

GMI (``kind="gmi"``, ``train_gan.py``; Zhang et al., "The Secret Revealer", CVPR 2020, which trains
the WGAN-GP of Gulrajani et al., "Improved Training of Wasserstein GANs", NeurIPS 2017, Eq. 3):
  L_D = -(E D(x) - E D(G(z))) + gp_weight * E (||grad_x D(x_hat)||_2 - 1)^2
  L_G = -E D(G(z))

KEDMI (``kind="kedmi"``, ``k+1_gan.py``; Chen, Kahla, Jia & Qi, "Knowledge-Enriched Distributional
Model Inversion Attacks", ICCV 2021, as its official code computes it): the discriminator's K logits
l predict the target's classes, realness is sigmoid(LSE(l)):
  L_D = softCE(l(x_pub), softmax(T(x_pub)))
        + 1/2 [E softplus(LSE(l(x_unl))) - E LSE(l(x_unl)) + E softplus(LSE(l(G(z))))]
  L_G = mean_d |E feat(G(z)) - E feat(x_unl2)|_d + entropy_weight * H(l(G(z)))
with H summed over the batch, and x_pub, x_unl, x_unl2 independently shuffled public batches.
The soft labels come from the target run inside the compiled step (its variables are an
argument). The target never sees private data here: the attacker queries it on public images.

Adam(2e-4, betas (0.5, 0.999)) for both, ``n_critic`` = 5 discriminator updates per generator
update. One jitted ``train_step`` does all of them: a ``lax.scan`` over the n_critic real
batches, then the generator update, so a step is one dispatch and never a host sync. A PNG
grid of samples from a fixed latent batch is written every epoch; checkpoints and resume work
as for classifiers.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
import typing
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxmi import config as config_lib
from jaxmi import plots
from jaxmi.data import DataConfig, Splits, load_splits, steps_per_epoch, train_batches
from jaxmi.errors import CheckpointError, ConfigError, Interrupted
from jaxmi.nets import shape_signature
from jaxmi.nets.resize import resize_to
from jaxmi.nets.gan import GAN_KINDS, GANConfig, build_gan
from jaxmi.train.checkpoint import Checkpointer, check_compatible
from jaxmi.train.classifier import changed_fields, check_restored_finite, load_classifier, refuse_config_change
from jaxmi.train.loop import interrupted_message, run_steps
from jaxmi.train.state import StateDict
from jaxmi.train.step import to_float
from jaxmi.workdir import Workdir

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, kw_only=True)
class GANTrainConfig:
  epochs: int = 100
  batch_size: int = 64
  n_critic: int = 5
  gp_weight: float = 10.0
  learning_rate: float = 2e-4
  beta1: float = 0.5
  beta2: float = 0.999
  seed: int = 0
  log_every: int = 20  # generator steps between metric flushes
  checkpoint_every: int = 200  # generator steps
  keep_checkpoints: int = 3
  sample_count: int = 64  # images in each epoch's sample grid
  entropy_weight: float = 1e-4  # KEDMI: weight of the generator's summed entropy term


@dataclasses.dataclass(frozen=True, kw_only=True)
class GANExperimentConfig:
  name: str = "gan"
  kind: typing.Literal["gmi", "kedmi"] = "gmi"  # gmi (WGAN-GP) | kedmi (inversion-specific, needs the target)
  target: str = ""  # kedmi: workdir of the target whose soft labels train the discriminator
  data: DataConfig = DataConfig()
  gan: GANConfig = GANConfig()
  critic_width: int = 0  # 0: same as gan.base_width
  train: GANTrainConfig = GANTrainConfig()


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class GANState(StateDict):
  step: jax.Array
  g_params: Any
  g_stats: Any
  d_params: Any
  g_opt: Any
  d_opt: Any
  rng: jax.Array

  @property
  def generator_variables(self) -> dict:
    return {"params": self.g_params, "batch_stats": self.g_stats}


def gradient_penalty(critic, d_params, real, fake, eps):
  """E (||grad D(x_hat)||_2 - 1)^2 on random interpolates; the critic is per-example (no BN),
  so the gradient of the summed scores gives every example's own input gradient."""
  x_hat = eps * real + (1.0 - eps) * fake
  grads = jax.grad(lambda x: jnp.sum(critic.apply({"params": d_params}, x)))(x_hat)
  norms = jnp.sqrt(jnp.sum(grads.reshape(grads.shape[0], -1) ** 2, axis=-1) + 1e-12)
  return jnp.mean((norms - 1.0) ** 2)


def _generate(generator, g_params, g_stats, z):
  """G(z) in train mode (batch statistics); returns (images, updated batch_stats)."""
  fake, mutated = generator.apply({"params": g_params, "batch_stats": g_stats}, z, train=True, mutable=["batch_stats"])
  return fake, mutated["batch_stats"]


def _alternating_update(state: GANState, d_tx, g_tx, d_loss_fn, g_loss_fn, d_batches, g_batch, n_critic: int):
  """``n_critic`` discriminator updates (one per leading slice of ``d_batches``), then one generator update.

  ``d_loss_fn(d_params, g_params, g_stats, batch, key)`` and ``g_loss_fn(g_params, g_stats, d_params, g_batch,
  key)`` both return ``(loss, (g_stats, metrics))``; the generator's BatchNorm statistics thread through.
  """
  rng = jax.random.fold_in(state.rng, state.step)
  keys = jax.random.split(rng, n_critic + 1)

  def disc_update(carry, inputs):
    d_params, d_opt, g_stats = carry
    batch, key = inputs
    grads, (g_stats, m) = jax.grad(d_loss_fn, has_aux=True)(d_params, state.g_params, g_stats, batch, key)
    updates, d_opt = d_tx.update(grads, d_opt, d_params)
    return (optax.apply_updates(d_params, updates), d_opt, g_stats), m

  # Unrolled: XLA:CPU runs these convolutions ~13x slower inside a while loop (measured
  # 20 s vs 1.6 s per step); n_critic is small, so unrolling costs little compile time.
  (d_params, d_opt, g_stats), d_metrics = jax.lax.scan(
    disc_update, (state.d_params, state.d_opt, state.g_stats), (d_batches, keys[:-1]), unroll=True
  )
  g_grads, (g_stats, g_metrics) = jax.grad(g_loss_fn, has_aux=True)(
    state.g_params, g_stats, d_params, g_batch, keys[-1]
  )
  updates, g_opt = g_tx.update(g_grads, state.g_opt, state.g_params)
  g_params = optax.apply_updates(state.g_params, updates)
  metrics = {**g_metrics, **{k: jnp.mean(v) for k, v in d_metrics.items()}}
  return GANState(state.step + 1, g_params, g_stats, d_params, g_opt, d_opt, state.rng), metrics


def make_gan_step(generator, critic, g_tx, d_tx, cfg: GANTrainConfig, z_dim: int):

  def d_loss_fn(d_params, g_params, g_stats, real, rng):
    z_rng, eps_rng = jax.random.split(rng)
    z = jax.random.normal(z_rng, (real.shape[0], z_dim))
    fake, g_stats = _generate(generator, g_params, g_stats, z)
    fake = jax.lax.stop_gradient(fake)
    d_real = jnp.mean(critic.apply({"params": d_params}, real))
    d_fake = jnp.mean(critic.apply({"params": d_params}, fake))
    eps = jax.random.uniform(eps_rng, (real.shape[0], 1, 1, 1))
    gp = gradient_penalty(critic, d_params, real, fake, eps)
    wasserstein = d_real - d_fake
    return -wasserstein + cfg.gp_weight * gp, (g_stats, {"wasserstein": wasserstein, "gp": gp})

  def g_loss_fn(g_params, g_stats, d_params, unused_batch, rng):
    z = jax.random.normal(rng, (cfg.batch_size, z_dim))
    fake, g_stats = _generate(generator, g_params, g_stats, z)
    loss = -jnp.mean(critic.apply({"params": d_params}, fake))
    return loss, (g_stats, {"g_loss": loss})

  @functools.partial(jax.jit, donate_argnums=(0,))
  def train_step(state: GANState, real_batches: jax.Array):
    """real_batches: uint8 [n_critic, B, H, W, C]."""
    return _alternating_update(state, d_tx, g_tx, d_loss_fn, g_loss_fn, to_float(real_batches), None, cfg.n_critic)

  return train_step


def kedmi_discriminator_loss(labelled_logits, soft_labels, unlabelled_logits, fake_logits):
  """KEDMI's L_D: soft-label cross-entropy on labelled public images + the K+1 real/fake term."""
  label_loss = jnp.mean(-jnp.sum(soft_labels * jax.nn.log_softmax(labelled_logits), axis=-1))
  lse_unl = jax.nn.logsumexp(unlabelled_logits, axis=-1)
  lse_fake = jax.nn.logsumexp(fake_logits, axis=-1)
  # softplus(a) - a = -log sigmoid(a): real images should look real, fakes fake.
  unlabel_loss = 0.5 * (jnp.mean(jax.nn.softplus(lse_unl)) - jnp.mean(lse_unl) + jnp.mean(jax.nn.softplus(lse_fake)))
  return label_loss, unlabel_loss


def kedmi_generator_loss(fake_feat, real_feat, fake_logits, entropy_weight):
  """KEDMI's L_G: feature matching (mean |E feat(G(z)) - E feat(x)|) + weight * entropy summed over the batch."""
  matching = jnp.mean(jnp.abs(jnp.mean(fake_feat, 0) - jnp.mean(real_feat, 0)))
  entropy = -jnp.sum(jax.nn.softmax(fake_logits) * jax.nn.log_softmax(fake_logits))
  return matching + entropy_weight * entropy, (matching, entropy)


def make_kedmi_step(generator, disc, target, target_shape, g_tx, d_tx, cfg: GANTrainConfig, z_dim: int):
  """``train_step(state, target_variables, labelled, unlabelled, unlabelled2)``: uint8 batches
  [n_critic, B, ...], [n_critic, B, ...] and [B, ...]."""

  def d_loss_fn(d_params, g_params, g_stats, batch, rng):
    labelled, soft, unlabelled = batch
    z = jax.random.normal(rng, (labelled.shape[0], z_dim))
    fake, g_stats = _generate(generator, g_params, g_stats, z)
    apply = lambda x: disc.apply({"params": d_params}, x)[1]
    l_lab, l_unl, l_fake = apply(labelled), apply(unlabelled), apply(jax.lax.stop_gradient(fake))
    label_loss, unlabel_loss = kedmi_discriminator_loss(l_lab, soft, l_unl, l_fake)
    metrics = {
      "label_loss": label_loss,
      "unlabel_loss": unlabel_loss,
      "agreement": jnp.mean(jnp.argmax(l_lab, -1) == jnp.argmax(soft, -1)),
      "p_real": jnp.mean(jax.nn.sigmoid(jax.nn.logsumexp(l_unl, -1))),
      "p_real_fake": jnp.mean(jax.nn.sigmoid(jax.nn.logsumexp(l_fake, -1))),
    }
    return label_loss + unlabel_loss, (g_stats, metrics)

  def g_loss_fn(g_params, g_stats, d_params, unlabelled2, rng):
    z = jax.random.normal(rng, (unlabelled2.shape[0], z_dim))
    fake, g_stats = _generate(generator, g_params, g_stats, z)
    fake_feat, fake_logits = disc.apply({"params": d_params}, fake)
    real_feat, _ = disc.apply({"params": d_params}, unlabelled2)
    loss, (matching, entropy) = kedmi_generator_loss(fake_feat, real_feat, fake_logits, cfg.entropy_weight)
    return loss, (g_stats, {"g_loss": loss, "feature_matching": matching, "entropy": entropy})

  @functools.partial(jax.jit, donate_argnums=(0,))
  def train_step(state: GANState, target_variables, labelled, unlabelled, unlabelled2):
    labelled, unlabelled = to_float(labelled), to_float(unlabelled)
    flat = labelled.reshape(-1, *labelled.shape[2:])
    soft = jax.nn.softmax(target.apply(target_variables, resize_to(flat, target_shape), train=False).logits)
    soft = jax.lax.stop_gradient(soft).reshape(*labelled.shape[:2], -1)
    return _alternating_update(
      state, d_tx, g_tx, d_loss_fn, g_loss_fn, (labelled, soft, unlabelled), to_float(unlabelled2), cfg.n_critic
    )

  return train_step


def init_gan_state(generator, critic, g_tx, d_tx, gan_cfg: GANConfig, seed: int) -> GANState:
  g_rng, d_rng, state_rng = jax.random.split(jax.random.PRNGKey(seed), 3)
  g_vars = jax.jit(lambda r: generator.init(r, jnp.zeros((2, gan_cfg.z_dim))))(g_rng)
  size = gan_cfg.image_size
  d_vars = jax.jit(lambda r: critic.init(r, jnp.zeros((2, size, size, gan_cfg.channels))))(d_rng)
  return GANState(
    jnp.zeros((), jnp.int32),
    g_vars["params"],
    g_vars["batch_stats"],
    d_vars["params"],
    g_tx.init(g_vars["params"]),
    d_tx.init(d_vars["params"]),
    state_rng,
  )


def gan_meta(cfg: GANExperimentConfig, state: GANState, num_classes: int = 0) -> dict:
  return {
    "kind": "gan",
    "gan_kind": cfg.kind,
    "num_classes": num_classes,
    "arch": {**config_lib.to_dict(cfg.gan), "critic_width": cfg.critic_width or cfg.gan.base_width},
    "signature": shape_signature({"g": state.g_params, "d": state.d_params}),
    "config": config_lib.to_dict(cfg),
  }


# Config fields that may change between a run and its resumption: they do not change what is trained.
RESUMABLE_CHANGES = (
  "name",
  "workdir",  # a config field until the workdir became a run argument: older checkpoints record it
  "target",
  "train.epochs",
  "train.log_every",
  "train.checkpoint_every",
  "train.keep_checkpoints",
  "train.sample_count",
  "data.data_dir",
  "data.cache_dir",
  "data.download",
)


def _validate_config(cfg: GANExperimentConfig) -> None:
  """Checks that need no data: run before any data is prepared."""
  t = cfg.train
  for field in (
    "epochs",
    "batch_size",
    "n_critic",
    "log_every",
    "checkpoint_every",
    "keep_checkpoints",
    "sample_count",
  ):
    if getattr(t, field) < 1:
      raise ConfigError(
        f"train.{field}: expected a positive integer, got {getattr(t, field)}"
        + ("; epochs=0 would write an untrained GAN" if field == "epochs" else "")
      )
  if cfg.kind not in GAN_KINDS:
    raise ConfigError(f"kind: unknown GAN kind '{cfg.kind}'; expected one of {', '.join(GAN_KINDS)}")
  if cfg.kind == "kedmi" and not cfg.target:
    raise ConfigError(
      "target: a KEDMI GAN learns the target's soft labels on public images; set target to the "
      "target classifier's workdir"
    )
  if cfg.data.image_size != cfg.gan.image_size or cfg.data.channels != cfg.gan.channels:
    raise ConfigError(
      f"gan: generates {cfg.gan.image_size}x{cfg.gan.image_size}x{cfg.gan.channels} images but "
      f"data is {cfg.data.image_size}x{cfg.data.image_size}x{cfg.data.channels}; "
      "set gan.stages/gan.channels or data.image_size/data.channels to match"
    )


def _validate(cfg: GANExperimentConfig, splits: Splits) -> None:
  """Checks against the data: each generator step draws batch_size x n_critic public images."""
  t = cfg.train
  # KEDMI's unlabelled stream also draws the generator's feature-matching batch.
  factor, formula = (t.n_critic, "train.n_critic") if cfg.kind == "gmi" else (t.n_critic + 1, "(train.n_critic + 1)")
  per_step = t.batch_size * factor
  if per_step > len(splits.public):
    raise ConfigError(
      f"train.batch_size x {formula} = {t.batch_size} x {factor} = {per_step} public images "
      f"per generator step, but the public split (data.public_ids) has {len(splits.public)}; "
      "lower train.batch_size or train.n_critic"
    )


def train_gan(
  cfg: GANExperimentConfig,
  workdir: str | Path | Workdir,
  *,
  splits: Splits | None = None,
  progress: bool = True,
  stop_at_step: int | None = None,
  allow_config_change: bool = False,
) -> dict:
  """Trains the GAN prior on ``splits.public`` (never the private data) in ``workdir``; resumes if checkpoints exist.

  Writes ``checkpoints/``, ``metrics.jsonl``, ``samples/epoch_*.png``, ``samples.png`` and, last, ``summary.json``
  (returned). ``stop_at_step`` ends the run as an interruption would, after a checkpoint (raises ``Interrupted``).

  As for classifiers: resuming under a changed config is refused unless ``allow_config_change``,
  and NaN/inf stops the run (NonFiniteError) with nothing saved from that state.
  """
  _validate_config(cfg)
  splits = splits if splits is not None else load_splits(cfg.data)
  _validate(cfg, splits)
  public = splits.public
  t = cfg.train
  workdir = Workdir.of(workdir)
  target = None
  if cfg.kind == "kedmi":
    target = load_classifier(cfg.target, expect_role="target")
  num_classes = target.num_classes if target is not None else 0
  generator, critic = build_gan(cfg.gan, cfg.critic_width or None, kind=cfg.kind, num_classes=num_classes)
  adam = lambda: optax.adam(t.learning_rate, b1=t.beta1, b2=t.beta2)
  g_tx, d_tx = adam(), adam()
  state = init_gan_state(generator, critic, g_tx, d_tx, cfg.gan, t.seed)
  meta = gan_meta(cfg, state, num_classes)
  images_per_step = t.batch_size * t.n_critic
  spe = steps_per_epoch(len(public), images_per_step, split="data.public_ids")
  total = spe * t.epochs
  what = (
    "WGAN-GP"
    if cfg.kind == "gmi"
    else f"KEDMI GAN (discriminator learns the soft labels of target {cfg.target}, {num_classes} classes)"
  )
  log.info(
    f"[{cfg.name}] {what} on the public split: {len(public)} images {public.images.shape[1:]}, "
    f"{spe} generator steps/epoch x {t.epochs} epochs ({t.n_critic} discriminator steps each)"
  )

  ckpt = Checkpointer(workdir.checkpoints, every_steps=t.checkpoint_every, keep=t.keep_checkpoints)
  start = ckpt.latest_step()
  if start is not None:
    check_compatible(ckpt.meta(start), meta, f"{ckpt.directory}/{start}")
    changed = changed_fields(
      ckpt.meta(start)["config"], meta["config"], config_lib.to_dict(GANExperimentConfig()), RESUMABLE_CHANGES
    )
    refuse_config_change(cfg.name, f"{ckpt.directory}/{start}", changed, allow_config_change)
    state = GANState.from_dict(ckpt.restore(state.as_dict(), meta, start))
    check_restored_finite(state.as_dict(), f"{ckpt.directory}/{start}")
    log.info(f"[{cfg.name}] resuming from {ckpt.directory}/{start}")
  start = int(start or 0)

  sample = jax.jit(lambda v, z: generator.apply(v, z, train=False))
  fixed_z = jax.random.normal(jax.random.PRNGKey(t.seed + 1), (t.sample_count, cfg.gan.z_dim))

  def epoch_end(state, step):
    if step % spe == 0:
      plots.image_grid(
        sample(state.generator_variables, fixed_z), workdir / "samples" / f"epoch_{step // spe:03d}.png", scale=2
      )
    return {}

  batches = train_batches(public, images_per_step, t.seed, start_step=start)
  split = lambda real: real.reshape(t.n_critic, t.batch_size, *real.shape[1:])
  if cfg.kind == "gmi":
    step_fn = make_gan_step(generator, critic, g_tx, d_tx, t, cfg.gan.z_dim)
    next_input = lambda: split(next(batches)["image"])
    streams = [batches]
  else:
    # The labelled stream sets the epoch; a second, independently shuffled stream gives the
    # unlabelled batches of the discriminator steps and the generator's feature-matching batch.
    unlabelled = train_batches(public, images_per_step + t.batch_size, t.seed + 1, start_step=start)
    streams = [batches, unlabelled]
    kedmi_step = make_kedmi_step(generator, critic, target.module, target.image_shape, g_tx, d_tx, t, cfg.gan.z_dim)
    step_fn = lambda state, inputs: kedmi_step(state, target.variables, *inputs)

    def next_input():
      unl = next(unlabelled)["image"]
      return split(next(batches)["image"]), split(unl[:images_per_step]), unl[images_per_step:]

  t0 = time.time()
  try:
    result = run_steps(
      state,
      name=cfg.name,
      step_fn=step_fn,
      next_input=next_input,
      start=start,
      total=total,
      steps_per_epoch=spe,
      ckpt=ckpt,
      meta=meta,
      writer=workdir.metrics,
      log_every=t.log_every,
      epoch_end=epoch_end,
      progress=progress,
      stop_at_step=stop_at_step,
      postfix_keys=("wasserstein", "gp", "g_loss")
      if cfg.kind == "gmi"
      else ("label_loss", "unlabel_loss", "agreement", "g_loss"),
    )
  finally:
    for stream in streams:
      stream.close()
  if result.stopped_early:  # by Ctrl-C or stop_at_step, after a checkpoint
    raise Interrupted(interrupted_message(result.step, ckpt), result.step)
  state, step = result.state, result.step
  plots.image_grid(sample(state.generator_variables, fixed_z), workdir / "samples.png", scale=2)
  summary = {
    "name": cfg.name,
    "kind": cfg.kind,
    "generator_steps": step,
    "epochs": t.epochs,
    "public_images": len(public),
    "train_seconds_this_run": round(time.time() - t0, 2),
    "resumed_from_step": start,
    "data": splits.description,
    "config": config_lib.to_dict(cfg),
  }
  workdir.write_json("summary.json", summary)
  log.info(
    f"[{cfg.name}] {step} generator steps, {summary['train_seconds_this_run']:.1f}s this run; "
    f"samples in {workdir / 'samples.png'}"
  )
  return summary


@dataclasses.dataclass(frozen=True)
class GAN:
  """A trained GAN prior: generator (eval mode) and critic, with their variables."""

  generator: Any
  critic: Any  # Critic (gmi) or KEDMIDiscriminator (kedmi); both have realism(x)
  g_variables: dict
  d_variables: dict
  config: GANConfig
  kind: str = "gmi"


def load_gan(workdir: str | Path) -> GAN:
  """Rebuilds a trained GAN from its workdir's newest intact checkpoint; creates nothing."""
  if not (Path(workdir) / "checkpoints").is_dir():
    raise CheckpointError(f"{workdir}: no trained GAN here (no checkpoints/); train one with bin/jaxmi train-gan")
  ckpt = Checkpointer(Path(workdir) / "checkpoints", create=False)
  step = ckpt.latest_step()
  meta = ckpt.meta(step)
  if meta.get("kind") != "gan":
    raise CheckpointError(
      f"{ckpt.directory}: holds a '{meta.get('kind')}' checkpoint; expected a GAN (train one with bin/jaxmi train-gan)"
    )
  arch = dict(meta["arch"])
  critic_width = arch.pop("critic_width")
  gan_cfg = GANConfig(**arch)
  kind = meta.get("gan_kind", "gmi")
  generator, critic = build_gan(gan_cfg, critic_width, kind=kind, num_classes=meta.get("num_classes", 0))
  abstract = jax.eval_shape(lambda: init_gan_state(generator, critic, optax.adam(1e-3), optax.adam(1e-3), gan_cfg, 0))
  expected = {**meta, "signature": shape_signature({"g": abstract.g_params, "d": abstract.d_params})}
  state = ckpt.restore(None, expected, step)
  ckpt.close()
  check_restored_finite({k: state[k] for k in ("g_params", "g_stats", "d_params")}, f"{ckpt.directory}/{step}")
  return GAN(
    generator,
    critic,
    {"params": state["g_params"], "batch_stats": state["g_stats"]},
    {"params": state["d_params"]},
    gan_cfg,
    kind,
  )
