"""bin/jaxmi report: seeds of one target are averaged, defenses get one row each, files are written."""

import csv
import json

import pytest

from jaxmi import cli


def write_run(root, target, defense, natural, seeds_acc1, privacy=None):
  (root / target).mkdir(parents=True)
  summary = {"defense": defense, "natural_accuracy": natural, "config": {"model": {"head": "linear"}},
             "defense_config": {"name": defense, "beta": 0.01} if defense != "none" else {"name": "none"}}
  if privacy:
    summary["privacy"] = privacy
  (root / target / "summary.json").write_text(json.dumps(summary))
  dirs = []
  for seed, acc in enumerate(seeds_acc1):
    d = root / f"attack_{target}_{seed}"
    d.mkdir()
    (d / "results.json").write_text(json.dumps({
        "target": str(root / target), "acc1": acc, "acc1_all_restarts_mean": acc, "acc5_all_restarts_mean": 1.0,
        "knn_dist_all_restarts": 2.0 + seed}))
    dirs.append(str(d))
  return dirs


def test_report_groups_seeds_per_target_and_writes_table_csv_and_plot(tmp_path, capsys):
  dirs = write_run(tmp_path, "none", "none", 0.99, [0.6, 0.8]) + \
      write_run(tmp_path, "mid", "mid", 0.97, [0.2, 0.4, 0.3], privacy={"epsilon": 3.5})
  assert cli.main(["report", *dirs, "--out", str(tmp_path / "out" / "table")]) == 0
  printed = capsys.readouterr().out
  assert "| mid | beta=0.01, ε=3.5 | 97.0% | 30.0% ± 8.2 |" in printed
  rows = list(csv.DictReader(open(tmp_path / "out" / "table.csv")))
  assert [r["defense"] for r in rows] == ["none", "mid"] and [r["seeds"] for r in rows] == ["2", "3"]
  assert float(rows[0]["attack_acc1"]) == pytest.approx(0.7) and float(rows[0]["knn_dist"]) == pytest.approx(2.5)
  assert (tmp_path / "out" / "table.png").stat().st_size > 0
  # A run that has not finished is named in a one-line error.
  (tmp_path / "unfinished").mkdir()
  assert cli.main(["report", str(tmp_path / "unfinished"), "--out", str(tmp_path / "x")]) == 2
  assert "unfinished/results.json: not found" in capsys.readouterr().err
