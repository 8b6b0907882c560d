"""Faults never leave a bad result behind: NaN, corrupt checkpoints, concurrent runs, changed configs, typos.

Each test reproduces one fault found in review on tiny synthetic data (seconds each).
"""

import dataclasses
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxmi.data import ArraySplit, DataConfig, Splits
from jaxmi.errors import CheckpointError, ConfigError, Interrupted, NonFiniteError, WorkdirBusyError
from jaxmi.nets import ModelConfig
from jaxmi.nets.gan import GANConfig
from jaxmi.records import read_jsonl
from jaxmi.train import ClassifierConfig, Defense, OptimConfig, TrainConfig, load_classifier, train_classifier
from jaxmi.train.checkpoint import Checkpointer
from jaxmi.train.gan import GANExperimentConfig, GANTrainConfig, load_gan, train_gan
from jaxmi.workdir import locked

REPO = Path(__file__).resolve().parents[1]
MNIST_TARGET = REPO / "configs/classifier.py:role=target,data=mnist"


# The tests below train the same tiny shapes many times: conftest's session-wide compilation cache compiles
# each program once.


def _split(rng, n):
  # Two trivially separable classes: dark and bright 16x16 images.
  labels = np.arange(n, dtype=np.int32) % 2
  images = np.where(
    labels[:, None, None, None] == 1, rng.integers(150, 256, (n, 16, 16, 1)), rng.integers(0, 100, (n, 16, 16, 1))
  ).astype(np.uint8)
  return ArraySplit(images, labels, labels)


@pytest.fixture(scope="module")
def splits():
  rng = np.random.default_rng(0)
  return Splits(_split(rng, 64), _split(rng, 32), _split(rng, 64), 2, 2, "synthetic")


def tiny(*, lr=0.05, **train) -> ClassifierConfig:
  # 64 images / batch 16: 4 steps per epoch.
  return ClassifierConfig(
    name="tiny",
    data=DataConfig(image_size=16, channels=1),
    model=ModelConfig(arch="cnn", width=4, feature_dim=8),
    optim=OptimConfig(name="sgd", learning_rate=lr),
    train=TrainConfig(
      **{
        "epochs": 2,
        "batch_size": 16,
        "eval_batch_size": 32,
        "log_every": 100,
        "checkpoint_every": 2,
        "keep_checkpoints": 1,
        **train,
      }
    ),
  )


def finite(tree) -> bool:
  return all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(tree) if np.asarray(x).dtype.kind == "f")


@dataclasses.dataclass(frozen=True)
class _DivergeAt(Defense):
  """From optimiser step ``at`` (0-based) on, the loss is NaN and so are the gradients."""

  name: str = "diverge"
  at: int = 5

  def regularizer(self, out, labels, *, images, params, step, facts):
    scale = jnp.where(step >= self.at, jnp.nan, 0.0)
    return scale * jnp.sum(params["head"]["fc"]["kernel"] ** 2), {}


def test_divergence_stops_naming_step_and_quantity_and_keeps_the_good_checkpoint(tmp_path, splits):
  # Before: NaN was checked at log steps only (here: epoch ends, step 4 and 8) while checkpoints were
  # saved every 2 steps, so step 6 was saved from the NaN state and (keep=1) the good step 4 deleted.
  cfg = tiny(epochs=3)
  with pytest.raises(NonFiniteError) as e:
    train_classifier(cfg, tmp_path, splits=splits, defense=_DivergeAt(at=5), progress=False)
  msg = str(e.value)
  assert "[tiny] non-finite train/" in msg and "at step 6;" in msg and "nothing saved" in msg and "\n" not in msg
  ckpt = Checkpointer(tmp_path / "checkpoints", create=False)
  assert ckpt.all_steps() == [4]
  ckpt.close()
  clf = load_classifier(tmp_path)
  assert finite(clf.variables)
  # No metric line nor summary came from the bad state.
  assert all(line["step"] <= 4 for line in read_jsonl(tmp_path / "metrics.jsonl"))
  assert not (tmp_path / "summary.json").exists()


@pytest.mark.slow  # real MNIST through a CLI subprocess; the fast tier checks the same stop in-process (above)
def test_cli_exits_2_on_divergence(tmp_path, cache_root, data_root):
  r = subprocess.run(
    [
      sys.executable,
      str(REPO / "bin" / "jaxmi"),
      "train-classifier",
      "--config",
      str(MNIST_TARGET),
      "--workdir",
      str(tmp_path / "w"),
      "--no-progress",
      "data.max_per_class=16",
      "model.width=4",
      "model.feature_dim=8",
      "train.batch_size=16",
      "train.epochs=1",
      "train.checkpoint_every=1",
      "optim.learning_rate=1e30",
    ],
    capture_output=True,
    text=True,
    timeout=600,
    env=os.environ.copy(),
  )
  assert r.returncode == 2, r.stderr[-2000:]
  line = [l for l in r.stderr.splitlines() if l.startswith("jaxmi: error:")]
  assert len(line) == 1 and "[mnist_target] non-finite" in line[0] and "at step" in line[0], r.stderr[-2000:]
  assert "Traceback" not in r.stderr
  # Whatever checkpoint exists was saved from a finite state (load_classifier refuses non-finite ones).
  if list((tmp_path / "w" / "checkpoints").glob("[0-9]*")):
    assert finite(load_classifier(tmp_path / "w").variables)
  assert not (tmp_path / "w" / "summary.json").exists()


def test_a_nan_checkpoint_is_refused_on_load(tmp_path, splits):
  # Before: load_classifier (and `evaluate`) used NaN parameters, reporting chance accuracy with exit 0.
  train_classifier(tiny(epochs=1), tmp_path, splits=splits, progress=False)
  ckpt = Checkpointer(tmp_path / "checkpoints", keep=3)
  step = ckpt.latest_step()
  meta = ckpt.meta(step)
  state = ckpt.restore(None, meta, step)
  state["params"] = jax.tree.map(lambda x: np.full_like(x, np.nan), state["params"])
  ckpt.save(step + 1, state, meta, force=True)  # as an older jaxmi would have
  ckpt.close()
  with pytest.raises(CheckpointError, match="non-finite") as e:
    load_classifier(tmp_path)
  assert f"/{step + 1}" in str(e.value) and "\n" not in str(e.value)
  # Resuming training from it is refused too, instead of training on from NaN.
  with pytest.raises(CheckpointError, match="non-finite"):
    train_classifier(tiny(epochs=2), tmp_path, splits=splits, progress=False)


def _gan(**train):
  # Every GAN test here compiles the same program (only non-compiled fields differ), once per module.
  rng = np.random.default_rng(0)
  split = ArraySplit(
    rng.integers(0, 256, (32, 32, 32, 1), dtype=np.uint8), np.zeros(32, np.int32), np.zeros(32, np.int32)
  )
  cfg = GANExperimentConfig(
    name="g",
    data=DataConfig(image_size=32, channels=1),
    gan=GANConfig(base_width=4, stages=3, channels=1),
    train=GANTrainConfig(
      **{"epochs": 1, "batch_size": 4, "n_critic": 2, "log_every": 4, "checkpoint_every": 1, **train}
    ),
  )
  return cfg, Splits(split, split, split, 1, 1, "synthetic")


@pytest.mark.slow  # issue 14: the fast tier stays under 5 minutes; CI runs this in the slow tier
def test_gan_divergence_saves_nothing(tmp_path, monkeypatch):
  # Before: with checkpoint_every < log_every the NaN state was saved before any check saw it.
  import jaxmi.train.gan as gan_lib

  init = gan_lib.init_gan_state
  diverged = lambda *a, **k: dataclasses.replace(
    init(*a, **k), d_params=jax.tree.map(lambda x: jnp.full_like(x, jnp.nan), init(*a, **k).d_params)
  )
  monkeypatch.setattr(gan_lib, "init_gan_state", diverged)  # a critic that has diverged
  cfg, splits = _gan()
  with pytest.raises(NonFiniteError, match=r"\[g\] non-finite .* at step 1; nothing saved"):
    train_gan(cfg, tmp_path, splits=splits, progress=False)
  assert not list((tmp_path / "checkpoints").glob("[0-9]*"))
  assert not (tmp_path / "summary.json").exists() and not (tmp_path / "samples").exists()


def _flip_bytes_in_data(step_dir: Path):
  data = max((p for p in (step_dir / "state").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
  raw = bytearray(data.read_bytes())
  for i in range(len(raw) // 2, len(raw) // 2 + 8):
    raw[i] ^= 0xFF
  data.write_bytes(bytes(raw))


def test_corrupt_newest_checkpoint_falls_back_and_resume_replaces_it(tmp_path, splits, caplog):
  # Before: flipped bytes loaded silently (a damaged model, or an optimiser state of 3e38).
  cfg = tiny(keep_checkpoints=3)
  train_classifier(cfg, tmp_path / "full", splits=splits, progress=False)
  train_classifier(cfg, tmp_path / "hit", splits=splits, progress=False)
  assert sorted(int(p.name) for p in (tmp_path / "hit" / "checkpoints").glob("[0-9]*")) == [4, 6, 8]
  _flip_bytes_in_data(tmp_path / "hit" / "checkpoints" / "8")
  caplog.clear()
  clf = load_classifier(tmp_path / "hit")
  warned = [r.getMessage() for r in caplog.records if r.name.startswith("jaxmi") and r.levelno >= logging.WARNING]
  fallback = [l for l in warned if "/8 is corrupt" in l]
  assert len(fallback) == 1 and "falling back to step 6" in fallback[0], warned
  ckpt = Checkpointer(tmp_path / "full" / "checkpoints", create=False)
  step6 = ckpt.restore(None, ckpt.meta(6), 6)
  ckpt.close()
  for x, y in zip(jax.tree.leaves(clf.variables["params"]), jax.tree.leaves(step6["params"])):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  # Rerunning the training resumes from step 6 and replaces the corrupt step 8: same result as never corrupted.
  summary = train_classifier(cfg, tmp_path / "hit", splits=splits, progress=False)
  assert summary["resumed_from_step"] == 6
  a, b = load_classifier(tmp_path / "full"), load_classifier(tmp_path / "hit")
  for x, y in zip(jax.tree.leaves(a.variables), jax.tree.leaves(b.variables)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  # Nothing intact at all: one line.
  for step in (4, 6, 8):
    _flip_bytes_in_data(tmp_path / "hit" / "checkpoints" / str(step))
  with pytest.raises(CheckpointError, match="no intact checkpoint") as e:
    load_classifier(tmp_path / "hit")
  assert "\n" not in str(e.value)


_HOLD = """
import sys, time
from jaxmi.workdir import locked
with locked(sys.argv[1]):
  print("locked", flush=True)
  time.sleep(60)
"""


def test_second_writer_is_refused_and_a_killed_owner_releases(tmp_path):
  # Before: two processes on one workdir both ran and exited 0; one run's output was lost.
  workdir = tmp_path / "w"
  with locked(workdir):
    assert (workdir / ".lock").read_text().strip() == str(os.getpid())
    r = subprocess.run(
      [
        sys.executable,
        str(REPO / "bin" / "jaxmi"),
        "train-classifier",
        "--config",
        str(MNIST_TARGET),
        "--workdir",
        str(workdir),
      ],
      capture_output=True,
      text=True,
      timeout=600,
    )
    assert r.returncode == 2, r.stderr[-2000:]
    lines = [l for l in r.stderr.splitlines() if l.startswith("jaxmi: error:")]
    assert len(lines) == 1 and f"{workdir}: in use by another jaxmi process (pid {os.getpid()})" in lines[0], r.stderr
    assert sorted(p.name for p in workdir.iterdir()) == [".lock"]
  assert not workdir.exists()  # created for the lock, nothing written: removed again
  # kill -9 of the owner: the OS drops the lock.
  holder = subprocess.Popen(
    [sys.executable, "-c", _HOLD, str(workdir)],
    stdout=subprocess.PIPE,
    text=True,
    cwd=str(REPO),
    env={**os.environ, "PYTHONPATH": str(REPO)},
  )
  try:
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(WorkdirBusyError, match=f"pid {holder.pid}"):
      with locked(workdir):
        pass
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait()
  with locked(workdir):
    pass


def test_a_refused_command_leaves_no_workdir(tmp_path):
  workdir = tmp_path / "a" / "b"
  with pytest.raises(ConfigError):
    with locked(workdir):
      raise ConfigError("refused after locking")
  assert not (tmp_path / "a").exists()


def test_resume_with_a_changed_config_is_refused(tmp_path, splits):
  # Before: a note was logged and training carried on with a config neither run describes.
  cfg = tiny(epochs=2)
  with pytest.raises(Interrupted):
    train_classifier(cfg, tmp_path, splits=splits, progress=False, stop_at_step=3)
  changed = dataclasses.replace(cfg, optim=OptimConfig(name="sgd", learning_rate=0.5))
  with pytest.raises(ConfigError, match="optim.learning_rate.*--allow-config-change") as e:
    train_classifier(changed, tmp_path, splits=splits, progress=False)
  assert "\n" not in str(e.value)
  # Epochs may change; and the user may insist.
  longer = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=3))
  with pytest.raises(Interrupted):
    train_classifier(longer, tmp_path, splits=splits, progress=False, stop_at_step=5)
  assert train_classifier(changed, tmp_path, splits=splits, progress=False, allow_config_change=True)["steps"] == 8


def test_gan_resume_with_a_changed_config_is_refused(tmp_path):
  cfg, splits = _gan(epochs=2, log_every=2, checkpoint_every=2)
  with pytest.raises(Interrupted):
    train_gan(cfg, tmp_path, splits=splits, progress=False, stop_at_step=2)
  with pytest.raises(ConfigError, match="train.gp_weight"):
    train_gan(
      dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, gp_weight=1.0)),
      tmp_path,
      splits=splits,
      progress=False,
    )


def test_gan_epochs_and_batch_size_are_validated_before_writing(tmp_path):
  # Before: epochs=0 wrote an untrained GAN; batch_size=-2 was reported as -10 (x n_critic).
  rng = np.random.default_rng(0)
  split = ArraySplit(
    rng.integers(0, 256, (12, 32, 32, 1), dtype=np.uint8), np.zeros(12, np.int32), np.zeros(12, np.int32)
  )
  splits = Splits(split, split, split, 1, 1, "synthetic")
  base = GANExperimentConfig(
    name="g",
    data=DataConfig(image_size=32, channels=1),
    gan=GANConfig(base_width=4, stages=3, channels=1),
    train=GANTrainConfig(epochs=1, batch_size=4, n_critic=2),
  )
  with_train = lambda **kw: dataclasses.replace(base, train=dataclasses.replace(base.train, **kw))
  with pytest.raises(ConfigError, match="train.epochs: expected a positive integer, got 0"):
    train_gan(with_train(epochs=0), tmp_path / "g", splits=splits, progress=False)
  with pytest.raises(ConfigError, match=r"train.batch_size: expected a positive integer, got -2$"):
    train_gan(with_train(batch_size=-2), tmp_path / "g", splits=splits, progress=False)
  with pytest.raises(ConfigError, match=r"train.batch_size x train.n_critic = 4 x 5 = 20 .* has 12"):
    train_gan(with_train(n_critic=5), tmp_path / "g", splits=splits, progress=False)
  assert not (tmp_path / "g").exists()


def test_loading_a_mistyped_workdir_creates_nothing(tmp_path):
  # Before: Checkpointer(create=True) made <path>/checkpoints while failing to load.
  with pytest.raises(
    CheckpointError,
    match=r"runs_typo: no trained target classifier here \(no checkpoints/\); "
    r"train one with bin/jaxmi train-classifier",
  ):
    load_classifier(tmp_path / "runs_typo", expect_role="target")
  with pytest.raises(CheckpointError, match="no trained GAN here.*train-gan"):
    load_gan(tmp_path / "gan_typo")
  assert list(tmp_path.iterdir()) == []


@dataclasses.dataclass(frozen=True)
class _UnlearnAfter(Defense):
  """From step ``at`` on, the loss also pulls towards the wrong class: test accuracy collapses after its peak."""

  name: str = "unlearn"
  at: int = 24

  def regularizer(self, out, labels, *, images, params, step, facts):
    wrong = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(out.logits, 1 - labels))
    return jnp.where(step >= self.at, 2.0 * wrong, 0.0), {}


def test_best_test_release_keeps_the_best_epoch_and_resumes_exactly(tmp_path, splits):
  # 8 steps per epoch; the collapse starts in epoch 4 (measured: test acc 0.5, 1, 1, 0, 0).
  run = lambda **kw: tiny(lr=0.2, epochs=5, batch_size=8, log_every=8, **kw)
  summary = train_classifier(
    run(release="best_test"), tmp_path / "best", splits=splits, defense=_UnlearnAfter(), progress=False
  )
  tests = {l["epoch"]: l["test/acc"] for l in read_jsonl(tmp_path / "best" / "metrics.jsonl") if "test/acc" in l}
  best_epoch = int(max(tests, key=lambda e: (tests[e], -e)))
  assert tests[5.0] < tests[best_epoch]  # the fault this option exists for: the last epoch is worse
  assert summary["released"] == "best_test" and summary["released_epoch"] == best_epoch
  assert summary["natural_accuracy"] == tests[best_epoch] and summary["last_epoch_accuracy"] == tests[5.0]
  released = load_classifier(tmp_path / "best")
  ckpt = Checkpointer(tmp_path / "best" / "best", create=False)
  saved = ckpt.restore(None, ckpt.meta())
  ckpt.close()
  for x, y in zip(jax.tree.leaves(released.variables["params"]), jax.tree.leaves(saved["params"])):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  # Resume exact: interrupted mid-epoch after the best epoch, the released model is the same.
  cut = run(release="best_test")
  with pytest.raises(Interrupted):
    train_classifier(
      cut, tmp_path / "cut", splits=splits, defense=_UnlearnAfter(), progress=False, stop_at_step=8 * best_epoch + 3
    )
  assert (
    train_classifier(cut, tmp_path / "cut", splits=splits, defense=_UnlearnAfter(), progress=False)["released_epoch"]
    == best_epoch
  )
  for x, y in zip(jax.tree.leaves(released.variables), jax.tree.leaves(load_classifier(tmp_path / "cut").variables)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  # The default releases the last epoch, and says so.
  last = train_classifier(run(), tmp_path / "last", splits=splits, defense=_UnlearnAfter(), progress=False)
  assert last["released"] == "last" and last["natural_accuracy"] == tests[5.0]
