"""KEDMI: the K+1 discriminator, its soft-label and generator losses, and the distributional latent."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmi.attacks import AttackModels, DistributionalLatent, ExecutionConfig, InversionConfig, build_kedmi
from jaxmi.nets import ModelConfig, build_classifier, init_variables
from jaxmi.nets.gan import GANConfig, KEDMIDiscriminator, MinibatchDiscrimination, build_gan
from jaxmi.train.gan import kedmi_discriminator_loss, kedmi_generator_loss
from tolerance import rounding_tolerance


@pytest.mark.parametrize("stages, size, feat", [(4, 64, 4096), (3, 32, 4096)])
def test_discriminator_shapes_match_the_reference(stages, size, feat):
  """d = 64: 64 px (three 5x5 stages + a 3x3 one) and 32 px (three 5x5) both end at 4x4x256 = 4096
  features; minibatch discrimination adds 64 and the head maps 4160 -> K (Chen, Kahla, Jia & Qi, ICCV 2021;
  the official code's ``MinibatchDiscriminator``)."""
  disc = KEDMIDiscriminator(num_classes=1000, base_width=64, stages=stages)
  x = jnp.zeros((2, size, size, 3))
  variables = jax.eval_shape(lambda: disc.init(jax.random.PRNGKey(0), x))
  params = jax.tree.map(lambda a: a.shape, variables["params"])
  assert params["mbd"]["T"] == (feat, 64, 50) and params["fc"]["kernel"] == (feat + 64, 1000)
  if stages == 4:
    assert params["conv3"]["kernel"] == (3, 3, 256, 256)
  out_feat, logits = jax.eval_shape(lambda v: disc.apply(v, x), variables)
  assert out_feat.shape == (2, feat) and logits.shape == (2, 1000)


def test_minibatch_discrimination_matches_a_direct_computation():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(4, 3)).astype(np.float32)
  t = (0.3 * rng.normal(size=(3, 2, 5))).astype(np.float32)  # small T: closeness far from 0
  layer = MinibatchDiscrimination(kernels=2, kernel_dim=5)
  out = np.asarray(layer.apply({"params": {"T": jnp.asarray(t)}}, jnp.asarray(x)))
  m = np.einsum("na,abc->nbc", x, t)
  expected = np.zeros((4, 2))
  for i in range(4):
    for j in range(4):
      if i != j:
        expected[i] += np.exp(-np.abs(m[i] - m[j]).sum(-1))
  np.testing.assert_allclose(out[:, :3], x)
  np.testing.assert_allclose(out[:, 3:], expected, rtol=1e-5, atol=1e-6)
  assert expected.min() > 0.01
  # A batch of one (how the attack applies the prior, per latent): the closeness features are 0.
  np.testing.assert_allclose(layer.apply({"params": {"T": jnp.asarray(t)}}, jnp.asarray(x[:1]))[:, 3:], 0.0)


def log_softmax(a):
  a = a - a.max(-1, keepdims=True)
  return a - np.log(np.exp(a).sum(-1, keepdims=True))


def test_discriminator_loss_is_soft_label_cross_entropy_plus_the_k_plus_1_term():
  rng = np.random.default_rng(1)
  lab, unl, fake = (rng.normal(size=(6, 4)) for _ in range(3))
  teacher = rng.normal(size=(6, 4)) * 3
  soft = np.exp(log_softmax(teacher))
  label_loss, unlabel_loss = kedmi_discriminator_loss(*(jnp.asarray(a, jnp.float32) for a in (lab, soft, unl, fake)))
  # softXEnt: -sum_k softmax(T(x))_k log softmax(l(x))_k, averaged over the batch.
  assert float(label_loss) == pytest.approx(float(np.mean(-np.sum(soft * log_softmax(lab), -1))), rel=1e-5)
  # With Z = sum_k exp(l_k): real images should have Z/(Z+1) -> 1, fakes -> 0.
  z_unl, z_fake = np.exp(unl).sum(-1), np.exp(fake).sum(-1)
  expected = 0.5 * (np.mean(-np.log(z_unl / (z_unl + 1))) + np.mean(np.log(1 + z_fake)))
  assert float(unlabel_loss) == pytest.approx(float(expected), rel=1e-5)
  # The label term is smallest when the discriminator reproduces the target's distribution.
  matched, _ = kedmi_discriminator_loss(jnp.asarray(teacher), jnp.asarray(soft), jnp.asarray(unl), jnp.asarray(fake))
  assert float(matched) < float(label_loss)


def test_generator_loss_is_feature_matching_plus_summed_entropy():
  rng = np.random.default_rng(2)
  fake_feat, real_feat, logits = rng.normal(size=(5, 7)), rng.normal(size=(5, 7)), rng.normal(size=(5, 3))
  loss, (matching, entropy) = kedmi_generator_loss(
    jnp.asarray(fake_feat), jnp.asarray(real_feat), jnp.asarray(logits), 1e-4
  )
  p = np.exp(log_softmax(logits))
  assert float(matching) == pytest.approx(float(np.mean(np.abs(fake_feat.mean(0) - real_feat.mean(0)))), rel=1e-5)
  assert float(entropy) == pytest.approx(float(-np.sum(p * np.log(p))), rel=1e-5)  # summed over the batch
  assert float(loss) == pytest.approx(float(matching) + 1e-4 * float(entropy), rel=1e-6)


def test_realism_is_minus_kedmis_prior():
  """Prior = E softplus(LSE(l)) - E LSE(l) (Chen et al., ICCV 2021, as the official ``dist_inversion`` computes
  it); realism must be its negative."""
  disc = KEDMIDiscriminator(num_classes=3, base_width=4, stages=3)
  x = jax.random.uniform(jax.random.PRNGKey(0), (4, 32, 32, 1))
  variables = disc.init(jax.random.PRNGKey(1), x)
  _, logits = disc.apply(variables, x)
  lse = np.log(np.exp(np.asarray(logits, np.float64)).sum(-1))
  prior = np.log1p(np.exp(lse)) - lse
  np.testing.assert_allclose(-np.asarray(disc.apply(variables, x, method="realism")), prior, rtol=1e-5)


def test_distributional_sampler_reparameterises_and_clips():
  latent = DistributionalLatent(z_dim=3, clamp=0.0, init_logvar=1.0, draws=5)
  params = latent.init(jax.random.PRNGKey(0))
  np.testing.assert_array_equal(params["mu"], 0.0)
  np.testing.assert_array_equal(params["logvar"], 1.0)
  params = {"mu": jnp.asarray([0.5, -1.0, 2.0]), "logvar": jnp.asarray([0.0, 1.0, -2.0])}
  keys = jax.random.split(jax.random.PRNGKey(1), 20000)
  z = np.asarray(jax.vmap(latent.sample, in_axes=(None, 0))(params, keys))
  np.testing.assert_allclose(z.mean(0), params["mu"], atol=0.05)
  np.testing.assert_allclose(z.std(0), np.exp(0.5 * np.asarray(params["logvar"])), rtol=0.03)
  # Gradients flow through the sample: dz/dmu = 1, dz/dlogvar = eps * std / 2.
  key = jax.random.PRNGKey(2)
  eps = jax.random.normal(key, (3,))
  grads = jax.grad(lambda p: jnp.sum(latent.sample(p, key)))(params)
  np.testing.assert_allclose(grads["mu"], 1.0)
  np.testing.assert_allclose(grads["logvar"], 0.5 * eps * jnp.exp(0.5 * params["logvar"]), rtol=1e-5)
  # Evaluation draws; with a clamp (LOMMA's KEDMI path) every sampled z lies in [-1, 1].
  assert latent.final(params, key).shape == (5, 3)
  clipped = DistributionalLatent(z_dim=3, clamp=1.0)
  z = np.asarray(jax.vmap(clipped.sample, in_axes=(None, 0))(params, keys[:500]))
  assert np.abs(z).max() <= 1.0 and np.isclose(np.abs(z).max(), 1.0)


def toy_kedmi(num_classes=4):
  """Untrained KEDMI models and variables, built once per process (eager initialisation takes seconds); every
  caller gets its own containers, so no test sees another's changes (the arrays themselves are immutable)."""
  models, variables = _toy_kedmi(num_classes)
  return models, jax.tree.map(lambda x: x, variables)


@functools.cache
def _toy_kedmi(num_classes):
  gan_cfg = GANConfig(z_dim=16, base_width=4, stages=3, channels=1)
  generator, disc = build_gan(gan_cfg, kind="kedmi", num_classes=num_classes)
  target = build_classifier(ModelConfig(arch="cnn", width=4, feature_dim=8), num_classes)
  variables = {
    # jitted: eager initialisation runs op by op (~15 s of CPU in all)
    "generator": jax.jit(generator.init)(jax.random.PRNGKey(0), jnp.zeros((2, 16))),
    "critic": jax.jit(disc.init)(jax.random.PRNGKey(1), jnp.zeros((2, 32, 32, 1))),
    "targets": (init_variables(target, jax.random.PRNGKey(2), (32, 32, 1)),),
  }
  return AttackModels(generator, disc, (target,), ((32, 32, 1),)), variables


@pytest.mark.slow  # issue 14: the fast tier stays under 5 minutes; CI runs this in the slow tier
def test_kedmi_engine_learns_distributions_in_one_compilation_independent_of_chunking():
  models, variables = toy_kedmi()
  cfg = InversionConfig(steps=8, restarts=1, optimizer="adam", learning_rate=0.02, draw_clamp=0.0, eval_draws=3)
  run = ExecutionConfig(log_every=4)
  whole = build_kedmi(models, 16, cfg, run)
  chunked = build_kedmi(models, 16, cfg, dataclasses.replace(run, max_batch=3))  # 4 latents -> 2 chunks, one padded
  a, b = whole.run(variables, [0, 1, 2, 3]), chunked.run(variables, [0, 1, 2, 3])
  assert a.stats.compilations == 1 and b.stats.compilations == 1 and b.stats.chunk_size == 3
  assert a.images.shape == (4, 3, 32, 32, 1) and a.latents.shape == (4, 3, 16) and a.draws == 3
  assert a.latent_params["mu"].shape == (4, 1, 16) and a.latent_params["logvar"].shape == (4, 1, 16)
  # Adam's first steps are ~lr * sign(g): allow what float32 rounding does to this run (measured, not assumed).
  atol = rounding_tolerance(lambda v: whole.run(v, [0, 1, 2, 3]).latents, variables)
  np.testing.assert_allclose(a.latent_params["mu"], b.latent_params["mu"], atol=atol)
  np.testing.assert_allclose(a.latents, b.latents, atol=atol)
  # The distributions moved from their start (mu = 0, logvar = 1), and the draws of one identity differ.
  assert np.abs(a.latent_params["mu"]).max() > 0.05
  assert not np.allclose(a.latents[:, 0], a.latents[:, 1])
  assert {"prior", "identity"} <= set(a.loss_parts)


def minus_log_p_real(logits) -> float:
  """KEDMI's prior on one image, in float64 numpy: -log sigmoid(LSE(l)) = softplus(LSE(l)) - LSE(l)."""
  l = np.asarray(logits, np.float64)
  lse = np.log(np.sum(np.exp(l - l.max()))) + l.max()
  return float(np.log1p(np.exp(lse)) - lse)


@pytest.mark.slow  # issue 14: the fast tier stays under 5 minutes; CI runs this in the slow tier
def test_kedmi_attack_prior_is_the_k_plus_1_discriminators_minus_log_p_real():
  """Item 24: the attack's prior term is -log P(real) = softplus(LSE(l)) - LSE(l) of the K+1 discriminator's
  logits l on G(z) (checked in float64 on a fixed latent), and the run really uses that discriminator."""
  models, variables = toy_kedmi()
  cfg = InversionConfig(
    steps=4, restarts=1, optimizer="adam", learning_rate=0.05, draw_clamp=0.0, eval_draws=2, reference_batch=1
  )
  run = ExecutionConfig(log_every=2, unroll=2)
  inv = build_kedmi(models, 16, cfg, run)
  params = {"mu": 0.3 * jnp.ones(16), "logvar": jnp.zeros(16)}
  key = jax.random.PRNGKey(7)
  _, parts = inv.loss(params, jnp.asarray(2), key, variables, inv.terms)
  z = inv.latent.sample(params, key)
  image = models.generator.apply(variables["generator"], z[None], train=False)
  _, logits = models.critic.apply(variables["critic"], image)
  want = minus_log_p_real(logits[0])
  # float32 logits of size ~1: the float32 softplus/LSE carry ~1e-6 relative error.
  assert float(parts["prior"]) == pytest.approx(want, rel=1e-5, abs=1e-6)
  assert want > 1e-3  # not a vanishing term that any prior would match

  # Another discriminator (other weights) changes the prior curve and the learned distributions.
  a = inv.run(variables, [0, 1])
  other = {**variables, "critic": models.critic.init(jax.random.PRNGKey(9), jnp.zeros((2, 32, 32, 1)))}
  b = build_kedmi(models, 16, cfg, run).run(other, [0, 1])
  assert not np.allclose(a.loss_parts["prior"], b.loss_parts["prior"])
  assert not np.allclose(a.latent_params["mu"], b.latent_params["mu"])
  # Without a prior term the discriminator is never evaluated: the curves carry only the identity term.
  no_prior = build_kedmi(models, 16, dataclasses.replace(cfg, prior_weight=0.0), run).run(variables, [0, 1])
  assert set(no_prior.loss_parts) == {"identity"}


@pytest.mark.slow  # a tiny KEDMI GAN and attack (~30 s of compiling on 2 cores)
def test_run_attack_hands_kedmi_its_gans_k_plus_1_discriminator_as_the_prior(tiny, tmp_path, monkeypatch):
  """Item 24 through `run_attack`, not only `build_kedmi`: a KEDMI attack on a KEDMI GAN's workdir evaluates
  -log P(real) of THAT GAN's K+1 discriminator (weights loaded from its checkpoint), checked in float64."""
  from jaxmi.experiments.attack import run_attack
  from jaxmi.train.gan import GANExperimentConfig, GANTrainConfig, load_gan, train_gan
  from test_attacks import TINY_DATA, TINY_GAN, spy_on_inverter, stopped, tiny_attack

  root, splits = tiny
  gan_cfg = GANExperimentConfig(
    name="kgan",
    kind="kedmi",
    target=str(root / "target"),
    data=TINY_DATA,
    gan=TINY_GAN,
    train=GANTrainConfig(batch_size=8),
  )
  stopped(train_gan, gan_cfg, tmp_path / "kgan", splits=splits, progress=False, stop_at_step=2)
  seen = spy_on_inverter(monkeypatch)
  cfg = dataclasses.replace(
    tiny_attack(root, optimizer="adam", draw_clamp=0.0, eval_draws=2, restarts=1, z_clip=0.0),
    attack="kedmi",
    gan=str(tmp_path / "kgan"),
  )
  result = run_attack(cfg, tmp_path / "attack", splits=splits, progress=False)
  assert result["gan_kind"] == "kedmi" and result["draws_per_latent"] == 2
  inv, variables = seen["inverter"], seen["variables"]
  gan = load_gan(tmp_path / "kgan")
  assert isinstance(inv.models.critic, KEDMIDiscriminator)

  params = {"mu": 0.3 * jnp.ones(TINY_GAN.z_dim), "logvar": jnp.zeros(TINY_GAN.z_dim)}
  key = jax.random.PRNGKey(3)
  _, parts = inv.loss(params, jnp.asarray(1), key, variables, inv.terms)
  image = gan.generator.apply(gan.g_variables, inv.latent.sample(params, key)[None], train=False)
  _, logits = gan.critic.apply(gan.d_variables, image)
  want = minus_log_p_real(logits[0])
  # float32 logits of size ~1: the float32 softplus/LSE carry ~1e-6 relative error.
  assert float(parts["prior"]) == pytest.approx(want, rel=1e-5, abs=1e-6)
  assert want > 1e-3
