"""A defense's hyper-parameter grid trained as one vmapped program equals the settings trained one at a time.

Step level in float64 (the variables cast up under ``jax.enable_x64``), so the vmapped convolutions' different
summation order (rounding) cannot hide a wrong setting; end to end (``train_grid`` against ``train_classifier``) in
float32, where only that rounding separates them. Tiny synthetic data and a tiny CNN: seconds each.
"""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxmi.data import ArraySplit, DataConfig, Splits
from jaxmi.defenses import DPSGD, MID, BiDO, NegativeLabelSmoothing
from jaxmi.errors import ConfigError, Interrupted
from jaxmi.nets import ModelConfig, build_classifier, init_variables
from jaxmi.train import ClassifierConfig, OptimConfig, TrainConfig, load_classifier, train_classifier
from jaxmi.train.grid import (
  check_cells,
  check_grid,
  group_cells,
  make_grid_step,
  stack,
  stack_hyper,
  train_grid,
  unstack,
)
from jaxmi.train.state import TrainState
from jaxmi.train.step import AugmentConfig, RunFacts, make_train_step

CNN = ModelConfig(arch="cnn", width=4, feature_dim=8)
STEPS = 6


def _batches(steps=STEPS, batch=8):
  rng = np.random.default_rng(0)
  return [
    {
      "image": jnp.asarray(rng.integers(0, 256, (batch, 16, 16, 1)).astype(np.uint8)),
      "label": jnp.asarray(rng.integers(0, 3, batch).astype(np.int32)),
    }
    for _ in range(steps)
  ]


def _max_diff(a, b) -> float:
  return max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _grid_and_singles(defenses, model_cfg, steps=STEPS):
  """(grid step's per-setting params, each setting's params from make_train_step, the grid step), float64."""
  model = build_classifier(model_cfg, 3)
  variables = jax.tree.map(lambda x: x.astype(jnp.float64), init_variables(model, jax.random.PRNGKey(0), (16, 16, 1)))
  facts = RunFacts(steps_per_epoch=2, total_steps=steps, batch_size=8, num_examples=16, module=model)
  base = optax.sgd(0.1, momentum=0.9)
  augment = AugmentConfig(max_shift=1)  # augmentation and the step key: the same draws for every setting
  batches = _batches(steps)

  def init(defense):
    tx = defense.optimizer(base, variables["params"], facts)
    fresh = jax.tree.map(jnp.copy, variables)  # the steps donate their state
    state = TrainState(
      step=jnp.zeros((), jnp.int32),
      params=fresh["params"],
      batch_stats=fresh["batch_stats"],
      opt_state=tx.init(fresh["params"]),
      defense_state={},
      rng=jax.random.PRNGKey(1),
    )
    return state, tx

  singles = []
  for defense in defenses:
    state, tx = init(defense)
    step = make_train_step(model, tx, defense, augment, facts)
    for batch in batches:
      state, _ = step(state, batch)
    singles.append(state.params)
  grid_step = make_grid_step(model, base, defenses[0], augment, facts)
  state, hyper = stack([init(d)[0] for d in defenses]), stack_hyper(defenses)
  for batch in batches:
    state, metrics = grid_step(state, hyper, batch)
  assert set(metrics) >= {f"setting{i}/loss" for i in range(len(defenses))}
  return [unstack(state.params, i) for i in range(len(defenses))], singles, grid_step


# (settings, model, float64 tolerance). MID, NLS, DP-SGD: the vmapped program only reassociates sums, observed
# 1e-15 after 6 steps. BiDO's nHSIC solves (K H + eps m I) with eps = 1e-5, m = 8: condition numbers ~1e4 that
# grow the rounding gap ~10x per step (observed 1e-9 after 6 steps; in float32 the same amplification gives 1e-2,
# the sensitivity of a single BiDO run to summation order itself).
CASES = {
  "mid": ([MID(beta=0.0), MID(beta=0.1), MID(beta=1.0)], dataclasses.replace(CNN, head="vib"), 1e-12),
  "nls": (
    [NegativeLabelSmoothing(alpha=a, schedule=False) for a in (-0.05, -0.5)],
    CNN,
    1e-12,
  ),
  "bido": ([BiDO(lambda_x=0.05, lambda_y=0.5), BiDO(lambda_x=1.0, lambda_y=2.0)], CNN, 1e-7),
  # l2_clip 1.3: the noise scale sigma * C is a traced product in the grid, a Python one alone.
  "dp_sgd": (
    [DPSGD(noise_multiplier=0.5, l2_clip=1.3), DPSGD(noise_multiplier=2.0, l2_clip=1.3)],
    dataclasses.replace(CNN, norm="group"),
    1e-12,
  ),
}


# BiDO and DP-SGD compile heavier steps (Gram solves, per-example gradients): the slow tier.
SLOW = {"bido", "dp_sgd"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in CASES])
def test_grid_step_equals_each_setting_trained_alone(name):
  defenses, model_cfg, tol = CASES[name]
  with jax.enable_x64(True):
    grid, singles, grid_step = _grid_and_singles(defenses, model_cfg)
  for i, (g, s) in enumerate(zip(grid, singles)):
    assert _max_diff(g, s) < tol, (name, i, _max_diff(g, s))
  # The settings trained different models: a grid that ignored its settings (all setting 0's) would fail above.
  assert all(_max_diff(s, singles[0]) > 1e-2 for s in singles[1:]), [_max_diff(s, singles[0]) for s in singles]
  assert grid_step._cache_size() == 1  # one compilation for all steps


def test_mismatched_settings_are_refused_in_one_line():
  cfg = ClassifierConfig(model=dataclasses.replace(CNN, head="vib"))
  with pytest.raises(ConfigError, match=r"^grid: setting 1 \(NegativeLabelSmoothing\) differs") as mixed:
    check_grid(cfg, [MID(beta=0.1), NegativeLabelSmoothing()])
  with pytest.raises(ConfigError, match="differs from setting 0 .* in measure") as measure:
    check_grid(cfg, [BiDO(measure="hsic"), BiDO(measure="coco", lambda_x=2.0)])
  wide = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, width=8))
  with pytest.raises(ConfigError, match=r"^grid: cell 1 differs from cell 0 in model.width") as arch:
    check_cells([(cfg, MID(beta=0.1)), (wide, MID(beta=0.2))])
  for e in (mixed, measure, arch):
    assert "\n" not in str(e.value)
  with pytest.raises(ConfigError, match="at least one"):
    check_grid(cfg, [])
  # Same program: only hyper fields differ; the name is no part of the program.
  check_cells([(cfg, MID(beta=0.1)), (dataclasses.replace(cfg, name="other"), MID(beta=0.2))])


def test_group_cells_sorts_cells_into_shared_programs_and_singles():
  cfg = ClassifierConfig(model=dataclasses.replace(CNN, head="vib"))
  wide = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, width=8))
  cells = [
    (cfg, MID(beta=0.01)),
    (cfg, MID(beta=0.1)),
    (cfg, NegativeLabelSmoothing()),
    (wide, MID(beta=0.01)),
    (cfg, MID(beta=1.0)),
    (cfg, NegativeLabelSmoothing(alpha=-0.1)),
    (cfg, NegativeLabelSmoothing(alpha=-0.1, schedule=False)),  # schedule is no hyper field: its own program
  ]
  assert group_cells(cells) == [[0, 1, 4], [2, 5], [3], [6]]


# End to end on synthetic images: 48 training images of 3 classes, batch 16 -> 3 steps per epoch.


def _split(rng, n):
  labels = np.arange(n, dtype=np.int32) % 3
  images = (labels[:, None, None, None] * 80 + rng.integers(0, 60, (n, 16, 16, 1))).astype(np.uint8)
  return ArraySplit(images, labels, labels)


@pytest.fixture(scope="module")
def splits():
  rng = np.random.default_rng(0)
  return Splits(_split(rng, 48), _split(rng, 24), _split(rng, 24), 3, 3, "synthetic")


def _cfg(**train) -> ClassifierConfig:
  return ClassifierConfig(
    name="grid",
    data=DataConfig(image_size=16, channels=1),
    model=CNN,
    optim=OptimConfig(name="sgd", learning_rate=0.05),
    train=TrainConfig(
      **{"epochs": 2, "batch_size": 16, "eval_batch_size": 24, "log_every": 100, "checkpoint_every": 2, **train}
    ),
  )


NLS_GRID = [NegativeLabelSmoothing(alpha=-0.05, schedule=False), NegativeLabelSmoothing(alpha=-0.5, schedule=False)]


def test_train_grid_equals_train_classifier_per_setting(tmp_path, splits):
  cfg = _cfg()
  released = [tmp_path / "setting0", tmp_path / "setting1"]
  result = train_grid(cfg, NLS_GRID, tmp_path / "grid", splits=splits, progress=False, release_to=released)
  assert result.summary["steps"] == 6 and len(result.summary["settings"]) == 2
  # Each setting is released as a classifier workdir the attacks load, holding exactly the grid's final model.
  for i, directory in enumerate(released):
    loaded = load_classifier(directory, expect_role="target")
    assert _max_diff(loaded.variables, result.variables[i]) == 0.0
    assert json.loads((directory / "summary.json").read_text())["defense_config"]["alpha"] == NLS_GRID[i].alpha
  singles = []
  for i, defense in enumerate(NLS_GRID):
    summary = train_classifier(cfg, tmp_path / f"single{i}", defense=defense, splits=splits, progress=False)
    singles.append(load_classifier(tmp_path / f"single{i}").variables)
    got = result.summary["settings"][i]
    assert got["defense_config"]["alpha"] == defense.alpha
    assert abs(got["natural_accuracy"] - summary["natural_accuracy"]) <= 1 / len(splits.private_test)
  # float32: the grid and the single runs differ only by the rounding of the vmapped convolutions (observed 1e-6
  # after 6 steps); the two settings' models differ by ~0.1.
  for i in range(2):
    assert _max_diff(result.variables[i], singles[i]) < 1e-4
  assert _max_diff(singles[0], singles[1]) > 1e-2


def test_train_grid_resumes_exactly_and_refuses_other_settings(tmp_path, splits):
  cfg = _cfg()
  full = train_grid(cfg, NLS_GRID, tmp_path / "full", splits=splits, progress=False)
  with pytest.raises(Interrupted, match="interrupted at step 3"):
    train_grid(cfg, NLS_GRID, tmp_path / "resumed", splits=splits, progress=False, stop_at_step=3)
  other = [NLS_GRID[0], NegativeLabelSmoothing(alpha=-0.2, schedule=False)]
  with pytest.raises(ConfigError, match="differs from the checkpoint's in settings"):
    train_grid(cfg, other, tmp_path / "resumed", splits=splits, progress=False)
  resumed = train_grid(cfg, NLS_GRID, tmp_path / "resumed", splits=splits, progress=False)
  assert resumed.summary["resumed_from_step"] == 3 and resumed.summary["steps"] == 6
  for a, b in zip(jax.tree.leaves(full.state), jax.tree.leaves(resumed.state)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_train_grid_validates_before_writing(tmp_path, splits):
  # MID needs the VIB head: refused by Defense.check before the workdir exists.
  with pytest.raises(ConfigError, match="model.head"):
    train_grid(_cfg(), [MID(beta=0.1), MID(beta=0.2)], tmp_path / "w", splits=splits, progress=False)
  with pytest.raises(ConfigError, match="^grid: setting 1"):
    train_grid(_cfg(), [MID(beta=0.1), NegativeLabelSmoothing()], tmp_path / "w", splits=splits, progress=False)
  with pytest.raises(ConfigError, match="release_to names 1 directories for 2 settings"):
    train_grid(_cfg(), NLS_GRID, tmp_path / "w", splits=splits, progress=False, release_to=[tmp_path / "r"])
  assert not (tmp_path / "w").exists() and not (tmp_path / "r").exists()
