"""PLG-MI's conditional GAN: conditional BatchNorm, spectral normalisation, losses, pseudo-labels, training."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmi.data import ArraySplit
from jaxmi.errors import ConfigError, Interrupted
from jaxmi.nets import ClassifierOutput, plg
from jaxmi.nets.gan import GANConfig
from jaxmi.train import gan as gan_train
from jaxmi.train.gan import GANExperimentConfig, GANTrainConfig, PLGConfig, load_gan, train_gan
from jaxmi.train.pseudo_labels import select_pseudo_labels, top_n_per_class


def test_conditional_batch_norm_matches_a_direct_computation():
  rng = np.random.default_rng(0)
  x = rng.normal(2.0, 3.0, size=(6, 3, 2, 4))
  labels = np.array([0, 2, 1, 2, 0, 1])
  bn = plg.CategoricalConditionalBatchNorm(3)
  variables = bn.init(jax.random.PRNGKey(0), jnp.asarray(x, jnp.float32), labels, train=False)
  gamma, beta = rng.normal(size=(3, 4)), rng.normal(size=(3, 4))
  variables = {
    "params": {"weights": jnp.asarray(gamma, jnp.float32), "biases": jnp.asarray(beta, jnp.float32)},
    "batch_stats": variables["batch_stats"],
  }
  out, mutated = bn.apply(variables, jnp.asarray(x, jnp.float32), labels, train=True, mutable=["batch_stats"])
  mean, var = x.mean((0, 1, 2)), x.var((0, 1, 2))
  expected = gamma[labels][:, None, None] * (x - mean) / np.sqrt(var + 1e-5) + beta[labels][:, None, None]
  np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)
  # PyTorch's running statistics: momentum 0.1, unbiased variance.
  stats = mutated["batch_stats"]
  np.testing.assert_allclose(stats["mean"], 0.1 * mean, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(stats["var"], 0.9 + 0.1 * x.var((0, 1, 2), ddof=1), rtol=1e-5)
  # Eval mode normalises with the running statistics.
  ev = bn.apply({**variables, "batch_stats": stats}, jnp.asarray(x, jnp.float32), labels, train=False)
  rm, rv = np.asarray(stats["mean"], np.float64), np.asarray(stats["var"], np.float64)
  expected = gamma[labels][:, None, None] * (x - rm) / np.sqrt(rv + 1e-5) + beta[labels][:, None, None]
  np.testing.assert_allclose(ev, expected, rtol=1e-4, atol=1e-4)


def test_spectral_norm_power_iteration_finds_the_largest_singular_value_and_updates_only_in_training():
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(2, 6)), jnp.float32)
  layer = plg.SNDense(5)
  variables = layer.init(jax.random.PRNGKey(0), x, train=False)
  w = np.asarray(variables["params"]["kernel"], np.float64)  # [in, out]; torch's matrix is w.T
  top = np.linalg.svd(w.T, compute_uv=False)[0]
  # Eval mode: the stored vectors, untouched.
  _, mutated = layer.apply(variables, x, train=False, mutable=["spectral"])
  for k in ("u", "v"):
    np.testing.assert_array_equal(np.asarray(mutated["spectral"][k]), np.asarray(variables["spectral"][k]))
  stats = variables["spectral"]
  first = layer.apply(variables, x, train=True, mutable=["spectral"])[1]["spectral"]
  assert not np.allclose(np.asarray(first["v"]), np.asarray(stats["v"]))  # a training forward iterates
  for _ in range(200):  # one power iteration per training forward
    stats = layer.apply({**variables, "spectral": stats}, x, train=True, mutable=["spectral"])[1]["spectral"]
  u, v = np.asarray(stats["u"], np.float64), np.asarray(stats["v"], np.float64)
  assert u @ w.T @ v == pytest.approx(top, rel=1e-5)
  # The layer uses W / sigma: its spectral norm is 1 (eval mode with the converged vectors).
  out = layer.apply({**variables, "spectral": stats}, x, train=False)
  b = np.asarray(variables["params"]["bias"], np.float64)
  np.testing.assert_allclose(out, np.asarray(x, np.float64) @ (w / top) + b, rtol=1e-4, atol=1e-5)


def test_spectral_norm_of_a_conv_uses_the_out_by_fan_in_matrix():
  layer = plg.SNConv(4, 3)
  x = jnp.ones((1, 5, 5, 3))
  variables = layer.init(jax.random.PRNGKey(2), x, train=False)
  w = np.asarray(variables["params"]["kernel"], np.float64).reshape(-1, 4).T  # [out, kh*kw*in]
  stats = variables["spectral"]
  assert stats["u"].shape == (4,) and stats["v"].shape == (27,)
  for _ in range(100):
    stats = layer.apply({**variables, "spectral": stats}, x, train=True, mutable=["spectral"])[1]["spectral"]
  sigma = np.asarray(stats["u"], np.float64) @ w @ np.asarray(stats["v"], np.float64)
  assert sigma == pytest.approx(np.linalg.svd(w, compute_uv=False)[0], rel=1e-5)


def test_hinge_losses_on_fixed_inputs():
  d_fake, d_real = jnp.array([-2.0, 0.5, -0.5]), jnp.array([2.0, 0.0, 0.5])
  # relu(1 - real) = [0, 1, 0.5] -> 0.5; relu(1 + fake) = [0, 1.5, 0.5] -> 2/3.
  assert float(gan_train.hinge_discriminator_loss(d_fake, d_real)) == pytest.approx(0.5 + 2.0 / 3.0)
  assert float(gan_train.hinge_generator_loss(d_fake)) == pytest.approx(2.0 / 3.0)


def test_max_margin_is_the_attack_terms_formula():
  from jaxmi.attacks.terms import max_margin

  logits = jnp.array([[1.0, 3.0, 2.0], [5.0, -1.0, 0.0]])
  labels = jnp.array([1, 2])
  # -3 + 2 = -1; -0 + 5 = 5.
  np.testing.assert_allclose(jax.vmap(gan_train.max_margin)(logits, labels), [-1.0, 5.0])
  np.testing.assert_allclose(jax.vmap(gan_train.max_margin)(logits, labels), jax.vmap(max_margin)(logits, labels))


def test_top_n_per_class_on_a_hand_made_case():
  # 5 images x 3 classes; image 2 is the best of classes 0 and 1: it is chosen for both, as in the reference.
  scores = jnp.log(
    jnp.array(
      [
        [0.5, 0.3, 0.2],
        [0.1, 0.1, 0.8],
        [0.6, 0.35, 0.05],
        [0.2, 0.2, 0.6],
        [0.3, 0.34, 0.36],
      ]
    )
  )
  indices, values = top_n_per_class(scores, 2)
  np.testing.assert_array_equal(indices, [[2, 0], [2, 4], [1, 3]])
  np.testing.assert_allclose(np.exp(values), [[0.6, 0.5], [0.35, 0.34], [0.8, 0.6]], rtol=1e-6)


@dataclasses.dataclass(frozen=True)
class _MeanTarget:
  """A stand-in target: logits = per-class weights x the image's mean brightness."""

  def apply(self, variables, x, train=False):
    m = jnp.mean(x, axis=(1, 2, 3))
    return ClassifierOutput(logits=m[:, None] * variables["w"][None, :], features=m[:, None], hidden=())


def test_select_pseudo_labels_pads_chunks_and_labels_class_major():
  brightness = np.array([10, 250, 40, 200, 120, 90, 30], np.uint8)
  images = np.broadcast_to(brightness[:, None, None, None], (7, 4, 4, 1)).copy()
  public = ArraySplit(images, np.zeros(7, np.int32), np.arange(7, dtype=np.int32) + 100)
  # Class 0 prefers dark images, class 1 bright ones.
  target = dataclasses.make_dataclass("T", ["module", "variables", "image_shape"])(
    _MeanTarget(), {"w": jnp.array([-8.0, 8.0])}, (4, 4, 1)
  )
  split, info = select_pseudo_labels(target, public, 3, chunk=3)  # 7 images in chunks of 3: one padded row
  np.testing.assert_array_equal(split.identities, [0, 6, 2, 1, 3, 4])
  np.testing.assert_array_equal(split.labels, [0, 0, 0, 1, 1, 1])
  np.testing.assert_array_equal(split.images[:, 0, 0, 0], brightness[[0, 6, 2, 1, 3, 4]])
  assert info["pseudo_labelled_images"] == 6 and info["distinct_public_images"] == 6
  with pytest.raises(ConfigError, match="plg.top_n"):
    select_pseudo_labels(target, public, 8)


def test_projection_discriminator_is_linear_plus_the_class_embedding_projection():
  disc = plg.SNResNetProjectionDiscriminator(3, num_features=2, blocks=2)
  x = jax.random.uniform(jax.random.PRNGKey(0), (4, 16, 16, 1), minval=-1, maxval=1)
  y = jnp.array([0, 2, 1, 2])
  variables = disc.init(jax.random.PRNGKey(1), x, y)
  # A few training forwards so that the stored vectors are meaningful.
  stats = variables["spectral"]
  for _ in range(3):
    stats = disc.apply({**variables, "spectral": stats}, x, y, train=True, mutable=["spectral"])[1]["spectral"]
  v = {**variables, "spectral": stats}
  out, inter = disc.apply(v, x, y, capture_intermediates=True)
  h = np.asarray(jnp.sum(jax.nn.relu(inter["intermediates"]["block3"]["__call__"][0]), axis=(1, 2)), np.float64)
  assert h.shape == (4, 8)

  def sn(w, s):  # eval mode: W / (u^T W v) with the stored vectors
    return w / (np.asarray(s["u"], np.float64) @ w @ np.asarray(s["v"], np.float64))

  p = v["params"]
  w6 = sn(np.asarray(p["l4"]["kernel"], np.float64).T, stats["l4"])  # [1, 8]
  emb = sn(np.asarray(p["l_y"]["embedding"], np.float64), stats["l_y"])  # [3, 8]
  expected = h @ w6[0] + float(p["l4"]["bias"][0]) + np.sum(emb[np.asarray(y)] * h, axis=1)
  np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)


def test_generator_is_class_conditional_and_its_output_modes():
  kw = {"z_dim": 8, "num_features": 2, "blocks": 2, "channels": 1}
  g_unit, _ = plg.build_plg(3, **kw)
  g_tanh, _ = plg.build_plg(3, output="tanh", **kw)
  z = jax.random.normal(jax.random.PRNGKey(0), (2, 8))
  y = jnp.array([0, 1])
  variables = g_unit.init(jax.random.PRNGKey(1), z, y)
  # Distinct per-class scales: the class changes the image.
  params = jax.tree.map(lambda a: a, variables["params"])
  params["block2"]["b1"]["weights"] = params["block2"]["b1"]["weights"].at[1].set(3.0)
  v = {**variables, "params": params}
  unit = g_unit.apply(v, z, y, train=True, mutable=["batch_stats"])[0]
  raw = g_tanh.apply(v, z, y, train=True, mutable=["batch_stats"])[0]
  assert unit.shape == (2, 16, 16, 1)
  np.testing.assert_allclose(unit, (raw + 1) / 2, rtol=1e-6, atol=1e-6)
  same_z = jnp.tile(z[:1], (2, 1))
  imgs = g_unit.apply(v, same_z, y, train=False)
  assert float(jnp.max(jnp.abs(imgs[0] - imgs[1]))) > 1e-3


def test_bilinear_upsampling_is_pytorch_align_corners_false():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 5, 2))
  # F.interpolate(scale 2, bilinear, align_corners=False) = half-pixel-centre resize with edge clamping.
  np.testing.assert_allclose(plg.upsample2x(x), jax.image.resize(x, (2, 6, 10, 2), "bilinear"), atol=1e-6)
  np.testing.assert_array_equal(plg.upsample2x(x, "nearest")[:, ::2, ::2], x)


def test_gan_state_keeps_gmi_checkpoint_layout():
  state = gan_train.GANState(*(jnp.zeros(()) for _ in range(7)))
  assert "d_stats" not in state.as_dict() and state.d_stats == {}
  assert gan_train.GANState.from_dict(state.as_dict()).d_stats == {}
  with_stats = dataclasses.replace(state, d_stats={"u": jnp.ones(2)})
  assert "d_stats" in with_stats.as_dict()


def _plg_config(target, **train):
  return GANExperimentConfig(
    name="plg",
    kind="plg",
    target=str(target),
    data=dataclasses.replace(GANExperimentConfig().data, image_size=32, channels=1),
    gan=GANConfig(z_dim=8, base_width=2, stages=3, channels=1, upsample="bilinear"),
    train=GANTrainConfig(
      **{"epochs": 2, "batch_size": 8, "n_critic": 2, "log_every": 1, "checkpoint_every": 2, "sample_count": 6, **train}
    ),
    plg=PLGConfig(top_n=10),
  )


def test_plg_config_errors_before_anything_is_written(tmp_path):
  cfg = _plg_config(tmp_path / "no_target")
  with pytest.raises(ConfigError, match="gan.upsample"):
    train_gan(dataclasses.replace(cfg, gan=GANConfig(z_dim=8, base_width=2, stages=3, channels=1)), tmp_path / "a")
  with pytest.raises(ConfigError, match="target"):
    train_gan(dataclasses.replace(cfg, target=""), tmp_path / "a")
  with pytest.raises(ConfigError, match="plg.top_n"):
    train_gan(dataclasses.replace(cfg, plg=PLGConfig(top_n=0)), tmp_path / "a")
  assert not (tmp_path / "a").exists()


@pytest.mark.slow  # three runs, each compiling the PLG step (~200 s on a loaded 2-core CPU)
def test_plg_training_resumes_exactly_compiles_once_and_loads(tiny, tmp_path, monkeypatch):
  root, splits = tiny
  cfg = _plg_config(root / "target")
  # spe = (3 classes x 10 // 8) // 2 = 1 generator step per epoch; 3 epochs.
  cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=3))
  steps = []
  make = gan_train.make_plg_step

  def spy(*a, **k):
    step = make(*a, **k)
    steps.append(step)
    return step

  monkeypatch.setattr(gan_train, "make_plg_step", spy)
  full = train_gan(cfg, tmp_path / "full", splits=splits, progress=False)
  assert full["generator_steps"] == 3 and full["pseudo_labels"]["pseudo_labelled_images"] == 30
  assert steps[0]._cache_size() == 1
  with pytest.raises(Interrupted):
    train_gan(cfg, tmp_path / "resumed", splits=splits, progress=False, stop_at_step=2)
  assert train_gan(cfg, tmp_path / "resumed", splits=splits, progress=False)["resumed_from_step"] == 2
  a, b = load_gan(tmp_path / "full"), load_gan(tmp_path / "resumed")
  assert a.kind == "plg" and a.num_classes == 3 and a.conditional and set(a.d_variables) == {"params", "spectral"}
  for x, y in zip(jax.tree.leaves((a.g_variables, a.d_variables)), jax.tree.leaves((b.g_variables, b.d_variables))):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  images = a.generator.apply(a.g_variables, jnp.zeros((3, 8)), jnp.arange(3), train=False)
  assert images.shape == (3, 32, 32, 1) and float(images.min()) >= 0 and float(images.max()) <= 1
  assert (tmp_path / "full" / "samples.png").exists() and (tmp_path / "full" / "pseudo_labels.png").exists()
  # A changed PLG field is refused on resume.
  changed = dataclasses.replace(cfg, plg=PLGConfig(top_n=10, inv_weight=0.5))
  with pytest.raises(ConfigError, match="plg.inv_weight"):
    train_gan(changed, tmp_path / "full", splits=splits, progress=False)
