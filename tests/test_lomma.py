"""LOMMA building blocks: logit loss, feature regulariser, distillation (loss, augmented teacher labels, data paths)."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxmi import config as config_lib
from jaxmi.attacks import FeatureRegTerm, Forward, IdentityTerm
from jaxmi.nets import ClassifierOutput, ModelConfig, build_classifier, init_variables
from jaxmi.train import ClassifierConfig
from jaxmi.train.classifier import Classifier
from jaxmi.train.distill import Distillation
from jaxmi.train.state import TrainState
from jaxmi.train.step import AugmentConfig, augment, make_train_step


def forward(logits, features):
  return Forward(
    image=jnp.zeros((2, 2, 1)),
    critic_score=jnp.zeros(()),
    target_logits=tuple(jnp.asarray(l, jnp.float32) for l in logits),
    target_features=tuple(jnp.asarray(f, jnp.float32) for f in features),
  )


def test_logit_loss_is_the_negative_logit_averaged_over_attacked_models():
  f = forward([[1.0, 5.0, -2.0], [0.5, 3.0, 9.0]], [[0.0]])
  term = IdentityTerm(weight=100.0, loss="logit")
  assert float(term(f, jnp.asarray(1))) == pytest.approx(-(5.0 + 3.0) / 2)
  ce = IdentityTerm(loss="ce")
  expected = np.mean(
    [-jax.nn.log_softmax(jnp.asarray([1.0, 5.0, -2.0]))[2], -jax.nn.log_softmax(jnp.asarray([0.5, 3.0, 9.0]))[2]]
  )
  assert float(ce(f, jnp.asarray(2))) == pytest.approx(float(expected), rel=1e-6)


def test_feature_regulariser_global_and_per_class():
  f = forward([[0.0, 0.0]], [[1.0, 2.0, 3.0]])
  assert float(FeatureRegTerm(jnp.zeros(3))(f, jnp.asarray(0))) == pytest.approx(14.0 / 3)
  assert float(FeatureRegTerm(jnp.asarray([1.0, 1.0, 1.0]))(f, jnp.asarray(0))) == pytest.approx(5.0 / 3)
  per_class = FeatureRegTerm(jnp.asarray([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]]))
  assert float(per_class(f, jnp.asarray(0))) == pytest.approx(0.0)
  assert float(per_class(f, jnp.asarray(1))) == pytest.approx(14.0 / 3)
  # p_reg is data of the term (a pytree leaf, an argument of the compiled program); weight and name are static.
  leaves, treedef = jax.tree.flatten(FeatureRegTerm(jnp.zeros(3), 100.0))
  assert len(leaves) == 1 and leaves[0].shape == (3,)
  assert jax.tree.unflatten(treedef, [jnp.ones(3)]).weight == 100.0


def test_distillation_loss_is_kl_to_the_teacher():
  rng = np.random.default_rng(0)
  student, teacher = rng.normal(size=(4, 6)), rng.normal(size=(4, 6))
  p = np.exp(teacher) / np.exp(teacher).sum(-1, keepdims=True)
  q = np.exp(student) / np.exp(student).sum(-1, keepdims=True)
  expected = np.sum(p * np.log(p / q), -1)
  t = 2.0
  p_t = np.exp(teacher / t) / np.exp(teacher / t).sum(-1, keepdims=True)
  q_t = np.exp(student / t) / np.exp(student / t).sum(-1, keepdims=True)
  with jax.enable_x64(True):  # a formula test: KL sums terms of both signs, so compare in float64
    got = Distillation(temperature=1.0).task_loss(jnp.asarray(student), jnp.asarray(teacher))
    np.testing.assert_allclose(got, expected, rtol=1e-10)
    assert np.allclose(Distillation().task_loss(jnp.asarray(teacher), jnp.asarray(teacher)), 0.0, atol=1e-15)
    # Temperature: KL of the tempered distributions, times T^2.
    np.testing.assert_allclose(
      Distillation(temperature=t).task_loss(jnp.asarray(student), jnp.asarray(teacher)),
      t**2 * np.sum(p_t * np.log(p_t / q_t), -1),
      rtol=1e-10,
    )


class _Teacher(nn.Module):
  """A deterministic teacher whose logits move with every flip and shift (a dense map of all pixels)."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    logits = 5.0 * nn.Dense(4)(x.reshape(x.shape[0], -1))
    return ClassifierOutput(logits, logits, ())


def test_distillation_step_labels_the_augmented_batch_with_the_teacher():
  """The student's target is the teacher's output on the same flipped/shifted batch the student sees,
  computed inside the step from teacher variables passed as an argument (not logits precomputed on the
  un-augmented images, which the reference never uses)."""
  image_shape = (12, 12, 1)
  teacher_module = _Teacher()
  teacher_vars = teacher_module.init(jax.random.PRNGKey(0), jnp.zeros((1, *image_shape)))
  teacher = Classifier(teacher_module, teacher_vars, ClassifierConfig(), 4, image_shape, workdir="teacher")
  student = build_classifier(ModelConfig(arch="cnn", width=4, feature_dim=8), 4)
  variables = init_variables(student, jax.random.PRNGKey(1), image_shape)
  defense = Distillation.of(teacher)
  assert config_lib.to_dict(defense) == {"name": "distillation", "temperature": 1.0, "teacher_workdir": "teacher"}
  aug = AugmentConfig(hflip=True, max_shift=3)
  tx = optax.sgd(0.0)
  state = TrainState(
    step=jnp.asarray(3, jnp.int32),
    params=variables["params"],
    batch_stats=variables["batch_stats"],
    opt_state=tx.init(variables["params"]),
    defense_state={},
    rng=jax.random.PRNGKey(2),
  )
  images = jax.random.uniform(jax.random.PRNGKey(3), (16, *image_shape))
  batch = {"image": images, "label": jnp.zeros(16, jnp.int32)}  # hard labels: unused by the loss
  _, metrics = make_train_step(student, tx, defense, aug)(jax.tree.map(jnp.copy, state), batch)

  # The step's augmentation key: fold_in(rng, step), first of three.
  augmented = augment(images, jax.random.split(jax.random.fold_in(state.rng, 3), 3)[0], aug)
  assert not np.allclose(augmented, images)
  student_logits = student.apply(variables, augmented, train=True, mutable=["batch_stats"])[0].logits
  kl = lambda t: float(jnp.mean(Distillation().task_loss(student_logits, t)))
  on_augmented = kl(teacher_module.apply(teacher_vars, augmented).logits)
  on_clean = kl(teacher_module.apply(teacher_vars, images).logits)
  # float32 KL of the same values: the two computations differ only by summation order (~1e-6 relative).
  assert float(metrics["task_loss"]) == pytest.approx(on_augmented, rel=1e-4)
  assert abs(on_clean - on_augmented) > 100 * 1e-4 * on_augmented, (on_clean, on_augmented)


@pytest.mark.slow  # trains a target and a student on real MNIST
def test_distill_prepares_data_where_the_config_says(tmp_path, cache_root, data_root, monkeypatch):
  """data.cache_dir (and data_dir) of the distill config win over the defaults the teacher's saved config holds."""
  from jaxmi.data import DataConfig, load_splits
  from jaxmi.train import OptimConfig, TrainConfig, train_classifier
  from jaxmi.train import distill as distill_lib

  data = DataConfig(
    dataset="mnist", image_size=16, channels=1, private_ids=(0, 1, 2), public_ids=(5, 6, 7), max_per_class=40
  )
  model = ModelConfig(arch="cnn", width=4, feature_dim=8)
  train = TrainConfig(epochs=1, batch_size=20, log_every=2)
  train_classifier(
    ClassifierConfig(
      name="t", role="target", data=data, model=model, optim=OptimConfig(learning_rate=0.05), train=train
    ),
    tmp_path / "t",
    progress=False,
  )
  seen = []
  monkeypatch.setattr(distill_lib, "load_splits", lambda cfg: seen.append(cfg) or load_splits(data))
  own = dataclasses.replace(data, cache_dir=str(tmp_path / "own_cache"), data_dir=str(data_root / "mnist"))
  student = ClassifierConfig(
    name="s",
    role="surrogate",
    data=own,
    model=model,
    optim=OptimConfig(learning_rate=0.05),
    train=dataclasses.replace(train, augment=AugmentConfig(hflip=True, max_shift=2)),
  )
  summary = distill_lib.distill_surrogate(student, tmp_path / "s", str(tmp_path / "t"), progress=False)
  assert [(c.cache_dir, c.data_dir) for c in seen] == [(own.cache_dir, own.data_dir)]
  assert dataclasses.replace(seen[0], cache_dir=None, data_dir=None) == data
  assert summary["config"]["data"]["cache_dir"] == own.cache_dir and 0 <= summary["public_agreement"] <= 1


def test_a_diverging_distillation_stops_with_one_line_and_keeps_only_finite_checkpoints(tiny, tmp_path):
  """Distillation runs on the classifier trainer; this checks that its divergence takes the same stop (issue 13's
  item 14 had only the classifier's test): the error names the run and the step, no summary is written, and the
  checkpoint left is the last finite one."""
  from jaxmi.errors import NonFiniteError
  from jaxmi.train import OptimConfig, TrainConfig, load_classifier
  from jaxmi.train.distill import distill_surrogate
  from test_faults import finite

  root, splits = tiny
  cfg = ClassifierConfig(
    name="surrogate",
    role="surrogate",
    model=ModelConfig(arch="cnn", width=4, feature_dim=8),
    # 1e30: the first update sends the weights to ~1e30 and the KL to inf/NaN within a step or two.
    optim=OptimConfig(learning_rate=1e30),
    train=TrainConfig(epochs=2, batch_size=8, checkpoint_every=1, log_every=100),
  )
  with pytest.raises(NonFiniteError) as e:
    distill_surrogate(cfg, tmp_path / "s", str(root / "target"), splits=splits, progress=False)
  msg = str(e.value)
  assert "[surrogate] non-finite" in msg and "at step" in msg and "nothing saved" in msg and "\n" not in msg
  assert not (tmp_path / "s" / "summary.json").exists()
  # Step 1 (from the finite initial weights) was saved; the diverged state after it was not.
  assert sorted(p.name for p in (tmp_path / "s" / "checkpoints").glob("[0-9]*")) == ["1"]
  clf = load_classifier(tmp_path / "s")  # refuses a non-finite checkpoint
  assert finite(clf.variables)
