"""Faults of ``bin/jaxmi attack`` (issue 13, items 6, 14, 16, 18, 19, 20, 21): each test reproduces the fault.

All run on tiny models built in seconds (tests/test_attacks.py, ``make_tiny_workdirs``): they check what the
attack keeps, writes and says, not how well it works.
"""

import csv
import dataclasses
import json
import logging
import signal
import threading

import jax
import numpy as np
import pytest

from jaxmi.attacks import ExecutionConfig, InversionConfig, InversionResult, build_gmi
from jaxmi.attacks.engine import select_restarts
from jaxmi.attacks.resume import AttackState
from jaxmi.experiments.attack import run_attack
from jaxmi.data.splits import ArraySplit
from jaxmi.errors import CheckpointError, ConfigError, Interrupted, JaxmiError, NonFiniteError
from jaxmi import plots

from test_attacks import tiny_attack, toy_models


def load_outputs(workdir):
  with np.load(workdir / "latents.npz") as f:
    arrays = {k: f[k] for k in f.files}
  return json.loads((workdir / "results.json").read_text()), arrays


def test_interrupted_attack_resumes_to_exactly_the_uninterrupted_result(tiny, tmp_path, caplog):
  """Item 16: an attack stopped in its second chunk continues from its saved state, recomputes no finished
  chunk and no saved step, and ends with the bit-identical result (the computation is deterministic)."""
  root, splits = tiny
  # 3 identities x 2 restarts = 6 latents in 3 chunks of 2; 8 steps, state saved every 4.
  cfg = tiny_attack(root, max_batch=2, checkpoint_every=4)
  whole = run_attack(cfg, tmp_path / "whole", splits=splits, progress=False)
  assert whole["optimisation_steps_run"] == 24 and not (tmp_path / "whole" / "attack_state").exists()

  part = tmp_path / "resumed"
  # Stopped at step 6 of chunk 1 (as a kill there): chunk 0 is done, chunk 1 was saved at step 4.
  with pytest.raises(Interrupted, match="at step 6 of chunk 1; .*run the same command again to resume") as stopped:
    run_attack(cfg, part, splits=splits, progress=False, stop_at_step=8 + 6)
  assert stopped.value.step == 8 + 6
  state = tmp_path / "resumed" / "attack_state"
  assert sorted(p.name for p in state.iterdir()) == ["chunk_00000.npz", "chunk_00001.npz"]
  with np.load(state / "chunk_00001.npz") as f:
    assert int(f["step"]) == 4 and not bool(f["done"])
  assert not (tmp_path / "resumed" / "results.json").exists()

  caplog.set_level(logging.INFO, logger="jaxmi")
  caplog.clear()
  resumed = run_attack(cfg, part, splits=splits, progress=False)
  assert any("resuming from the attack state" in line for line in caplog.messages), caplog.messages
  assert resumed["optimisation_steps_run"] == 4 + 8  # chunk 1 from step 4, chunk 2 whole, chunk 0 not at all
  assert resumed["compilations"] == 1  # a restored carry is laid out as a started one
  (a, a_arrays), (b, b_arrays) = load_outputs(tmp_path / "whole"), load_outputs(tmp_path / "resumed")
  for key in a_arrays:
    np.testing.assert_array_equal(a_arrays[key], b_arrays[key], err_msg=key)
  for key in ("acc1", "knn_dist", "target_confidence", "feature_fid", "prior_baseline"):
    assert a[key] == b[key], key
  assert not state.exists()  # removed once results.json is written


def test_ctrl_c_saves_the_chunk_at_its_log_interval_and_the_rerun_matches_an_uninterrupted_run(tmp_path):
  """Issue 14, item 4: Ctrl-C during an attack stops at the end of the log interval (never with a donated carry
  half-updated), saves the chunk's carry there although no checkpoint is due, and raises ``Interrupted`` with the
  step; the rerun continues from that step to the uninterrupted result. Before, a plain KeyboardInterrupt left
  from wherever it landed and the rerun redid the chunk from its last checkpoint."""
  if threading.current_thread() is not threading.main_thread():
    pytest.skip("Python runs signal handlers in the main thread only")
  models, variables = toy_models()
  cfg = InversionConfig(steps=8, restarts=2, learning_rate=0.05)
  # 3 identities x 2 restarts in chunks of 4: 2 chunks of 4 log intervals; no checkpoint due before a chunk ends.
  inv = build_gmi(models, 100, cfg, ExecutionConfig(max_batch=4, log_every=2, unroll=2, checkpoint_every=8))
  whole = inv.run(variables, [0, 1, 2])
  calls = []

  def ctrl_c_in_chunk_1_at_step_4(latent_steps, parts):
    calls.append(latent_steps)
    if len(calls) == 4 + 2:
      signal.raise_signal(signal.SIGINT)

  handler = signal.getsignal(signal.SIGINT)
  with pytest.raises(KeyboardInterrupt) as stopped:
    inv.run(variables, [0, 1, 2], progress=ctrl_c_in_chunk_1_at_step_4, state=AttackState(tmp_path, "fp", 8))
  assert signal.getsignal(signal.SIGINT) is handler
  assert isinstance(stopped.value, Interrupted) and stopped.value.step == 8 + 4, repr(stopped.value)
  assert "at step 4 of chunk 1; state in " in str(stopped.value)
  with np.load(tmp_path / "chunk_00001.npz") as f:
    assert int(f["step"]) == 4 and not bool(f["done"])

  resumed = inv.run(variables, [0, 1, 2], state=AttackState(tmp_path, "fp", 8))
  assert resumed.stats.steps_run == 4  # chunk 1 from step 4; chunk 0 was finished
  for name in ("latents", "images", "target_logit", "best_restart", "loss_curve"):
    np.testing.assert_array_equal(getattr(resumed, name), getattr(whole, name), err_msg=name)
  for k, v in whole.loss_parts.items():
    np.testing.assert_array_equal(resumed.loss_parts[k], v, err_msg=k)


def test_a_kill_while_a_state_file_is_being_written_leaves_nothing_a_rerun_would_read(tiny, tmp_path, monkeypatch):
  """Item 16, found by CI: a SIGKILL during ``np.savez`` left ``chunk_00001.npz.tmp.npz`` half-written, the
  rerun's ``chunk_*.npz`` glob read it and crashed with BadZipFile. Here the write dies half-way (as a kill
  would); the rerun must resume from the last complete file, and a damaged complete file is recomputed."""
  root, splits = tiny
  cfg = tiny_attack(root, max_batch=2, checkpoint_every=4)
  whole = run_attack(cfg, tmp_path / "whole", splits=splits, progress=False)

  part = tmp_path / "killed"
  real_savez, calls = np.savez, []

  def dies_half_way(file, **arrays):
    calls.append(1)
    if len(calls) < 3:
      return real_savez(file, **arrays)
    file.write(b"PK\x03\x04 half a zip")  # what a kill leaves on disk
    raise KeyboardInterrupt

  monkeypatch.setattr(np, "savez", dies_half_way)
  with pytest.raises(KeyboardInterrupt):
    run_attack(cfg, part, splits=splits, progress=False)
  monkeypatch.setattr(np, "savez", real_savez)
  state = tmp_path / "killed" / "attack_state"
  left = sorted(p.name for p in state.iterdir())
  assert any(name.endswith(".tmp") for name in left), left  # the fault is reproduced: a half-written file
  assert all(name.startswith("chunk_") for name in left if name.endswith(".npz"))

  # A complete file damaged on disk (truncated) is not trusted: its chunk starts over.
  damaged = sorted(state.glob("chunk_*.npz"))[-1]
  damaged.write_bytes(damaged.read_bytes()[:50])
  resumed = run_attack(cfg, part, splits=splits, progress=False)
  assert resumed is not None and not state.exists()
  (a, a_arrays), (b, b_arrays) = load_outputs(tmp_path / "whole"), load_outputs(tmp_path / "killed")
  for key in a_arrays:
    np.testing.assert_array_equal(a_arrays[key], b_arrays[key], err_msg=key)
  assert a["acc1"] == b["acc1"] and whole["acc1"] == b["acc1"]


def test_saved_state_of_another_config_is_refused(tiny, tmp_path, caplog):
  root, splits = tiny
  cfg, workdir = tiny_attack(root, max_batch=2, checkpoint_every=4), tmp_path / "a"
  with pytest.raises(Interrupted):
    run_attack(cfg, workdir, splits=splits, progress=False, stop_at_step=6)
  other = dataclasses.replace(cfg, inversion=dataclasses.replace(cfg.inversion, learning_rate=0.01))
  with pytest.raises(ConfigError, match=r"attack_state: holds the saved state of an attack with another config"):
    run_attack(other, workdir, splits=splits, progress=False)
  # Another chunk layout with the same config: refused too, never mixed.
  relaid = dataclasses.replace(cfg, execution=dataclasses.replace(cfg.execution, max_batch=4))
  with pytest.raises(ConfigError, match=r"another chunk layout \(latents per chunk 2"):
    run_attack(relaid, workdir, splits=splits, progress=False)
  caplog.set_level(logging.INFO, logger="jaxmi")
  assert run_attack(other, workdir, splits=splits, progress=False, overwrite=True)["acc1"] is not None
  assert any("discarding" in line for line in caplog.messages)


def test_results_json_is_written_last(tiny, tmp_path, monkeypatch):
  """Item 16: killed while writing the plots, the workdir must not hold a results.json that the rerun refuses."""
  root, splits = tiny
  cfg = tiny_attack(root)

  def killed(*args, **kwargs):
    raise KeyboardInterrupt

  monkeypatch.setattr(plots, "loss_terms", killed)
  with pytest.raises(KeyboardInterrupt):
    run_attack(cfg, tmp_path / "w", splits=splits, progress=False)
  assert not (tmp_path / "w" / "results.json").exists()
  monkeypatch.undo()
  run_attack(cfg, tmp_path / "w", splits=splits, progress=False)  # the rerun completes the workdir
  assert {"results.json", "latents.npz", "per_identity.csv", "grid.png", "loss.png"} <= {
    p.name for p in (tmp_path / "w").iterdir()
  }


def test_diverging_attack_stops_naming_the_step_and_keeps_nothing_from_it(tiny, tmp_path):
  """Item 14: KEDMI with an absurd learning rate (no clamp) overflows after one step; the run must stop
  with one line naming the step and quantity, exit code 2 (a JaxmiError), no results and no state
  saved from the non-finite step (the state saved at step 1 is finite)."""
  root, splits = tiny
  cfg = dataclasses.replace(
    tiny_attack(
      root,
      optimizer="adam",
      learning_rate=1e30,
      draw_clamp=0.0,
      eval_draws=2,
      log_every=1,
      checkpoint_every=1,
    ),
    attack="kedmi",
  )
  one_line = r"^\[tiny\] non-finite \w+ loss at step \d+ \(identity \d, restart \d\)$"
  with pytest.raises(NonFiniteError, match=one_line) as e:
    run_attack(cfg, tmp_path / "nan", splits=splits, progress=False)
  assert isinstance(e.value, JaxmiError) and "\n" not in str(e.value)
  assert not (tmp_path / "nan" / "results.json").exists()
  step = int(str(e.value).split("at step ")[1].split()[0])
  for path in (tmp_path / "nan" / "attack_state").glob("*.npz"):
    with np.load(path) as f:
      assert int(f["step"]) < step
      assert all(np.all(np.isfinite(f[k])) for k in f.files if k.startswith("carry_"))


def test_missing_models_are_named_by_role_with_the_command_and_nothing_is_created(tiny, tmp_path):
  """Item 21: not just '.../checkpoints: no checkpoint found'."""
  root, splits = tiny
  cfg = tiny_attack(root)
  cases = [
    ("target", "target: .*: no trained target found .*bin/jaxmi train-classifier"),
    ("evaluator", "evaluator: .*: no trained evaluation model found .*bin/jaxmi train-classifier"),
    ("gan", "gan: .*: no trained GAN prior found .*bin/jaxmi train-gan"),
    ("surrogates", "surrogates: .*: no trained surrogate found .*bin/jaxmi distill"),
  ]
  for field, message in cases:
    missing = tmp_path / f"no_{field}"
    value = (str(missing),) if field == "surrogates" else str(missing)
    with pytest.raises(CheckpointError, match=message):
      run_attack(dataclasses.replace(cfg, **{field: value}), tmp_path / "a", splits=splits, progress=False)
    assert not missing.exists()
  assert not (tmp_path / "a").exists()


def test_lomma_with_an_empty_public_split_names_the_field(tiny, tmp_path):
  """Item 18: was a TypeError deep inside p_reg's batched apply."""
  root, splits = tiny
  empty = ArraySplit(
    images=splits.public.images[:0], labels=splits.public.labels[:0], identities=splits.public.identities[:0]
  )
  cfg = tiny_attack(root, identity_loss="logit", feature_reg_weight=100.0)
  with pytest.raises(ConfigError, match=r"^data.public_ids: the target's public split .* has no images; LOMMA"):
    run_attack(cfg, tmp_path / "a", splits=dataclasses.replace(splits, public=empty), progress=False)
  assert not (tmp_path / "a").exists()


def test_kedmi_with_a_wgan_prior_says_which_prior_it_uses(tiny, tmp_path, caplog):
  """Item 20: attack=kedmi through a plain WGAN ran without a word."""
  root, splits = tiny
  caplog.set_level(logging.INFO, logger="jaxmi")
  cfg = dataclasses.replace(tiny_attack(root, optimizer="adam", draw_clamp=0.0, eval_draws=2), attack="kedmi")
  run_attack(cfg, tmp_path / "k", splits=splits, progress=False)
  assert any(
    "warning: KEDMI expects its inversion-specific GAN with the K+1 discriminator" in line
    and "WGAN critic -D(G(z))" in line
    for line in caplog.messages
  ), caplog.messages


def test_every_attack_reports_its_prior_baseline(tiny, tmp_path, caplog):
  """Item 19: the same metrics for the initial (un-optimised) latents, in results.json, the CSV and the log."""
  root, splits = tiny
  caplog.set_level(logging.INFO, logger="jaxmi")
  cfg = tiny_attack(root)
  summary = run_attack(cfg, tmp_path / "b", splits=splits, progress=False)
  results, arrays = load_outputs(tmp_path / "b")
  base = results["prior_baseline"]
  metric_keys = {"acc1", "acc5", "acc1_all_restarts_mean", "knn_dist", "feature_fid", "target_confidence"}
  assert metric_keys <= set(base) and set(base) <= set(results)
  # The baseline latents are the initial ones: z0 = N(0, I) keyed by (identity, restart), clipped as evaluated.
  root_key = jax.random.PRNGKey(cfg.inversion.seed)
  z0 = np.stack(
    [
      np.stack(
        [
          np.clip(jax.random.normal(jax.random.fold_in(jax.random.fold_in(root_key, i), r), (16,)), -1, 1)
          for r in range(2)
        ]
      )
      for i in range(3)
    ]
  )
  np.testing.assert_allclose(arrays["baseline_latents"], z0, atol=1e-6)
  assert not np.allclose(arrays["baseline_latents"], arrays["latents"])
  with open(tmp_path / "b" / "per_identity.csv") as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 3 and {"baseline_correct", "baseline_knn_dist", "baseline_target_confidence"} <= set(rows[0])
  # The official evaluation's row (issue 16): its columns and spelling, the numbers of results.json.
  with open(tmp_path / "b" / "Eval_results.csv") as f:
    (official,) = list(csv.DictReader(f))
  assert list(official) == ["Save_dir", "Method", "Succesful_samples", "acc", "std", "acc5", "std5", "fid", "knn"]
  assert float(official["acc"]) == summary["acc1_all_restarts_mean"] and official["Method"] == cfg.attack
  assert float(official["std"]) == summary["acc1_all_restarts_std"] and float(official["knn"]) > 0
  assert int(official["Succesful_samples"]) == round(summary["acc1_all_restarts_mean"] * 3 * 2)
  assert official["fid"] == ""  # not Inception-v3 features: not comparable with the papers' FID, so not written
  assert any("prior baseline" in line for line in caplog.messages), caplog.messages
  assert summary["prior_baseline"] == base


def test_restarts_are_selected_by_raw_logit_by_default():
  """Item 6: the reference keeps the restart with the highest raw target logit; probability is an option."""
  models, _ = toy_models()
  from jaxmi.attacks import InversionConfig

  # restart 0: logit 5 but a close rival (p ~ 0.52); restart 1: logit 3, no rival (p ~ 1).
  logits = np.array([[5.0, 4.9, -10.0, -10.0, -10.0], [3.0, -10.0, -10.0, -10.0, -10.0]], np.float32)
  outs = [(np.zeros((2, 100), np.float32), np.zeros((2, 32, 32, 1), np.float32), logits)]
  flat = np.zeros(2, np.int32)
  by_logit = select_restarts(np.array([0]), outs, flat, restarts=2, draws=1, select_by="logit")
  by_prob = select_restarts(np.array([0]), outs, flat, restarts=2, draws=1, select_by="probability")
  assert by_logit.best_restart.tolist() == [0] and by_prob.best_restart.tolist() == [1]
  np.testing.assert_allclose(by_logit.target_logit, [[5.0, 3.0]])
  assert InversionConfig().select_by == "logit"  # the default, as the test's name says
  with pytest.raises(ConfigError, match="select_by"):
    build_gmi(models, 100, InversionConfig(select_by="confidence"))


def test_kedmi_draws_that_coincide_beyond_the_clamp_are_measured():
  """Item 20: KEDMI+LOMMA on Fashion-MNIST returned 5 identical draws per identity. The cause: mu moved beyond
  draw_clamp, so every clamped draw of that dimension is the same value. draw_collapse measures the fraction of
  (identity, dimension) pairs where all draws coincide; an attack warns when it exceeds one half (_finish)."""
  from jaxmi.experiments.attack import draw_collapse

  def result(latents, draws):
    ids = latents.shape[0]
    return InversionResult(
      labels=np.arange(ids),
      latents=latents,
      images=np.zeros((*latents.shape[:2], 2, 2, 1), np.float32),
      target_confidence=np.ones(latents.shape[:2]),
      best_restart=np.zeros(ids, int),
      loss_curve=np.zeros(1),
      loss_parts={},
      draws=draws,
    )

  rng = np.random.default_rng(0)
  spread = rng.uniform(-0.9, 0.9, (2, 5, 4))  # 2 identities x 5 draws x 4 dimensions, inside the clamp
  assert draw_collapse(result(spread, 5), clip=1.0) == 0.0
  collapsed = spread.copy()
  collapsed[:, :, :3] = 1.0  # mu far beyond +1 in 3 of 4 dimensions: every draw clamped to the bound
  assert draw_collapse(result(collapsed, 5), clip=1.0) == 0.75
  assert draw_collapse(result(collapsed, 5), clip=0.0) is None  # no clamp (KEDMI's own recipe): not measured
  assert draw_collapse(result(collapsed[:, :1], 1), clip=1.0) is None  # GMI's point latents: nothing to compare


def test_grid_shows_every_restart(tmp_path):
  """Item 21: with 5 restarts the grid showed the selected one and only 3 others."""
  rng = np.random.default_rng(0)
  result = InversionResult(
    labels=np.array([0, 1]),
    latents=np.zeros((2, 5, 4)),
    images=rng.uniform(size=(2, 5, 8, 8, 1)).astype(np.float32),
    target_confidence=rng.uniform(size=(2, 5)),
    best_restart=np.array([3, 0]),
    loss_curve=np.zeros(1),
    loss_parts={},
  )
  shown = plots.reconstructions(result, np.zeros((2, 8, 8, 1), np.float32), tmp_path / "grid.png")
  assert [sorted(row) for row in shown] == [[0, 1, 2, 3, 4]] * 2 and [row[0] for row in shown] == [3, 0]


KILL_CONFIG = """
from jaxmi.attacks import ExecutionConfig, InversionConfig
from jaxmi.experiments.attack import AttackConfig

def get_config():
  return AttackConfig(name="killed", attack="gmi", target={root!r} + "/target",
                      evaluator={root!r} + "/eval", gan={root!r} + "/gan",
                      inversion=InversionConfig(steps=400, restarts=2, learning_rate=0.05, reference_batch=1),
                      execution=ExecutionConfig(log_every=10, unroll=2, max_batch=2, checkpoint_every=20))
"""


@pytest.mark.slow
def test_attack_killed_with_sigkill_resumes_through_the_cli_to_the_same_result(tiny, tmp_path):
  """Item 16 through bin/jaxmi: kill -9 once the first chunk is finished, rerun the same command; the result
  equals an uninterrupted run's bit for bit."""
  import os
  import signal
  import subprocess
  import sys
  import time
  from pathlib import Path

  root, _ = tiny
  config = tmp_path / "attack_killed.py"
  config.write_text(KILL_CONFIG.format(root=str(root)))
  repo = Path(__file__).resolve().parents[1]
  env = dict(os.environ)
  command = lambda workdir: [
    sys.executable,
    str(repo / "bin" / "jaxmi"),
    "attack",
    "--config",
    str(config),
    "--workdir",
    str(workdir),
    "--no-progress",
  ]
  whole = subprocess.run(command(tmp_path / "whole"), env=env, capture_output=True, text=True, timeout=600)
  assert whole.returncode == 0, whole.stderr[-2000:]

  proc = subprocess.Popen(command(tmp_path / "killed"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  first_chunk = tmp_path / "killed" / "attack_state" / "chunk_00001.npz"
  deadline = time.time() + 600
  while not first_chunk.exists() and proc.poll() is None and time.time() < deadline:
    time.sleep(0.02)
  os.kill(proc.pid, signal.SIGKILL)
  proc.wait()
  assert not (tmp_path / "killed" / "results.json").exists(), "finished before the kill: make the attack longer"
  again = subprocess.run(command(tmp_path / "killed"), env=env, capture_output=True, text=True, timeout=600)
  assert again.returncode == 0, again.stderr[-2000:]
  assert "resuming from the attack state" in again.stdout + again.stderr
  (a, a_arrays), (b, b_arrays) = load_outputs(tmp_path / "whole"), load_outputs(tmp_path / "killed")
  for key in a_arrays:
    np.testing.assert_array_equal(a_arrays[key], b_arrays[key], err_msg=key)
  assert b["optimisation_steps_run"] < a["optimisation_steps_run"]
