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

PLG-MI (``kind="plg"``; Yuan et al., "Pseudo Label-Guided Model Inversion Attack via Conditional Generative
Adversarial Network", AAAI 2023; official ``train_cgan.py``, ``losses.py``): a conditional GAN
(``jaxmi.nets.plg``) on the public images the target labels most confidently (top-n per class,
``jaxmi.train.pseudo_labels``), with the projection discriminator's hinge loss and, in the generator's update, the
target's max-margin loss on augmented fakes (kornia's pipeline, ``jaxmi.augment.PLG_AUGMENT``):
  L_D = E relu(1 - D(x + u, y)) + E relu(1 + D(G(z, c), c)),   u ~ U(0, 1/256) (dequantisation, on [0, 1])
  L_G = -E D(G(z, c), c) + inv_weight * E L_mm(T(aug(G(z, c))), c),   L_mm = -l_c + max_{k != c} l_k
with c uniform over the classes, Adam(2e-4, betas (0.0, 0.9)) for both, 5 discriminator steps per generator
step, each discriminator step on a fresh real batch and fresh fakes. The discriminator is applied to the fakes
and the reals as two calls, each one power iteration of its spectral norms (as the reference's two forwards), and
once more in the generator's update; its power-iteration vectors are the ``d_stats`` of the GAN state.
Image ranges (``plg.output``): "tanh" (default) -- the reference as written: the raw tanh output goes to the target
and the discriminator, and the real images reach the discriminator in [0, 1] (``ToTensor``, no normalisation), so
the generator learns to emit [0, 1] images through its tanh, black at tanh 0, near where an untrained generator's
outputs start. "unit" -- the generator returns (tanh + 1) / 2 in [0, 1], the target sees that, and the
discriminator sees 2x - 1 of real and fake images alike. There black is tanh's saturated -1: on MNIST the untrained
generator's uniform grey is told from the black backgrounds within ~10 generator steps (hinge loss 0.19 at step
10, against 1.10 with "tanh"), the discriminator's loss then stays ~0, so it stops learning, and the generator
collapses to one image per class (600 steps); feeding that discriminator [0, 1] images instead collapses the same
way (0.05 at step 10): the cause is the saturated output, not the discriminator's scale. On AT&T's mid-grey faces
it is the other way round: with "tanh" the hinge loss reached 0 by step 90 and every class collapsed to one grey
square (target accuracy on its samples 5%, chance); with "unit" it stayed at 0.6-1.7 over 450 steps (17.7%), so the
AT&T recipe (configs/gan.py) uses "unit". Differences from the
reference: the discriminator steps come before the generator step within one step (the reference starts each
iteration with the generator's update; the interleaving is the same after the first); its colour jitter in the GAN
stage fires with probability 0.5, here always (``PLG_AUGMENT``, the reconstruction's setting).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import time
import typing
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxmi import config as config_lib
from jaxmi import plots
from jaxmi.augment import PLG_AUGMENT, augment_batch
from jaxmi.data import DataConfig, Splits, load_splits, steps_per_epoch, train_batches
from jaxmi.errors import CheckpointError, ConfigError, Interrupted
from jaxmi.nets import shape_signature
from jaxmi.nets.gan import GAN_KINDS, GANConfig, build_gan
from jaxmi.nets.plg import PLG_OUTPUTS, PLG_UPSAMPLE, SPECTRAL, build_plg, max_margin
from jaxmi.nets.resize import resize_to
from jaxmi.train.checkpoint import Checkpointer, check_compatible
from jaxmi.train.classifier import changed_fields, check_restored_finite, load_classifier, refuse_config_change
from jaxmi.train.loop import interrupted_message, run_steps
from jaxmi.train.pseudo_labels import select_pseudo_labels
from jaxmi.train.state import StateDict
from jaxmi.train.step import to_float
from jaxmi.workdir import Workdir

log = logging.getLogger(__name__)

TRAIN_KINDS = (*GAN_KINDS, "plg")


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
class PLGConfig:
  """kind=plg only (PLG-MI's conditional GAN). Its upsampling is ``gan.upsample`` (bilinear | nearest)."""

  # tanh: the raw output (the reference; trains); unit: G returns (tanh + 1) / 2 (collapses on MNIST: module doc)
  output: typing.Literal["unit", "tanh"] = "tanh"
  top_n: int = 30  # pseudo-labelled public images per class
  inv_weight: float = 0.2  # weight of the target's max-margin loss in the generator's update
  augment: bool = True  # the identity loss sees PLG_AUGMENT-augmented fakes (the reference); False: as generated
  dequantize: bool = True  # real images + U(0, 1/256) noise before the discriminator (the reference)


@dataclasses.dataclass(frozen=True, kw_only=True)
class GANExperimentConfig:
  name: str = "gan"
  kind: typing.Literal["gmi", "kedmi", "plg"] = "gmi"  # gmi (WGAN-GP) | kedmi, plg (need the target)
  target: str = ""  # kedmi: the target whose soft labels train the discriminator; plg: the one that pseudo-labels
  data: DataConfig = DataConfig()
  gan: GANConfig = GANConfig()
  critic_width: int = 0  # 0: same as gan.base_width
  train: GANTrainConfig = GANTrainConfig()
  plg: PLGConfig = PLGConfig()


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
  d_stats: Any = dataclasses.field(default_factory=dict)  # plg: the spectral norms' power-iteration vectors

  @property
  def generator_variables(self) -> dict:
    return {"params": self.g_params, "batch_stats": self.g_stats}

  def as_dict(self) -> dict:
    # gmi/kedmi carry no discriminator statistics: their checkpoints keep the layout they had before d_stats.
    d = super().as_dict()
    if not jax.tree.leaves(d["d_stats"]):
      del d["d_stats"]
    return d

  @classmethod
  def from_dict(cls, d: dict):
    fields = {f.name: d[f.name] for f in dataclasses.fields(cls) if f.name != "d_stats"}
    return cls(**fields, d_stats=d.get("d_stats", {}))


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


def _alternating_update(
  state: GANState, d_tx, g_tx, d_loss_fn, g_loss_fn, d_batches, g_batch, n_critic: int, with_d_stats: bool = False
):
  """``n_critic`` discriminator updates (one per leading slice of ``d_batches``), then one generator update.

  ``d_loss_fn(d_params, g_params, stats, batch, key)`` and ``g_loss_fn(g_params, stats, d_params, g_batch,
  key)`` both return ``(loss, (stats, metrics))``; the statistics thread through: the generator's BatchNorm
  statistics, or with ``with_d_stats`` (PLG-MI) the pair (generator statistics, discriminator statistics).
  """
  rng = jax.random.fold_in(state.rng, state.step)
  keys = jax.random.split(rng, n_critic + 1)

  def disc_update(carry, inputs):
    d_params, d_opt, stats = carry
    batch, key = inputs
    grads, (stats, m) = jax.grad(d_loss_fn, has_aux=True)(d_params, state.g_params, stats, batch, key)
    updates, d_opt = d_tx.update(grads, d_opt, d_params)
    return (optax.apply_updates(d_params, updates), d_opt, stats), m

  stats = (state.g_stats, state.d_stats) if with_d_stats else state.g_stats
  carry = (state.d_params, state.d_opt, stats)
  if with_d_stats:
    # A Python loop: XLA:CPU still wraps even a fully unrolled scan in a one-trip while loop, inside which the
    # PLG-MI networks' convolutions run ~18x slower (measured 7.0 s vs 0.39 s per discriminator update). gmi and
    # kedmi keep the scan below, so their compiled programs and results stay as they were.
    per_step = []
    for i in range(n_critic):
      carry, m = disc_update(carry, jax.tree.map(lambda a, i=i: a[i], (d_batches, keys[:-1])))
      per_step.append(m)
    d_metrics = jax.tree.map(lambda *v: jnp.stack(v), *per_step)
  else:
    # Unrolled: XLA:CPU runs these convolutions ~13x slower inside a while loop (measured
    # 20 s vs 1.6 s per step); n_critic is small, so unrolling costs little compile time.
    carry, d_metrics = jax.lax.scan(disc_update, carry, (d_batches, keys[:-1]), unroll=True)
  d_params, d_opt, stats = carry
  g_grads, (stats, g_metrics) = jax.grad(g_loss_fn, has_aux=True)(state.g_params, stats, d_params, g_batch, keys[-1])
  g_stats, d_stats = stats if with_d_stats else (stats, state.d_stats)
  updates, g_opt = g_tx.update(g_grads, state.g_opt, state.g_params)
  g_params = optax.apply_updates(state.g_params, updates)
  metrics = {**g_metrics, **{k: jnp.mean(v) for k, v in d_metrics.items()}}
  return GANState(state.step + 1, g_params, g_stats, d_params, g_opt, d_opt, state.rng, d_stats), metrics


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


def hinge_discriminator_loss(d_fake, d_real):
  """The hinge loss of the discriminator (PLG-MI ``losses.dis_hinge``): E relu(1 - D(real)) + E relu(1 + D(fake))."""
  return jnp.mean(jax.nn.relu(1.0 - d_real)) + jnp.mean(jax.nn.relu(1.0 + d_fake))


def hinge_generator_loss(d_fake):
  """The hinge loss of the generator (``losses.gen_hinge``): -E D(fake)."""
  return -jnp.mean(d_fake)


def make_plg_step(generator, disc, target, target_shape, g_tx, d_tx, cfg: GANTrainConfig, plg: PLGConfig, z_dim: int):
  """``train_step(state, target_variables, real, labels)``: uint8 real batches [n_critic, B, H, W, C] with their
  pseudo-labels [n_critic, B]; the generator's classes are drawn uniformly (``generator.num_classes``)."""
  num_classes = generator.num_classes
  # unit: D sees [-1, 1] for reals and fakes alike; tanh: as the reference, [0, 1] reals and the raw tanh fakes.
  to_disc = (lambda x: 2.0 * x - 1.0) if plg.output == "unit" else (lambda x: x)

  def sample(g_params, g_stats, key, n):
    z_key, y_key = jax.random.split(key)
    z = jax.random.normal(z_key, (n, z_dim))
    labels = jax.random.randint(y_key, (n,), 0, num_classes)
    variables = {"params": g_params, "batch_stats": g_stats}
    fake, mutated = generator.apply(variables, z, labels, train=True, mutable=["batch_stats"])
    return fake, labels, mutated["batch_stats"]

  def discriminate(d_params, d_stats, x, labels):
    """D in training mode: one power iteration per call, as each forward of the reference's discriminator."""
    variables = {"params": d_params, SPECTRAL: d_stats}
    out, mutated = disc.apply(variables, to_disc(x), labels, train=True, mutable=[SPECTRAL])
    return out, mutated[SPECTRAL]

  def d_loss_fn(d_params, g_params, stats, batch, rng):
    (g_stats, d_stats), (real, labels) = stats, batch
    gen_key, noise_key = jax.random.split(rng)
    fake, fake_labels, g_stats = sample(g_params, g_stats, gen_key, real.shape[0])
    real = to_float(real)
    if plg.dequantize:
      real = real + jax.random.uniform(noise_key, real.shape, maxval=1.0 / 256.0)
    d_fake, d_stats = discriminate(d_params, d_stats, jax.lax.stop_gradient(fake), fake_labels)
    d_real, d_stats = discriminate(d_params, d_stats, real, labels)
    loss = hinge_discriminator_loss(d_fake, d_real)
    return loss, ((g_stats, d_stats), {"d_loss": loss, "d_real": jnp.mean(d_real), "d_fake": jnp.mean(d_fake)})

  def g_loss_fn(g_params, stats, d_params, target_variables, rng):
    g_stats, d_stats = stats
    gen_key, aug_key = jax.random.split(rng)
    fake, labels, g_stats = sample(g_params, g_stats, gen_key, cfg.batch_size)
    d_fake, d_stats = discriminate(d_params, d_stats, fake, labels)
    adversarial = hinge_generator_loss(d_fake)
    seen = augment_batch(fake, aug_key, PLG_AUGMENT) if plg.augment else fake
    logits = target.apply(target_variables, resize_to(seen, target_shape), train=False).logits
    inv = jnp.mean(jax.vmap(max_margin)(logits, labels))
    metrics = {"g_loss": adversarial, "inv_loss": inv, "target_acc": jnp.mean(jnp.argmax(logits, -1) == labels)}
    return adversarial + plg.inv_weight * inv, ((g_stats, d_stats), metrics)

  @functools.partial(jax.jit, donate_argnums=(0,))
  def train_step(state: GANState, target_variables, real, labels):
    return _alternating_update(
      state, d_tx, g_tx, d_loss_fn, g_loss_fn, (real, labels), target_variables, cfg.n_critic, with_d_stats=True
    )

  return train_step


def init_gan_state(generator, critic, g_tx, d_tx, gan_cfg: GANConfig, seed: int, conditional: bool = False) -> GANState:
  """The initial state; ``conditional``: PLG-MI's networks, which also take class labels."""
  g_rng, d_rng, state_rng = jax.random.split(jax.random.PRNGKey(seed), 3)
  size = gan_cfg.image_size
  if conditional:
    labels = jnp.zeros((2,), jnp.int32)
    g_vars = jax.jit(lambda r: generator.init(r, jnp.zeros((2, gan_cfg.z_dim)), labels))(g_rng)
    d_vars = jax.jit(lambda r: critic.init(r, jnp.zeros((2, size, size, gan_cfg.channels)), labels))(d_rng)
  else:
    g_vars = jax.jit(lambda r: generator.init(r, jnp.zeros((2, gan_cfg.z_dim))))(g_rng)
    d_vars = jax.jit(lambda r: critic.init(r, jnp.zeros((2, size, size, gan_cfg.channels))))(d_rng)
  return GANState(
    jnp.zeros((), jnp.int32),
    g_vars["params"],
    g_vars["batch_stats"],
    d_vars["params"],
    g_tx.init(g_vars["params"]),
    d_tx.init(d_vars["params"]),
    state_rng,
    d_vars.get(SPECTRAL, {}),
  )


def build_networks(cfg: GANExperimentConfig, num_classes: int = 0):
  """(generator, discriminator) of ``cfg.kind``: ``build_gan``'s, or PLG-MI's conditional pair."""
  if cfg.kind == "plg":
    g = cfg.gan
    return build_plg(
      num_classes,
      z_dim=g.z_dim,
      num_features=g.base_width,
      critic_features=cfg.critic_width or None,
      blocks=g.stages,
      channels=g.channels,
      upsample=g.upsample,
      output=cfg.plg.output,
    )
  return build_gan(cfg.gan, cfg.critic_width or None, kind=cfg.kind, num_classes=num_classes)


def gan_meta(cfg: GANExperimentConfig, state: GANState, num_classes: int = 0) -> dict:
  arch = {**config_lib.to_dict(cfg.gan), "critic_width": cfg.critic_width or cfg.gan.base_width}
  if cfg.kind == "plg":
    arch["output"] = cfg.plg.output  # what the loaded generator returns
  return {
    "kind": "gan",
    "gan_kind": cfg.kind,
    "num_classes": num_classes,
    "arch": arch,
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
  if cfg.kind not in TRAIN_KINDS:
    raise ConfigError(f"kind: unknown GAN kind '{cfg.kind}'; expected one of {', '.join(TRAIN_KINDS)}")
  if cfg.kind == "kedmi" and not cfg.target:
    raise ConfigError(
      "target: a KEDMI GAN learns the target's soft labels on public images; set target to the "
      "target classifier's workdir"
    )
  if cfg.kind == "plg":
    _validate_plg(cfg)
  if cfg.data.image_size != cfg.gan.image_size or cfg.data.channels != cfg.gan.channels:
    raise ConfigError(
      f"gan: generates {cfg.gan.image_size}x{cfg.gan.image_size}x{cfg.gan.channels} images but "
      f"data is {cfg.data.image_size}x{cfg.data.image_size}x{cfg.data.channels}; "
      "set gan.stages/gan.channels or data.image_size/data.channels to match"
    )


def _validate_plg(cfg: GANExperimentConfig) -> None:
  p = cfg.plg
  if not cfg.target:
    raise ConfigError(
      "target: a PLG-MI GAN trains on public images pseudo-labelled by the target; set target to the target "
      "classifier's workdir"
    )
  if cfg.gan.upsample not in PLG_UPSAMPLE:
    raise ConfigError(
      f"gan.upsample: kind=plg upsamples with one of {', '.join(PLG_UPSAMPLE)} (the reference: bilinear), "
      f"got '{cfg.gan.upsample}'"
    )
  if cfg.gan.stages < 1:
    raise ConfigError(f"gan.stages: kind=plg needs at least one up-block, got {cfg.gan.stages}")
  if p.output not in PLG_OUTPUTS:
    raise ConfigError(f"plg.output: expected one of {', '.join(PLG_OUTPUTS)}, got '{p.output}'")
  if p.top_n < 1:
    raise ConfigError(f"plg.top_n: expected a positive integer, got {p.top_n}")
  if not (p.inv_weight >= 0 and math.isfinite(p.inv_weight)):
    raise ConfigError(f"plg.inv_weight: expected a finite weight >= 0, got {p.inv_weight}")


def _validate_pseudo(cfg: GANExperimentConfig, public_images: int, num_classes: int) -> None:
  """kind=plg: the pseudo-labelled set (top_n per class) must hold a discriminator batch."""
  t, p = cfg.train, cfg.plg
  if p.top_n > public_images:
    raise ConfigError(
      f"plg.top_n: {p.top_n} images per class, but the public split (data.public_ids) has {public_images}; lower it"
    )
  if t.batch_size > p.top_n * num_classes:
    raise ConfigError(
      f"train.batch_size: {t.batch_size} is larger than the {p.top_n * num_classes} pseudo-labelled images "
      f"(plg.top_n {p.top_n} x {num_classes} classes); lower it or raise plg.top_n"
    )


def _validate(cfg: GANExperimentConfig, splits: Splits) -> None:
  """Checks against the data: each generator step draws batch_size x n_critic public images."""
  t = cfg.train
  if cfg.kind == "plg":
    return  # its batches come from the pseudo-labelled set: _validate_pseudo
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
  if cfg.kind in ("kedmi", "plg"):
    target = load_classifier(cfg.target, expect_role="target")
  num_classes = target.num_classes if target is not None else 0
  pseudo, pseudo_info = None, {}
  if cfg.kind == "plg":
    _validate_pseudo(cfg, len(public), num_classes)
    pseudo, pseudo_info = select_pseudo_labels(target, public, cfg.plg.top_n)
  generator, critic = build_networks(cfg, num_classes)
  adam = lambda: optax.adam(t.learning_rate, b1=t.beta1, b2=t.beta2)
  g_tx, d_tx = adam(), adam()
  state = init_gan_state(generator, critic, g_tx, d_tx, cfg.gan, t.seed, conditional=cfg.kind == "plg")
  meta = gan_meta(cfg, state, num_classes)
  images_per_step = t.batch_size * t.n_critic
  if cfg.kind == "plg":
    # An epoch: the discriminator's batches pass once over the pseudo-labelled set (at least one generator step).
    spe = max(1, steps_per_epoch(len(pseudo), t.batch_size, split="plg.top_n") // t.n_critic)
  else:
    spe = steps_per_epoch(len(public), images_per_step, split="data.public_ids")
  total = spe * t.epochs
  what = {
    "gmi": "WGAN-GP",
    "kedmi": f"KEDMI GAN (discriminator learns the soft labels of target {cfg.target}, {num_classes} classes)",
    "plg": f"PLG-MI conditional GAN ({num_classes} classes pseudo-labelled by target {cfg.target}: top "
    f"{cfg.plg.top_n} each, {pseudo_info.get('distinct_public_images')} distinct images, confidence >= "
    f"{pseudo_info.get('min_confidence', 0):.3f})",
  }[cfg.kind]
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
  if cfg.kind == "plg":
    # Committed like every step's output: an uncommitted first state makes the second step compile again.
    state = jax.device_put(state, jax.devices()[0])

  if cfg.kind == "plg":
    # Rows of classes (the first 20), each row the same latents: a column shows one z across the classes.
    rows = min(num_classes, 20)
    ncol = -(-t.sample_count // rows)
    z = jax.random.normal(jax.random.PRNGKey(t.seed + 1), (ncol, cfg.gan.z_dim))
    fixed_z = (jnp.tile(z, (rows, 1)), jnp.repeat(jnp.arange(rows, dtype=jnp.int32), ncol))
    # "unit" returns [0, 1] images; "tanh" ones are shown as the reference's target sees them, clipped to [0, 1].
    sample = jax.jit(lambda v, zy: generator.apply(v, *zy, train=False))
    # The selection, one row per class: its (up to 10) most confident public images.
    shown = min(cfg.plg.top_n, 10)
    picks = (np.arange(rows)[:, None] * cfg.plg.top_n + np.arange(shown)).reshape(-1)
    plots.image_grid(pseudo.images[picks] / 255.0, workdir / "pseudo_labels.png", ncol=shown, scale=2)
  else:
    ncol = None
    sample = jax.jit(lambda v, z: generator.apply(v, z, train=False))
    fixed_z = jax.random.normal(jax.random.PRNGKey(t.seed + 1), (t.sample_count, cfg.gan.z_dim))

  def epoch_end(state, step):
    if step % spe == 0:
      plots.image_grid(
        sample(state.generator_variables, fixed_z),
        workdir / "samples" / f"epoch_{step // spe:03d}.png",
        ncol=ncol,
        scale=2,
      )
    return {}

  split = lambda real: real.reshape(t.n_critic, t.batch_size, *real.shape[1:])
  if cfg.kind == "plg":
    # As the reference's infinite sampler: every discriminator step takes the next batch of the pseudo-labelled
    # set, epoch after epoch, so the stream's position is (generator step) x n_critic.
    batches = train_batches(pseudo, t.batch_size, t.seed, start_step=start * t.n_critic)
    streams = [batches]
    plg_step = make_plg_step(
      generator, critic, target.module, target.image_shape, g_tx, d_tx, t, cfg.plg, cfg.gan.z_dim
    )
    step_fn = lambda state, inputs: plg_step(state, target.variables, *inputs)

    def next_input():
      drawn = [next(batches) for _ in range(t.n_critic)]
      return jnp.stack([b["image"] for b in drawn]), jnp.stack([b["label"] for b in drawn])

  elif cfg.kind == "gmi":
    batches = train_batches(public, images_per_step, t.seed, start_step=start)
    step_fn = make_gan_step(generator, critic, g_tx, d_tx, t, cfg.gan.z_dim)
    next_input = lambda: split(next(batches)["image"])
    streams = [batches]
  else:
    # The labelled stream sets the epoch; a second, independently shuffled stream gives the
    # unlabelled batches of the discriminator steps and the generator's feature-matching batch.
    batches = train_batches(public, images_per_step, t.seed, start_step=start)
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
      postfix_keys={
        "gmi": ("wasserstein", "gp", "g_loss"),
        "kedmi": ("label_loss", "unlabel_loss", "agreement", "g_loss"),
        "plg": ("d_loss", "g_loss", "inv_loss", "target_acc"),
      }[cfg.kind],
    )
  finally:
    for stream in streams:
      stream.close()
  if result.stopped_early:  # by Ctrl-C or stop_at_step, after a checkpoint
    raise Interrupted(interrupted_message(result.step, ckpt), result.step)
  state, step = result.state, result.step
  plots.image_grid(sample(state.generator_variables, fixed_z), workdir / "samples.png", ncol=ncol, scale=2)
  summary = {
    "name": cfg.name,
    "kind": cfg.kind,
    "generator_steps": step,
    "epochs": t.epochs,
    "public_images": len(public),
    **({"pseudo_labels": pseudo_info} if cfg.kind == "plg" else {}),
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

  generator: Any  # plg: ResNetGenerator, apply(g_variables, z, labels, train=False): see ``output``
  critic: Any  # Critic (gmi) or KEDMIDiscriminator (kedmi), both with realism(x); plg: the projection
  # discriminator, apply(d_variables, x, labels) (no realism: PLG-MI's reconstruction has no prior term)
  g_variables: dict
  d_variables: dict  # plg: {"params", "spectral"} (its power-iteration vectors)
  config: GANConfig
  kind: str = "gmi"
  num_classes: int = 0  # kedmi, plg: the target's classes (plg: the generator's conditioning labels)
  # plg: "tanh" (the raw [-1, 1] output, trained to lie in [0, 1]; the default since issue 17) or "unit" ([0, 1]
  # images); a checkpoint that records none is "unit"
  output: str = "unit"

  @property
  def conditional(self) -> bool:
    """True when the generator takes a class label with z (PLG-MI)."""
    return self.kind == "plg"


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
  output = arch.pop("output", "unit")
  gan_cfg = GANConfig(**arch)
  kind = meta.get("gan_kind", "gmi")
  num_classes = meta.get("num_classes", 0)
  if kind == "plg":
    generator, critic = build_plg(
      num_classes,
      z_dim=gan_cfg.z_dim,
      num_features=gan_cfg.base_width,
      critic_features=critic_width,
      blocks=gan_cfg.stages,
      channels=gan_cfg.channels,
      upsample=gan_cfg.upsample,
      output=output,
    )
  else:
    generator, critic = build_gan(gan_cfg, critic_width, kind=kind, num_classes=num_classes)
  init = lambda: init_gan_state(
    generator, critic, optax.adam(1e-3), optax.adam(1e-3), gan_cfg, 0, conditional=kind == "plg"
  )
  abstract = jax.eval_shape(init)
  expected = {**meta, "signature": shape_signature({"g": abstract.g_params, "d": abstract.d_params})}
  state = ckpt.restore(None, expected, step)
  ckpt.close()
  keys = ("g_params", "g_stats", "d_params") + (("d_stats",) if kind == "plg" else ())
  check_restored_finite({k: state[k] for k in keys}, f"{ckpt.directory}/{step}")
  d_variables = {"params": state["d_params"]}
  if kind == "plg":
    d_variables[SPECTRAL] = state["d_stats"]
  return GAN(
    generator,
    critic,
    {"params": state["g_params"], "batch_stats": state["g_stats"]},
    d_variables,
    gan_cfg,
    kind,
    num_classes,
    output,
  )
