import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmi.nets import ModelConfig, build_classifier, init_variables, shape_signature
from jaxmi.errors import ConfigError

SMALL = {
  "cnn": ModelConfig(arch="cnn", width=8, feature_dim=32),
  "resnet": ModelConfig(arch="resnet", width=8, blocks=(1, 1, 1)),
  "vgg": ModelConfig(arch="vgg", vgg_layout="vgg16", width_divisor=16),
}


# The real-size nets (AT&T's 112 px ResNet, VGG at 64 px) take ~12 s of compiling each: the slow tier.
@pytest.mark.parametrize(
  "arch, size, channels",
  [
    ("cnn", 28, 1),
    ("cnn", 32, 3),
    ("resnet", 32, 1),
    pytest.param("resnet", 112, 3, marks=pytest.mark.slow),
    pytest.param("vgg", 64, 3, marks=pytest.mark.slow),
  ],
)
def test_outputs_logits_features_and_hidden(arch, size, channels):
  model = build_classifier(SMALL[arch], num_classes=7)
  variables = init_variables(model, jax.random.PRNGKey(0), (size, size, channels))
  x = jax.random.uniform(jax.random.PRNGKey(1), (3, size, size, channels))
  out = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
  assert out.logits.shape == (3, 7)
  assert out.features.ndim == 2 and out.features.shape[0] == 3
  assert len(out.hidden) >= 2 and all(h.shape[0] == 3 for h in out.hidden)
  assert np.isfinite(np.asarray(out.logits)).all()


def test_vgg16_at_64px_has_the_reference_2048_features():
  model = build_classifier(ModelConfig(arch="vgg", vgg_layout="vgg16"), num_classes=1000)
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)), train=False))
  assert shapes["params"]["head"]["fc"]["kernel"].shape == (2048, 1000)


def test_batchnorm_train_updates_statistics_and_eval_uses_them():
  model = build_classifier(SMALL["cnn"], num_classes=3)
  variables = init_variables(model, jax.random.PRNGKey(0), (16, 16, 1))
  x = jax.random.uniform(jax.random.PRNGKey(1), (8, 16, 16, 1)) * 3.0 + 1.0
  out_train, mutated = model.apply(variables, x, train=True, mutable=["batch_stats"])
  new_stats = mutated["batch_stats"]
  # Running means move towards the batch statistics (momentum 0.9 => 10% of the way).
  old_mean = np.asarray(variables["batch_stats"]["bn0"]["mean"])
  new_mean = np.asarray(new_stats["bn0"]["mean"])
  assert np.abs(new_mean - old_mean).max() > 1e-3
  # Eval mode is deterministic in the batch: one example alone gives the same output as in a batch.
  eval_vars = {"params": variables["params"], "batch_stats": new_stats}
  full = model.apply(eval_vars, x, train=False).logits
  single = model.apply(eval_vars, x[:1], train=False).logits
  np.testing.assert_allclose(full[:1], single, rtol=1e-5, atol=1e-5)
  # Train mode normalises with the batch's statistics, so the same example's output depends on the batch.
  alone = model.apply(variables, x[:1] + 0 * x[:1], train=True, mutable=["batch_stats"])[0].logits
  assert not np.allclose(out_train.logits[:1], alone, atol=1e-4)


def test_unknown_architecture_is_a_config_error():
  with pytest.raises(ConfigError, match="model.arch: unknown architecture 'alexnet'"):
    build_classifier(ModelConfig(arch="alexnet"), 10)
  with pytest.raises(ConfigError, match="model.vgg_layout"):
    build_classifier(ModelConfig(arch="vgg", vgg_layout="vgg99"), 10)


def test_shape_signature_distinguishes_architectures():
  # The models and image shapes of test_outputs_logits_features_and_hidden: each init is compiled once per session.
  a = shape_signature(init_variables(build_classifier(SMALL["cnn"], 7), jax.random.PRNGKey(0), (28, 28, 1)))
  b = shape_signature(init_variables(build_classifier(SMALL["resnet"], 7), jax.random.PRNGKey(0), (32, 32, 1)))
  assert a != b and "params/head/fc/kernel" in a and a["params/head/fc/kernel"] == [32, 7]


def test_reshape_max_pool_equals_flax_max_pool_and_its_gradient():
  """The classifiers' pooling (a reshape + max, fast to differentiate on XLA:CPU) is nn.max_pool."""
  import flax.linen as nn
  from jaxmi.nets.classifiers import max_pool_2x2

  for shape in ((2, 8, 8, 3), (2, 7, 9, 4)):  # odd sizes: VALID pooling drops the last row/column
    x = jax.random.normal(jax.random.PRNGKey(0), shape)  # continuous values: no ties
    np.testing.assert_array_equal(max_pool_2x2(x), nn.max_pool(x, (2, 2), (2, 2)))
    w = jax.random.normal(jax.random.PRNGKey(1), max_pool_2x2(x).shape)
    grads = [
      jax.grad(lambda x: jnp.sum(w * pool(x)))(x) for pool in (max_pool_2x2, lambda x: nn.max_pool(x, (2, 2), (2, 2)))
    ]
    np.testing.assert_array_equal(grads[0], grads[1])
    assert np.count_nonzero(grads[0]) == w.size  # one maximum per window receives the gradient
