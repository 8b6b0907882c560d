"""PLG-MI's reconstruction on the shared engine: the max-margin loss, augmented views, a conditional generator."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmi.attacks import AttackModels, ExecutionConfig, Forward, IdentityTerm, InversionConfig, build_gmi, build_plg
from jaxmi.attacks import max_margin
from jaxmi.augment import PLG_AUGMENT
from jaxmi.errors import ConfigError
from jaxmi.nets import ModelConfig, build_classifier, init_variables
from tolerance import rounding_tolerance


def test_max_margin_is_minus_the_class_logit_plus_the_strongest_rival():
  logits = jnp.array([1.0, 3.0, 2.0, -1.0])
  assert float(max_margin(logits, 0)) == 3.0 - 1.0
  assert float(max_margin(logits, 1)) == 2.0 - 3.0  # the class leads: negative margin
  # the reference's form (argsort's top two, the other one than y), in float64 on random logits
  rng = np.random.default_rng(0)
  batch, labels = rng.normal(size=(64, 10)), rng.integers(0, 10, 64)
  top2 = np.argsort(batch, axis=1)[:, -2:]
  rival = np.where(top2[:, -1] == labels, top2[:, -2], top2[:, -1])
  want = -batch[np.arange(64), labels] + batch[np.arange(64), rival]
  with jax.enable_x64(True):
    got = jax.vmap(max_margin)(jnp.asarray(batch), jnp.asarray(labels))
  np.testing.assert_allclose(np.asarray(got), want, rtol=0, atol=1e-12)


def test_identity_losses_of_augmented_views_add_up():
  logits = jnp.array([[1.0, 3.0, 2.0], [0.5, 0.0, 4.0]])
  f = lambda l: Forward(jnp.zeros((4, 4, 1)), jnp.zeros(()), (l,), (jnp.zeros(3),))
  for loss in ("ce", "logit", "max_margin"):
    term = IdentityTerm(1.0, loss)
    assert float(term(f(logits), 0)) == pytest.approx(float(term(f(logits[0]), 0) + term(f(logits[1]), 0)))


class ConditionalGenerator(nn.Module):
  """G(z, y): the class enters as an embedding added to the projected z (enough to tell classes apart)."""

  num_classes: int = 5

  @nn.compact
  def __call__(self, z, labels, train: bool = False):
    h = nn.Dense(32 * 32)(z) + nn.Embed(self.num_classes, 32 * 32)(labels)
    return nn.sigmoid(h).reshape(-1, 32, 32, 1)


def conditional_models(num_classes=5):
  generator = ConditionalGenerator(num_classes)
  target = build_classifier(ModelConfig(arch="cnn", width=8, feature_dim=16), num_classes)
  variables = {
    "generator": generator.init(jax.random.PRNGKey(0), jnp.zeros((2, 16)), jnp.zeros(2, jnp.int32)),
    "critic": {},
    "targets": (init_variables(target, jax.random.PRNGKey(2), (32, 32, 1)),),
  }
  return AttackModels(generator, None, (target,), ((32, 32, 1),), conditional=True), variables


PLG = InversionConfig(
  steps=8,
  restarts=2,
  optimizer="adam",
  learning_rate=0.1,
  z_clip=0.0,
  prior_weight=0.0,
  identity_weight=1.0,
  identity_loss="max_margin",
  augment_views=2,
  augment=PLG_AUGMENT,
)


def test_each_latent_generates_in_its_attacked_class_and_plg_needs_a_conditional_generator():
  models, variables = conditional_models()
  result = build_plg(models, 16, dataclasses.replace(PLG, steps=2, restarts=1), ExecutionConfig(log_every=1)).run(
    variables, [0, 3]
  )
  z = jnp.asarray(result.latents[:, 0])
  generate = lambda y: models.generator.apply(variables["generator"], z, jnp.array(y))
  # the reconstructions are G(z, attacked class): not G(z, another class)
  np.testing.assert_allclose(result.images[:, 0], generate([0, 3]), atol=1e-6)
  assert not np.allclose(result.images[:, 0], generate([1, 1]), atol=1e-3)
  with pytest.raises(ConfigError, match="conditional generator"):
    build_plg(dataclasses.replace(models, conditional=False), 16, PLG)
  with pytest.raises(ConfigError, match="augment_views"):
    build_plg(models, 16, dataclasses.replace(PLG, augment_views=-1))


def test_augmented_views_are_keyed_per_latent_and_step_so_chunking_changes_nothing():
  models, variables = conditional_models()
  run = ExecutionConfig(log_every=2)
  cfg = dataclasses.replace(PLG, steps=4)
  inverter = build_plg(models, 16, cfg, run)
  whole = inverter.run(variables, [0, 1, 2, 3, 4])
  chunked = build_plg(models, 16, cfg, dataclasses.replace(run, max_batch=4)).run(variables, [0, 1, 2, 3, 4])
  assert whole.stats.compilations == 1 and chunked.stats.compilations == 1 and chunked.stats.chunk_size == 4
  atol = rounding_tolerance(lambda v: inverter.run(v, [0, 1, 2, 3, 4]).latents, variables)
  np.testing.assert_allclose(whole.latents, chunked.latents, atol=atol)
  # the views matter: without them (or with other draws) the optimisation goes elsewhere
  plain = build_plg(models, 16, dataclasses.replace(cfg, augment_views=0), run).run(variables, [0, 1, 2, 3, 4])
  assert not np.allclose(whole.latents, plain.latents, atol=100 * atol)
  # an augmented GMI is a config: the same views on the unconditional path
  from test_attacks import toy_models

  gmi_models, gmi_vars = toy_models()
  gmi = InversionConfig(steps=2, restarts=1, augment_views=2, augment=PLG_AUGMENT, identity_loss="max_margin")
  assert build_gmi(gmi_models, 100, gmi, run).run(gmi_vars, [0, 1]).stats.compilations == 1
