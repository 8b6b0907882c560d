"""The CelebA protocol's recipe (configs/protocol.py) and ``bin/jaxmi protocol`` (jaxmi/experiments/protocol.py)."""

import csv
import importlib.util
import json
from pathlib import Path

import pytest
from celeba_fixture import make_celeba

from jaxmi import cli
from jaxmi import config as config_lib
from jaxmi.data import sources
from jaxmi.errors import ConfigError
from jaxmi.experiments import protocol
from jaxmi.experiments.attack import EVAL_RESULTS_COLUMNS, AttackConfig

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "configs" / "protocol.py"


def recipe_module():
  spec = importlib.util.spec_from_file_location("protocol_recipe", RECIPE)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def load(arg: str, overrides=()):
  return config_lib.load_config(f"{RECIPE}:{arg}", overrides)


def test_every_protocol_argument_set_loads_and_names_its_workdir():
  r = recipe_module()
  names = set()
  for arg in r.ARG_SETS:
    cfg = load(arg)
    config_lib.check_choices(cfg)
    names.add(cfg.name if hasattr(cfg, "name") else cfg.target.name if hasattr(cfg, "defense") else cfg.student.name)
  # Every target x attack x public set, and every defense on every target.
  assert {f"{m}_celeba_{t}_{p}" for m in r.METHODS for t in r.TARGETS for p in r.PUBLICS} <= names
  assert {f"celeba_{t}_{d}" for t in r.TARGETS for d in r.DEFENSES} <= names
  assert {"celeba_vgg16", "celeba_ir152", "celeba_facenet64", "celeba_facenet112", "celeba_gan_ffhq"} <= names


def test_protocol_recipes_carry_the_papers_settings():
  gmi = load("what=attack,method=gmi,target=ir152,defense=none,public=celeba")
  assert (gmi.attack, gmi.target, gmi.evaluator, gmi.gan) == (
    "gmi",
    "runs/celeba_ir152",
    "runs/celeba_facenet112",
    "runs/celeba_gan_celeba",
  )
  inv = gmi.inversion
  assert gmi.identities == tuple(range(300)) and (inv.steps, inv.restarts, inv.learning_rate) == (1500, 5, 0.02)
  assert (inv.optimizer, inv.momentum, inv.z_clip, inv.identity_weight, inv.reference_batch) == (
    "nesterov",
    0.9,
    1.0,
    100.0,
    60,
  )
  lomma = load("what=attack,method=kedmi_lomma,target=vgg16,defense=bido,public=ffhq")
  assert lomma.gan == "runs/celeba_gan_kedmi_vgg16_bido_ffhq" and lomma.inversion.steps == 2400
  assert lomma.surrogates == tuple(f"runs/celeba_surrogate_vgg16_bido_efficientnet_b{i}_ffhq" for i in range(3))
  assert (lomma.inversion.identity_loss, lomma.inversion.draw_clamp, lomma.inversion.optimizer) == (
    "logit",
    1.0,
    "adam",
  )
  plg = load("what=attack,method=plg,target=facenet64,defense=none,public=facescrub")
  assert (plg.inversion.steps, plg.inversion.learning_rate, plg.gan) == (
    600,
    0.1,
    "runs/celeba_gan_plg_facenet64_facescrub",
  )
  target = load("what=target,target=vgg16")
  assert (target.model.arch, target.data.dataset, target.data.image_size, target.data.private_ids) == (
    "vgg16",
    "celeba",
    64,
    (),
  )
  assert (target.optim.decay_epochs, target.optim.decay_factor, target.train.epochs) == ((20, 35), 0.2, 50)
  ev = load("what=eval")
  assert (ev.role, ev.model.arch, ev.data.image_size, ev.train.seed) == ("evaluation", "facenet112", 112, 1)
  g = load("what=gan,public=ffhq")
  assert (g.gan.base_width, g.gan.stages, g.gan.channels, g.data.public_dataset, g.train.epochs) == (
    64,
    4,
    3,
    "ffhq",
    120,
  )
  s = load("what=surrogate,student=efficientnet_b2,target=vgg16,defense=none,public=celeba")
  assert (s.teacher, s.student.model.arch, s.student.role, s.student.train.epochs) == (
    "runs/celeba_vgg16",
    "efficientnet_b2",
    "surrogate",
    20,
  )
  assert load("what=defense,method=bido,target=ir152").defense.lambda_y == 2.0
  assert load("what=defense,method=tl_dmi,target=ir152").defense.frozen_layers == 48
  assert load("what=defense,method=dp_sgd,target=vgg16").target.model.norm == "group"
  lomma_table = load("what=table,table=lomma,public=ffhq")
  assert lomma_table.steps == 2400 and lomma_table.data.public_dataset == "ffhq"
  assert lomma_table.attacks == ("gmi", "gmi_lomma", "kedmi", "kedmi_lomma")


@pytest.mark.parametrize(
  "arg, fragment",
  [
    ("what=target", "missing argument 'target'; expected what=target,target=vgg16|ir152|facenet64"),
    ("what=target,target=vgg16,public=celeba", "unknown argument 'public'"),
    ("what=tables", "argument 'what': expected one of"),
    ("target=vgg16", "missing argument 'what'"),
  ],
)
def test_bad_protocol_arguments_name_the_file_and_what_was_expected(arg, fragment):
  with pytest.raises(ConfigError, match="protocol.py") as e:
    load(arg)
  assert fragment in str(e.value)


def _fake_model(path: Path, summary: dict | None = None) -> None:
  path.mkdir(parents=True)
  (path / "summary.json").write_text(json.dumps(summary or {"natural_accuracy": 0.5}))


def _fake_attack(run_dir: Path, acc: float, config: AttackConfig | None = None) -> None:
  """A finished attack run of ``config``: results.json and its Eval_results.csv row."""
  run_dir.mkdir(parents=True)
  (run_dir / "results.json").write_text(
    json.dumps(
      {
        "config": config_lib.to_dict(config or AttackConfig()),
        "feature_fid": 12.5,
        "prdc": {"precision": 0.5, "recall": 0.25, "density": 0.75, "coverage": 1.0},
        "prdc_feature_space": "evaluation-model features",
        "identities": 300,
        "restarts": 5,
      }
    )
  )
  row = {"Save_dir": str(run_dir), "Method": "gmi", "Succesful_samples": 7, "acc": acc, "std": 0.01}
  row |= {"acc5": 0.9, "std5": "", "fid": "", "knn": 1500.0}
  with open(run_dir / "Eval_results.csv", "w", newline="") as f:
    out = csv.DictWriter(f, fieldnames=EVAL_RESULTS_COLUMNS)
    out.writeheader()
    out.writerow(row)


def test_plan_uses_what_is_there_makes_the_rest_and_skips_finished_attacks(tmp_path):
  models, work = tmp_path / "runs", tmp_path / "protocol"
  cfg = config_lib.replace(
    load("what=table,table=kedmi,public=celeba", ["targets=vgg16,ir152", f"models={models}"]), steps=7
  )
  # The target and evaluation model imported (summary.json), the IR-152 target half trained (checkpoints only).
  _fake_model(models / "celeba_vgg16", {"name": "VGG16_88.26", "imported_from": {}})
  _fake_model(models / "celeba_facenet112")
  (models / "celeba_ir152" / "checkpoints" / "100").mkdir(parents=True)
  (work / "attacks" / "ir152_gmi" / "attack_state").mkdir(parents=True)
  assert protocol.plan(cfg, work).cells[0].state == "run"
  _fake_attack(work / "attacks" / "vgg16_gmi", 0.75, protocol.plan(cfg, work).cells[0].config)

  p = protocol.plan(cfg, work)
  states = {m.workdir.name: m.state for m in p.models}
  assert states == {
    "celeba_facenet112": "ready",
    "celeba_vgg16": "ready",
    "celeba_ir152": "resume",
    "celeba_gan_celeba": "make",
    "celeba_gan_kedmi_vgg16_celeba": "make",
    "celeba_gan_kedmi_ir152_celeba": "make",
  }
  # Made in order: what a KEDMI GAN reads (its target) before it.
  order = [m.workdir.name for m in p.models]
  assert order.index("celeba_ir152") < order.index("celeba_gan_kedmi_ir152_celeba")
  assert {(c.target, c.method): c.state for c in p.cells} == {
    ("vgg16", "gmi"): "done",
    ("vgg16", "kedmi"): "run",
    ("ir152", "gmi"): "resume",
    ("ir152", "kedmi"): "run",
  }
  cell = p.cells[1]
  assert isinstance(cell.config, AttackConfig) and cell.config.inversion.steps == 7  # the table's steps
  assert (cell.config.target, cell.config.gan) == (
    str(models / "celeba_vgg16"),
    str(models / "celeba_gan_kedmi_vgg16_celeba"),
  )
  gan = next(m for m in p.models if m.workdir.name == "celeba_gan_kedmi_vgg16_celeba")
  assert gan.config.target == str(models / "celeba_vgg16")  # made from the relocated target
  # An attack override wins over the table's steps; the finished run of the other config is not taken for it.
  over = config_lib.replace(cfg, attack_overrides="inversion.steps=3 identities=0:6")
  with pytest.raises(ConfigError, match=r"vgg16_gmi/results.json: a finished attack of another config \(differs in "):
    protocol.plan(over, work)
  over = config_lib.replace(over, targets=("ir152",))
  assert protocol.plan(over, work).cells[0].config.inversion.steps == 3
  assert protocol.plan(over, work).cells[0].config.identities == tuple(range(6))


def test_missing_networks_are_refused_before_anything_is_written(tmp_path, capsys):
  models, work = tmp_path / "runs", tmp_path / "protocol"
  args = [
    "protocol",
    "--config",
    f"{RECIPE}:what=table,table=gmi,public=celeba",
    "--workdir",
    str(work),
    "targets=vgg16",
    f"models={models}",
    "train_missing=false",
  ]
  assert cli.main(args) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "celeba_facenet112" in err[0] and "train_missing=false" in err[0], err
  assert "bin/jaxmi train-classifier --config" in err[0] and "import-torch" in err[0]
  assert not work.exists() and not models.exists()
  # A bad override of one kind names the field and the kind.
  assert cli.main([*args[:-1], "attack_overrides=inversion.stepz=3"]) == 2
  err = capsys.readouterr().err
  assert "attack_overrides" in err and "inversion.stepz" in err
  assert cli.main([*args[:-2], "targets=vgg17"]) == 2
  assert "targets: 'vgg17'" in capsys.readouterr().err
  assert cli.main(["protocol", "--config", f"{RECIPE}:what=eval", "--workdir", str(work)]) == 2
  assert "expected a table" in capsys.readouterr().err
  assert not work.exists()


def test_table_from_finished_runs(tmp_path):
  work = tmp_path / "protocol"
  cfg = load("what=table,table=gmi,public=celeba", ["targets=vgg16,ir152_bido"])
  cells = []
  for target, acc in (("vgg16", 0.75), ("ir152_bido", 0.25)):
    run_dir = work / "attacks" / f"{target}_gmi"
    _fake_attack(run_dir, acc)
    cells.append(protocol.Cell(target=target, method="gmi", workdir=run_dir, config=AttackConfig(), state="done"))
  rows = [protocol.table_row(c, natural) for c, natural in zip(cells, (0.88, 0.8))]
  protocol.write_table(protocol.Workdir(work), cfg, rows, [c.workdir for c in cells])
  md = (work / "table.md").read_text()
  assert "| vgg16 | none | 88.00 | GMI | 75.00 ± 1.00 | 90.00 | 1500.00 | 12.50 |" in md
  assert "| ir152 | bido | 80.00 | GMI | 25.00 ± 1.00 |" in md and "evaluation model's features" in md
  with open(work / "table.csv", newline="") as f:
    table = list(csv.DictReader(f))
  assert [(r["target"], r["defense"], float(r["acc1"]), r["fid"]) for r in table] == [
    ("vgg16", "none", 0.75, ""),
    ("ir152", "bido", 0.25, ""),
  ]
  with open(work / "Eval_results.csv", newline="") as f:
    official = list(csv.DictReader(f))
  assert [float(r["acc"]) for r in official] == [0.75, 0.25] and list(official[0]) == list(EVAL_RESULTS_COLUMNS)


@pytest.mark.slow
def test_protocol_end_to_end_on_the_celeba_fixture(tmp_path, data_root, capsys, monkeypatch):
  """builder -> crop -> target -> GMI -> 112-px evaluation model (PIL 64->112) -> FID/PRDC -> Eval_results.csv and
  the table, through the one command; then a rerun skips every finished piece."""
  raw = tmp_path / "raw"
  make_celeba(raw, att_dir=data_root / "att_faces", identities=6, train=3, test=1, public=20)
  models, work = tmp_path / "runs", tmp_path / "protocol"
  for var in ("JAXMI_DATA_DIR", sources.FLAG_DATA_DIR_ENV):  # main() sets them from --data-dir; restored after
    monkeypatch.setenv(var, str(raw))
  args = [
    "protocol",
    "--config",
    f"{RECIPE}:what=table,table=gmi,public=celeba",
    "--workdir",
    str(work),
    "--data-dir",
    str(raw),
    "--no-progress",
    "targets=vgg16",
    f"models={models}",
    # Tiny networks and a short attack: the path, not the numbers.
    "target_overrides=model.arch=cnn model.width=8 model.feature_dim=32 train.epochs=2 train.batch_size=6",
    "evaluator_overrides=model.arch=resnet model.width=8 model.blocks=(1,1) train.epochs=2 train.batch_size=6",
    "gan_overrides=gan.base_width=4 train.epochs=1 train.batch_size=4 train.n_critic=2",
    "attack_overrides=identities=0:6 inversion.steps=4 inversion.restarts=2 execution.log_every=2",
  ]
  assert cli.main(args) == 0, capsys.readouterr().err
  out = capsys.readouterr().out
  for name in ("celeba_vgg16", "celeba_facenet112", "celeba_gan_celeba"):
    assert (models / name / "summary.json").is_file(), name
  ev = json.loads((models / "celeba_facenet112" / "summary.json").read_text())
  assert ev["config"]["data"]["image_size"] == 112 and ev["config"]["data"]["dataset"] == "celeba"
  run = work / "attacks" / "vgg16_gmi"
  result = json.loads((run / "results.json").read_text())
  assert result["identities"] == 6 and result["restarts"] == 2
  assert result["config"]["evaluation"]["resize"] == "pil" and "64x64 reconstructions" in out
  assert result["fid_feature_space"] == "evaluation-model features" and "fid" not in result  # no Inception weights
  assert set(result["prdc"]) == {"precision", "recall", "density", "coverage"}
  with open(work / "Eval_results.csv", newline="") as f:
    official = list(csv.DictReader(f))
  with open(run / "Eval_results.csv", newline="") as f:
    assert official == list(csv.DictReader(f)) and len(official) == 1
  assert official[0]["fid"] == "" and float(official[0]["acc"]) == pytest.approx(result["acc1_all_restarts_mean"])
  md = (work / "table.md").read_text()
  assert "| vgg16 | none |" in md and "| GMI |" in md and md.splitlines()[2] in out
  # Rerun: every network is used as it is and the finished attack skipped; the table is written again.
  mtime = (run / "results.json").stat().st_mtime_ns
  assert cli.main(args) == 0
  out = capsys.readouterr().out
  assert "skip (done)" in out and "train " not in out and (run / "results.json").stat().st_mtime_ns == mtime
