"""Explanations against their definitions on models where the answer is known."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmi.explain import explain, make_explainer, postprocess
from jaxmi.explain.lrp import EPS, _redistribute, forward, layers_of, lrp
from jaxmi.nets import ClassifierOutput, ModelConfig, build_classifier, init_variables, path_name


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
    np.testing.assert_allclose(
      explain("smoothgrad", model, variables, images, targets, jax.random.PRNGKey(3)),
      per_class(targets),
      rtol=1e-5,
      atol=1e-7,
    )
    ig = explain("ig", model, variables, images, targets, steps=4)
    np.testing.assert_allclose(ig, np.asarray(images) * per_class(targets), rtol=1e-5, atol=1e-7)
    # Completeness: attributions sum to f(x) - f(0).
    logits = model.apply(variables, images).logits - model.apply(variables, jnp.zeros_like(images)).logits
    # A sum of 128 float32 terms that may nearly cancel: the error scales with the sum of |terms|, not the sum.
    terms = np.abs(np.asarray(images) * per_class(targets)).sum(axis=(1, 2, 3))
    np.testing.assert_allclose(
      ig.sum(axis=(1, 2, 3)),
      np.asarray(logits)[np.arange(4), targets],
      rtol=0,
      atol=4 * images[0].size * np.finfo(np.float32).eps * terms.max(),
    )
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


@pytest.mark.slow  # issue 14: the fast tier stays under 5 minutes; CI runs this in the slow tier
def test_lrp_z_plus_rule_matches_its_formula_and_conserves_relevance():
  rng = np.random.default_rng(0)
  a, w, r = rng.uniform(size=(2, 5)), rng.normal(size=(5, 3)), rng.normal(size=(2, 3))
  wp = np.maximum(w, 0)
  z = a @ wp
  z = z + EPS * np.where(z >= 0, 1.0, -1.0)  # the usual stabiliser
  expected = a * ((r / z) @ wp.T)  # R_i = a_i sum_j w+_ij R_j / sum_i' a_i' w+_i'j
  with jax.enable_x64(True):  # a formula test: the z+ denominators a @ w+ may be small, so compare in float64
    got = _redistribute(lambda x: x @ jnp.asarray(wp), jnp.asarray(a), jnp.asarray(r))
    assert got.dtype == jnp.float64
  np.testing.assert_allclose(got, expected, rtol=1e-10)
  for cfg, shape in [
    (ModelConfig(arch="cnn", width=4, feature_dim=16), (16, 16, 1)),
    (ModelConfig(arch="vgg", vgg_layout="vgg_small", width_divisor=16), (16, 16, 1)),
  ]:
    model = build_classifier(cfg, 4)
    variables = init_variables(model, jax.random.PRNGKey(0), shape)
    x = jax.random.uniform(jax.random.PRNGKey(1), (3, *shape))
    with jax.default_matmul_precision("highest"):
      logits = model.apply(variables, x).logits
      folded, _ = forward(layers_of(model, variables), x)
      np.testing.assert_allclose(folded, logits, rtol=1e-4, atol=1e-5)  # BatchNorm folding is exact
      targets = jnp.argmax(logits, -1)
      relevance = lrp(model, variables, x, targets)
    # Freshly initialised BN folds to zero biases, so z+ conserves relevance exactly: sum R = logit_target.
    np.testing.assert_allclose(relevance.sum(axis=(1, 2, 3)), np.asarray(logits)[np.arange(3), targets], rtol=1e-3)
    assert relevance.shape == x.shape and float(jnp.min(relevance)) >= -1e-6 * float(jnp.max(jnp.abs(relevance)))
  resnet = build_classifier(ModelConfig(arch="resnet", width=4, blocks=(1,)), 3)
  resnet_variables = jax.eval_shape(lambda: init_variables(resnet, jax.random.PRNGKey(0), (16, 16, 1)))  # not run
  with pytest.raises(ValueError, match="lrp: supports the cnn and vgg classifiers"):
    lrp(resnet, resnet_variables, x[:, :16, :16], jnp.zeros(3, jnp.int32))


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
  np.testing.assert_allclose(jnp.max(e, axis=(1, 2)), 1.0, rtol=1e-6)  # every example and channel spans [0, 1]
  np.testing.assert_allclose(jnp.min(e, axis=(1, 2)), 0.0, atol=1e-7)
  with pytest.raises(ValueError, match="explanation method: expected one of"):
    make_explainer("saliency", model)


# --- GNIME's variants against their formulas, by hand in float64 on a tiny CNN with known weights ---

BN_EPS = 1e-5


def _known_cnn():
  """SmallCNN (2 and 4 channels, 4 features, 3 classes) on 8x8x1 images with fixed float64 weights."""
  model = build_classifier(ModelConfig(arch="cnn", width=2, feature_dim=4), 3)
  variables = init_variables(model, jax.random.PRNGKey(0), (8, 8, 1))
  rng = np.random.default_rng(7)

  def known(path, leaf):
    name = path_name(path)
    if name.endswith("var"):
      return rng.uniform(0.5, 1.5, leaf.shape)
    if name.endswith("scale"):  # one channel's scale may be negative: folding must flip its kernel
      return rng.uniform(-0.5, 1.5, leaf.shape)
    return rng.normal(0.0, 0.5, leaf.shape)

  return model, jax.tree_util.tree_map_with_path(known, variables)


def _conv(x, w):
  """3x3 SAME cross-correlation, HWIO kernel."""
  h, wd = x.shape[1:3]
  xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  return sum(xp[:, dy : dy + h, dx : dx + wd] @ w[dy, dx] for dy in range(3) for dx in range(3))


def _conv_input_grad(s, w, shape):
  """Gradient of ``_conv`` with respect to its input for the output cotangent ``s``."""
  h, wd = shape[1:3]
  gp = np.zeros((shape[0], h + 2, wd + 2, shape[3]))
  for dy in range(3):
    for dx in range(3):
      gp[:, dy : dy + h, dx : dx + wd] += s @ w[dy, dx].T
  return gp[:, 1:-1, 1:-1]


def _windows(x):
  b, h, w, c = x.shape
  return x.reshape(b, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 5, 2, 4).reshape(b, h // 2, w // 2, c, 4)


def _unwindow(x):
  b, h, w, c, _ = x.shape
  return x.reshape(b, h, w, c, 2, 2).transpose(0, 1, 4, 2, 5, 3).reshape(b, 2 * h, 2 * w, c)


def _up(x):
  return np.repeat(np.repeat(x, 2, axis=1), 2, axis=2)


def _by_hand(v, x):
  """Forward pass of the known CNN in numpy float64: every intermediate the formulas need."""
  p, s = jax.tree.map(np.asarray, v["params"]), jax.tree.map(np.asarray, v["batch_stats"])
  scale = lambda name: p[name]["scale"] / np.sqrt(s[name]["var"] + BN_EPS)
  bn = lambda t, name: (t - s[name]["mean"]) * scale(name) + p[name]["bias"]
  f = {
    "x": x,
    "k0": p["conv0"]["kernel"] * scale("bn0"),
    "k1": p["conv1"]["kernel"] * scale("bn1"),
    "wf": p["fc_feat"]["kernel"] * scale("bn_feat"),
    "wh": p["head"]["fc"]["kernel"],
    "sf": scale("bn_feat"),
  }
  f["h0"] = np.maximum(bn(_conv(x, p["conv0"]["kernel"]), "bn0"), 0)
  f["p0"] = _windows(f["h0"]).max(-1)
  f["a"] = np.maximum(bn(_conv(f["p0"], p["conv1"]["kernel"]), "bn1"), 0)  # the last conv's map, 4x4
  f["p1"] = _windows(f["a"]).max(-1)
  f["flat"] = f["p1"].reshape(len(x), -1)
  f["pre"] = bn(f["flat"] @ p["fc_feat"]["kernel"], "bn_feat")
  f["feat"] = np.maximum(f["pre"], 0)
  f["logits"] = f["feat"] @ f["wh"] + p["head"]["fc"]["bias"]
  return f


def _grad_last_conv(f, targets):
  """d logit_target / dA by hand; max-pool routes each window's gradient to its first maximum (TF's rule)."""
  g = f["wh"][:, targets].T * (f["pre"] > 0) * f["sf"]  # through the head, ReLU and BatchNorm1d
  g = (g @ (f["wf"] / f["sf"]).T).reshape(f["p1"].shape)  # through fc_feat (unfolded) and the flattening
  win = _windows(f["a"])
  first = np.eye(4)[np.argmax(win, axis=-1)]
  return _unwindow(first * g[..., None])


def test_gnime_grad_cam_matches_its_formula_on_the_last_conv_before_pooling():
  model, v = _known_cnn()
  x = np.random.default_rng(1).uniform(size=(5, 8, 8, 1))
  with jax.enable_x64(True):
    f = _by_hand(v, x)
    np.testing.assert_allclose(model.apply(v, jnp.asarray(x)).logits, f["logits"], rtol=1e-10, atol=1e-12)
    targets = np.argmax(f["logits"], -1)  # GNIME explains the max logit
    g = _grad_last_conv(f, targets)
    pooled = g.mean(axis=(0, 1, 2))  # channel weights averaged over batch AND positions
    expected = np.abs((pooled * f["a"]).mean(-1))
    got = explain("gradcam", model, v, jnp.asarray(x), jnp.asarray(targets), variant="gnime")
    assert got.shape == (5, 4, 4)  # the conv's 4x4 map, not the pooled 2x2
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12 * np.abs(expected).max())
    standard = np.maximum(np.einsum("bhwc,bc->bhw", f["a"], g.mean(axis=(1, 2))), 0)
    np.testing.assert_allclose(
      explain("gradcam", model, v, jnp.asarray(x), jnp.asarray(targets)),
      standard,
      rtol=1e-9,
      atol=1e-12 * standard.max(),
    )
    # A pooled block output instead (the former default's kind of map): hidden1 = maxpool(A).
    assert explain("gradcam", model, v, jnp.asarray(x), jnp.asarray(targets), layer=1).shape == (5, 2, 2)


def test_gnime_grad_cam_pools_channel_weights_over_the_real_examples_only():
  model, v = _known_cnn()
  x = np.random.default_rng(2).uniform(size=(3, 8, 8, 1))
  padded = np.concatenate([x, np.zeros((2, 8, 8, 1))])  # a fixed-size batch's zero padding
  mask = np.array([1, 1, 1, 0, 0], np.float64)
  with jax.enable_x64(True):
    targets = jnp.asarray(np.argmax(_by_hand(v, padded)["logits"], -1))
    alone = explain("gradcam", model, v, jnp.asarray(x), targets[:3], variant="gnime")
    masked = explain("gradcam", model, v, jnp.asarray(padded), targets, variant="gnime", mask=jnp.asarray(mask))
    unmasked = explain("gradcam", model, v, jnp.asarray(padded), targets, variant="gnime")
    np.testing.assert_allclose(masked[:3], alone, rtol=1e-12, atol=1e-15)
    assert not np.allclose(unmasked[:3], alone, rtol=1e-6)  # the fault: padding entered the weights
    fn = make_explainer("gradcam", model, variant="gnime")  # the jitted form takes the mask too
    np.testing.assert_allclose(fn(v, jnp.asarray(padded), targets, None, jnp.asarray(mask))[:3], alone, rtol=1e-12)


def test_gnime_lrp_matches_the_reference_rules():
  """Relevance from all logits; z+ with +eps on dense and conv layers; max-pools as average pools;
  the first conv sees ones instead of the pixels (WSP-LAB/GNIME scripts/xai.py)."""
  model, v = _known_cnn()
  x = np.random.default_rng(3).uniform(size=(4, 8, 8, 1))
  eps = 1e-9
  with jax.enable_x64(True):
    f = _by_hand(v, x)
    pos = lambda w: np.maximum(w, 0)

    def dense(a, w, r):
      return a * ((r / (a @ pos(w) + eps)) @ pos(w).T)

    def avg_pool(a, r):
      return a * _up(r / (_windows(a).mean(-1) + eps)) / 4

    def conv(a, w, r):
      return a * _conv_input_grad(r / (_conv(a, pos(w)) + eps), pos(w), a.shape)

    r = f["logits"]  # the whole logit vector
    r = dense(f["feat"], f["wh"], r)
    r = dense(f["flat"], f["wf"], r).reshape(f["p1"].shape)
    r = conv(f["p0"], f["k1"], avg_pool(f["a"], r))
    r = conv(np.ones_like(x), f["k0"], avg_pool(f["h0"], r))  # first layer: ones
    targets = jnp.asarray(np.argmax(f["logits"], -1))
    got = explain("lrp", model, v, jnp.asarray(x), targets, variant="gnime")
    np.testing.assert_allclose(got, r, rtol=1e-9, atol=1e-12 * np.abs(r).max())
    # The standard variant starts from the target logit only: a different map.
    assert not np.allclose(explain("lrp", model, v, jnp.asarray(x), targets), r, rtol=1e-3)
