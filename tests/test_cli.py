"""The command line on bad input: one line on stderr, exit status 2, nothing overwritten."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
JAXMI = [sys.executable, str(REPO / "bin" / "jaxmi")]
MNIST_TARGET = REPO / "configs/classifier.py:role=target,data=mnist"


def run(*args, env=None, cwd=None):
  full_env = {**os.environ, **(env or {})}
  return subprocess.run([*JAXMI, *map(str, args)], capture_output=True, text=True, env=full_env, cwd=cwd, timeout=600)


def assert_one_line_error(result, *fragments):
  assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
  lines = [l for l in result.stderr.splitlines() if l.startswith("jaxmi: error:")]
  assert len(lines) == 1, result.stderr[-2000:]
  assert "Traceback" not in result.stderr
  for fragment in fragments:
    assert fragment in lines[0], lines[0]


def test_unknown_config_field(tmp_path):
  r = run("train-classifier", "--config", MNIST_TARGET, "--workdir", tmp_path / "w", "train.epoch=1")
  assert_one_line_error(r, "classifier.py:role=target,data=mnist", "unknown field 'train.epoch'")
  assert not (tmp_path / "w").exists()


def test_unknown_dataset(tmp_path):
  r = run("train-classifier", "--config", MNIST_TARGET, "--workdir", tmp_path / "w", "data.dataset=cifar11")
  assert_one_line_error(r, "data.dataset", "cifar11", "mnist")


def test_missing_data_directory(tmp_path):
  r = run(
    "train-classifier",
    "--config",
    MNIST_TARGET,
    "--workdir",
    tmp_path / "w",
    "--data-dir",
    tmp_path / "nothing_here",
    "--cache-dir",
    tmp_path / "cache",
    "data.download=false",
  )
  assert_one_line_error(r, str(tmp_path / "nothing_here" / "mnist"))


def test_corrupt_data_file(tmp_path, data_root):
  raw = tmp_path / "raw" / "mnist"
  shutil.copytree(data_root / "mnist", raw)
  target = raw / "t10k-labels-idx1-ubyte.gz"
  target.write_bytes(target.read_bytes()[:100])
  r = run(
    "train-classifier",
    "--config",
    MNIST_TARGET,
    "--workdir",
    tmp_path / "w",
    "--data-dir",
    tmp_path / "raw",
    "--cache-dir",
    tmp_path / "cache",
    "data.download=false",
  )
  assert_one_line_error(r, "t10k-labels-idx1-ubyte.gz")


def test_checksum_mismatch(tmp_path, data_root):
  import gzip

  raw = tmp_path / "raw" / "mnist"
  shutil.copytree(data_root / "mnist", raw)
  target = raw / "t10k-labels-idx1-ubyte.gz"
  data = bytearray(gzip.decompress(target.read_bytes()))
  data[-1] = (data[-1] + 1) % 10  # a valid file whose content is not MNIST's
  target.write_bytes(gzip.compress(bytes(data)))
  r = run(
    "train-classifier",
    "--config",
    MNIST_TARGET,
    "--workdir",
    tmp_path / "w",
    "--data-dir",
    tmp_path / "raw",
    "--cache-dir",
    tmp_path / "cache",
    "data.download=false",
  )
  assert_one_line_error(r, "t10k-labels-idx1-ubyte.gz", "27ae3e4e09519cfbb04c329615203637")


@pytest.mark.slow  # three CLI runs, one training on real MNIST
def test_checkpoint_from_another_architecture_is_refused(tmp_path, data_root):
  # A fresh cache, so the first run prepares MNIST and shows that --no-progress silences a training's bars and
  # TFDS's preparation bars alike (issue 13 item 21; prepare-data is checked below).
  cache = tmp_path / "cache"
  common = [
    "--cache-dir",
    cache,
    "--no-progress",
    "data.max_per_class=40",
    "train.epochs=1",
    "train.batch_size=40",
  ]
  first = run(
    "train-classifier",
    "--config",
    MNIST_TARGET,
    "--workdir",
    tmp_path / "w",
    *common,
    "model.width=8",
    "model.feature_dim=16",
  )
  assert first.returncode == 0, first.stderr[-3000:]
  assert (cache / "tfds" / "mnist").is_dir()
  assert "Generating" not in first.stderr and "%|" not in first.stderr, first.stderr[-3000:]
  before = {p: p.stat().st_mtime_ns for p in (tmp_path / "w").rglob("*") if p.is_file()}
  r = run(
    "train-classifier",
    "--config",
    REPO / "configs/classifier.py:role=eval,data=mnist",
    "--workdir",
    tmp_path / "w",
    *common,
  )
  assert_one_line_error(r, str(tmp_path / "w" / "checkpoints"), "arch=cnn", "arch=resnet")
  assert {p: p.stat().st_mtime_ns for p in (tmp_path / "w").rglob("*") if p.is_file()} == before
  ok = run("evaluate", tmp_path / "w", "--cache-dir", cache)
  assert ok.returncode == 0 and "private test top-1" in ok.stdout, ok.stderr[-2000:]


@pytest.mark.slow  # two CLI trainings on real MNIST, 400 steps
def test_ctrl_c_saves_a_checkpoint_and_the_rerun_resumes(tmp_path, cache_root):
  import signal
  import time

  args = [
    *JAXMI,
    "train-classifier",
    "--config",
    str(MNIST_TARGET),
    "--workdir",
    str(tmp_path / "w"),
    "--cache-dir",
    str(cache_root),
    "--no-progress",
    "data.max_per_class=100",
    "train.batch_size=50",
    "train.epochs=40",
    "train.log_every=2",
    "train.checkpoint_every=1000",
    "model.width=8",
  ]
  proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  metrics = tmp_path / "w" / "metrics.jsonl"
  deadline = time.time() + 300
  while not (metrics.exists() and metrics.read_text().strip()) and time.time() < deadline and proc.poll() is None:
    time.sleep(0.2)
  proc.send_signal(signal.SIGINT)
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == 130, err[-2000:]
  assert "interrupted at step" in err and "Traceback" not in err
  steps = [int(p.name) for p in (tmp_path / "w" / "checkpoints").iterdir() if p.name.isdigit()]
  # checkpoint_every is larger than the run: the only checkpoint is the one Ctrl-C wrote.
  assert len(steps) == 1 and 0 < steps[0] < 400
  again = subprocess.run(args, capture_output=True, text=True, timeout=600)
  assert again.returncode == 0, again.stderr[-2000:]
  assert f"resuming from {tmp_path / 'w' / 'checkpoints'}/{steps[0]}" in again.stdout


def test_enum_typo_is_refused_before_any_data_is_prepared(tmp_path):
  # The data directory is empty: before, the missing-MNIST error came first and the typo went unseen.
  r = run(
    "train-classifier",
    "--config",
    MNIST_TARGET,
    "--workdir",
    tmp_path / "w",
    "--data-dir",
    tmp_path / "empty",
    "--cache-dir",
    tmp_path / "cache",
    "data.download=false",
    "optim.name=sgdd",
  )
  assert_one_line_error(r, "classifier.py:role=target,data=mnist", "field 'optim.name'", "sgdd")
  assert not (tmp_path / "w").exists() and not (tmp_path / "cache").exists()


def test_overrides_after_options_are_applied(tmp_path):
  # Before: the override after --workdir failed with argparse's usage; now it reaches the config loader.
  r = run("train-classifier", "--config", MNIST_TARGET, "--workdir", tmp_path / "w", "train.epoch=1")
  assert_one_line_error(r, "classifier.py:role=target,data=mnist", "unknown field 'train.epoch'")
  from jaxmi.cli import parse_args

  args = parse_args(["attack", "--config", "C", "--workdir", "W", "inversion.steps=3", "--overwrite", "seed=1"])
  assert args.overrides == ["inversion.steps=3", "seed=1"] and args.overwrite and args.workdir == "W"
  bad = run("train-classifier", "--config", MNIST_TARGET, "--workdir", tmp_path / "w", "--bogus", "1")
  assert bad.returncode == 2 and "unrecognized arguments: --bogus" in bad.stderr


def test_data_dir_flag_wins_over_the_config(tmp_path, data_root):
  # The config names the real MNIST; the flag names an empty folder, and the flag wins (before: ignored).
  r = run(
    "train-classifier",
    "--config",
    MNIST_TARGET,
    "--workdir",
    tmp_path / "w",
    "--data-dir",
    tmp_path / "empty",
    "--cache-dir",
    tmp_path / "cache",
    "--no-progress",
    f"data.data_dir={data_root / 'mnist'}",
    "data.download=false",
    "data.max_per_class=20",
    "train.epochs=1",
    "train.batch_size=20",
    "model.width=8",
  )
  assert_one_line_error(r, str(tmp_path / "empty" / "mnist"))
  assert "overrides data.data_dir" in r.stderr


def make_faces(root):
  rng = np.random.default_rng(0)
  for name in ("ann", "ben"):
    (root / name).mkdir(parents=True)
    for i in range(3):
      Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(root / name / f"{i}.png")


def test_prepare_data_prepares_what_a_run_of_that_size_uses(tmp_path, monkeypatch):
  from jaxmi import data
  from jaxmi.data import builders

  root, cache = tmp_path / "faces", tmp_path / "cache"
  make_faces(root)
  # Before: no --image-size/--channels, and it prepared 64x64 RGB, which no run of another size reused.
  r = run(
    "prepare-data",
    "image_folder",
    "--root",
    root,
    "--cache-dir",
    cache,
    "--image-size",
    "16",
    "--channels",
    "3",
    "--no-progress",
  )
  assert r.returncode == 0, r.stderr[-2000:]
  assert "identity numbers:" in r.stdout
  assert "Generating" not in r.stderr and "%|" not in r.stderr  # --no-progress silences TFDS's bars too
  mapping = Path(r.stdout.split("identity numbers: ")[1].strip())
  assert mapping.read_text().splitlines()[1:] == ["0,ann,3", "1,ben,3"]

  def fail(*args, **kwargs):
    raise AssertionError("prepared again")

  monkeypatch.setattr(builders.ImageFolder, "_split_generators", fail)
  splits = data.load_splits(
    data.DataConfig(
      dataset="image_folder",
      data_dir=str(root),
      cache_dir=str(cache),
      image_size=16,
      channels=3,
      private_ids=(0,),
      public_ids=(1,),
    )
  )
  assert splits.private_train.images.shape[1:] == (16, 16, 3)


def test_commands_that_write_no_workdir_refuse_the_workdir_flag(capsys):
  """Issue 14: evaluate, fisher and prepare-data silently ignored --workdir; now argparse refuses it (exit 2)."""
  import pytest

  from jaxmi.cli import parse_args

  for argv in (["evaluate", "runs/x"], ["fisher", "runs/x"], ["prepare-data", "mnist"]):
    with pytest.raises(SystemExit) as e:
      parse_args([*argv, "--workdir", "elsewhere"])
    assert e.value.code == 2 and "--workdir" in capsys.readouterr().err, argv
    assert not hasattr(parse_args(argv), "workdir")
  assert parse_args(["demo", "--workdir", "w"]).workdir == "w"
