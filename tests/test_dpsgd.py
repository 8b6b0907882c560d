"""DP-SGD: the aggregation against numpy, per-example gradients against a per-example loop, the
accountant against the Gaussian mechanism's closed-form RDP bound, and training on real MNIST."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxmi.data import DataConfig, load_splits
from jaxmi.defenses import DPSGD, dp_epsilon, noisy_mean
from jaxmi.errors import ConfigError
from jaxmi.nets import ModelConfig, build_classifier, init_variables
from jaxmi.train import ClassifierConfig, OptimConfig, TrainConfig, train_classifier
from jaxmi.train.state import TrainState
from jaxmi.train.step import NoDefense, RunFacts, make_train_step


def test_aggregate_clips_each_example_sums_and_adds_noise_of_the_stated_scale():
  rng = np.random.default_rng(0)
  grads = {
    "w": rng.normal(size=(5, 3, 2)) * [[[3.0]], [[0.1]], [[1.0]], [[5.0]], [[0.5]]],
    "b": rng.normal(size=(5, 4)),
  }
  norms = np.sqrt(np.sum(grads["w"].reshape(5, -1) ** 2, 1) + np.sum(grads["b"] ** 2, 1))
  scale = np.minimum(1.0, 1.5 / norms)
  expected = {k: np.tensordot(scale, v, axes=1) / 5 for k, v in grads.items()}
  with jax.enable_x64(True):  # a formula test: float64, so summation order (CPU-dependent) cannot matter
    # The defense's gradient hook clips and sums; the first transform of its optimiser averages.
    dp = DPSGD(l2_clip=1.5, noise_multiplier=0.0)
    summed = dp.aggregate_grads(jax.tree.map(jnp.asarray, grads))
    tx = dp.optimizer(optax.identity(), None, RunFacts(steps_per_epoch=1, total_steps=1, batch_size=5))
    out, _ = tx.update(summed, tx.init(None))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15), out, expected)
  assert (norms > 1.5).any() and (norms < 1.5).any()  # both branches of the clip are exercised
  # Noise: std noise_multiplier * clip / batch on every coordinate, fresh each step.
  tx = noisy_mean(2.0 * 1.5, batch_size=5)
  zeros = {"w": jnp.zeros((200, 50))}
  state = tx.init(None)
  first, state = tx.update(zeros, state)
  second, _ = tx.update(zeros, state)
  assert float(jnp.std(first["w"])) == pytest.approx(2.0 * 1.5 / 5, rel=0.02)
  assert not np.allclose(first["w"], second["w"])


def test_per_example_step_equals_the_batch_step_without_clipping_or_noise():
  # GroupNorm has no cross-example statistics, so the mean of per-example gradients is the batch gradient.
  model = build_classifier(ModelConfig(arch="cnn", width=4, feature_dim=16, norm="group"), 3)
  variables = init_variables(model, jax.random.PRNGKey(0), (16, 16, 1))
  batch = {"image": jax.random.uniform(jax.random.PRNGKey(1), (6, 16, 16, 1)), "label": jnp.arange(6) % 3}

  def step_with(defense):
    facts = RunFacts(steps_per_epoch=1, total_steps=1, batch_size=6)
    tx = defense.optimizer(optax.sgd(0.1), variables["params"], facts)
    state = TrainState(
      step=jnp.zeros((), jnp.int32),
      params=variables["params"],
      batch_stats={},
      opt_state=tx.init(variables["params"]),
      defense_state={},
      rng=jax.random.PRNGKey(2),
    )
    state = jax.tree.map(jnp.copy, state)  # the step donates its input
    return make_train_step(model, tx, defense)(state, batch)[0].params

  with jax.default_matmul_precision("highest"):
    plain = step_with(NoDefense())
    private = step_with(DPSGD(l2_clip=1e6, noise_multiplier=0.0))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-6), private, plain)


def test_epsilon_matches_the_gaussian_mechanism_and_grows_with_steps():
  # One unsampled Gaussian mechanism has RDP alpha / (2 sigma^2); the classic conversion
  # eps = min_alpha rdp + log(1/delta) / (alpha - 1) is an upper bound the accountant must meet
  # and (with its tighter conversion) come close to.
  sigma, delta = 2.0, 1e-5
  alphas = np.linspace(1.01, 200, 200000)
  classic = float(np.min(alphas / (2 * sigma**2) + np.log(1 / delta) / (alphas - 1)))
  eps = dp_epsilon(noise_multiplier=sigma, sampling_rate=1.0, steps=1, delta=delta)
  assert 0.75 * classic < eps <= classic * 1.001, (eps, classic)
  few = dp_epsilon(noise_multiplier=1.0, sampling_rate=0.01, steps=100, delta=delta)
  many = dp_epsilon(noise_multiplier=1.0, sampling_rate=0.01, steps=10000, delta=delta)
  quieter = dp_epsilon(noise_multiplier=4.0, sampling_rate=0.01, steps=10000, delta=delta)
  assert few < many and quieter < many
  assert dp_epsilon(noise_multiplier=0.0, sampling_rate=0.01, steps=1, delta=delta) == float("inf")


@pytest.mark.slow  # trains on real MNIST end to end
def test_dp_sgd_refuses_batchnorm_and_trains_group_norm_models_on_real_data(tmp_path, cache_root, data_root):
  data = DataConfig(
    dataset="mnist",
    image_size=32,
    channels=1,
    private_ids=(0, 1, 2, 3, 4),
    public_ids=(5, 6, 7, 8, 9),
    max_per_class=400,
  )
  cfg = ClassifierConfig(
    name="dp",
    role="target",
    data=data,
    model=ModelConfig(arch="cnn", width=8, feature_dim=32, norm="group"),
    optim=OptimConfig(name="sgd", learning_rate=0.1, momentum=0.9),
    train=TrainConfig(epochs=3, batch_size=50, log_every=10),
  )
  with pytest.raises(ConfigError, match="dp_sgd: model.norm must be 'group'"):
    train_classifier(
      dataclasses.replace(cfg, model=ModelConfig(arch="cnn", width=8, feature_dim=32)),
      tmp_path / "dp",
      defense=DPSGD(),
      progress=False,
    )
  assert not (tmp_path / "dp").exists()
  summary = train_classifier(
    cfg, tmp_path / "dp", splits=load_splits(data), defense=DPSGD(l2_clip=1.0, noise_multiplier=1.0), progress=False
  )
  # 2000 digits, sigma 1, 120 steps at q = 0.025: far above the 20% chance (measured 95.0%; 98.1% without DP).
  assert summary["natural_accuracy"] > 0.8, summary
  privacy = summary["privacy"]
  assert privacy["steps"] == 120 and privacy["sampling_rate"] == pytest.approx(50 / 2000)
  assert 0 < privacy["epsilon"] < 20
