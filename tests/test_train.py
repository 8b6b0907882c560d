"""Classifier training on real MNIST digits: learning, exact resume, checkpoint safety, no recompiles."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxmi.data import DataConfig, load_splits, train_batches
from jaxmi.errors import CheckpointError, Interrupted
from jaxmi.nets import ModelConfig, build_classifier, init_variables
from jaxmi.train import (
  ClassifierConfig,
  Defense,
  OptimConfig,
  TrainConfig,
  TrainState,
  load_classifier,
  make_train_step,
  train_classifier,
)
from jaxmi.records import read_jsonl

PRIVATE = (0, 1, 2, 3, 4)
SMALL_MNIST = DataConfig(
  dataset="mnist", image_size=28, channels=1, private_ids=PRIVATE, public_ids=(5, 6, 7, 8, 9), max_per_class=200
)


@pytest.fixture(scope="module")
def mnist_small(cache_root, data_root):
  return load_splits(SMALL_MNIST)


def small_config(**train) -> ClassifierConfig:
  return ClassifierConfig(
    name="t",
    data=SMALL_MNIST,
    model=ModelConfig(arch="cnn", width=8, feature_dim=32),
    optim=OptimConfig(name="sgd", learning_rate=0.05, schedule="cosine"),
    train=TrainConfig(**{"epochs": 2, "batch_size": 50, "log_every": 5, "checkpoint_every": 7, **train}),
  )


@pytest.mark.slow  # trains on real MNIST end to end
def test_target_learns_the_private_digits(tmp_path, mnist_small):
  summary = train_classifier(small_config(epochs=3), tmp_path, splits=mnist_small, progress=False)
  # 1000 training images, 60 steps: chance is 20%; a working pipeline is far above it.
  assert summary["natural_accuracy"] >= 0.90, summary["natural_accuracy"]
  assert summary["test_images"] == len(mnist_small.private_test) and summary["num_classes"] == 5
  lines = read_jsonl(tmp_path / "metrics.jsonl")
  assert [l["epoch"] for l in lines if "test/acc" in l] == [1.0, 2.0, 3.0]
  assert all(np.isfinite(l["train/loss"]) for l in lines)
  assert (tmp_path / "curves.png").stat().st_size > 1000 and (tmp_path / "summary.json").exists()


@pytest.mark.slow  # two real-MNIST trainings; the fast tier resumes on synthetic data (test_faults.py)
def test_resume_after_interruption_equals_uninterrupted_run(tmp_path, mnist_small):
  cfg = small_config()
  train_classifier(cfg, tmp_path / "full", splits=mnist_small, progress=False)
  # Stop mid-epoch and between checkpoint intervals: resume must not depend on where it stopped.
  with pytest.raises(Interrupted, match="interrupted at step 17") as stopped:
    train_classifier(cfg, tmp_path / "resumed", splits=mnist_small, progress=False, stop_at_step=17)
  assert stopped.value.step == 17
  lines_before = read_jsonl(tmp_path / "resumed" / "metrics.jsonl")
  summary = train_classifier(cfg, tmp_path / "resumed", splits=mnist_small, progress=False)
  assert summary["resumed_from_step"] == 17 and summary["steps"] == 40
  a, b = load_classifier(tmp_path / "full"), load_classifier(tmp_path / "resumed")
  for x, y in zip(jax.tree.leaves(a.variables), jax.tree.leaves(b.variables)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  # Metrics written before the interruption are kept, not overwritten.
  assert read_jsonl(tmp_path / "resumed" / "metrics.jsonl")[: len(lines_before)] == lines_before


@pytest.mark.slow  # the resume test's guard, on real MNIST
def test_a_different_seed_gives_different_parameters(tmp_path, mnist_small):
  # Guards the resume test against passing trivially (e.g. nothing trained at all).
  train_classifier(small_config(epochs=1), tmp_path / "a", splits=mnist_small, progress=False)
  train_classifier(small_config(epochs=1, seed=3), tmp_path / "b", splits=mnist_small, progress=False)
  a, b = load_classifier(tmp_path / "a"), load_classifier(tmp_path / "b")
  assert not np.array_equal(
    np.asarray(a.variables["params"]["head"]["fc"]["kernel"]), np.asarray(b.variables["params"]["head"]["fc"]["kernel"])
  )


@pytest.mark.slow  # a real-MNIST training first
def test_checkpoint_of_another_architecture_is_refused_and_kept(tmp_path, mnist_small):
  train_classifier(small_config(epochs=1), tmp_path, splits=mnist_small, progress=False)
  before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
  other = dataclasses.replace(small_config(epochs=2), model=ModelConfig(arch="resnet", width=8, blocks=(1,)))
  with pytest.raises(CheckpointError) as e:
    train_classifier(other, tmp_path, splits=mnist_small, progress=False)
  assert "arch=cnn" in str(e.value) and "arch=resnet" in str(e.value) and "\n" not in str(e.value)
  after = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
  assert after == before
  # Same architecture, different shapes (width) is refused too, naming a parameter.
  wider = dataclasses.replace(small_config(epochs=2), model=ModelConfig(arch="cnn", width=16, feature_dim=32))
  with pytest.raises(CheckpointError, match="arch=cnn, width=8"):
    train_classifier(wider, tmp_path, splits=mnist_small, progress=False)


def test_train_step_compiles_once_and_never_again(mnist_small):
  model = build_classifier(ModelConfig(arch="cnn", width=8, feature_dim=32), 5)
  tx = optax.sgd(0.01, momentum=0.9)
  variables = init_variables(model, jax.random.PRNGKey(0), (28, 28, 1))
  state = TrainState(
    step=jnp.zeros((), jnp.int32),
    params=variables["params"],
    batch_stats=variables["batch_stats"],
    opt_state=tx.init(variables["params"]),
    defense_state={},
    rng=jax.random.PRNGKey(1),
  )
  step = make_train_step(model, tx)
  batches = train_batches(mnist_small.private_train, 32, seed=0)
  for _ in range(5):
    state, _ = step(state, next(batches))
  batches.close()
  assert step._cache_size() == 1
  assert int(state.step) == 5


@dataclasses.dataclass(frozen=True)
class _WeightPenalty(Defense):
  """A toy defense exercising the hook: an L2 penalty on the head."""

  name: str = "l2_head"
  weight: float = 10.0

  def regularizer(self, out, labels, *, images, params, step, facts):
    penalty = self.weight * jnp.sum(params["head"]["fc"]["kernel"] ** 2)
    return penalty, {"penalty": penalty}


def test_defense_protocol_is_abstract_or_final():
  """``Defense`` is abstract (no defense is ``NoDefense()``); the shipped defenses are final."""
  from jaxmi.defenses import BiDO, DPSGD, MID, ConfidenceAdaptation, NegativeLabelSmoothing, TransferLearning
  from jaxmi.train.distill import Distillation
  from jaxmi.train.step import NoDefense

  with pytest.raises(TypeError, match="Defense is abstract"):
    Defense()
  assert NoDefense().name == "none" and _WeightPenalty().name == "l2_head"  # an abstract class's subclass is fine
  for final in (
    NoDefense,
    BiDO,
    DPSGD,
    MID,
    ConfidenceAdaptation,
    NegativeLabelSmoothing,
    TransferLearning,
    Distillation,
  ):
    with pytest.raises(TypeError, match=f"{final.__name__} is final"):
      type("Sub", (final,), {})
  # What the step asks of a defense is declared on the class, not probed.
  assert DPSGD.per_example_grads and not any(d.per_example_grads for d in (NoDefense, BiDO, MID))


def test_defense_hook_adds_its_term(tmp_path, mnist_small):
  plain = train_classifier(small_config(epochs=1), tmp_path / "plain", splits=mnist_small, progress=False)
  defended = train_classifier(
    small_config(epochs=1), tmp_path / "defended", splits=mnist_small, defense=_WeightPenalty(), progress=False
  )
  assert defended["defense"] == "l2_head" and plain["defense"] == "none"
  norm = lambda w: float(jnp.sum(load_classifier(w).variables["params"]["head"]["fc"]["kernel"] ** 2))
  assert norm(tmp_path / "defended") < 0.2 * norm(tmp_path / "plain")
  lines = read_jsonl(tmp_path / "defended" / "metrics.jsonl")
  assert all("train/defense/penalty" in l for l in lines)
