"""bin/jaxmi report: seeds of one target and attack are averaged (sample std), other attacks and defenses get their
own rows, non-finite numbers are shown, the prior baseline sits next to the attack, files are written."""

import csv
import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest

from jaxmi import cli
from jaxmi import config as config_lib
from jaxmi.attacks import ExecutionConfig, InversionConfig
from jaxmi.experiments.attack import AttackConfig

KEDMI = dict(
  attack="kedmi", gan="runs/gan_kedmi", inversion=dict(optimizer="adam", restarts=1, eval_draws=5, draw_clamp=0.0)
)
LOMMA = dict(surrogates=("runs/surrogate",), inversion=dict(identity_loss="logit", feature_reg_weight=100.0))


def write_target(root, target, defense, natural, privacy=None):
  (root / target).mkdir(parents=True)
  summary = {
    "defense": defense,
    "natural_accuracy": natural,
    "config": {"model": {"head": "linear"}},
    "defense_config": {"name": defense, "beta": 0.01} if defense != "none" else {"name": "none"},
  }
  if privacy:
    summary["privacy"] = privacy
  (root / target / "summary.json").write_text(json.dumps(summary))


def write_attack(
  root, workdir, target, acc1, acc5=1.0, knn=2.0, selected=None, seed=0, attack=None, baseline=None, **metrics
):
  """A results.json as run.py writes it: metrics, the target path and the full attack config."""
  attack = attack or {}
  inversion = dataclasses.replace(InversionConfig(seed=seed), **attack.get("inversion", {}))
  cfg = AttackConfig(
    name=workdir,
    target=str(root / target),
    inversion=inversion,
    **{k: v for k, v in attack.items() if k != "inversion"},
  )
  result = {
    "name": workdir,
    "attack": cfg.attack,
    "acc1": acc1 if selected is None else selected,
    "acc1_all_restarts_mean": acc1,
    "acc5_all_restarts_mean": acc5,
    "knn_dist_all_restarts": knn,
    "target": cfg.target,
    "gan_kind": "kedmi" if cfg.attack == "kedmi" else "gmi",
    "config": config_lib.to_dict(cfg),
    **metrics,
  }
  if baseline is not None:
    result["prior_baseline"] = baseline
  (root / workdir).mkdir()
  (root / workdir / "results.json").write_text(json.dumps(result))
  return str(root / workdir)


def write_run(root, target, defense, natural, seeds_acc1, privacy=None):
  write_target(root, target, defense, natural, privacy)
  return [
    write_attack(root, f"attack_{target}_{seed}", target, acc, knn=2.0 + seed, seed=seed)
    for seed, acc in enumerate(seeds_acc1)
  ]


def report(tmp_path, dirs, capsys):
  assert cli.main(["report", *dirs, "--out", str(tmp_path / "out" / "table")]) == 0
  captured = capsys.readouterr()
  return captured.out, captured.err, list(csv.DictReader(open(tmp_path / "out" / "table.csv")))


def test_report_groups_seeds_per_target_and_writes_table_csv_and_plot(tmp_path, capsys):
  dirs = write_run(tmp_path, "none", "none", 0.99, [0.6, 0.8]) + write_run(
    tmp_path, "mid", "mid", 0.97, [0.2, 0.4, 0.3], privacy={"epsilon": 3.5}
  )
  printed, err, rows = report(tmp_path, dirs, capsys)
  # Sample std over seeds (ddof=1): std(0.2, 0.4, 0.3) = 0.1, not ddof=0's 0.082.
  assert "| gmi | mid | beta=0.01, ε=3.5 | 97.0% | 30.0% ± 10.0 |" in printed
  assert [r["defense"] for r in rows] == ["none", "mid"] and [r["seeds"] for r in rows] == ["2", "3"]
  assert float(rows[0]["attack_acc1"]) == pytest.approx(0.7) and float(rows[0]["knn_dist"]) == pytest.approx(2.5)
  assert float(rows[0]["attack_acc1_std"]) == pytest.approx(np.std([0.6, 0.8], ddof=1))
  assert float(rows[1]["knn_dist_std"]) == pytest.approx(1.0)
  assert (tmp_path / "out" / "table.png").stat().st_size > 0 and err == ""
  # A run that has not finished is named in a one-line error.
  (tmp_path / "unfinished").mkdir()
  assert cli.main(["report", str(tmp_path / "unfinished"), "--out", str(tmp_path / "x")]) == 2
  assert "unfinished/results.json: not found" in capsys.readouterr().err
  assert not (tmp_path / "x.md").exists()


def test_one_seed_has_no_std_and_std_zero_is_shown(tmp_path, capsys):
  """Item 12: two targets with numbers of their own keep them (no grouping or copying across rows), and a std of
  exactly 0 over seeds is printed as "± 0.0" instead of disappearing like a missing one."""
  write_target(tmp_path, "none", "none", 0.998)
  write_target(tmp_path, "bido", "bido", 0.995)
  dirs = [
    write_attack(tmp_path, f"none_{s}", "none", 0.64, knn=k, selected=sel, seed=s)
    for s, (k, sel) in enumerate([(2.0, 0.8), (2.1, 0.8), (2.05, 0.6)])
  ]
  dirs += [
    write_attack(tmp_path, f"bido_{s}", "bido", acc, knn=k, selected=0.6, seed=s)
    for s, (acc, k) in enumerate([(0.56, 1.7), (0.64, 1.72), (0.60, 1.71)])
  ]
  dirs += [write_attack(tmp_path, "bido_single", "bido", 0.5, attack=dict(inversion=dict(steps=10)))]
  printed, err, rows = report(tmp_path, dirs, capsys)
  none, bido, single = rows
  assert float(none["attack_acc1"]) == pytest.approx(0.64) and float(none["attack_acc1_std"]) == 0.0
  assert float(none["selected_acc1"]) == pytest.approx(2.2 / 3) and float(none["knn_dist"]) == pytest.approx(2.05)
  assert float(bido["attack_acc1"]) == pytest.approx(0.6) and float(bido["attack_acc1_std"]) == pytest.approx(0.04)
  assert float(bido["selected_acc1"]) == pytest.approx(0.6) and float(bido["knn_dist"]) == pytest.approx(1.71)
  assert "| gmi (steps=1500) | none |  | 99.8% | 64.0% ± 0.0 | 100.0% ± 0.0 | 73.3% | 2.05 |" in printed
  # One seed: no std at all (blank in the CSV), never a made-up 0 or a NaN.
  assert single["seeds"] == "1" and single["attack_acc1_std"] == "" and single["attack_setting"] == "steps=10"
  assert "| gmi (steps=10) | bido | beta=0.01 | 99.5% | 50.0% | 100.0% | 50.0% |" in printed


def test_runs_with_the_same_seed_are_flagged_as_repeats(tmp_path, capsys):
  write_target(tmp_path, "none", "none", 0.99)
  dirs = [write_attack(tmp_path, f"a{i}", "none", 0.64, seed=0) for i in range(3)]
  printed, err, rows = report(tmp_path, dirs, capsys)
  assert rows[0]["seeds"] == "3"
  assert err.count("\n") == 1 and "3 runs but only 1 distinct inversion.seed" in err


def test_different_attacks_on_one_target_are_separate_rows(tmp_path, capsys):
  """Item 20: GMI, GMI+LOMMA and KEDMI on one target used to merge into one row of 'seeds'. How a run ran (devices,
  batch, precision, seed) does not split a row; what it is (attack, prior, surrogates, loss, lr) does."""
  write_target(tmp_path, "none", "none", 0.99)
  dirs = [
    write_attack(tmp_path, "gmi_0", "none", 0.6, seed=0),
    write_attack(
      tmp_path,
      "gmi_1",
      "none",
      0.8,
      seed=1,
      attack=dict(
        execution=ExecutionConfig(
          devices=2, max_batch=64, compute_dtype="bfloat16", unroll=5, remat=True, log_every=10, memory_budget_gb=1.0
        )
      ),
    ),
    write_attack(tmp_path, "lomma_0", "none", 0.9, seed=0, attack=LOMMA),
    write_attack(tmp_path, "kedmi_0", "none", 0.3, seed=0, attack=KEDMI),
    write_attack(tmp_path, "kedmi_1", "none", 0.5, seed=1, attack=KEDMI),
    write_attack(tmp_path, "gmi_lr", "none", 0.1, attack=dict(inversion=dict(learning_rate=0.05))),
  ]
  printed, err, rows = report(tmp_path, dirs, capsys)
  assert [(r["attack"], r["seeds"]) for r in rows] == [("gmi", "2"), ("gmi+lomma", "1"), ("kedmi", "2"), ("gmi", "1")]
  assert [float(r["attack_acc1"]) for r in rows] == pytest.approx([0.7, 0.9, 0.4, 0.1])
  # Two GMI rows are told apart by what differs between them.
  assert rows[0]["attack_setting"] == "learning_rate=0.02" and rows[3]["attack_setting"] == "learning_rate=0.05"
  assert rows[1]["attack_setting"] == rows[2]["attack_setting"] == ""
  assert "| gmi+lomma | none |" in printed and "| kedmi | none |" in printed
  # KEDMI on a plain WGAN is another prior, said in the attack column.
  write_attack(tmp_path, "kedmi_wgan", "none", 0.2, attack=KEDMI)
  data = json.loads((tmp_path / "kedmi_wgan" / "results.json").read_text())
  (tmp_path / "kedmi_wgan" / "results.json").write_text(json.dumps({**data, "gan_kind": "gmi"}))
  _, _, rows = report(tmp_path, dirs + [str(tmp_path / "kedmi_wgan")], capsys)
  assert rows[-1]["attack"] == "kedmi (WGAN-GP prior)" and rows[2]["seeds"] == "2"


def test_non_finite_numbers_written_by_jaxmi_are_reported_as_such(tmp_path, capsys):
  """Item 18: records.write_json stores NaN as the string "nan"; the report crashed on it."""
  write_target(tmp_path, "none", "none", 0.99, privacy={"epsilon": "inf"})
  dirs = [
    write_attack(tmp_path, "ok", "none", 0.6, seed=0),
    write_attack(tmp_path, "bad", "none", 0.8, seed=1, knn="nan"),
    write_attack(tmp_path, "bad2", "none", "nan", seed=2, baseline={"acc1_all_restarts_mean": "-inf"}),
    write_attack(tmp_path, "kedmi", "none", 0.5, attack=KEDMI),
  ]  # another row of the same target
  printed, err, rows = report(tmp_path, dirs, capsys)
  assert [r["attack"] for r in rows] == ["gmi", "kedmi"]
  assert rows[0]["knn_dist"] == "nan" and rows[0]["attack_acc1"] == "nan" and rows[0]["epsilon"] == "inf"
  assert "| gmi | none | ε=inf | 99.0% | nan% ± nan |" in printed and "| nan |" in printed
  lines = err.splitlines()
  assert len(lines) == 4  # one per file with a non-finite number (summary.json once), one for missing baselines
  assert any("bad/results.json: non-finite knn_dist_all_restarts=nan" in line for line in lines)
  assert any(
    "bad2/results.json: non-finite acc1=nan, acc1_all_restarts_mean=nan, "
    "prior_baseline.acc1_all_restarts_mean=-inf" in line
    for line in lines
  )
  assert any("none/summary.json: non-finite privacy.epsilon=inf" in line for line in lines)
  assert any("2 of 3 runs have no prior_baseline" in line for line in lines)
  # Anything else that is not a number is a one-line error naming the file and the field.
  write_attack(tmp_path, "typo", "none", "n/a", seed=3)
  assert cli.main(["report", str(tmp_path / "typo"), "--out", str(tmp_path / "y")]) == 2
  assert "typo/results.json: acc1 is 'n/a'; expected a number" in capsys.readouterr().err


def test_prior_baseline_is_shown_next_to_the_attack(tmp_path, capsys):
  """Item 19: the baseline's acc@1/acc@5 and attack minus baseline per row (paired per seed); blank for older runs
  without prior_baseline."""
  write_target(tmp_path, "none", "none", 0.99)
  write_target(tmp_path, "old", "mid", 0.98)
  base = lambda a1, a5: {
    "acc1": a1,
    "acc1_all_restarts_mean": a1,
    "acc5_all_restarts_mean": a5,
    "knn_dist_all_restarts": 9.0,
    "acc1_all_restarts_std": None,
  }
  dirs = [
    write_attack(tmp_path, "n0", "none", 0.6, acc5=0.9, seed=0, baseline=base(0.2, 0.5)),
    write_attack(tmp_path, "n1", "none", 0.8, acc5=1.0, seed=1, baseline=base(0.3, 0.6)),
    write_attack(tmp_path, "o0", "old", 0.5, seed=0),
  ]
  printed, err, rows = report(tmp_path, dirs, capsys)
  new, old = rows
  assert float(new["baseline_acc1"]) == pytest.approx(0.25) and float(new["baseline_acc5"]) == pytest.approx(0.55)
  assert float(new["delta_acc1"]) == pytest.approx(0.45) and float(new["delta_acc5"]) == pytest.approx(0.4)
  assert float(new["delta_acc1_std"]) == pytest.approx(np.std([0.4, 0.5], ddof=1))
  assert float(new["baseline_knn_dist"]) == 9.0 and new["baseline_seeds"] == "2"
  assert "| 25.0% | 55.0% | +45.0 ± 7.1 | 2 |" in printed
  assert old["baseline_acc1"] == old["delta_acc1"] == "" and old["baseline_seeds"] == "0"
  assert "| gmi | mid | beta=0.01 | 98.0% | 50.0% | 100.0% | 50.0% | 2.00 |  |  |  | 1 |" in printed
  assert err == "" and math.isfinite(float(new["attack_acc1"]))
  assert (tmp_path / "out" / "table.png").stat().st_size > 0


def test_a_defense_whose_schedule_never_started_is_labelled_so(tmp_path, capsys):
  """An NLS run too short for its ramp is plain training: its row must not read as 'nls alpha=-0.05' alone."""
  dirs = []
  for target, effective in (
    ("nls_short", {"alpha_reached": 0.0, "active_steps": 0}),
    ("nls_long", {"alpha_reached": -0.05, "active_steps": 40}),
  ):
    write_target(tmp_path, target, "nls", 0.99)
    path = tmp_path / target / "summary.json"
    summary = json.loads(path.read_text())
    summary.update(defense_config={"name": "nls", "alpha": -0.05}, effective=effective)
    path.write_text(json.dumps(summary))
    dirs.append(write_attack(tmp_path, f"attack_{target}", target, 0.5))
  _, _, rows = report(tmp_path, dirs, capsys)
  settings = {r["target"].split("/")[-1]: r["setting"] for r in rows}
  assert "never active" in settings["nls_short"] and "never active" not in settings["nls_long"]
  assert "alpha reached -0.05" in settings["nls_long"]


def test_a_run_made_before_a_field_existed_shares_the_row_of_its_default(tmp_path, capsys):
  """An older results.json lacks fields added since (the augmentation, the evaluation settings) and may hold a
  renamed one (clip_z, now z_clip): the run could not set them, so it counts as their defaults and shares a row
  with a new run of the same attack; a new run that sets one of them still gets a row of its own."""
  write_target(tmp_path, "none", "none", 0.99)
  old = write_attack(tmp_path, "old", "none", 0.6, seed=0)
  data = json.loads((tmp_path / "old" / "results.json").read_text())
  inversion = dict(data["config"]["inversion"])
  for field in ("augment_views", "augment"):
    del inversion[field]
  inversion["clip_z"] = inversion.pop("z_clip")
  config = {k: v for k, v in data["config"].items() if k != "evaluation"}
  (tmp_path / "old" / "results.json").write_text(json.dumps({**data, "config": {**config, "inversion": inversion}}))
  new = write_attack(tmp_path, "new", "none", 0.8, seed=1)
  views = write_attack(tmp_path, "views", "none", 0.9, attack=dict(inversion=dict(augment_views=2)))
  _, _, rows = report(tmp_path, [old, new, views], capsys)
  assert [(r["attack"], r["seeds"]) for r in rows] == [("gmi", "2"), ("gmi", "1")]
  assert rows[1]["attack_setting"] == "augment_views=2"


def test_an_old_kedmi_runs_clip_z_is_read_as_its_draw_clamp(tmp_path, capsys):
  """The old clip_z was split by meaning: GMI's became z_clip, KEDMI's (the clamp of each sampled z) draw_clamp. An
  old KEDMI run with clip_z=0 is KEDMI's own recipe, the same attack as a new run with draw_clamp=0 (whose z_clip is
  its unused default): one row. Read as z_clip it was a row of its own labelled z_clip=0.0."""
  write_target(tmp_path, "none", "none", 0.99)

  def kedmi(workdir, seed, **inversion):
    path = write_attack(tmp_path, workdir, "none", 0.6, seed=seed, attack=dict(attack="kedmi", inversion=inversion))
    data = json.loads((Path(path) / "results.json").read_text())
    return path, data

  old, data = kedmi("old", 0, draw_clamp=0.0)
  inversion = dict(data["config"]["inversion"])
  inversion.pop("z_clip")
  inversion["clip_z"] = inversion.pop("draw_clamp")
  (Path(old) / "results.json").write_text(json.dumps({**data, "config": {**data["config"], "inversion": inversion}}))
  new, _ = kedmi("new", 1, draw_clamp=0.0)
  clamped, _ = kedmi("clamped", 2, draw_clamp=1.0)
  _, _, rows = report(tmp_path, [old, new, clamped], capsys)
  assert [(r["attack"], r["seeds"]) for r in rows] == [("kedmi", "2"), ("kedmi", "1")]
  assert rows[1]["attack_setting"] == "draw_clamp=1.0"
