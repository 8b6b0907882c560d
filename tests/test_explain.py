"""Explanations against their definitions on models where the answer is known."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmi.explain import explain, make_explainer, postprocess
from jaxmi.explain.lrp import _redistribute, forward, layers_of, lrp
from jaxmi.nets import ClassifierOutput, ModelConfig, build_classifier, init_variables


class Linear(nn.Module):
  """logits = flatten(x) @ W + b: gradient = W[:, c], IG from 0 = x * W[:, c] exactly."""
  num_classes: int = 3

  @nn.compact
  def __call__(self, x, train=False):
    flat = x.reshape(x.shape[0], -1)
    return ClassifierOutput(nn.Dense(self.num_classes, name="fc")(flat), flat, ())


class CAMNet(nn.Module):
  """conv -> A -> global average pool -> dense: Grad-CAM's weights are W[:, c] / (h w), so it equals CAM."""
  num_classes: int = 3

  @nn.compact
  def __call__(self, x, train=False):
    a = nn.relu(nn.Conv(6, (3, 3), name="conv")(x))
    a = self.perturb("hidden0", a)
    return ClassifierOutput(nn.Dense(self.num_classes, name="fc")(jnp.mean(a, axis=(1, 2))), None, (a,))


@pytest.fixture
def images():
  return jax.random.uniform(jax.random.PRNGKey(1), (4, 8, 8, 2))


def test_gradient_smoothgrad_and_integrated_gradients_of_a_linear_model(images):
  model = Linear()
  variables = model.init(jax.random.PRNGKey(0), images)
  w = np.asarray(variables["params"]["fc"]["kernel"])
  targets = jnp.array([0, 1, 2, 1])
  per_class = lambda t: w[:, t].T.reshape(images.shape)
  with jax.default_matmul_precision("highest"):
    np.testing.assert_allclose(explain("grad", model, variables, images, targets), per_class(targets), rtol=1e-6)
    np.testing.assert_allclose(explain("smoothgrad", model, variables, images, targets, jax.random.PRNGKey(3)),
                               per_class(targets), rtol=1e-5, atol=1e-7)
    ig = explain("ig", model, variables, images, targets, steps=4)
    np.testing.assert_allclose(ig, np.asarray(images) * per_class(targets), rtol=1e-5, atol=1e-7)
    # Completeness: attributions sum to f(x) - f(0).
    logits = model.apply(variables, images).logits - model.apply(variables, jnp.zeros_like(images)).logits
    np.testing.assert_allclose(ig.sum(axis=(1, 2, 3)), np.asarray(logits)[np.arange(4), targets], rtol=1e-5)
    # No targets: the predicted class.
    predicted = np.argmax(np.asarray(model.apply(variables, images).logits), -1)
    np.testing.assert_allclose(explain("grad", model, variables, images), per_class(predicted), rtol=1e-6)


def test_integrated_gradients_completeness_on_a_nonlinear_classifier():
  model = build_classifier(ModelConfig(arch="cnn", width=4, feature_dim=16), 5)
  variables = init_variables(model, jax.random.PRNGKey(0), (16, 16, 1))
  x = jax.random.uniform(jax.random.PRNGKey(1), (3, 16, 16, 1))
  targets = jnp.array([0, 3, 4])
  with jax.default_matmul_precision("highest"):
    ig = explain("ig", model, variables, x, targets, steps=256)
    gap = model.apply(variables, x).logits - model.apply(variables, jnp.zeros_like(x)).logits
  np.testing.assert_allclose(ig.sum(axis=(1, 2, 3)), np.asarray(gap)[np.arange(3), targets], rtol=2e-2, atol=1e-3)


def test_grad_cam_equals_cam_on_a_global_average_pooling_net_and_gnime_pools_over_the_batch(images):
  model = CAMNet()
  variables = {"params": model.init(jax.random.PRNGKey(0), images)["params"]}
  targets = jnp.array([2, 0, 1, 1])
  with jax.default_matmul_precision("highest"):
    cam = explain("gradcam", model, variables, images, targets)
    a = np.asarray(model.apply(variables, images).hidden[0])
    w = np.asarray(variables["params"]["fc"]["kernel"])
    expected = np.maximum(np.einsum("bhwk,kb->bhw", a, w[:, targets]) / (a.shape[1] * a.shape[2]), 0)
    np.testing.assert_allclose(cam, expected, rtol=1e-5, atol=1e-7)
    # Standard maps are per example; GNIME's depend on the rest of the batch.
    alone = explain("gradcam", model, variables, images[:1], targets[:1])
    np.testing.assert_allclose(alone[0], cam[0], rtol=1e-5, atol=1e-7)
    pooled = explain("gradcam", model, variables, images, targets, variant="gnime")
    pooled_alone = explain("gradcam", model, variables, images[:1], targets[:1], variant="gnime")
    assert not np.allclose(pooled[0], pooled_alone[0])
    resized = explain("gradcam", model, variables, images, targets, size=(16, 16))
  assert resized.shape == (4, 16, 16)


def test_lrp_z_plus_rule_matches_its_formula_and_conserves_relevance():
  rng = np.random.default_rng(0)
  a, w, r = rng.uniform(size=(2, 5)), rng.normal(size=(5, 3)), rng.normal(size=(2, 3))
  wp = np.maximum(w, 0)
  expected = a * ((r / (a @ wp)) @ wp.T)   # R_i = a_i sum_j w+_ij R_j / sum_i' a_i' w+_i'j
  got = _redistribute(lambda x: x @ jnp.asarray(wp, jnp.float32), jnp.asarray(a, jnp.float32), jnp.asarray(r))
  np.testing.assert_allclose(got, expected, rtol=1e-5)
  for cfg, shape in [(ModelConfig(arch="cnn", width=4, feature_dim=16), (16, 16, 1)),
                     (ModelConfig(arch="vgg", vgg_layout="vgg_small", width_divisor=16), (16, 16, 1))]:
    model = build_classifier(cfg, 4)
    variables = init_variables(model, jax.random.PRNGKey(0), shape)
    x = jax.random.uniform(jax.random.PRNGKey(1), (3, *shape))
    with jax.default_matmul_precision("highest"):
      logits = model.apply(variables, x).logits
      folded, _ = forward(layers_of(model, variables), x)
      np.testing.assert_allclose(folded, logits, rtol=1e-4, atol=1e-5)   # BatchNorm folding is exact
      targets = jnp.argmax(logits, -1)
      relevance = lrp(model, variables, x, targets)
    # Freshly initialised BN folds to zero biases, so z+ conserves relevance exactly: sum R = logit_target.
    np.testing.assert_allclose(relevance.sum(axis=(1, 2, 3)), np.asarray(logits)[np.arange(3), targets], rtol=1e-3)
    assert relevance.shape == x.shape and float(jnp.min(relevance)) >= -1e-6 * float(jnp.max(jnp.abs(relevance)))
  resnet = build_classifier(ModelConfig(arch="resnet", width=4, blocks=(1,)), 3)
  with pytest.raises(ValueError, match="lrp: supports the cnn and vgg classifiers"):
    lrp(resnet, init_variables(resnet, jax.random.PRNGKey(0), (16, 16, 1)), x[:, :16, :16], jnp.zeros(3, jnp.int32))


def test_explainer_compiles_once_and_postprocess_normalises_each_example_and_channel():
  model = build_classifier(ModelConfig(arch="cnn", width=4, feature_dim=16), 5)
  variables = init_variables(model, jax.random.PRNGKey(0), (16, 16, 2))
  traces = []
  explainer = make_explainer("gradcam", model)
  counting = jax.jit(chex.assert_max_traces(lambda v, x: explain("lrp", model, v, x), n=1))
  for seed in range(3):
    x = jax.random.uniform(jax.random.PRNGKey(seed), (4, 16, 16, 2))
    traces.append(explainer(variables, x).shape)
    counting(variables, x)
  e = postprocess(explain("grad", model, variables, x))
  assert float(e.min()) == 0.0 and float(e.max()) == pytest.approx(1.0)
  np.testing.assert_allclose(jnp.max(e, axis=(1, 2)), 1.0, rtol=1e-6)   # every example and channel spans [0, 1]
  np.testing.assert_allclose(jnp.min(e, axis=(1, 2)), 0.0, atol=1e-7)
  with pytest.raises(ValueError, match="explanation method: expected one of"):
    make_explainer("saliency", model)
