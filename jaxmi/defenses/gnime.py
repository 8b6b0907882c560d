"""GNIME: a noise generator trained against an inversion network, so released explanations resist inversion.

Hoyong Jeong, Suyoung Lee, Sung Ju Hwang & Sooel Son, "Learning to Generate Inversion-Resistant Model
Explanations", NeurIPS 2022 (official code WSP-LAB/GNIME, TensorFlow; the paper's two-player minimax game
between the inversion network and the noise generator, with the losses below as the official code writes them).

The noise generator f_NG (an ExpMI network, explanation-sized output, no latent) maps the
standardised explanation and the logits to a perturbed explanation; the released
explanation is ê = clip(f_NG(ẽ, ŷ) σ + μ, 0, 1). In one step, on one batch:

    N_loss = mean((ẽ' - ẽ)^2) - a * mean((f_INV(ê, ŷ) - x)^2)        (noise generator)
    I_loss = mean((f_INV(ê, ŷ) - x)^2) + mean((f_INV(e, ŷ) - x)^2)     (inverter)

Both networks take one Adam step simultaneously (no alternation); the generator's gradient
flows through the inverter, which treats ê as data. a = 100 for 28-32 px data, 500 for faces.

The reference feeds the inverter the clean explanation STANDARDISED but the perturbed one
raw (a mismatch of the official code's training loop); ``same_space=True`` (default) feeds both raw, ``False``
reproduces it.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from jaxmi import config as config_lib
from jaxmi.attacks.expmi import EpochCheckpoints, StopHook, check_epoch
from jaxmi.errors import ConfigError
from jaxmi.nets import shape_signature
from jaxmi.nets.unet import ExpMI
from jaxmi.train.state import all_finite


@dataclasses.dataclass(frozen=True, kw_only=True)
class GNIMEConfig:
  a: float = 100.0  # weight of the inverter's error in the generator's loss
  epochs: int = 30  # reference: 500
  batch_size: int = 128  # reference: 1024 (MNIST), 128 (CelebA)
  learning_rate: float = 1e-4  # Adam, both networks
  same_space: bool = True  # False: the reference's standardised-clean / raw-perturbed inputs
  width_divisor: int = 4
  checkpoint_every: int = 10  # epochs between checkpoints (with a checkpoint directory)
  seed: int = 0


def validate(cfg: GNIMEConfig, where: str = "gnime") -> None:
  """One-line ConfigError naming ``<where>.<field>`` for values that cannot train."""
  for field in ("epochs", "batch_size", "width_divisor", "checkpoint_every"):
    if getattr(cfg, field) < 1:
      raise ConfigError(f"{where}.{field}: expected an integer >= 1, got {getattr(cfg, field)}")
  if not cfg.learning_rate > 0:
    raise ConfigError(f"{where}.learning_rate: expected a value > 0, got {cfg.learning_rate}")
  if not cfg.a >= 0:
    raise ConfigError(f"{where}.a: expected a value >= 0, got {cfg.a}")


class GNIMEState(NamedTuple):
  noiser: Any
  inverter: Any
  noiser_opt: Any
  inverter_opt: Any


class GNIMENets(NamedTuple):
  noiser: ExpMI
  inverter: ExpMI


def build_nets(explanation_shape, image_shape, width_divisor: int) -> GNIMENets:
  return GNIMENets(
    ExpMI(explanation_shape[0], explanation_shape[-1], width_divisor=width_divisor),
    ExpMI(image_shape[0], image_shape[-1], width_divisor=width_divisor),
  )


def release(nets: GNIMENets, noiser_params, explanations, logits, mu, sigma):
  """The explanation GNIME publishes: clip(f_NG((e - μ)/σ, ŷ) σ + μ, 0, 1)."""
  perturbed = nets.noiser.apply(noiser_params, (explanations - mu) / sigma, logits)
  return jnp.clip(perturbed * sigma + mu, 0.0, 1.0)


def gnime_losses(
  nets: GNIMENets, noiser_params, inverter_params, explanations, logits, images, mu, sigma, a, same_space: bool = True
):
  """(N_loss, I_loss, parts) on one batch."""
  standardised = (explanations - mu) / sigma
  perturbed_std = nets.noiser.apply(noiser_params, standardised, logits)
  released = jnp.clip(perturbed_std * sigma + mu, 0.0, 1.0)
  clean_input = explanations if same_space else standardised
  from_clean = nets.inverter.apply(inverter_params, clean_input, logits)
  from_released = nets.inverter.apply(inverter_params, released, logits)
  fidelity = jnp.mean(jnp.square(perturbed_std - standardised))
  inversion = jnp.mean(jnp.square(from_released - images))
  clean_inversion = jnp.mean(jnp.square(from_clean - images))
  parts = {
    "explanation_mse_std": fidelity,
    "inversion_mse_released": inversion,
    "inversion_mse_clean": clean_inversion,
    "explanation_mse": jnp.mean(jnp.square(released - explanations)),
  }
  return fidelity - a * inversion, inversion + clean_inversion, parts


def init_state(nets: GNIMENets, explanations, logits, cfg: GNIMEConfig, tx) -> GNIMEState:
  k1, k2 = jax.random.split(jax.random.PRNGKey(cfg.seed))
  noiser = nets.noiser.init(k1, explanations[:2], logits[:2])
  inverter = nets.inverter.init(k2, explanations[:2], logits[:2])
  return GNIMEState(noiser, inverter, tx.init(noiser), tx.init(inverter))


def make_gnime_step(nets: GNIMENets, tx, mu: float, sigma: float, a: float, same_space: bool):
  """``step(state, e, logits, x) -> (state, metrics)``: both Adam updates from the same batch."""

  def step(state: GNIMEState, e, logits, x):
    # One shared forward pass, two backward passes (the reference's two GradientTapes): each player
    # differentiates only its own loss with respect to only its own parameters.
    losses = lambda p, q: (lambda n, i, parts: ((n, i), parts))(
      *gnime_losses(nets, p, q, e, logits, x, mu, sigma, a, same_space)
    )
    (n_loss, i_loss), vjp, parts = jax.vjp(losses, state.noiser, state.inverter, has_aux=True)
    one, zero = jnp.ones_like(n_loss), jnp.zeros_like(n_loss)
    n_grads = vjp((one, zero))[0]
    i_grads = vjp((zero, one))[1]
    n_updates, noiser_opt = tx.update(n_grads, state.noiser_opt, state.noiser)
    i_updates, inverter_opt = tx.update(i_grads, state.inverter_opt, state.inverter)
    new = GNIMEState(
      optax.apply_updates(state.noiser, n_updates),
      optax.apply_updates(state.inverter, i_updates),
      noiser_opt,
      inverter_opt,
    )
    return new, {"noiser_loss": n_loss, "inverter_loss": i_loss, **parts}

  return step


def train_gnime(
  explanations, logits, images, cfg: GNIMEConfig, *, progress: bool = True, ckpt_dir=None, stop: StopHook | None = None
):
  """Trains GNIME on the defender's data; returns (nets, state, μ, σ, history).

  With ``ckpt_dir`` both players' parameters and Adam states are checkpointed every
  ``cfg.checkpoint_every`` epochs and at the end, and a rerun resumes from the newest checkpoint
  (a finished run returns at once). Each epoch's shuffle comes from (seed, epoch), so a resumed
  run matches an uninterrupted one exactly. NaN/inf in a loss or a parameter raises
  NonFiniteError naming the epoch, step and quantity; nothing is saved from that state.
  ``stop(stage, epoch)`` ends the run after an epoch as Ctrl-C would (for resume tests).
  """
  explanations, logits, images = (jnp.asarray(a) for a in (explanations, logits, images))
  mu, sigma = float(jnp.mean(explanations)), float(jnp.std(explanations))  # global scalars, as the reference
  nets = build_nets(explanations.shape[1:], images.shape[1:], cfg.width_divisor)
  tx = optax.adam(cfg.learning_rate)
  state = init_state(nets, explanations, logits, cfg, tx)
  step = make_gnime_step(nets, tx, mu, sigma, cfg.a, cfg.same_space)
  n = images.shape[0]
  batch = min(cfg.batch_size, n)
  steps = n // batch

  # A host loop over jitted steps, not lax.scan: XLA:CPU runs convolutions inside while loops
  # ~20x slower (see attacks/expmi.py).
  @functools.partial(jax.jit, donate_argnums=(0,))
  def batch_step(state, idx, e, y, x):
    return step(state, e[idx], y[idx], x[idx])

  arch = {
    "kind": "gnime",
    "explanation_shape": list(explanations.shape[1:]),
    "image_shape": list(images.shape[1:]),
    "num_classes": int(logits.shape[-1]),
    "width_divisor": cfg.width_divisor,
  }
  meta = {
    "kind": "gnime",
    "arch": arch,
    "signature": shape_signature(state._asdict()),
    "config": config_lib.to_dict(cfg),
    "mu": mu,
    "sigma": sigma,
  }
  history = []
  checkpoints = EpochCheckpoints(ckpt_dir, cfg.checkpoint_every, "gnime", stop)
  with checkpoints:
    if checkpoints.latest() is not None:
      saved, saved_meta = checkpoints.restore(state._asdict(), meta)
      state, history = GNIMEState(**saved), saved_meta["history"]
    bar = tqdm(range(len(history), cfg.epochs), desc="gnime", disable=not progress, leave=False)
    for e in bar:
      perm = jnp.asarray(np.random.default_rng((cfg.seed, e)).permutation(n)[: steps * batch])
      metrics = []
      for i in range(steps):
        state, m = batch_step(state, perm[i * batch : (i + 1) * batch], explanations, logits, images)
        metrics.append(m)
      # Every step's metrics and "all parameters finite" in one host transfer per epoch.
      per_step, finite = jax.device_get((jax.tree.map(lambda *v: jnp.stack(v), *metrics), all_finite(state)))
      mean = check_epoch("gnime", e + 1, e * steps + 1, per_step, bool(finite), state._asdict())
      history.append({"epoch": e + 1, **mean})
      bar.set_postfix(expl=f"{mean['explanation_mse']:.4f}", inv=f"{mean['inversion_mse_released']:.4f}")
      checkpoints.end_epoch(e + 1, state._asdict, lambda: {**meta, "history": history}, e + 1 == cfg.epochs)
  return nets, state, mu, sigma, history
