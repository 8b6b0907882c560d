"""``bin/jaxmi sweep`` (jaxmi/experiments/sweep.py, configs/sweep.py): the plan, content keys, reuse, resumption after
a kill, claims shared by several processes, the table and plots.

The fast tests run the sweep's scheduler with a fake stage runner that writes what the real entry points write last
(summary.json, results.json) in milliseconds; the slow ones train and attack real (tiny, then MNIST) networks.
"""

import csv
import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from jaxmi import cli
from jaxmi import config as config_lib
from jaxmi.errors import ConfigError
from jaxmi.experiments import sweep

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "configs" / "sweep.py"


def tiny(**changes) -> sweep.SweepConfig:
  return dataclasses.replace(config_lib.load_config(f"{RECIPE}:data=mnist,size=tiny"), **changes)


def fake_execute(log: list | None = None, natural: dict | None = None):
  """A stage runner that writes the files the real entry points write last, and records the stages it ran."""

  def run(stage: sweep.Stage) -> None:
    if log is not None:
      log.append(stage.id)
    d = stage.directory
    d.mkdir(parents=True, exist_ok=True)
    cfg = stage.config
    if stage.kind == "attack":
      seed = cfg.inversion.seed
      acc = 0.5 + 0.1 * seed - (0.2 if "defense-" in cfg.target else 0.0)
      result = {
        "target": cfg.target,
        "attack": cfg.attack,
        "gan_kind": cfg.attack,
        "config": config_lib.to_dict(cfg),
        "acc1": acc,
        "acc1_all_restarts_mean": acc,
        "acc5_all_restarts_mean": 1.0,
        "knn_dist_all_restarts": 2.0 - acc,
      }
      (d / "results.json").write_text(json.dumps(result))
    else:
      defense = getattr(cfg, "defense", None)
      summary = {
        "natural_accuracy": (natural or {}).get(stage.id, 0.9 if defense is None else 0.8),
        "defense": "none" if defense is None else defense.name,
        "defense_config": {} if defense is None else config_lib.to_dict(defense),
        "config": {},
      }
      (d / "summary.json").write_text(json.dumps(summary))

  return run


def test_the_plan_expands_the_grid_into_stages_and_cells(tmp_path):
  cfg = tiny()  # none + mid at 2 betas x gmi, kedmi x seeds 0, 1
  p = sweep.plan(cfg, tmp_path / "s")
  assert not (tmp_path / "s").exists()  # planning writes nothing
  kinds = [s.kind for s in p.stages.values()]
  # 1 evaluation model, 1 undefended + 2 defended targets, GMI's one WGAN-GP + KEDMI's GAN per target, 12 attacks.
  assert {k: kinds.count(k) for k in set(kinds)} == {"eval": 1, "target": 1, "defense": 2, "gan": 4, "attack": 12}
  assert [(c.defense, c.setting, c.attack, c.seed) for c in p.cells[:4]] == [
    ("none", {}, "gmi", 0),
    ("none", {}, "gmi", 1),
    ("none", {}, "kedmi", 0),
    ("none", {}, "kedmi", 1),
  ]
  assert len(p.cells) == 3 * 2 * 2 and len({c.stage for c in p.cells}) == 12
  betas = {p.stages[c.target].config.defense.beta for c in p.cells if c.defense == "mid"}
  assert betas == {0.01, 0.1}
  for c in p.cells:
    a = p.stages[c.stage]
    assert a.config.inversion.seed == c.seed and a.config.target == str(p.stages[c.target].directory)
    gan = p.stages[a.inputs[2]]
    # KEDMI's GAN learns from the attacked target; GMI's prior is one for the whole grid.
    assert gan.config.kind == ("kedmi" if c.attack == "kedmi" else "gmi")
    assert gan.inputs == ((c.target,) if c.attack == "kedmi" else ())
    # Dependencies come first, and every artifact lives under <workdir>/artifacts/<kind>-<key>.
    order = list(p.stages)
    assert all(order.index(i) < order.index(a.id) for i in a.inputs)
    assert a.directory == (tmp_path / "s" / "artifacts" / a.id).absolute() and a.id.startswith("attack-")
  # The sweep's overrides reach every network: tiny data, tiny models.
  ev = p.stages[p.cells[0].stage].inputs[1]
  assert p.stages[ev].config.data.dataset == "sklearn_digits" and p.stages[ev].config.model.width == 4
  # Shards are disjoint and cover the grid.
  shards = [sweep.shard_cells(p.cells, (i, 5)) for i in range(5)]
  assert sorted(c.stage for s in shards for c in s) == sorted(c.stage for c in p.cells)


def test_content_keys_change_with_a_setting_and_only_downstream(tmp_path):
  base = sweep.plan(tiny(), tmp_path)
  edited = sweep.plan(tiny(defenses={"none": ({},), "mid": ({"beta": 0.01}, {"beta": 0.2})}), tmp_path)
  same = sweep.plan(tiny(), tmp_path / "elsewhere")  # keys do not depend on where the sweep lives
  assert [s.key for s in same.stages.values()] == [s.key for s in base.stages.values()]
  changed = set(edited.stages) - set(base.stages)
  # The edited setting: its target, its KEDMI GAN and its 4 attacks are new; everything else is reused.
  new_cells = [c for c in edited.cells if c.setting == {"beta": 0.2}]
  assert changed == {s.id for s in edited.needed(new_cells)} - {s.id for s in base.stages.values()}
  assert {edited.stages[s].kind for s in changed} == {"defense", "gan", "attack"} and len(changed) == 1 + 1 + 4
  assert set(base.stages) - set(edited.stages) == {
    s.id for s in base.needed([c for c in base.cells if c.setting == {"beta": 0.1}])
  } - {s.id for s in base.needed([c for c in base.cells if c.setting != {"beta": 0.1}])}
  # A field that does not change what is made (logging, checkpoints) keeps every key; a data field changes all.
  quiet = sweep.plan(tiny(attack_overrides=(*tiny().attack_overrides, "execution.checkpoint_every=7")), tmp_path)
  assert set(quiet.stages) == set(base.stages)
  other = sweep.plan(tiny(data_overrides=(*tiny().data_overrides, "split_seed=1")), tmp_path)
  assert not set(other.stages) & set(base.stages)
  # The recipe's own value is the same content as the setting that spells it out.
  spelled = sweep.plan(tiny(defenses={"mid": ({"beta": 0.01},)}), tmp_path)
  default = sweep.plan(tiny(defenses={"mid": ({},)}), tmp_path)
  assert set(spelled.stages) == set(default.stages)


def test_a_second_run_reuses_everything_and_the_table_has_the_cells(tmp_path, capsys):
  ran = []
  cfg = tiny()
  rows = sweep.run_sweep(cfg, tmp_path, execute=fake_execute(ran))
  p = sweep.plan(cfg, tmp_path)
  assert sorted(ran) == sorted(p.stages) and len(ran) == len(set(ran))  # each stage once
  assert all((s.directory / sweep.DONE).is_file() and (s.directory / sweep.STAGE).is_file() for s in p.stages.values())
  stage_json = json.loads((p.stages[p.cells[0].stage].directory / sweep.STAGE).read_text())
  assert stage_json["key"] == p.stages[p.cells[0].stage].key and p.cells[0].stage == f"attack-{stage_json['key'][:16]}"
  rates = json.loads((tmp_path / sweep.RATES).read_text())
  assert {k: v["stages"] for k, v in rates.items()} == {"eval": 1, "target": 1, "defense": 2, "gan": 4, "attack": 12}

  again = []
  assert sweep.run_sweep(cfg, tmp_path, execute=fake_execute(again)) == rows
  assert again == []  # nothing retrained, nothing re-attacked
  # An edited setting trains only what it changes.
  edited = tiny(defenses={"none": ({},), "mid": ({"beta": 0.01}, {"beta": 0.2})})
  sweep.run_sweep(edited, tmp_path, execute=fake_execute(again))
  assert sorted(sweep.plan(edited, tmp_path).stages[s].kind for s in again) == ["attack"] * 4 + ["defense", "gan"]

  # The table: one row per (setting, attack), mean ± std over the seeds, in Markdown, CSV and JSON; and the plots.
  assert [(r["defense"], r["attack"], r["seeds"]) for r in rows] == [
    (d, a, 2) for d in ("none", "mid", "mid") for a in ("gmi", "kedmi")
  ]
  none_gmi = rows[0]
  assert none_gmi["natural_acc"] == 0.9 and none_gmi["acc1"] == pytest.approx(0.55)
  assert none_gmi["acc1_std"] == pytest.approx(0.0707106781, rel=1e-6)  # sample std of 0.5, 0.6
  assert rows[2]["setting"].startswith("beta=0.01") and rows[4]["setting"].startswith("beta=0.1")
  with open(tmp_path / "table.csv", newline="") as f:
    table = list(csv.DictReader(f))
  assert [(t["defense"], t["attack"]) for t in table] == [(r["defense"], r["attack"]) for r in rows]
  assert json.loads((tmp_path / "table.json").read_text())["cells"] == 12
  md = (tmp_path / "table.md").read_text()
  assert "| none |  | 90.0% | gmi | 55.0% ± 7.1 |" in md and "12 of 12 cells finished" in md
  for png in ("tradeoff.png", "knn.png", "reconstructions.png"):
    assert (tmp_path / png).stat().st_size > 1000


def test_dry_run_lists_the_cells_reuse_and_an_estimate_and_writes_nothing(tmp_path, caplog):
  cfg = tiny(attacks=("gmi",), seeds=(0,))
  caplog.set_level("INFO", logger="jaxmi")
  assert sweep.run_sweep(cfg, tmp_path / "s", dry_run=True) == []
  assert not (tmp_path / "s").exists()
  assert "no estimate yet" in caplog.text and "cells (3 of 3)" in caplog.text
  ran = []
  sweep.run_sweep(dataclasses.replace(cfg, defenses={"none": ({},)}), tmp_path / "s", execute=fake_execute(ran))
  caplog.clear()
  sweep.run_sweep(cfg, tmp_path / "s", dry_run=True, shard=(1, 3))
  text = caplog.text
  # Shard 1 of 3 has the second cell (mid beta 0.01): eval and the GMI prior are reused, the rest is new.
  assert "cells (1 of 3, shard 1/3):" in text and "run     gmi on mid beta=0.01, seed 0" in text
  assert "reuse   eval-" in text and "reuse   gan-" in text and "train   defense-" in text
  line = next(ln for ln in text.splitlines() if ln.startswith("estimate:"))
  assert re.search(r"for 1 stage at the measured rates \(eval \d+ s, target \d+ s, gan \d+ s, attack \d+ s\)", line)
  assert line.endswith("no estimate yet for defense (1)")  # no defense has run in this workdir


def test_the_cells_of_the_dry_run_are_the_cells_that_run(tmp_path, caplog):
  cfg = tiny(seeds=(0,))
  caplog.set_level("INFO", logger="jaxmi")
  sweep.run_sweep(cfg, tmp_path, dry_run=True, shard=(0, 2))
  planned = {ln.split("(")[-1].rstrip(")") for ln in caplog.text.splitlines() if ln.startswith("  run     ")}
  planned = {s for s in planned if s.startswith("attack-")}
  ran = []
  sweep.run_sweep(cfg, tmp_path, shard=(0, 2), execute=fake_execute(ran))
  assert planned == {s for s in ran if s.startswith("attack-")} and len(planned) == 3


def test_a_stage_that_fails_midway_resumes_and_finished_stages_are_not_redone(tmp_path):
  cfg = tiny(attacks=("gmi",), seeds=(0, 1))
  ran, inner = [], fake_execute()
  p = sweep.plan(cfg, tmp_path)
  victim = p.cells[3].stage  # mid beta 0.01, seed 1

  def crashing(stage):
    ran.append(stage.id)
    if stage.id == victim:
      (stage.directory / "attack_state").mkdir(parents=True)  # what a killed attack leaves behind
      (stage.directory / "attack_state" / "chunk_0").write_text("x")
      raise KeyboardInterrupt("killed")
    inner(stage)

  with pytest.raises(KeyboardInterrupt):
    sweep.run_sweep(cfg, tmp_path, execute=crashing)
  finished = [s for s in ran if s != victim]
  assert sweep.state(p.stages[victim]) == "resume" and not os.listdir(tmp_path / sweep.CLAIMS)  # claim released
  again = []
  sweep.run_sweep(cfg, tmp_path, execute=fake_execute(again))
  assert again[0] == victim and not set(again) & set(finished)
  assert sorted(set(ran) | set(again)) == sorted(p.stages)
  # Killed after the entry point's last file but before done.json: marked done, not rerun.
  done = p.stages[p.cells[0].stage]
  (done.directory / sweep.DONE).unlink()
  assert sweep.state(done) == "finished"
  sweep.run_sweep(cfg, tmp_path, execute=lambda s: pytest.fail(f"reran {s.id}"))
  assert sweep.is_done(done)


def test_cells_finish_as_soon_as_their_inputs_exist(tmp_path):
  cfg = tiny(seeds=(0,))  # none + mid at 2 betas x gmi, kedmi
  p, ran = sweep.plan(cfg, tmp_path), []
  sweep.run_sweep(cfg, tmp_path, execute=fake_execute(ran))
  kind = lambda sid: p.stages[sid].kind
  gmi = [c.stage for c in p.cells if c.attack == "gmi"]
  kedmi_gans = [i for i, sid in enumerate(ran) if kind(sid) == "gan" and p.stages[sid].inputs]
  # GMI's attacks need only the targets, the evaluation model and the one WGAN-GP: they run before the per-target
  # KEDMI GANs, and each KEDMI attack right after its GAN, not after all of them
  assert max(ran.index(g) for g in gmi) < min(kedmi_gans)
  assert all(kind(ran[i + 1]) == "attack" for i in kedmi_gans)


def test_stacking_runs_one_methods_attacks_on_several_targets_together_and_the_same_table(tmp_path):
  cfg = tiny(seeds=(0, 1))  # none + mid at 2 betas x gmi, kedmi
  p = sweep.plan(cfg, tmp_path / "s")
  singles, batches, inner = [], [], fake_execute()

  def run_many(stages):
    batches.append([s.id for s in stages])
    for s in stages:
      inner(s)

  rows = sweep.run_sweep(cfg, tmp_path / "s", execute=fake_execute(singles), execute_many=run_many, stack=8)
  # GMI's prior is shared: per seed, its attacks on the 3 targets are one program; KEDMI's GAN is the target's own.
  # MID's two betas train as one grid (no first stage, only the hyper-parameter differs).
  gmi = {seed: {c.stage for c in p.cells if c.attack == "gmi" and c.seed == seed} for seed in (0, 1)}
  mid = {c.target for c in p.cells if c.defense == "mid"}
  assert sorted(map(frozenset, batches), key=sorted) == sorted(map(frozenset, (gmi[0], gmi[1], mid)), key=sorted)
  assert not set(singles) & (gmi[0] | gmi[1] | mid) and all(sweep.is_done(s) for s in p.stages.values())
  no_grid = lambda rows: [{k: v for k, v in r.items() if k != "grid"} for r in rows]  # a path into its own sweep
  assert no_grid(rows) == no_grid(sweep.run_sweep(cfg, tmp_path / "u", execute=fake_execute()))  # one at a time

  # at most `stack` per program, and an attack with saved state of its own resumes alone
  two, batches[:] = tiny(seeds=(0,)), []
  q = sweep.plan(two, tmp_path / "t")
  resuming = next(c.stage for c in q.cells if c.attack == "gmi" and c.defense == "mid")
  (q.stages[resuming].directory / "attack_state").mkdir(parents=True)
  (q.stages[resuming].directory / "attack_state" / "chunk_0").write_text("x")
  singles[:] = []
  sweep.run_sweep(two, tmp_path / "t", execute=fake_execute(singles), execute_many=run_many, stack=2)
  attack_batches = [b for b in batches if b[0].startswith("attack-")]
  assert resuming in singles and [len(b) for b in attack_batches] == [2] and resuming not in attack_batches[0]
  with pytest.raises(ConfigError, match="stack: expected at least 1"):
    sweep.run_sweep(two, tmp_path / "t", stack=0)


def test_a_program_killed_between_two_cells_outputs_is_taken_up_again_not_restarted(tmp_path, monkeypatch):
  """A stacked program (attacks on several targets, a defense's grid) writes its cells' outputs one after another; a
  kill in between used to start a new program for the cells left, its optimisation or training from step 0."""
  from jaxmi.experiments import attack
  from jaxmi.train import grid

  p = sweep.plan(tiny(seeds=(0,)), tmp_path / "s")
  gmi = [p.stages[c.stage] for c in p.cells if c.attack == "gmi"]
  mid = [p.stages[c.target] for c in p.cells if c.defense == "mid" and c.attack == "gmi"]
  assert len(gmi) == 3 and len(mid) == 2
  calls, write = [], fake_execute()

  def fake_run_attacks(cfgs, dirs, state_dir, progress, finish):
    calls.append(("attacks", [Path(d) for d in dirs], Path(state_dir), list(finish)))
    Path(state_dir).mkdir(parents=True, exist_ok=True)  # the optimisation's saved state
    for d, f in zip(dirs, finish):
      if f:
        write(next(s for s in gmi if s.directory == Path(d)))
        if len(calls) == 1:
          raise KeyboardInterrupt  # killed after the first cell's results.json

  def fake_train_grid(target, defenses, directory, progress, release_to):
    calls.append(("grid", list(release_to), Path(directory), [r is not None for r in release_to]))
    Path(directory).mkdir(parents=True, exist_ok=True)
    for r in release_to:
      if r is not None:
        write(next(s for s in mid if s.directory == Path(r)))
        if len(calls) == 3:
          raise KeyboardInterrupt

  monkeypatch.setattr(attack, "run_attacks", fake_run_attacks)
  monkeypatch.setattr(grid, "train_grid", fake_train_grid)
  for execute, stages in ((sweep.execute_attacks, gmi), (sweep.execute_grid, mid)):
    with pytest.raises(KeyboardInterrupt):
      execute(stages, (tmp_path / "s"), progress=False)
    execute(stages, (tmp_path / "s"), progress=False)
    first, again = calls[-2], calls[-1]
    # the same program and state: every stage rides along, only the unfinished ones are written
    assert again[2] == first[2] and len(again[3]) == len(stages) and again[3] == [False] + [True] * (len(stages) - 1)
    assert (
      all((s.directory / sweep.FINISHED[s.kind]).is_file() for s in stages) and not first[2].exists()
    )  # the shared state went at the end
    execute(stages, (tmp_path / "s"), progress=False)  # all finished: nothing runs
    assert calls[-1] is again

  # a program whose stages no longer all belong to the batch is not taken up: the cells left start one of their own
  target = (tmp_path / "s") / "stacks"
  stale = target / "stale"
  stale.mkdir(parents=True)
  (stale / "members.json").write_text(json.dumps({"stages": [gmi[0].id, "attack-gone"]}))
  for s in gmi:
    (s.directory / "results.json").unlink()
  monkeypatch.setattr(attack, "run_attacks", lambda cfgs, dirs, state_dir, progress, finish: calls.append(state_dir))
  sweep.execute_attacks(gmi, (tmp_path / "s"), progress=False)
  assert calls[-1].parent != stale and calls[-1].parent.parent == target


@pytest.mark.slow  # trains and attacks real tiny networks twice: ~2-3 min of CPU
def test_a_stacked_real_tiny_sweep_gives_the_table_of_one_at_a_time(tmp_path):
  cfg = tiny(defenses={"none": ({},), "mid": ({"beta": 0.01}, {"beta": 0.1})}, attacks=("gmi",), seeds=(0,))
  alone = sweep.run_sweep(cfg, tmp_path / "alone", progress=False)
  stacked = sweep.run_sweep(cfg, tmp_path / "stacked", progress=False, stack=8)
  results = sorted((tmp_path / "stacked" / "artifacts").glob("attack-*/results.json"))
  # the two MID targets share an architecture (VIB) and ran as one program; the undefended one in its own
  assert sorted(json.loads(r.read_text())["stacked_targets"] for r in results) == [1, 2, 2]
  # MID's two betas trained as one grid, each released into its stage's directory
  released = sorted((tmp_path / "stacked" / "artifacts").glob("defense-*/summary.json"))
  assert len(released) == 2 and all(json.loads(r.read_text())["grid"] for r in released)
  assert not (tmp_path / "stacked" / "stacks").exists() or not any((tmp_path / "stacked" / "stacks").iterdir())
  drop = ("seconds", "grid")
  strip = lambda rows: [{k: v for k, v in r.items() if not any(d in k for d in drop)} for r in rows]
  for a, b in zip(strip(alone), strip(stacked)):
    for k in a:  # float32 rounding of stacked convolutions may move one of 12 reconstructions over an edge
      if isinstance(a[k], float):
        assert abs(a[k] - b[k]) <= max(1 / 12 + 1e-9, 1e-3 * abs(a[k])), (k, a[k], b[k])
      else:
        assert a[k] == b[k], k


CHILD = """
import sys, time
sys.path[:0] = [{repo!r}, {tests!r}]
import test_sweep
from jaxmi.experiments import sweep
inner = test_sweep.fake_execute()
def run(stage):
  with open({log!r}, "a") as f:
    f.write(stage.id + "\\n")
  if stage.id == {victim!r}:
    open({marker!r}, "w").close()
    time.sleep(600)
  inner(stage)
sweep.run_sweep(test_sweep.tiny(attacks=("gmi",), seeds=(0, 1)), {workdir!r}, execute=run, poll_seconds=0.1)
"""


def _killed_at(victim: str, workdir: Path, log: Path) -> None:
  """Runs the sweep in a child process with the fake runner and SIGKILLs it inside the stage ``victim``."""
  marker = workdir.parent / f"{victim}.marker"
  code = CHILD.format(
    repo=str(REPO), tests=str(REPO / "tests"), log=str(log), victim=victim, marker=str(marker), workdir=str(workdir)
  )
  child = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "JAX_PLATFORMS": "cpu"})
  try:
    deadline = time.time() + 120
    while not marker.exists():
      assert child.poll() is None and time.time() < deadline, "the child sweep ended before the victim stage"
      time.sleep(0.1)
    child.send_signal(signal.SIGKILL)
  finally:
    child.kill()
    child.wait()


def test_a_sweep_killed_twice_with_sigkill_resumes_to_the_uninterrupted_table(tmp_path):
  cfg = tiny(attacks=("gmi",), seeds=(0, 1))
  p = sweep.plan(cfg, tmp_path / "s")
  victims = [p.cells[2].stage, p.cells[4].stage]
  log = tmp_path / "ran.txt"
  _killed_at(victims[0], tmp_path / "s", log)
  first = log.read_text().split()
  assert first[-1] == victims[0] and (tmp_path / "s" / sweep.CLAIMS / f"{victims[0]}.0").is_file()  # a dead claim
  # The second run takes the dead process's claim over at once (same host, pid gone; the TTL is 10 minutes).
  _killed_at(victims[1], tmp_path / "s", log)
  second = log.read_text().split()[len(first) :]
  assert second[0] == victims[0] and second[-1] == victims[1] and not set(second) & set(first[:-1])
  again = []
  sweep.run_sweep(cfg, tmp_path / "s", execute=fake_execute(again), claim_ttl=3600)
  assert again[0] == victims[1] and not set(again) & set(first[:-1] + second[:-1])
  runs = first + second + again
  assert sorted(set(runs)) == sorted(p.stages) and len(runs) == len(p.stages) + 2  # only the two victims twice
  # The table equals an uninterrupted sweep's.
  sweep.run_sweep(cfg, tmp_path / "u", execute=fake_execute())
  rows = lambda d: [
    {k: v for k, v in r.items() if k != "grid"} for r in json.loads((d / "table.json").read_text())["rows"]
  ]
  assert rows(tmp_path / "s") == rows(tmp_path / "u") and len(rows(tmp_path / "u")) == 3


SHARER = """
import os, sys, time
sys.path[:0] = [{repo!r}, {tests!r}]
import test_sweep
from jaxmi.experiments import sweep
inner = test_sweep.fake_execute()
def run(stage):
  with open({log!r}, "a") as f:
    f.write(f"{{os.getpid()}} {{stage.id}}\\n")
  time.sleep(0.1)
  inner(stage)
open(f"{ready}.{{os.getpid()}}", "w").close()  # both processes start the sweep together
while len([f for f in os.listdir({tmp!r}) if f.startswith("ready.")]) < 2:
  time.sleep(0.01)
sweep.run_sweep(test_sweep.tiny(), {workdir!r}, execute=run, poll_seconds=0.05)
"""


def test_two_processes_sharing_a_sweep_split_it_without_overlap(tmp_path):
  log = tmp_path / "ran.txt"
  code = SHARER.format(
    repo=str(REPO),
    tests=str(REPO / "tests"),
    log=str(log),
    workdir=str(tmp_path / "s"),
    ready=str(tmp_path / "ready"),
    tmp=str(tmp_path),
  )
  children = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(2)]
  assert [c.wait(timeout=300) for c in children] == [0, 0]
  runs = [line.split() for line in log.read_text().splitlines()]
  stages = [sid for _, sid in runs]
  assert sorted(stages) == sorted(sweep.plan(tiny(), tmp_path / "s").stages)  # every stage exactly once
  assert len({pid for pid, _ in runs}) == 2  # both took part
  assert "12 of 12 cells finished" in (tmp_path / "s" / "table.md").read_text()


def test_two_claimers_never_both_get_a_stage(tmp_path):
  stages = [f"attack-{i:016x}" for i in range(40)]
  won: dict[str, list] = {s: [] for s in stages}
  barrier = threading.Barrier(4)

  def claimer(pid):
    claims = sweep.Claims(tmp_path, ttl=60, pid=pid, host="h")
    barrier.wait()
    for s in stages:
      claim = claims.try_claim(s)
      if claim is not None:
        won[s].append(pid)

  threads = [threading.Thread(target=claimer, args=(os.getpid(),)) for _ in range(4)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert all(len(w) == 1 for w in won.values()), won
  # A live holder keeps it: another process (here: another pid on the same host, alive) is refused.
  other = sweep.Claims(tmp_path, ttl=60, pid=os.getppid(), host="h")
  assert other.try_claim(stages[0]) is None and other.holder(stages[0])["pid"] == os.getpid()


def _dead_pid() -> int:
  p = subprocess.Popen([sys.executable, "-c", "pass"])
  p.wait()
  return p.pid


def test_a_stale_claim_expires_and_exactly_one_claimer_takes_it_over(tmp_path):
  dead = sweep.Claims(tmp_path, ttl=60, pid=_dead_pid(), host="h")
  claim = dead.try_claim("gan-1")
  claim._stop.set()  # its process died: no more heartbeats
  me = sweep.Claims(tmp_path, ttl=60, host="h")
  # Same host, pid gone: expired at once; one of two racing claimers gets the next generation.
  first, second = me.try_claim("gan-1"), sweep.Claims(tmp_path, ttl=60, pid=os.getppid(), host="h").try_claim("gan-1")
  assert first is not None and second is None and first.path.name == "gan-1.1"
  first.release()
  assert not list(tmp_path.iterdir())  # its claim and the expired one it replaced
  # An earlier process that had this pid (a restarted container) left a claim: not ours, so expired.
  (tmp_path / "gan-3.0").write_text(json.dumps({"pid": os.getpid(), "host": "h", "process": "an earlier one"}))
  mine = me.try_claim("gan-3")
  assert mine is not None and me.try_claim("gan-3") is None  # ours is live, also to ourselves
  mine.release()
  # Another host's claim: its pid cannot be checked, so only a heartbeat older than the TTL expires it.
  remote = sweep.Claims(tmp_path, ttl=0.3, pid=_dead_pid(), host="elsewhere").try_claim("gan-2")
  remote._stop.set()
  local = sweep.Claims(tmp_path, ttl=0.3, host="h")
  assert local.try_claim("gan-2") is None
  time.sleep(0.5)
  taken = local.try_claim("gan-2")
  assert taken is not None
  taken.release()
  remote.release()


def test_a_heartbeat_keeps_a_long_stage_claimed(tmp_path):
  claims = sweep.Claims(tmp_path, ttl=0.4, pid=os.getppid(), host="h")  # a live process, as seen from ours
  claim = claims.try_claim("attack-1")
  time.sleep(1.0)  # 2.5 TTLs: the heartbeat (every TTL / 4) keeps the file fresh
  assert sweep.Claims(tmp_path, ttl=0.4, host="h").try_claim("attack-1") is None
  claim.release()
  claim.release()  # a second release must not remove a claim made since
  assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
  "changes, field",
  [
    ({"defenses": {"mdi": ({},)}}, "defenses: unknown defense 'mdi'"),
    ({"defenses": {"mid": ({"betta": 0.1},)}}, "defenses.mid[0]: unknown field 'defense.betta'"),
    ({"defenses": {"mid": ({"beta": "high"},)}}, "defenses.mid[0]: field 'defense.beta': expected float"),
    ({"defenses": {"mid": ({"beta": 0.1}, {"beta": 0.1})}}, "defenses.mid: "),
    ({"defenses": {"none": ({"beta": 0.1},)}}, "defenses.none: "),
    ({"defenses": {"mid": ()}}, "defenses.mid: expected a non-empty list"),
    ({"attacks": ("gmi", "lomma")}, "attacks: "),
    ({"seeds": ()}, "seeds: "),
    ({"target_overrides": ("model.widht=3",)}, "target_overrides: unknown field 'model.widht'"),
    ({"data_overrides": ("max_per_clas=3",)}, "data_overrides: unknown field 'data.max_per_clas'"),
  ],
)
def test_bad_recipe_input_names_the_field(tmp_path, changes, field):
  with pytest.raises(ConfigError) as e:
    sweep.run_sweep(tiny(**changes), tmp_path / "s", execute=fake_execute())
  assert field in str(e.value) and "\n" not in str(e.value)
  assert not (tmp_path / "s").exists()


def test_the_command_line_refuses_bad_input_with_exit_2_and_writes_nothing(tmp_path, capsys):
  recipe = f"{RECIPE}:data=mnist,size=tiny"
  for argv, fragment in (
    ([f"{RECIPE}:data=mnist,size=huge", str(tmp_path / "s")], "argument 'size'"),
    ([recipe, str(tmp_path / "s"), "seeds=0,0"], "seeds: "),
    ([recipe, str(tmp_path / "s"), "--shard", "2/2"], "--shard: expected i/n"),
    ([recipe, str(tmp_path / "s"), "attacks=gmi,xyz"], "attacks: "),
  ):
    assert cli.main(["sweep", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("jaxmi: error: ") and fragment in err and err.count("\n") == 1, err
  assert not (tmp_path / "s").exists()
  assert cli.main(["sweep", recipe, str(tmp_path / "s"), "--dry-run", "--shard", "1/4"]) == 0
  assert "shard 1/4" in capsys.readouterr().out and not (tmp_path / "s").exists()


def test_pareto_front_keeps_the_points_no_other_beats():
  # (natural accuracy, attack acc@1): higher x and lower y are better.
  points = [(99.8, 68.0), (99.5, 69.3), (99.4, 54.7), (97.7, 54.7), (99.2, 6.7), (99.8, 70.0)]
  # 2 is on the front (no point is both more accurate and less attacked); 1, 3 and 5 are each beaten by 0 or 2.
  assert sweep.pareto_front(points) == [4, 2, 0]


@pytest.mark.slow  # trains and attacks real tiny networks: ~1-2 min of CPU, most of it compiling
def test_a_real_tiny_sweep_resumes_a_stopped_stage_and_a_second_run_reuses_it(tmp_path, monkeypatch):
  from jaxmi.errors import Interrupted
  from jaxmi.train import train_classifier
  from jaxmi.workdir import locked

  cfg = tiny(defenses={"none": ({},), "mid": ({"beta": 0.01},)}, attacks=("gmi",), seeds=(0,))
  target = sweep.plan(cfg, tmp_path).stages[sweep.plan(cfg, tmp_path).cells[0].target]

  def stopped_target(stage):  # the undefended target stops after 3 of its 6 steps, as a kill after a checkpoint
    if stage.kind != "target":
      return sweep.execute_stage(stage, progress=False)
    with locked(stage.directory):
      train_classifier(stage.config, stage.directory, progress=False, stop_at_step=3)

  with pytest.raises(Interrupted):
    sweep.run_sweep(cfg, tmp_path, execute=stopped_target)
  assert sweep.state(target) == "resume"
  rows = sweep.run_sweep(cfg, tmp_path, progress=False)
  assert json.loads((target.directory / "summary.json").read_text())["resumed_from_step"] == 3
  assert [(r["defense"], r["attack"], r["seeds"]) for r in rows] == [("none", "gmi", 1), ("mid", "gmi", 1)]
  assert rows[1]["setting"].startswith("beta=0.01") and 0 <= rows[0]["acc1"] <= 1
  monkeypatch.setattr(sweep, "execute_stage", lambda stage, progress=True: pytest.fail(f"reran {stage.id}"))
  assert sweep.run_sweep(cfg, tmp_path, progress=False) == rows


@pytest.mark.slow  # MNIST, one epoch per network, 100 attack steps: a few minutes on a 2-core CPU
def test_a_small_mnist_sweep_from_the_command_line_writes_the_table_and_plots(tmp_path, data_root, capsys):
  recipe = f"{RECIPE}:data=mnist,size=smoke"
  assert cli.main(["sweep", recipe, str(tmp_path), "--no-progress"]) == 0
  with open(tmp_path / "table.csv", newline="") as f:
    rows = list(csv.DictReader(f))
  assert [(r["defense"], r["attack"], r["seeds"]) for r in rows] == [("none", "gmi", "1"), ("mid", "gmi", "1")]
  assert all(float(r["natural_acc"]) > 0.9 for r in rows)  # one epoch on 1500 digits still learns 5 digits
  for png in ("tradeoff.png", "knn.png", "reconstructions.png"):
    assert (tmp_path / png).stat().st_size > 5000
  capsys.readouterr()
  assert cli.main(["sweep", recipe, str(tmp_path), "--dry-run"]) == 0
  out = capsys.readouterr().out
  assert "stages (6: 6 reused, 0 to train or run)" in out and "estimate: nothing to run" in out
