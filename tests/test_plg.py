"""PLG-MI's conditional GAN: conditional BatchNorm, spectral normalisation, losses, pseudo-labels, training."""

import dataclasses
import itertools

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


def test_max_margin_is_one_function_shared_with_the_attack_terms():
  from jaxmi.attacks.terms import max_margin

  assert gan_train.max_margin is max_margin is plg.max_margin
  logits = jnp.array([[1.0, 3.0, 2.0], [5.0, -1.0, 0.0]])
  labels = jnp.array([1, 2])
  # -3 + 2 = -1; -0 + 5 = 5.
  np.testing.assert_allclose(jax.vmap(max_margin)(logits, labels), [-1.0, 5.0])


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
  assert a.output == "tanh"  # the default: the raw tanh output, as the reference
  assert images.shape == (3, 32, 32, 1) and float(images.min()) >= -1 and float(images.max()) <= 1
  assert (tmp_path / "full" / "samples.png").exists() and (tmp_path / "full" / "pseudo_labels.png").exists()
  # A changed PLG field is refused on resume.
  changed = dataclasses.replace(cfg, plg=PLGConfig(top_n=10, inv_weight=0.5))
  with pytest.raises(ConfigError, match="plg.inv_weight"):
    train_gan(changed, tmp_path / "full", splits=splits, progress=False)


def _torch_reference(torch):
  """PyTorch models of the official networks (``models/generators/resnet64.py``, ``resblocks.py``,
  ``models/discriminators/snresnet64.py``, ``resblocks.py``, ``links/conditional_batchnorm.py``) with ``blocks``
  up/down blocks and ``channels`` image channels: what jaxmi's PLG-MI networks must compute."""
  nn, F, sn = torch.nn, torch.nn.functional, torch.nn.utils.spectral_norm
  up = lambda x: F.interpolate(x, size=(2 * x.shape[2], 2 * x.shape[3]), mode="bilinear")

  class CondBN(nn.BatchNorm2d):
    def __init__(self, k, c):
      super().__init__(c, affine=False)
      self.weights, self.biases = nn.Embedding(k, c), nn.Embedding(k, c)

    def forward(self, x, y):
      x = F.batch_norm(x, self.running_mean, self.running_var, None, None, self.training, 0.1, self.eps)
      return self.weights(y)[:, :, None, None] * x + self.biases(y)[:, :, None, None]

  class GenBlock(nn.Module):
    def __init__(self, cin, cout, k):
      super().__init__()
      self.c1, self.c2, self.c_sc = (
        nn.Conv2d(cin, cout, 3, 1, 1),
        nn.Conv2d(cout, cout, 3, 1, 1),
        nn.Conv2d(cin, cout, 1),
      )
      self.b1, self.b2 = CondBN(k, cin), CondBN(k, cout)

    def forward(self, x, y):
      h = self.c1(up(F.relu(self.b1(x, y))))
      return self.c_sc(up(x)) + self.c2(F.relu(self.b2(h, y)))

  class Generator(nn.Module):
    def __init__(self, nf, z_dim, k, blocks, channels):
      super().__init__()
      top = nf * 2**blocks
      self.l1 = nn.Linear(z_dim, top * 16)
      self.blocks = nn.ModuleList([GenBlock(top // 2**i, top // 2 ** (i + 1), k) for i in range(blocks)])
      self.b, self.conv = nn.BatchNorm2d(nf), nn.Conv2d(nf, channels, 1)

    def forward(self, z, y):
      h = self.l1(z).view(z.shape[0], -1, 4, 4)
      for block in self.blocks:
        h = block(h, y)
      return torch.tanh(self.conv(F.relu(self.b(h))))

  class DisBlock(nn.Module):
    def __init__(self, cin, cout, optimized):
      super().__init__()
      self.optimized = optimized
      self.c1 = sn(nn.Conv2d(cin, cout if optimized else cin, 3, 1, 1))
      self.c2 = sn(nn.Conv2d(cout if optimized else cin, cout, 3, 1, 1))
      self.c_sc = sn(nn.Conv2d(cin, cout, 1))

    def forward(self, x):
      if self.optimized:
        return self.c_sc(F.avg_pool2d(x, 2)) + F.avg_pool2d(self.c2(F.relu(self.c1(x))), 2)
      return F.avg_pool2d(self.c_sc(x), 2) + F.avg_pool2d(self.c2(F.relu(self.c1(F.relu(x)))), 2)

  class Discriminator(nn.Module):
    def __init__(self, nf, k, blocks, channels):
      super().__init__()
      widths = [channels] + [nf * 2**i for i in range(blocks + 1)]
      self.blocks = nn.ModuleList([DisBlock(a, b, i == 0) for i, (a, b) in enumerate(itertools.pairwise(widths))])
      self.l6, self.l_y = sn(nn.Linear(widths[-1], 1)), sn(nn.Embedding(k, widths[-1]))

    def forward(self, x, y):
      for block in self.blocks:
        x = block(x)
      h = torch.sum(F.relu(x), dim=(2, 3))
      return self.l6(h)[:, 0] + torch.sum(self.l_y(y) * h, dim=1)

  return Generator, Discriminator


def _load_torch(torch, tg, td, g_params, d_params, d_stats):
  """jaxmi's variables into the torch models (HWIO -> OIHW; a conv's v reordered from (kh, kw, in) to (in, kh, kw))."""
  t = lambda a: torch.tensor(np.asarray(a, np.float64))
  conv = lambda k: t(np.transpose(np.asarray(k), (3, 2, 0, 1)))
  with torch.no_grad():
    tg.l1.weight.copy_(t(g_params["l1"]["kernel"]).T), tg.l1.bias.copy_(t(g_params["l1"]["bias"]))
    for i, block in enumerate(tg.blocks):
      p = g_params[f"block{i + 2}"]
      for n in ("c1", "c2", "c_sc"):
        getattr(block, n).weight.copy_(conv(p[n]["kernel"])), getattr(block, n).bias.copy_(t(p[n]["bias"]))
      for n in ("b1", "b2"):
        (
          getattr(block, n).weights.weight.copy_(t(p[n]["weights"])),
          getattr(block, n).biases.weight.copy_(t(p[n]["biases"])),
        )
    last = len(tg.blocks) + 2
    tg.b.weight.copy_(t(g_params[f"b{last}"]["scale"])), tg.b.bias.copy_(t(g_params[f"b{last}"]["bias"]))
    (
      tg.conv.weight.copy_(conv(g_params[f"conv{last}"]["kernel"])),
      tg.conv.bias.copy_(t(g_params[f"conv{last}"]["bias"])),
    )
    for i, block in enumerate(td.blocks):
      for n in ("c1", "c2", "c_sc"):
        p, s, m = d_params[f"block{i + 1}"][n], d_stats[f"block{i + 1}"][n], getattr(block, n)
        kh, kw, cin, _ = p["kernel"].shape
        m.weight_orig.copy_(conv(p["kernel"])), m.bias.copy_(t(p["bias"])), m.weight_u.copy_(t(s["u"]))
        m.weight_v.copy_(t(np.asarray(s["v"]).reshape(kh, kw, cin).transpose(2, 0, 1).reshape(-1)))
    last = f"l{len(td.blocks) + 1}"
    td.l6.weight_orig.copy_(t(d_params[last]["kernel"]).T), td.l6.bias.copy_(t(d_params[last]["bias"]))
    td.l_y.weight_orig.copy_(t(d_params["l_y"]["embedding"]))
    for m, s in ((td.l6, d_stats[last]), (td.l_y, d_stats["l_y"])):
      m.weight_u.copy_(t(s["u"])), m.weight_v.copy_(t(s["v"]))


@dataclasses.dataclass(frozen=True)
class _LinearTarget:
  """A stand-in target: logits = flattened image @ w."""

  def apply(self, variables, x, train=False):
    logits = x.reshape(x.shape[0], -1) @ variables["w"]
    return ClassifierOutput(logits=logits, features=logits, hidden=())


def test_plg_step_computes_what_the_reference_does():
  """One training step (n_critic discriminator updates, then the generator's) against PyTorch models of the official
  networks and ``train_cgan.py``'s losses, same variables and draws, float64, plain SGD so that every gradient shows.
  The default is the reference's image range (the generator's raw tanh output to the discriminator and the target,
  reals in [0, 1]): a [0, 1] output through (tanh + 1) / 2 collapsed on MNIST (issue 17)."""
  torch = pytest.importorskip("torch")
  Generator, Discriminator = _torch_reference(torch)
  k, z_dim, nf, blocks, batch, n_critic, lr = 3, 8, 2, 1, 4, 2, 0.05
  size = 4 * 2**blocks
  cfg = PLGConfig(augment=False)  # the default image range, which must be the reference's
  g, d = plg.build_plg(k, z_dim=z_dim, num_features=nf, blocks=blocks, channels=1, output=cfg.output)
  g_vars = g.init(jax.random.PRNGKey(0), jnp.zeros((2, z_dim)), jnp.zeros(2, jnp.int32))
  d_vars = d.init(jax.random.PRNGKey(1), jnp.zeros((2, size, size, 1)), jnp.zeros(2, jnp.int32))
  rng = np.random.default_rng(0)
  real = rng.uniform(0, 1, (n_critic, batch, size, size, 1))
  labels = rng.integers(0, k, (n_critic, batch)).astype(np.int32)
  w = rng.normal(0, 0.1, (size * size, k))
  tcfg = GANTrainConfig(batch_size=batch, n_critic=n_critic)
  with jax.enable_x64(True):
    g_vars, d_vars = jax.tree.map(lambda a: np.asarray(a, np.float64), (g_vars, d_vars))  # the step donates its state
    f64 = lambda tree: jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), tree)
    tx = gan_train.optax.sgd(lr)
    step = gan_train.make_plg_step(g, d, _LinearTarget(), (size, size, 1), tx, tx, tcfg, cfg, z_dim)
    state = gan_train.GANState(
      jnp.zeros((), jnp.int32),
      f64(g_vars["params"]),
      f64(g_vars["batch_stats"]),
      f64(d_vars["params"]),
      tx.init(f64(g_vars["params"])),
      tx.init(f64(d_vars["params"])),
      jax.random.PRNGKey(7),
      f64(d_vars["spectral"]),
    )
    # The draws the step makes (jaxmi.train.gan: one key per discriminator update, the last for the generator's).
    keys = jax.random.split(jax.random.fold_in(state.rng, 0), n_critic + 1)

    def draw(key):
      z_key, y_key = jax.random.split(key)
      return np.asarray(jax.random.normal(z_key, (batch, z_dim))), np.asarray(jax.random.randint(y_key, (batch,), 0, k))

    draws = []
    for key in keys[:-1]:
      gen_key, noise_key = jax.random.split(key)
      draws.append((*draw(gen_key), np.asarray(jax.random.uniform(noise_key, (batch, size, size, 1), maxval=1 / 256))))
    g_draw = draw(jax.random.split(keys[-1])[0])
    new, metrics = step(state, {"w": jnp.asarray(w)}, jnp.asarray(real), jnp.asarray(labels))
    new = jax.device_get(new)

  torch.set_default_dtype(torch.float64)
  try:
    t = lambda a: torch.tensor(np.asarray(a))
    nchw = lambda a: t(np.transpose(a, (0, 3, 1, 2)))
    tg, td = Generator(nf, z_dim, k, blocks, 1), Discriminator(nf, k, blocks, 1)
    _load_torch(torch, tg, td, g_vars["params"], d_vars["params"], d_vars["spectral"])
    gen = lambda z, y: tg(t(z), t(y))
    disc = lambda x, y: td(x, t(y))
    g_opt, d_opt = torch.optim.SGD(tg.parameters(), lr), torch.optim.SGD(td.parameters(), lr)
    d_losses = []
    for i, (z, y, noise) in enumerate(draws):
      fake = gen(z, y).detach()
      d_fake, d_real = disc(fake, y), disc(nchw(real[i] + noise), labels[i])  # as the reference: fakes, then reals
      loss = torch.mean(torch.relu(1 - d_real)) + torch.mean(torch.relu(1 + d_fake))
      d_opt.zero_grad(), loss.backward(), d_opt.step()
      d_losses.append(loss.item())
    z, y = g_draw
    fake = gen(z, y)
    adversarial = -torch.mean(disc(fake, y))
    logits = fake.permute(0, 2, 3, 1).reshape(batch, -1) @ t(w)
    others = logits.masked_fill(torch.nn.functional.one_hot(t(y), k).bool(), -np.inf).max(1).values
    inv = torch.mean(others - logits[torch.arange(batch), t(y)])
    g_opt.zero_grad(), (adversarial + cfg.inv_weight * inv).backward(), g_opt.step()
    # Every loss, and every variable after the step; the generator's last BatchNorm runs in float32 (TorchBatchNorm).
    assert float(metrics["d_loss"]) == pytest.approx(np.mean(d_losses), rel=1e-6)
    assert float(metrics["g_loss"]) == pytest.approx(adversarial.item(), rel=1e-6)
    assert float(metrics["inv_loss"]) == pytest.approx(inv.item(), rel=1e-6, abs=1e-7)
    tg2, td2 = Generator(nf, z_dim, k, blocks, 1), Discriminator(nf, k, blocks, 1)
    _load_torch(torch, tg2, td2, new.g_params, new.d_params, new.d_stats)
    for a, b in ((tg, tg2), (td, td2)):
      expected, got = a.state_dict(), b.state_dict()
      for name in expected:
        if "running" not in name and "num_batches" not in name:
          np.testing.assert_allclose(got[name].numpy(), expected[name].numpy(), rtol=1e-5, atol=1e-7, err_msg=name)
  finally:
    torch.set_default_dtype(torch.float32)


@dataclasses.dataclass(frozen=True)
class _IndifferentTarget:
  """A stand-in target whose logits are all 0: the identity term is constant, only the GAN trains."""

  def apply(self, variables, x, train=False):
    logits = jnp.zeros((x.shape[0], variables["k"].shape[0]))
    return ClassifierOutput(logits=logits, features=logits, hidden=())


@pytest.mark.slow  # 10 generator steps of the shipped MNIST networks (~1-2 min with compilation on 2 cores)
def test_shipped_mnist_plg_gan_keeps_its_discriminator_learning(data_root):
  """issue 17: with the generator's output as (tanh + 1) / 2 the discriminator told MNIST's black backgrounds from
  the untrained generator's grey within ~5 generator steps (hinge loss 0.20 over steps 6-10, measured), then its
  loss stayed ~0 (no gradient) and the generator collapsed to one image per class. The default (the reference's raw
  tanh output) measured 1.36 there. Real digits 5-9 with their own labels stand in for the pseudo-labelled set."""
  from pathlib import Path

  from jaxmi import config as config_lib
  from jaxmi.data import load_splits

  cfg = config_lib.load_config(f"{Path(__file__).parents[1] / 'configs' / 'gan.py'}:kind=plg,data=mnist")
  t, k = cfg.train, 5
  public = load_splits(cfg.data).public
  generator, disc = gan_train.build_networks(cfg, k)
  adam = lambda: gan_train.optax.adam(t.learning_rate, b1=t.beta1, b2=t.beta2)
  g_tx, d_tx = adam(), adam()
  state = gan_train.init_gan_state(generator, disc, g_tx, d_tx, cfg.gan, t.seed, conditional=True)
  step = gan_train.make_plg_step(
    generator, disc, _IndifferentTarget(), public.images.shape[1:], g_tx, d_tx, t, cfg.plg, cfg.gan.z_dim
  )
  rng = np.random.default_rng(0)
  losses = []
  for _ in range(10):
    idx = rng.choice(len(public), t.n_critic * t.batch_size, replace=False)
    real = public.images[idx].reshape(t.n_critic, t.batch_size, *public.images.shape[1:])
    labels = (public.labels[idx] % k).astype(np.int32).reshape(t.n_critic, t.batch_size)
    state, metrics = step(state, {"k": jnp.zeros(k)}, jnp.asarray(real), jnp.asarray(labels))
    losses.append(float(metrics["d_loss"]))
  assert np.mean(losses[5:]) > 0.6, losses
