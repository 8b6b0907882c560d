"""The run skeleton: the Workdir recorder every command writes through, and the CLI's logging."""

import json
import logging

import numpy as np
import pytest

from jaxmi import cli, plots
from jaxmi.workdir import Workdir


def test_metrics_keep_the_lines_of_earlier_runs_and_this_one(tmp_path):
  (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 1, "train/loss": 2.0}) + "\n")  # a run before a resume
  workdir = Workdir(tmp_path)
  workdir.metrics.write({"step": 2, "train/loss": np.float32(1.5)})
  assert [r["step"] for r in workdir.metrics.records] == [1, 2]
  assert workdir.metrics.records[1]["train/loss"] == 1.5
  on_disk = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert on_disk == workdir.metrics.records  # what the plots get is what the file says


def test_a_result_that_cannot_be_written_leaves_the_previous_file_whole(tmp_path):
  workdir = Workdir(tmp_path)
  workdir.write_json("summary.json", {"natural_accuracy": 0.9})
  with pytest.raises(TypeError):
    workdir.write_json("summary.json", {"natural_accuracy": object()})  # not JSON: fails mid-way
  assert json.loads((tmp_path / "summary.json").read_text()) == {"natural_accuracy": 0.9}


def test_the_cli_prints_progress_to_stdout_and_warnings_to_stderr_once_each(capsys):
  logger = logging.getLogger("jaxmi")
  before = (list(logger.handlers), logger.level, logger.propagate)
  restore_outer = cli._log_to_stdout()
  restore_inner = cli._log_to_stdout()  # main run twice in one process must not print every line twice
  try:
    logging.getLogger("jaxmi.train.classifier").info("[target] resuming from step 40")
    logging.getLogger("jaxmi.train.checkpoint").warning("jaxmi: runs/t/checkpoints/8 is corrupt")
    logging.getLogger("jaxmi.train.classifier").debug("not shown")
    captured = capsys.readouterr()
    assert captured.out == "[target] resuming from step 40\n"
    assert captured.err == "jaxmi: runs/t/checkpoints/8 is corrupt\n"
  finally:
    restore_inner()
    restore_outer()
  assert (list(logger.handlers), logger.level, logger.propagate) == before


def test_plots_never_leave_a_half_written_png(tmp_path, monkeypatch):
  records = [{"step": s, "train/loss": 1.0 / s, "train/acc": 0.5} for s in (1, 2)] + [{"step": 2, "test/acc": 0.6}]
  plots.training_curves(records, tmp_path / "curves.png", "first")
  first = (tmp_path / "curves.png").read_bytes()

  import matplotlib.figure

  def killed(self, path, **kwargs):
    open(path, "wb").write(b"\x89PNG half")  # what a kill during the write leaves
    raise KeyboardInterrupt

  monkeypatch.setattr(matplotlib.figure.Figure, "savefig", killed)
  with pytest.raises(KeyboardInterrupt):
    plots.training_curves(records, tmp_path / "curves.png", "second")
  assert (tmp_path / "curves.png").read_bytes() == first


def test_distillation_writes_its_summary_once_and_complete(tiny, tmp_path, monkeypatch):
  """Issue 14: distill wrote summary.json twice (the trainer's, then its own with the private accuracy added)."""
  from test_attacks import TINY_DATA

  from jaxmi import records
  from jaxmi.nets import ModelConfig
  from jaxmi.train import ClassifierConfig, OptimConfig, TrainConfig, evaluate, load_classifier, make_eval_step
  from jaxmi.train.distill import distill_surrogate

  root, splits = tiny
  writes = []
  real_write = records.write_json
  monkeypatch.setattr(records, "write_json", lambda path, data: (writes.append(dict(data)), real_write(path, data)))
  student = ClassifierConfig(
    name="student",
    role="surrogate",
    data=TINY_DATA,
    model=ModelConfig(arch="cnn", width=4, feature_dim=8),
    optim=OptimConfig(learning_rate=0.05),
    train=TrainConfig(epochs=1, batch_size=8, seed=3),
  )
  summary = distill_surrogate(student, tmp_path / "s", str(root / "target"), splits=splits, progress=False)
  assert len(writes) == 1
  assert json.loads((tmp_path / "s" / "summary.json").read_text()) == records._jsonable(writes[0])
  assert {"public_agreement", "natural_accuracy", "teacher"} <= set(summary)
  # natural_accuracy is the released surrogate's accuracy on the PRIVATE test split, not its public agreement.
  released = load_classifier(tmp_path / "s")
  private = evaluate(make_eval_step(released.module), released.variables, splits.private_test, 64)
  assert summary["natural_accuracy"] == pytest.approx(private["acc"], abs=0)
