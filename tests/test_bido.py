"""BiDO: nHSIC and COCO against a direct numpy computation, and the regulariser on real MNIST."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmi.data import DataConfig, load_splits
from jaxmi.defenses import BiDO, coco, gaussian_gram, linear_gram, normalized_hsic
from jaxmi.errors import ConfigError
from jaxmi.nets import VGG, ClassifierOutput, ModelConfig, init_variables
from jaxmi.train import ClassifierConfig, OptimConfig, TrainConfig, load_classifier, train_classifier


def np_gaussian(a, sigma):
  a = a.reshape(len(a), -1).astype(np.float64)
  d = np.array([[np.sum((x - y) ** 2) for y in a] for x in a])
  return np.exp(-d / (2 * sigma**2 * a.shape[1]))


def np_nhsic(ka, kb, eps=1e-5):
  m = len(ka)
  h = np.eye(m) - np.ones((m, m)) / m
  ra = (ka @ h) @ np.linalg.inv(ka @ h + eps * m * np.eye(m))
  rb = (kb @ h) @ np.linalg.inv(kb @ h + eps * m * np.eye(m))
  return np.trace(ra @ rb)


def np_coco(ka, kb):
  m = len(ka)
  h = np.eye(m) - np.ones((m, m)) / m
  return np.sqrt(np.linalg.norm((h @ ka @ h) @ (h @ kb @ h), "fro")) / m


@pytest.fixture
def batch():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(12, 4, 4, 2))
  z = np.tanh(x.reshape(12, -1) @ rng.normal(size=(32, 6)))  # depends on x
  y = np.eye(3)[rng.integers(0, 3, 12)]
  return x, z, y


def test_kernels_and_dependence_measures_match_numpy(batch):
  # A test of the formulas, so in float64: (K H + eps m I) is ill-conditioned (eps m = 1.2e-4), and in
  # float32 nHSIC differed from numpy by 0.2% on an Intel Xeon (1.70968 vs 1.71355) but not on AMD EPYC.
  x, z, y = batch
  with jax.enable_x64(True):
    kx, kz, ky = gaussian_gram(jnp.asarray(x), 5.0), gaussian_gram(jnp.asarray(z), 5.0), linear_gram(jnp.asarray(y))
    assert kx.dtype == jnp.float64
    np.testing.assert_allclose(kx, np_gaussian(x, 5.0), rtol=1e-12)
    np.testing.assert_allclose(ky, y @ y.T)
    for a, b in [(kz, kx), (kz, ky)]:
      na, nb = np.asarray(a), np.asarray(b)
      assert float(normalized_hsic(a, b)) == pytest.approx(np_nhsic(na, nb), rel=1e-8)
      assert float(coco(a, b)) == pytest.approx(np_coco(na, nb), rel=1e-10)


def test_bido_loss_adds_the_input_term_and_subtracts_the_label_term(batch):
  """loss = CE + lambda_x sum_j nHSIC(X, Z_j) - lambda_y sum_j nHSIC(Y, Z_j) (the reference's signs), in float64,
  and one gradient step on the codes lowers their input dependence and raises their label dependence."""
  x, z, y = batch
  rng = np.random.default_rng(2)
  codes = (z, np.tanh(z @ rng.normal(size=(6, 5))))
  labels = np.argmax(y, -1)
  with jax.enable_x64(True):
    k_x, k_y = np_gaussian(x, 5.0), y @ y.T
    dep_x = sum(np_nhsic(np_gaussian(c, 5.0), k_x) for c in codes)
    dep_y = sum(np_nhsic(np_gaussian(c, 5.0), k_y) for c in codes)
    assert dep_x > 0 and dep_y > 0

    def reg(bido, hidden):
      out = ClassifierOutput(jnp.zeros((12, 3), jnp.float64), None, tuple(hidden))
      return bido.regularizer(out, jnp.asarray(labels), images=jnp.asarray(x), params=None, step=0, facts=None)

    loss, metrics = reg(BiDO(lambda_x=0.05, lambda_y=0.5), [jnp.asarray(c) for c in codes])
    assert float(metrics["hsic_xz"]) == pytest.approx(dep_x, rel=1e-8)
    assert float(metrics["hsic_yz"]) == pytest.approx(dep_y, rel=1e-8)
    assert float(loss) == pytest.approx(0.05 * dep_x - 0.5 * dep_y, rel=1e-8)
    # Descending each term alone moves the dependence the way BiDO wants it.
    for bido, key, direction in [
      (BiDO(lambda_x=1.0, lambda_y=0.0), "hsic_xz", -1),
      (BiDO(lambda_x=0.0, lambda_y=1.0), "hsic_yz", +1),
    ]:
      hidden = [jnp.asarray(c) for c in codes]
      grads = jax.grad(lambda h: reg(bido, h)[0])(hidden)
      stepped = [h - 1e-2 * g for h, g in zip(hidden, grads)]
      before, after = float(reg(bido, hidden)[1][key]), float(reg(bido, stepped)[1][key])
      assert direction * (after - before) > 0, (key, before, after)


def test_bido_regularises_the_bn1d_output_as_the_last_vgg_code():
  """BiDO's VGG16 returns [block1..block4, BN1d(flatten(block5))]: the last hidden code is the
  BatchNorm1d output (the features), not the pooled block 5."""
  import flax.linen as nn

  # The VGG16 rule on a 3-block VGG (fast to compile): hidden = [block1, block2, BN1d(flatten(block3))].
  model = VGG(5, layout=(4, "M", 8, "M", 8, 8, "M"))
  variables = init_variables(model, jax.random.PRNGKey(0), (16, 16, 1))
  images = jax.random.uniform(jax.random.PRNGKey(1), (6, 16, 16, 1))
  seen = {}

  def capture(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if context.module.path == ("bn_feat",):
      seen["input"], seen["output"] = args[0], out
    return out

  @jax.jit
  def forward(variables, images):
    with nn.intercept_methods(capture):
      out = model.apply(variables, images, train=False)
    return out, seen["input"], seen["output"]

  out, bn_input, bn_output = forward(variables, images)
  assert [h.shape for h in out.hidden] == [(6, 8, 8, 4), (6, 4, 4, 8), (6, 2 * 2 * 8)]
  assert bn_input.shape == (6, 2 * 2 * 8)  # flatten(last block): 8 channels at 2x2
  np.testing.assert_array_equal(out.hidden[-1], bn_output)
  np.testing.assert_array_equal(out.hidden[-1], out.features)
  # The regulariser sums over exactly these codes (float64: a formula check).
  with jax.enable_x64(True):
    hidden = [np.asarray(h, np.float64) for h in out.hidden]
    x = np.asarray(images, np.float64)
    labels = np.arange(6) % 5
    wide = ClassifierOutput(jnp.zeros((6, 5), jnp.float64), None, tuple(jnp.asarray(h) for h in hidden))
    _, metrics = BiDO().regularizer(wide, jnp.asarray(labels), images=jnp.asarray(x), params=None, step=0, facts=None)
    k_x = np_gaussian(x, 5.0)
    expected = sum(np_nhsic(np_gaussian(h, 5.0), k_x) for h in hidden)
    assert float(metrics["hsic_xz"]) == pytest.approx(expected, rel=1e-8)


def test_dependence_is_higher_for_dependent_codes(batch):
  x, z, _ = batch
  rng = np.random.default_rng(1)
  independent = rng.normal(size=z.shape)
  # float64: nHSIC's margin here is 4e-4 relative (10.9913 vs 10.9871), below float32's error on this solve.
  with jax.enable_x64(True):
    kx = gaussian_gram(jnp.asarray(x), 1.0)
    for measure in (normalized_hsic, coco):
      dep = float(measure(gaussian_gram(jnp.asarray(z), 1.0), kx))
      ind = float(measure(gaussian_gram(jnp.asarray(independent), 1.0), kx))
      assert dep > ind, (measure.__name__, dep, ind)


def test_bad_measure_is_a_config_error():
  with pytest.raises(ConfigError, match="defense.measure: unknown 'mi'; expected hsic or coco"):
    BiDO(measure="mi")


DATA = DataConfig(
  dataset="mnist", image_size=32, channels=1, private_ids=(0, 1, 2, 3, 4), public_ids=(5, 6, 7, 8, 9), max_per_class=300
)


# COCO values are ~1e-2 of nHSIC's, so it needs a larger weight (the official MNIST COCO runs use 1-2 with 20-50 for Y).
@pytest.mark.slow  # trains on real MNIST end to end
@pytest.mark.parametrize("measure, lambda_x", [("hsic", 2.0), ("coco", 500.0)])
def test_bido_trains_on_real_data_and_lowers_input_dependence(tmp_path, cache_root, data_root, measure, lambda_x):
  """Same model, data and seed, with and without lambda_x: the input dependence of the hidden
  codes on held-out images must be lower with it (what BiDO claims to change), without NaN."""
  splits = load_splits(DATA)
  common = dict(
    role="target",
    data=DATA,
    model=ModelConfig(arch="cnn", width=8, feature_dim=32),
    optim=OptimConfig(name="adam", learning_rate=1e-3),
    train=TrainConfig(epochs=2, batch_size=64),
  )
  measured = {}
  for name, defense in [
    ("plain", BiDO(measure=measure, lambda_x=0.0, lambda_y=0.0)),
    ("bido", BiDO(measure=measure, lambda_x=lambda_x, lambda_y=0.0)),
  ]:
    summary = train_classifier(
      ClassifierConfig(name=name, **common), tmp_path / name, splits=splits, defense=defense, progress=False
    )
    assert np.isfinite(summary["natural_accuracy"])
    clf = load_classifier(tmp_path / name)
    images = jnp.asarray(splits.private_test.images[:128], jnp.float32) / 255.0
    out = clf.module.apply(clf.variables, images, train=False)
    with jax.enable_x64(True):  # the ill-conditioned solve in float64: the comparison is about the model, not rounding
      kx = gaussian_gram(np.asarray(images, np.float64), 5.0)
      measured[name] = float(
        sum(defense.dependence(gaussian_gram(np.asarray(z, np.float64), 5.0), kx) for z in out.hidden)
      )
  # Measured: nHSIC 83.5 -> 74.1, COCO 0.00402 -> 0.00331.
  assert measured["bido"] < 0.95 * measured["plain"], measured
