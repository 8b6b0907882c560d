"""GNIME's minimax losses on fixed inputs, image metrics against direct computations, ExpMI/PredMI
against the reference's layer list, and the pipeline on real MNIST: its adaptive attacker (fresh,
trained on the released explanations), resuming after interruptions, NaN and bad-size faults."""

import dataclasses
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import stats

from jaxmi import cli
from jaxmi.attacks import expmi
from jaxmi.experiments import gnime as gnime_run
from jaxmi.defenses.gnime import GNIMEConfig, GNIMENets, gnime_losses, make_gnime_step, release, train_gnime
from jaxmi.errors import ConfigError, Interrupted, NonFiniteError
from jaxmi.attacks.expmi import InverterConfig
from jaxmi.metrics import image as image_metrics
from jaxmi.nets import ModelConfig
from jaxmi.nets.unet import ExpMI, PredMI
from jaxmi.train import ClassifierConfig, OptimConfig, TrainConfig, load_classifier, train_classifier
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
  """float64 inputs, used under ``jax.enable_x64``: these tests check formulas, and n = mse - a * mse cancels
  (a = 100), which float32 rounds differently on different CPUs."""
  rng = np.random.default_rng(0)
  with jax.enable_x64(True):
    yield (
      jnp.asarray(rng.uniform(size=(3, 4, 4, 1)), jnp.float64),
      jnp.zeros((3, 2), jnp.float64),
      jnp.asarray(rng.uniform(size=(3, 4, 4, 1)), jnp.float64),
    )


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
  noiser, inverter = (
    nets.noiser.init(jax.random.PRNGKey(0), e, logits),
    nets.inverter.init(jax.random.PRNGKey(0), e, logits),
  )
  n, i, parts = gnime_losses(nets, noiser, inverter, e, logits, x, 0.4, 0.3, 100.0, same_space)
  n_ref, i_ref = expected_losses(e, x, 0.4, 0.3, 100.0, 1.5, 2.0, same_space)
  assert n.dtype == jnp.float64
  assert float(n) == pytest.approx(n_ref, rel=1e-10) and float(i) == pytest.approx(i_ref, rel=1e-10)
  # The released explanation is clip(destandardised generator output, 0, 1).
  np.testing.assert_allclose(
    release(nets, noiser, e, logits, 0.4, 0.3), np.clip(1.5 * (np.asarray(e) - 0.4) + 0.4, 0, 1), rtol=1e-6
  )
  assert float(parts["explanation_mse"]) == pytest.approx(
    np.mean((np.clip(1.5 * (np.asarray(e) - 0.4) + 0.4, 0, 1) - np.asarray(e)) ** 2), rel=1e-5
  )


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
  dn_dw = (
    expected_losses(e, x, 0.4, 0.3, 100.0, 1.5 + h, 2.0, True)[0]
    - expected_losses(e, x, 0.4, 0.3, 100.0, 1.5 - h, 2.0, True)[0]
  ) / (2 * h)
  di_dv = (
    expected_losses(e, x, 0.4, 0.3, 100.0, 1.5, 2.0 + h, True)[1]
    - expected_losses(e, x, 0.4, 0.3, 100.0, 1.5, 2.0 - h, True)[1]
  ) / (2 * h)
  # Compare the steps themselves (a tolerance on w ~ 1.5 would exceed the 1e-3 * gradient update); central
  # differences with h = 1e-3 are accurate to ~h^2 relative.
  assert (1.5 - float(new.noiser["params"]["w"])) / 1e-3 == pytest.approx(dn_dw, rel=1e-4)
  assert (2.0 - float(new.inverter["params"]["v"])) / 1e-3 == pytest.approx(di_dv, rel=1e-4)
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
        pa, pb = a[n, i : i + 11, j : j + 11, 0].astype(np.float64), b[n, i : i + 11, j : j + 11, 0].astype(np.float64)
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
    # Shapes only: traced, not run (running the 64-px nets op by op took ~30 s of CPU).
    assert jax.eval_shape(lambda: net.apply(net.init(jax.random.PRNGKey(0), e, y), e, y)).shape == (2, out, out, 1)
  pred = PredMI(32, 3, width_divisor=16)
  assert jax.eval_shape(lambda: pred.apply(pred.init(jax.random.PRNGKey(0), y), y)).shape == (2, 32, 32, 3)


# Kernel shapes of WSP-LAB/GNIME scripts/models.py, in Keras layer order (biases: the last dimension).
# ExpMI(input_shape, output_shape, bottleneck_size=2048, with_conf=True, num_of_classes):
REFERENCE_EXPMI = {
  # MNIST grad/LRP: ExpMI((32,32,1), (32,32,1), num_of_classes=10), the attacker and GNIME's inverter
  ((32, 32, 1), (32, 32, 1), 10): [
    ("enc32", (3, 3, 1, 64)),
    ("enc16", (3, 3, 64, 128)),
    ("enc8", (3, 3, 128, 256)),
    ("enc4", (3, 3, 256, 512)),
    ("enc_dense", (2048, 64)),
    ("bottleneck", (64 + 32 * 32 + 10, 512)),
    ("dec4", (3, 3, 512 + 512, 256)),
    ("dec8", (3, 3, 256 + 256, 128)),
    ("dec16", (3, 3, 128 + 128, 64)),
    ("out", (3, 3, 64 + 64, 1)),
  ],
  # MNIST Grad-CAM inverter: ExpMI((16,16,1), (32,32,1)); no skip is left for the 32-px output
  ((16, 16, 1), (32, 32, 1), 10): [
    ("enc16", (3, 3, 1, 128)),
    ("enc8", (3, 3, 128, 256)),
    ("enc4", (3, 3, 256, 512)),
    ("enc_dense", (2048, 64)),
    ("bottleneck", (64 + 16 * 16 + 10, 512)),
    ("dec4", (3, 3, 1024, 256)),
    ("dec8", (3, 3, 512, 128)),
    ("dec16", (3, 3, 256, 64)),
    ("out", (3, 3, 64, 1)),
  ],
  # GNIME's Grad-CAM noise generator: ExpMI((16,16,1), (16,16,1))
  ((16, 16, 1), (16, 16, 1), 10): [
    ("enc16", (3, 3, 1, 128)),
    ("enc8", (3, 3, 128, 256)),
    ("enc4", (3, 3, 256, 512)),
    ("enc_dense", (2048, 64)),
    ("bottleneck", (64 + 16 * 16 + 10, 512)),
    ("dec4", (3, 3, 1024, 256)),
    ("dec8", (3, 3, 512, 128)),
    ("out", (3, 3, 128 + 128, 1)),
  ],
  # CelebA grad/LRP: ExpMI((128,128,3), (128,128,3), num_of_classes=1000)
  ((128, 128, 3), (128, 128, 3), 1000): [
    ("enc128", (3, 3, 3, 16)),
    ("enc64", (3, 3, 16, 32)),
    ("enc32", (3, 3, 32, 64)),
    ("enc16", (3, 3, 64, 128)),
    ("enc8", (3, 3, 128, 256)),
    ("enc4", (3, 3, 256, 512)),
    ("enc_dense", (2048, 64)),
    ("bottleneck", (64 + 128 * 128 * 3 + 1000, 512)),
    ("dec4", (3, 3, 1024, 256)),
    ("dec8", (3, 3, 512, 128)),
    ("dec16", (3, 3, 256, 64)),
    ("dec32", (3, 3, 128, 32)),
    ("dec64", (3, 3, 64, 16)),
    ("out", (3, 3, 32, 3)),
  ],
}
REFERENCE_PREDMI = {
  ((32, 32, 1), 10): [  # predmi_mnist (predmi_cifar10: the same with 3 output channels)
    ("dense", (10, 1024)),
    ("dec4", (3, 3, 1024, 1024)),
    ("dec8", (3, 3, 1024, 512)),
    ("dec16", (3, 3, 512, 256)),
    ("out", (3, 3, 256, 1)),
  ],
  ((128, 128, 3), 1000): [  # predmi_celeba
    ("dense", (1000, 1024)),
    ("dec4", (3, 3, 1024, 1024)),
    ("dec8", (3, 3, 1024, 512)),
    ("dec16", (3, 3, 512, 256)),
    ("dec32", (3, 3, 256, 128)),
    ("dec64", (3, 3, 128, 64)),
    ("out", (3, 3, 64, 3)),
  ],
}


def _kernels(module, *inputs):
  params = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), *inputs))["params"]
  for name, layer in params.items():
    assert layer["bias"].shape == layer["kernel"].shape[-1:], name
  return {name: tuple(layer["kernel"].shape) for name, layer in params.items()}


def test_expmi_and_predmi_have_the_reference_layers_at_full_width_and_a_quarter_at_width_divisor_4():
  for (e_shape, out_shape, k), layers in REFERENCE_EXPMI.items():
    inputs = (jnp.zeros((1, *e_shape)), jnp.zeros((1, k)))
    assert _kernels(ExpMI(out_shape[0], out_shape[-1]), *inputs) == dict(layers), (e_shape, out_shape)
    # width_divisor divides every layer's output channels but the 64-wide encoder dense and the image.
    quarter = _kernels(ExpMI(out_shape[0], out_shape[-1], width_divisor=4), *inputs)
    assert {n: s[-1] for n, s in quarter.items()} == {
      n: s[-1] if n in ("enc_dense", "out") else s[-1] // 4 for n, s in layers
    }
  for (out_shape, k), layers in REFERENCE_PREDMI.items():
    y = jnp.zeros((1, k))
    assert _kernels(PredMI(out_shape[0], out_shape[-1]), y) == dict(layers), out_shape
    quarter = _kernels(PredMI(out_shape[0], out_shape[-1], width_divisor=4), y)
    assert {n: s[-1] for n, s in quarter.items()} == {n: s[-1] if n == "out" else s[-1] // 4 for n, s in layers}


QUIET = dict(progress=False)


@pytest.fixture(scope="module")
def classifiers(tmp_path_factory, cache_root, data_root):
  """A tiny MNIST target and an independent evaluator, trained once for this module's pipeline tests."""
  root = tmp_path_factory.mktemp("gnime_classifiers")
  data = DataConfig(
    dataset="mnist",
    image_size=32,
    channels=1,
    private_ids=tuple(range(10)),
    public_ids=(),
    test_fraction=0.5,
    max_per_class=80,
  )
  for name, role, arch in [
    ("t", "target", ModelConfig(arch="cnn", width=8, feature_dim=32)),
    ("ev", "evaluation", ModelConfig(arch="resnet", width=8, blocks=(1,))),
  ]:
    train_classifier(
      ClassifierConfig(
        name=name,
        role=role,
        data=data,
        model=arch,
        optim=OptimConfig(name="sgd", learning_rate=0.05, momentum=0.9),
        train=TrainConfig(epochs=4, batch_size=50),
      ),
      root / name,
      **QUIET,
    )
  return root / "t", root / "ev"


def tiny_run(classifiers, *, gnime_lr=1e-3, attacker_lr=1e-3, **kw):
  return gnime_run.GNIMERunConfig(
    name="g",
    target=str(classifiers[0]),
    evaluator=str(classifiers[1]),
    method="grad",
    max_defender=100,
    max_attacker=100,
    gnime=GNIMEConfig(epochs=2, batch_size=64, width_divisor=16, learning_rate=gnime_lr, checkpoint_every=1),
    attacker=InverterConfig(epochs=2, batch_size=64, width_divisor=16, learning_rate=attacker_lr, checkpoint_every=1),
    rows=3,
    **kw,
  )


@pytest.mark.slow  # the `classifiers` fixture trains on real MNIST; then the whole pipeline
def test_pipeline_trains_a_fresh_attacker_on_the_released_explanations(classifiers, tmp_path, monkeypatch):
  quiet = QUIET
  calls = []
  real_train = expmi.train_inverter

  def spy(kind, explanations, logits, images, cfg, **kw):
    module, params, info = real_train(kind, explanations, logits, images, cfg, **kw)
    fresh = module.init(
      jax.random.PRNGKey(cfg.seed), *((logits[:2],) if kind == "predmi" else (explanations[:2], logits[:2]))
    )
    calls.append(
      {"kind": kind, "explanations": np.asarray(explanations), "name": kw["name"], "fresh": fresh, "params": params}
    )
    return module, params, info

  monkeypatch.setattr(gnime_run, "train_inverter", spy)
  cfg = tiny_run(classifiers)
  results = gnime_run.run_gnime(cfg, tmp_path / "g", **quiet)
  assert [c["name"] for c in calls] == [
    "attacker vs none",
    "attacker vs rnd",
    "attacker vs gnime",
    "attacker vs predmi",
  ]
  clean = calls[0]["explanations"]
  # The GNIME attacker learns from GNIME's releases (not the clean maps), RND's from budget-matched noise.
  budget = results["gnime_explanation_mse_budget"]
  assert not np.allclose(calls[2]["explanations"], clean)
  assert np.mean((calls[1]["explanations"] - clean) ** 2) == pytest.approx(budget, rel=0.15)
  assert calls[2]["explanations"].min() >= 0 and calls[2]["explanations"].max() <= 1  # clipped release
  # Each attacker starts from its own fresh initialisation and moves away from it.
  for c in calls:
    assert not all(np.allclose(a, b) for a, b in zip(jax.tree.leaves(c["fresh"]), jax.tree.leaves(c["params"])))
  for s in gnime_run.SCENARIOS:
    sc = results["scenarios"][s]
    assert 0 <= sc["tca"] <= 1 and np.isfinite(sc["ssim"]) and np.isfinite(sc["image_mse"])
  assert (tmp_path / "g" / "rows.png").stat().st_size > 0 and (tmp_path / "g" / "results.csv").exists()
  with pytest.raises(Exception, match="results.json: exists"):
    gnime_run.run_gnime(cfg, tmp_path / "g", **quiet)


@pytest.mark.slow  # uses the `classifiers` fixture (trained on real MNIST)
def test_explanation_batches_are_padded_and_masked_so_gnime_grad_cam_pools_over_real_images_only(classifiers):
  clf = load_classifier(classifiers[0])
  images = np.random.default_rng(0).uniform(size=(7, 32, 32, 1)).astype(np.float32)
  # Batches of 4: the second holds 3 images and one padding row; it must equal those 3 explained alone.
  padded, logits = gnime_run.explanations_of(clf, images, "gradcam", "gnime", batch_size=4)
  alone, _ = gnime_run.explanations_of(clf, images[4:], "gradcam", "gnime", batch_size=3)
  assert padded.shape == (7, 16, 16, 1)  # the last conv's 16x16 map at 32 px (the reference's)
  np.testing.assert_allclose(padded[4:], alone, rtol=1e-5, atol=1e-6)
  first, _ = gnime_run.explanations_of(clf, images[:4], "gradcam", "gnime", batch_size=4)
  np.testing.assert_allclose(padded[:4], first, rtol=1e-5, atol=1e-6)


@pytest.mark.slow  # six short pipeline runs
def test_gnime_resumes_after_interruptions_and_matches_an_uninterrupted_run(classifiers, tmp_path):
  full = gnime_run.run_gnime(tiny_run(classifiers), tmp_path / "full", **QUIET)
  cfg, work = tiny_run(classifiers), tmp_path / "cut"
  runs = []

  def hook(at):
    calls = []
    runs.append(calls)

    def stop(stage, epoch):
      calls.append((stage, epoch))
      return (stage, epoch) == at

    return stop

  # Killed inside GNIME, inside an attacker, between two evaluations, and after an attacker finished.
  for at in [("gnime", 1), ("attacker vs rnd", 1), ("evaluation vs rnd", 0), ("attacker vs gnime", 2)]:
    with pytest.raises(Interrupted, match="run the same command again to resume") as stopped:
      gnime_run.run_gnime(cfg, work, stop=hook(at), **QUIET)
    assert stopped.value.step == at[1]  # the epoch (0 for an evaluation) it stopped after
    assert not (work / "results.json").exists() and not (work / "results.csv").exists()
  # A changed config is refused before anything is loaded; a changed rows count is not a change.
  with pytest.raises(ConfigError, match=r"config.json: the config differs .* in gnime\.a;"):
    gnime_run.run_gnime(dataclasses.replace(cfg, gnime=dataclasses.replace(cfg.gnime, a=5.0)), work, **QUIET)
  resumed = gnime_run.run_gnime(dataclasses.replace(cfg, rows=2), work, stop=hook(None), **QUIET)

  assert runs[0] == [("gnime", 1)]
  # Each rerun continues where the last stopped: finished epochs, attackers and evaluations are not redone.
  assert runs[1] == [
    ("gnime", 2),
    ("attacker vs none", 1),
    ("attacker vs none", 2),
    ("evaluation vs none", 0),
    ("attacker vs rnd", 1),
  ]
  assert runs[2] == [("attacker vs rnd", 2), ("evaluation vs rnd", 0)]
  assert runs[3] == [("attacker vs gnime", 1), ("attacker vs gnime", 2)]
  assert runs[4] == [
    ("evaluation vs gnime", 0),
    ("attacker vs predmi", 1),
    ("attacker vs predmi", 2),
    ("evaluation vs predmi", 0),
  ]
  assert resumed["reused_evaluations"] == ["none", "rnd"]
  for key in ("scenarios", "gnime_history", "gnime_explanation_mse_budget", "mu", "sigma"):
    assert resumed[key] == full[key], key
  assert (work / "rows.png").stat().st_size > 0
  assert not (work / "state" / "gnime").exists()  # a finished run drops its training checkpoints
  assert (work / "results.csv").read_text() == (tmp_path / "full" / "results.csv").read_text()


def test_a_diverging_attacker_or_gnime_raises_instead_of_reporting_and_saves_nothing(tmp_path):
  rng = np.random.default_rng(0)
  e, y, x = (
    rng.uniform(size=(40, 8, 8, 1)).astype(np.float32),
    rng.normal(size=(40, 3)).astype(np.float32),
    rng.uniform(size=(40, 8, 8, 1)).astype(np.float32),
  )
  # Before: the attacker's NaN validation loss never beat +inf, so its random initial weights were
  # returned as the "best" and evaluated.
  with pytest.raises(
    NonFiniteError,
    match=r"^\[attacker vs none\] non-finite train_mse at epoch 1 \(step \d+\); "
    "nothing saved",
  ):
    expmi.train_inverter(
      "expmi",
      e,
      y,
      x,
      InverterConfig(epochs=3, batch_size=8, width_divisor=16, learning_rate=1e10),
      name="attacker vs none",
      progress=False,
      ckpt_dir=tmp_path / "attacker",
    )
  with pytest.raises(NonFiniteError, match=r"^\[gnime\] non-finite \w+ at epoch 1 \(step \d+\); nothing saved"):
    train_gnime(
      e,
      y,
      x,
      GNIMEConfig(epochs=2, batch_size=8, width_divisor=16, learning_rate=1e10),
      progress=False,
      ckpt_dir=tmp_path / "gnime",
    )
  for d in ("attacker", "gnime"):
    assert not any(p.name.isdigit() for p in (tmp_path / d).glob("*")), d  # no checkpoint from that state


@pytest.mark.slow  # uses the `classifiers` fixture (trained on real MNIST)
def test_a_diverging_gnime_stops_the_run_before_any_result(classifiers, tmp_path):
  # Before: GNIME's NaN generator released NaN explanations and the run reported a TCA next to NaN SSIM.
  cfg = tiny_run(classifiers, gnime_lr=1e10)
  with pytest.raises(NonFiniteError, match=r"^\[gnime\] non-finite \w+ at epoch \d+ \(step \d+\); nothing saved") as e:
    gnime_run.run_gnime(cfg, tmp_path / "g", **QUIET)
  bad_epoch = int(re.search(r"at epoch (\d+)", str(e.value)).group(1))
  assert not list((tmp_path / "g").glob("results.*")) and not list((tmp_path / "g" / "state").glob("eval_*"))
  # Only the epochs before the bad one were checkpointed (checkpoint_every=1): the newest checkpoint is good.
  saved = [int(p.name) for p in (tmp_path / "g" / "state" / "gnime").glob("*") if p.name.isdigit()]
  assert all(step < bad_epoch for step in saved)


@pytest.mark.parametrize(
  "override, message",
  [
    ("attacker.batch_size=0", "attacker.batch_size: expected an integer >= 1, got 0"),
    ("gnime.batch_size=0", "gnime.batch_size: expected an integer >= 1, got 0"),
    ("gnime.epochs=0", "gnime.epochs: expected an integer >= 1, got 0"),
    ("attacker.epochs=-1", "attacker.epochs: expected an integer >= 1, got -1"),
    ("explain_batch_size=0", "explain_batch_size: expected an integer >= 1, got 0"),
  ],
)
def test_bad_sizes_are_one_line_errors_before_any_work(tmp_path, capsys, override, message):
  # Before: batch_size=0 was a ZeroDivisionError after the explanations and GNIME's training.
  config = tmp_path / "gnime_cfg.py"
  config.write_text(
    "from jaxmi.experiments.gnime import GNIMERunConfig\n\n\ndef get_config():\n"
    f"  return GNIMERunConfig(target={str(tmp_path / 'no_t')!r}, evaluator={str(tmp_path / 'no_ev')!r})\n"
  )
  assert cli.main(["gnime", "--config", str(config), "--workdir", str(tmp_path / "run"), override]) == 2
  assert capsys.readouterr().err.splitlines() == [f"jaxmi: error: {message}"]
  assert not (tmp_path / "run").exists()
