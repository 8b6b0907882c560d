"""WGAN-GP training of the GAN prior on the PUBLIC split only (GMI ``train_gan.py``).

  L_D = -(E D(x) - E D(G(z))) + gp_weight * E (||grad_x D(x_hat)||_2 - 1)^2
  L_G = -E D(G(z))

Adam(2e-4, betas (0.5, 0.999)) for both, ``n_critic`` = 5 critic updates per generator update.
One jitted ``train_step`` does all of them: a ``lax.scan`` over the n_critic real batches,
then the generator update, so a step is one dispatch and never a host sync. A PNG grid of
samples from a fixed latent batch is written every epoch; checkpoints and resume work as for
classifiers.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxmi import config as config_lib
from jaxmi import records
from jaxmi.data import DataConfig, Splits, load_splits, steps_per_epoch, train_batches
from jaxmi.errors import CheckpointError, ConfigError
from jaxmi.nets import shape_signature
from jaxmi.nets.gan import GANConfig, build_gan
from jaxmi.train.checkpoint import Checkpointer
from jaxmi.train.loop import interrupted_message, run_steps
from jaxmi.train.state import StateDict
from jaxmi.train.step import to_float


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
  log_every: int = 20               # generator steps between metric flushes
  checkpoint_every: int = 200       # generator steps
  keep_checkpoints: int = 3
  sample_count: int = 64            # images in each epoch's sample grid


@dataclasses.dataclass(frozen=True, kw_only=True)
class GANExperimentConfig:
  name: str = "gan"
  kind: str = "gmi"                 # gmi (WGAN-GP); kedmi arrives with the KEDMI issue
  workdir: str = "runs/gan"
  data: DataConfig = DataConfig()
  gan: GANConfig = GANConfig()
  critic_width: int = 0             # 0: same as gan.base_width
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


def make_gan_step(generator, critic, g_tx, d_tx, cfg: GANTrainConfig, z_dim: int):

  def generate(g_params, g_stats, z):
    return generator.apply({"params": g_params, "batch_stats": g_stats}, z, train=True, mutable=["batch_stats"])

  def d_loss_fn(d_params, g_params, g_stats, real, rng):
    z_rng, eps_rng = jax.random.split(rng)
    z = jax.random.normal(z_rng, (real.shape[0], z_dim))
    fake, mutated = generate(g_params, g_stats, z)
    fake = jax.lax.stop_gradient(fake)
    d_real = jnp.mean(critic.apply({"params": d_params}, real))
    d_fake = jnp.mean(critic.apply({"params": d_params}, fake))
    eps = jax.random.uniform(eps_rng, (real.shape[0], 1, 1, 1))
    gp = gradient_penalty(critic, d_params, real, fake, eps)
    wasserstein = d_real - d_fake
    return -wasserstein + cfg.gp_weight * gp, (mutated["batch_stats"], {"wasserstein": wasserstein, "gp": gp})

  def g_loss_fn(g_params, g_stats, d_params, rng):
    z = jax.random.normal(rng, (cfg.batch_size, z_dim))
    fake, mutated = generate(g_params, g_stats, z)
    return -jnp.mean(critic.apply({"params": d_params}, fake)), mutated["batch_stats"]

  @functools.partial(jax.jit, donate_argnums=(0,))
  def train_step(state: GANState, real_batches: jax.Array):
    """real_batches: uint8 [n_critic, B, H, W, C]."""
    rng = jax.random.fold_in(state.rng, state.step)
    d_rngs = jax.random.split(rng, cfg.n_critic + 1)

    def critic_update(carry, inputs):
      d_params, d_opt, g_stats = carry
      real, key = inputs
      grads, (g_stats, m) = jax.grad(d_loss_fn, has_aux=True)(d_params, state.g_params, g_stats, to_float(real), key)
      updates, d_opt = d_tx.update(grads, d_opt, d_params)
      return (optax.apply_updates(d_params, updates), d_opt, g_stats), m

    # Unrolled: XLA:CPU runs these convolutions ~13x slower inside a while loop (measured
    # 20 s vs 1.6 s per step); n_critic is small, so unrolling costs little compile time.
    (d_params, d_opt, g_stats), d_metrics = jax.lax.scan(
        critic_update, (state.d_params, state.d_opt, state.g_stats), (real_batches, d_rngs[:-1]), unroll=True)
    (g_loss, g_stats), g_grads = jax.value_and_grad(g_loss_fn, has_aux=True)(state.g_params, g_stats, d_params,
                                                                              d_rngs[-1])
    updates, g_opt = g_tx.update(g_grads, state.g_opt, state.g_params)
    g_params = optax.apply_updates(state.g_params, updates)
    metrics = {"g_loss": g_loss, **{k: jnp.mean(v) for k, v in d_metrics.items()}}
    return GANState(state.step + 1, g_params, g_stats, d_params, g_opt, d_opt, state.rng), metrics

  return train_step


def init_gan_state(generator, critic, g_tx, d_tx, gan_cfg: GANConfig, seed: int) -> GANState:
  g_rng, d_rng, state_rng = jax.random.split(jax.random.PRNGKey(seed), 3)
  g_vars = jax.jit(lambda r: generator.init(r, jnp.zeros((2, gan_cfg.z_dim))))(g_rng)
  size = gan_cfg.image_size
  d_vars = jax.jit(lambda r: critic.init(r, jnp.zeros((2, size, size, gan_cfg.channels))))(d_rng)
  return GANState(jnp.zeros((), jnp.int32), g_vars["params"], g_vars["batch_stats"], d_vars["params"],
                  g_tx.init(g_vars["params"]), d_tx.init(d_vars["params"]), state_rng)


def gan_meta(cfg: GANExperimentConfig, state: GANState) -> dict:
  return {"kind": "gan", "gan_kind": cfg.kind,
          "arch": {**config_lib.to_dict(cfg.gan), "critic_width": cfg.critic_width or cfg.gan.base_width},
          "signature": shape_signature({"g": state.g_params, "d": state.d_params}),
          "config": config_lib.to_dict(cfg)}


def _validate(cfg: GANExperimentConfig, splits: Splits) -> None:
  if cfg.kind != "gmi":
    raise ConfigError(f"kind: unknown GAN kind '{cfg.kind}'; expected 'gmi'")
  if cfg.data.image_size != cfg.gan.image_size or cfg.data.channels != cfg.gan.channels:
    raise ConfigError(f"gan: generates {cfg.gan.image_size}x{cfg.gan.image_size}x{cfg.gan.channels} images but "
                      f"data is {cfg.data.image_size}x{cfg.data.image_size}x{cfg.data.channels}; "
                      "set gan.stages/gan.channels or data.image_size/data.channels to match")


def train_gan(cfg: GANExperimentConfig, *, splits: Splits | None = None, progress: bool = True,
              stop_at_step: int | None = None, log=print) -> dict:
  """Trains the GAN prior on ``splits.public`` (never the private data); resumes if checkpoints exist."""
  splits = splits if splits is not None else load_splits(cfg.data)
  _validate(cfg, splits)
  public = splits.public
  t = cfg.train
  workdir = Path(cfg.workdir)
  generator, critic = build_gan(cfg.gan, cfg.critic_width or None)
  adam = lambda: optax.adam(t.learning_rate, b1=t.beta1, b2=t.beta2)
  g_tx, d_tx = adam(), adam()
  state = init_gan_state(generator, critic, g_tx, d_tx, cfg.gan, t.seed)
  meta = gan_meta(cfg, state)
  images_per_step = t.batch_size * t.n_critic
  spe = steps_per_epoch(len(public), images_per_step)
  total = spe * t.epochs
  log(f"[{cfg.name}] WGAN-GP on the public split: {len(public)} images {public.images.shape[1:]}, "
      f"{spe} generator steps/epoch x {t.epochs} epochs ({t.n_critic} critic steps each)")

  ckpt = Checkpointer(workdir / "checkpoints", every_steps=t.checkpoint_every, keep=t.keep_checkpoints)
  start = ckpt.latest_step()
  if start is not None:
    state = GANState.from_dict(ckpt.restore(state.as_dict(), meta, start))
    log(f"[{cfg.name}] resuming from {ckpt.directory}/{start}")
  start = int(start or 0)

  step_fn = make_gan_step(generator, critic, g_tx, d_tx, t, cfg.gan.z_dim)
  sample = jax.jit(lambda v, z: generator.apply(v, z, train=False))
  fixed_z = jax.random.normal(jax.random.PRNGKey(t.seed + 1), (t.sample_count, cfg.gan.z_dim))

  def epoch_end(state, step):
    if step % spe == 0:
      records.save_grid(sample(state.generator_variables, fixed_z),
                        workdir / "samples" / f"epoch_{step // spe:03d}.png", scale=2)
    return {}

  batches = train_batches(public, images_per_step, t.seed, start_step=start)

  def next_input():
    real = next(batches)["image"]
    return real.reshape(t.n_critic, t.batch_size, *real.shape[1:])

  t0 = time.time()
  try:
    result = run_steps(state, name=cfg.name, step_fn=step_fn, next_input=next_input, start=start, total=total,
                       steps_per_epoch=spe, ckpt=ckpt, meta=meta, writer=records.JsonlWriter(workdir / "metrics.jsonl"),
                       log_every=t.log_every, epoch_end=epoch_end, progress=progress, stop_at_step=stop_at_step,
                       postfix_keys=("wasserstein", "gp", "g_loss"))
  finally:
    batches.close()
  if result.by_user:
    raise KeyboardInterrupt(interrupted_message(result.step, ckpt))
  if result.stopped_early:
    return {"interrupted_at_step": result.step}
  state, step = result.state, result.step
  records.save_grid(sample(state.generator_variables, fixed_z), workdir / "samples.png", scale=2)
  summary = {"name": cfg.name, "kind": cfg.kind, "generator_steps": step, "epochs": t.epochs,
             "public_images": len(public), "train_seconds_this_run": round(time.time() - t0, 2),
             "resumed_from_step": start, "data": splits.description, "config": config_lib.to_dict(cfg)}
  records.write_json(workdir / "summary.json", summary)
  log(f"[{cfg.name}] {step} generator steps, {summary['train_seconds_this_run']:.1f}s this run; "
      f"samples in {workdir / 'samples.png'}")
  return summary


@dataclasses.dataclass(frozen=True)
class GAN:
  """A trained GAN prior: generator (eval mode) and critic, with their variables."""
  generator: Any
  critic: Any
  g_variables: dict
  d_variables: dict
  config: GANConfig


def load_gan(workdir: str | Path) -> GAN:
  ckpt = Checkpointer(Path(workdir) / "checkpoints")
  meta = ckpt.meta()
  if meta.get("kind") != "gan":
    raise CheckpointError(f"{ckpt.directory}: holds a '{meta.get('kind')}' checkpoint; expected a GAN "
                          "(train one with bin/jaxmi train-gan)")
  arch = dict(meta["arch"])
  critic_width = arch.pop("critic_width")
  gan_cfg = GANConfig(**arch)
  generator, critic = build_gan(gan_cfg, critic_width)
  abstract = jax.eval_shape(lambda: init_gan_state(generator, critic, optax.adam(1e-3), optax.adam(1e-3), gan_cfg, 0))
  expected = {**meta, "signature": shape_signature({"g": abstract.g_params, "d": abstract.d_params})}
  state = ckpt.restore(None, expected)
  ckpt.close()
  return GAN(generator, critic, {"params": state["g_params"], "batch_stats": state["g_stats"]},
             {"params": state["d_params"]}, gan_cfg)
