"""GNIME's minimax losses on fixed inputs, image metrics against direct computations, and the
pipeline's adaptive attacker (fresh, trained on the released explanations) on real MNIST."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import stats

from jaxmi.attacks import expmi
from jaxmi.defenses import gnime_run
from jaxmi.defenses.gnime import GNIMEConfig, GNIMENets, gnime_losses, make_gnime_step, release
from jaxmi.attacks.expmi import InverterConfig
from jaxmi.metrics import image as image_metrics
from jaxmi.nets import ModelConfig
from jaxmi.nets.unet import ExpMI, PredMI
from jaxmi.train import ClassifierConfig, OptimConfig, TrainConfig, train_classifier
from jaxmi.data import DataConfig


class Scale(nn.Module):
  """out = w * input: a noise generator with a known output."""

  @nn.compact
  def __call__(self, e, logits):
    return self.param("w", lambda k: jnp.asarray(1.5)) * e


class MeanImage(nn.Module):
  """out = v * mean(explanation) everywhere: an inverter with a known output."""

  @nn.compact
  def __call__(self, e, logits):
    v = self.param("v", lambda k: jnp.asarray(2.0))
    return jnp.broadcast_to(v * jnp.mean(e, axis=(1, 2, 3), keepdims=True), (e.shape[0], 4, 4, 1))


@pytest.fixture
def batch():
  rng = np.random.default_rng(0)
  return (jnp.asarray(rng.uniform(size=(3, 4, 4, 1)), jnp.float32), jnp.zeros((3, 2)),
          jnp.asarray(rng.uniform(size=(3, 4, 4, 1)), jnp.float32))


def expected_losses(e, x, mu, sigma, a, w, v, same_space):
  e, x = np.asarray(e, np.float64), np.asarray(x, np.float64)
  std = (e - mu) / sigma
  pert = w * std
  released = np.clip(pert * sigma + mu, 0, 1)
  invert = lambda inp: np.broadcast_to(v * inp.mean(axis=(1, 2, 3), keepdims=True), x.shape)
  x2 = invert(released)
  x1 = invert(e if same_space else std)
  n = np.mean((pert - std) ** 2) - a * np.mean((x2 - x) ** 2)
  i = np.mean((x2 - x) ** 2) + np.mean((x1 - x) ** 2)
  return n, i


@pytest.mark.parametrize("same_space", [True, False])
def test_minimax_losses_match_the_reference_formulas(batch, same_space):
  e, logits, x = batch
  nets = GNIMENets(Scale(), MeanImage())
  noiser, inverter = nets.noiser.init(jax.random.PRNGKey(0), e, logits), nets.inverter.init(jax.random.PRNGKey(0), e,
                                                                                             logits)
  n, i, parts = gnime_losses(nets, noiser, inverter, e, logits, x, 0.4, 0.3, 100.0, same_space)
  n_ref, i_ref = expected_losses(e, x, 0.4, 0.3, 100.0, 1.5, 2.0, same_space)
  assert float(n) == pytest.approx(n_ref, rel=1e-5) and float(i) == pytest.approx(i_ref, rel=1e-5)
  # The released explanation is clip(destandardised generator output, 0, 1).
  np.testing.assert_allclose(release(nets, noiser, e, logits, 0.4, 0.3),
                             np.clip(1.5 * (np.asarray(e) - 0.4) + 0.4, 0, 1), rtol=1e-6)
  assert float(parts["explanation_mse"]) == pytest.approx(
      np.mean((np.clip(1.5 * (np.asarray(e) - 0.4) + 0.4, 0, 1) - np.asarray(e)) ** 2), rel=1e-5)


def test_one_step_updates_both_players_from_the_same_batch_with_their_own_losses(batch):
  e, logits, x = batch
  nets = GNIMENets(Scale(), MeanImage())
  tx = optax.sgd(1e-3)
  init = lambda m: m.init(jax.random.PRNGKey(0), e, logits)
  from jaxmi.defenses.gnime import GNIMEState
  state = GNIMEState(init(nets.noiser), init(nets.inverter), tx.init(init(nets.noiser)), tx.init(init(nets.inverter)))
  new, metrics = make_gnime_step(nets, tx, 0.4, 0.3, 100.0, True)(state, e, logits, x)
  # Finite differences of the closed forms: the generator descends N_loss THROUGH the inverter,
  # the inverter descends I_loss with the released explanation as data.
  h = 1e-3
  dn_dw = (expected_losses(e, x, .4, .3, 100., 1.5 + h, 2., True)[0] -
           expected_losses(e, x, .4, .3, 100., 1.5 - h, 2., True)[0]) / (2 * h)
  di_dv = (expected_losses(e, x, .4, .3, 100., 1.5, 2. + h, True)[1] -
           expected_losses(e, x, .4, .3, 100., 1.5, 2. - h, True)[1]) / (2 * h)
  assert float(new.noiser["params"]["w"]) == pytest.approx(1.5 - 1e-3 * dn_dw, rel=1e-4)
  assert float(new.inverter["params"]["v"]) == pytest.approx(2.0 - 1e-3 * di_dv, rel=1e-4)
  assert abs(dn_dw) > 0.01  # the inversion term really reaches the generator


def test_image_metrics_match_direct_computations():
  rng = np.random.default_rng(0)
  a = rng.uniform(size=(2, 16, 16, 1)).astype(np.float32)
  b = np.clip(a + 0.1 * rng.normal(size=a.shape), 0, 1).astype(np.float32)
  mse = np.mean((a - b) ** 2, axis=(1, 2, 3))
  np.testing.assert_allclose(image_metrics.psnr(a, b), 10 * np.log10(1 / mse), rtol=1e-5)
  # SSIM: an 11x11 Gaussian window (sigma 1.5), every VALID position, written out directly.
  g = np.exp(-((np.arange(11) - 5) ** 2) / (2 * 1.5**2))
  win = np.outer(g, g) / np.outer(g, g).sum()
  c1, c2 = 0.01**2, 0.03**2
  expected = []
  for n in range(2):
    vals = []
    for i in range(6):
      for j in range(6):
        pa, pb = a[n, i:i + 11, j:j + 11, 0].astype(np.float64), b[n, i:i + 11, j:j + 11, 0].astype(np.float64)
        ma, mb = (win * pa).sum(), (win * pb).sum()
        va, vb = (win * pa * pa).sum() - ma**2, (win * pb * pb).sum() - mb**2
        cov = (win * pa * pb).sum() - ma * mb
        vals.append((2 * ma * mb + c1) * (2 * cov + c2) / ((ma**2 + mb**2 + c1) * (va + vb + c2)))
    expected.append(np.mean(vals))
  np.testing.assert_allclose(image_metrics.ssim(a, b), expected, rtol=1e-4)
  assert float(image_metrics.ssim(a, a)[0]) == pytest.approx(1.0, abs=1e-5)
  for n in range(2):
    rho = stats.spearmanr(a[n].ravel(), b[n].ravel()).statistic
    assert float(image_metrics.spearman(a, b)[n]) == pytest.approx(rho, abs=1e-4)


def test_inverter_networks_map_any_explanation_size_to_the_image():
  for e_side, out in [(32, 32), (8, 32), (64, 64), (4, 64)]:
    net = ExpMI(out, 1, width_divisor=16)
    e, y = jnp.zeros((2, e_side, e_side, 1)), jnp.zeros((2, 10))
    assert net.apply(net.init(jax.random.PRNGKey(0), e, y), e, y).shape == (2, out, out, 1)
  pred = PredMI(32, 3, width_divisor=16)
  assert pred.apply(pred.init(jax.random.PRNGKey(0), y), y).shape == (2, 32, 32, 3)


def test_pipeline_trains_a_fresh_attacker_on_the_released_explanations(tmp_path, cache_root, data_root, monkeypatch):
  data = DataConfig(dataset="mnist", image_size=32, channels=1, private_ids=tuple(range(10)), public_ids=(),
                    test_fraction=0.5, max_per_class=80)
  quiet = dict(progress=False, log=lambda *a: None)
  for name, role, arch in [("t", "target", ModelConfig(arch="cnn", width=8, feature_dim=32)),
                           ("ev", "evaluation", ModelConfig(arch="resnet", width=8, blocks=(1,)))]:
    train_classifier(ClassifierConfig(name=name, role=role, workdir=str(tmp_path / name), data=data, model=arch,
                                      optim=OptimConfig(name="sgd", learning_rate=0.05, momentum=0.9),
                                      train=TrainConfig(epochs=4, batch_size=50)), **quiet)
  calls = []
  real_train = expmi.train_inverter

  def spy(kind, explanations, logits, images, cfg, **kw):
    module, params, info = real_train(kind, explanations, logits, images, cfg, **kw)
    fresh = module.init(jax.random.PRNGKey(cfg.seed), *((logits[:2],) if kind == "predmi" else
                                                       (explanations[:2], logits[:2])))
    calls.append({"kind": kind, "explanations": np.asarray(explanations), "name": kw["name"], "fresh": fresh,
                  "params": params})
    return module, params, info

  monkeypatch.setattr(gnime_run, "train_inverter", spy)
  cfg = gnime_run.GNIMERunConfig(name="g", workdir=str(tmp_path / "g"), target=str(tmp_path / "t"),
                                 evaluator=str(tmp_path / "ev"), method="grad",
                                 gnime=GNIMEConfig(epochs=2, batch_size=64, width_divisor=16),
                                 attacker=InverterConfig(epochs=2, batch_size=64, width_divisor=16), rows=3)
  results = gnime_run.run_gnime(cfg, **quiet)
  assert [c["name"] for c in calls] == ["attacker vs none", "attacker vs rnd", "attacker vs gnime", "attacker vs predmi"]
  clean = calls[0]["explanations"]
  # The GNIME attacker learns from GNIME's releases (not the clean maps), RND's from budget-matched noise.
  budget = results["gnime_explanation_mse_budget"]
  assert not np.allclose(calls[2]["explanations"], clean)
  assert np.mean((calls[1]["explanations"] - clean) ** 2) == pytest.approx(budget, rel=0.15)
  assert calls[2]["explanations"].min() >= 0 and calls[2]["explanations"].max() <= 1   # clipped release
  # Each attacker starts from its own fresh initialisation and moves away from it.
  for c in calls:
    assert not all(np.allclose(a, b) for a, b in zip(jax.tree.leaves(c["fresh"]), jax.tree.leaves(c["params"])))
  for s in gnime_run.SCENARIOS:
    sc = results["scenarios"][s]
    assert 0 <= sc["tca"] <= 1 and np.isfinite(sc["ssim"]) and np.isfinite(sc["image_mse"])
  assert (tmp_path / "g" / "rows.png").stat().st_size > 0 and (tmp_path / "g" / "results.csv").exists()
  with pytest.raises(Exception, match="results.json: exists"):
    gnime_run.run_gnime(cfg, **quiet)
