"""LOMMA building blocks: logit loss, feature regulariser and distillation loss on known inputs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmi.attacks import FeatureRegTerm, Forward, IdentityTerm
from jaxmi.train.distill import Distillation


def forward(logits, features):
  return Forward(image=jnp.zeros((2, 2, 1)), critic_score=jnp.zeros(()),
                 target_logits=tuple(jnp.asarray(l, jnp.float32) for l in logits),
                 target_features=tuple(jnp.asarray(f, jnp.float32) for f in features))


def test_logit_loss_is_the_negative_logit_averaged_over_attacked_models():
  f = forward([[1.0, 5.0, -2.0], [0.5, 3.0, 9.0]], [[0.0]])
  term = IdentityTerm(weight=100.0, loss="logit")
  assert float(term(f, jnp.asarray(1), {})) == pytest.approx(-(5.0 + 3.0) / 2)
  ce = IdentityTerm(loss="ce")
  expected = np.mean([-jax.nn.log_softmax(jnp.asarray([1.0, 5.0, -2.0]))[2],
                      -jax.nn.log_softmax(jnp.asarray([0.5, 3.0, 9.0]))[2]])
  assert float(ce(f, jnp.asarray(2), {})) == pytest.approx(float(expected), rel=1e-6)


def test_feature_regulariser_global_and_per_class():
  f = forward([[0.0, 0.0]], [[1.0, 2.0, 3.0]])
  term = FeatureRegTerm()
  assert float(term(f, jnp.asarray(0), {"p_reg": jnp.zeros(3)})) == pytest.approx(14.0 / 3)
  assert float(term(f, jnp.asarray(0), {"p_reg": jnp.asarray([1.0, 1.0, 1.0])})) == pytest.approx(5.0 / 3)
  per_class = jnp.asarray([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
  assert float(term(f, jnp.asarray(0), {"p_reg": per_class})) == pytest.approx(0.0)
  assert float(term(f, jnp.asarray(1), {"p_reg": per_class})) == pytest.approx(14.0 / 3)


def test_distillation_loss_is_kl_to_the_teacher():
  rng = np.random.default_rng(0)
  student, teacher = rng.normal(size=(4, 6)), rng.normal(size=(4, 6))
  p = np.exp(teacher) / np.exp(teacher).sum(-1, keepdims=True)
  q = np.exp(student) / np.exp(student).sum(-1, keepdims=True)
  expected = np.sum(p * np.log(p / q), -1)
  got = Distillation(temperature=1.0).task_loss(jnp.asarray(student, jnp.float32), jnp.asarray(teacher, jnp.float32))
  np.testing.assert_allclose(got, expected, rtol=1e-5)
  assert np.allclose(Distillation().task_loss(jnp.asarray(teacher), jnp.asarray(teacher)), 0.0, atol=1e-6)
  # Temperature: KL of the tempered distributions, times T^2.
  t = 2.0
  p_t = np.exp(teacher / t) / np.exp(teacher / t).sum(-1, keepdims=True)
  q_t = np.exp(student / t) / np.exp(student / t).sum(-1, keepdims=True)
  np.testing.assert_allclose(Distillation(temperature=t).task_loss(jnp.asarray(student, jnp.float32),
                                                                   jnp.asarray(teacher, jnp.float32)),
                             t**2 * np.sum(p_t * np.log(p_t / q_t), -1), rtol=1e-5)
