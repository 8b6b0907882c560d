"""The command line on bad input: one line on stderr, exit status 2, nothing overwritten."""

import os
import shutil
import subprocess
import sys
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
JAXMI = [sys.executable, str(REPO / "bin" / "jaxmi")]


def run(*args, env=None, cwd=None):
  full_env = {**os.environ, **(env or {})}
  return subprocess.run([*JAXMI, *map(str, args)], capture_output=True, text=True, env=full_env, cwd=cwd,
                        timeout=600)


def assert_one_line_error(result, *fragments):
  assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
  lines = [l for l in result.stderr.splitlines() if l.startswith("jaxmi: error:")]
  assert len(lines) == 1, result.stderr[-2000:]
  assert "Traceback" not in result.stderr
  for fragment in fragments:
    assert fragment in lines[0], lines[0]


def test_unknown_config_field(tmp_path):
  r = run("train-classifier", "--config", REPO / "configs/mnist_target.py", "--workdir", tmp_path / "w",
          "train.epoch=1")
  assert_one_line_error(r, "mnist_target.py", "unknown field 'train.epoch'")
  assert not (tmp_path / "w").exists()


def test_unknown_dataset(tmp_path):
  r = run("train-classifier", "--config", REPO / "configs/mnist_target.py", "--workdir", tmp_path / "w",
          "data.dataset=cifar11")
  assert_one_line_error(r, "data.dataset", "cifar11", "mnist")


def test_missing_data_directory(tmp_path):
  r = run("train-classifier", "--config", REPO / "configs/mnist_target.py", "--workdir", tmp_path / "w",
          "--data-dir", tmp_path / "nothing_here", "--cache-dir", tmp_path / "cache", "data.download=false")
  assert_one_line_error(r, str(tmp_path / "nothing_here" / "mnist"))


def test_corrupt_data_file(tmp_path, data_root):
  raw = tmp_path / "raw" / "mnist"
  shutil.copytree(data_root / "mnist", raw)
  target = raw / "t10k-labels-idx1-ubyte.gz"
  target.write_bytes(target.read_bytes()[:100])
  r = run("train-classifier", "--config", REPO / "configs/mnist_target.py", "--workdir", tmp_path / "w",
          "--data-dir", tmp_path / "raw", "--cache-dir", tmp_path / "cache", "data.download=false")
  assert_one_line_error(r, "t10k-labels-idx1-ubyte.gz")


def test_checksum_mismatch(tmp_path, data_root):
  import gzip
  raw = tmp_path / "raw" / "mnist"
  shutil.copytree(data_root / "mnist", raw)
  target = raw / "t10k-labels-idx1-ubyte.gz"
  data = bytearray(gzip.decompress(target.read_bytes()))
  data[-1] = (data[-1] + 1) % 10  # a valid file whose content is not MNIST's
  target.write_bytes(gzip.compress(bytes(data)))
  r = run("train-classifier", "--config", REPO / "configs/mnist_target.py", "--workdir", tmp_path / "w",
          "--data-dir", tmp_path / "raw", "--cache-dir", tmp_path / "cache", "data.download=false")
  assert_one_line_error(r, "t10k-labels-idx1-ubyte.gz", "27ae3e4e09519cfbb04c329615203637")


def test_checkpoint_from_another_architecture_is_refused(tmp_path, cache_root):
  common = ["--cache-dir", cache_root, "--no-progress", "data.max_per_class=40", "train.epochs=1",
            "train.batch_size=40"]
  first = run("train-classifier", "--config", REPO / "configs/mnist_target.py", "--workdir", tmp_path / "w",
              *common, "model.width=8", "model.feature_dim=16")
  assert first.returncode == 0, first.stderr[-3000:]
  before = {p: p.stat().st_mtime_ns for p in (tmp_path / "w").rglob("*") if p.is_file()}
  r = run("train-classifier", "--config", REPO / "configs/mnist_eval.py", "--workdir", tmp_path / "w", *common)
  assert_one_line_error(r, str(tmp_path / "w" / "checkpoints"), "arch=cnn", "arch=resnet")
  assert {p: p.stat().st_mtime_ns for p in (tmp_path / "w").rglob("*") if p.is_file()} == before
  ok = run("evaluate", tmp_path / "w", "--cache-dir", cache_root)
  assert ok.returncode == 0 and "private test top-1" in ok.stdout, ok.stderr[-2000:]


def test_ctrl_c_saves_a_checkpoint_and_the_rerun_resumes(tmp_path, cache_root):
  import signal
  import time
  args = [*JAXMI, "train-classifier", "--config", str(REPO / "configs/mnist_target.py"), "--workdir", str(tmp_path / "w"),
          "--cache-dir", str(cache_root), "--no-progress", "data.max_per_class=100", "train.batch_size=50",
          "train.epochs=40", "train.log_every=2", "train.checkpoint_every=1000", "model.width=8"]
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
