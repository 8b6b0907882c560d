import dataclasses
import importlib.util
import itertools
import typing
from pathlib import Path

import pytest

from jaxmi import config as config_lib
from jaxmi.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
MNIST_TARGET = f"{CONFIGS}/classifier.py:role=target,data=mnist"


def recipe_args(path: Path) -> list[str]:
  """Every ``key=value,...`` argument a recipe accepts: the product of the choices in its ``ARGS`` table."""
  spec = importlib.util.spec_from_file_location(f"recipe_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if hasattr(module, "ARG_SETS"):  # arguments that depend on one another (configs/protocol.py): its valid sets
    return list(module.ARG_SETS)
  keys, choices = zip(*((k, typing.get_args(v)) for k, v in module.ARGS.items()))
  return [",".join(f"{k}={v}" for k, v in zip(keys, combo)) for combo in itertools.product(*choices)]


ALL = [(path.name, arg) for path in sorted(CONFIGS.glob("*.py")) for arg in recipe_args(path)]

# The 40 config files this layout replaced: every one is a recipe:arg whose config equals the old file's
# (checked field by field when the files were merged); their names must not move, nor the runs/<name> paths
# other recipes read their models from (the README's commands pass --workdir runs/<name>).
OLD_NAMES = {
  *(f"{d}_{r}" for d in ("mnist", "att") for r in ("target", "eval")),
  *(f"gnime_{r}_{d}" for d in ("mnist", "att") for r in ("target", "eval", "grad", "gradcam")),
  *(f"{g}_{d}" for d in ("mnist", "att") for g in ("gan", "gan_kedmi")),
  "surrogate_mnist_vgg",
  "surrogate_att_cnn",
  *(f"{m}_{d}" for d in ("mnist", "att") for m in ("gmi", "gmi_lomma", "kedmi", "kedmi_lomma")),
  *(
    f"defense_{m}_{d}"
    for d in ("mnist", "att")
    for m in ("bido", "bido_coco", "mid", "nls", "calor", "tl_dmi", "dp_sgd")
  ),
}
# Issue 17's methods: PLG-MI (its attack and its conditional GAN) and Trap-MID.
NEW_NAMES = {*(f"{n}_{d}" for d in ("mnist", "att") for n in ("plg", "gan_plg", "defense_trap_mid"))}


def load(recipe: str, arg: str, overrides=()):
  return config_lib.load_config(f"{CONFIGS / recipe}:{arg}", overrides)


@pytest.mark.parametrize("recipe, arg", ALL, ids=[f"{r}:{a}" for r, a in ALL])
def test_every_recipe_argument_loads_and_validates(recipe, arg):
  cfg = load(recipe, arg)  # raises a ConfigError naming the file if broken
  assert dataclasses.is_dataclass(cfg)
  config_lib.check_choices(cfg)


def test_recipes_cover_the_old_configs_under_their_old_names_and_the_new_methods():
  names, reads = {}, set()
  for recipe, arg in ALL:
    if recipe in ("protocol.py", "sweep.py"):  # the CelebA protocol's own names, sweeps (their own tests)
      continue
    cfg = load(recipe, arg)
    name = cfg.student.name if recipe == "surrogate.py" else cfg.target.name if recipe == "defense.py" else cfg.name
    names[name] = f"{recipe}:{arg}"
    if recipe == "attack.py":
      reads |= {cfg.target, cfg.evaluator, cfg.gan, *cfg.surrogates}
    elif recipe == "gnime.py":
      reads |= {cfg.target, cfg.evaluator}
    elif recipe == "surrogate.py":
      reads.add(cfg.teacher)
    elif recipe == "gan.py" and cfg.target:
      reads.add(cfg.target)
  assert len([r for r, _ in ALL if r not in ("protocol.py", "sweep.py")]) == 46 and set(names) == OLD_NAMES | NEW_NAMES
  # Every model a recipe reads by default is runs/<name> of a recipe that makes it.
  assert len(reads) == 16 and {path.removeprefix("runs/") for path in reads} <= set(names), sorted(reads)


def test_classifier_roles():
  for role, data, name, arch in [
    ("target", "mnist", "mnist_target", "cnn"),
    ("eval", "mnist", "mnist_eval", "resnet"),
    ("target", "att", "att_target", "vgg"),
    ("eval", "att", "att_eval", "resnet"),
  ]:
    cfg = load("classifier.py", f"role={role},data={data}")
    assert (cfg.name, cfg.role, cfg.model.arch) == (name, "evaluation" if role == "eval" else role, arch)
    assert not set(cfg.data.private_ids) & set(cfg.data.public_ids)
  lomma = load("attack.py", "method=gmi_lomma,data=mnist", ["inversion.steps=10"])
  assert lomma.inversion.identity_loss == "logit" and lomma.surrogates and lomma.inversion.steps == 10
  assert load("surrogate.py", "data=mnist").student.role == "surrogate"


def test_recipes_pick_their_dataset_rows():
  assert load("defense.py", "method=mid,data=mnist").defense.beta == 0.01
  assert load("defense.py", "method=mid,data=att").defense.beta == 0.003
  coco = load("defense.py", "method=bido_coco,data=att").defense
  assert (coco.measure, coco.lambda_x, coco.lambda_y) == ("coco", 0.5, 5.0)
  assert load("defense.py", "method=bido_coco,data=mnist").defense.lambda_x == 2.0
  assert load("defense.py", "method=tl_dmi,data=mnist").defense.frozen_layers == 2
  assert load("defense.py", "method=tl_dmi,data=att").defense.frozen_layers == 8
  assert load("attack.py", "method=gmi,data=mnist").inversion.learning_rate == 0.01
  assert load("attack.py", "method=gmi,data=att").inversion.learning_rate == 0.02
  kedmi = load("attack.py", "method=kedmi_lomma,data=att")
  assert (kedmi.attack, kedmi.gan, kedmi.surrogates) == ("kedmi", "runs/gan_kedmi_att", ("runs/surrogate_att_cnn",))
  assert (kedmi.inversion.draw_clamp, kedmi.inversion.identity_loss, kedmi.inversion.optimizer) == (
    1.0,
    "logit",
    "adam",
  )
  assert load("attack.py", "method=kedmi,data=att").inversion.draw_clamp == 0.0
  gan = load("gan.py", "kind=kedmi,data=att")
  assert (gan.kind, gan.target, gan.gan.stages, gan.data.dataset) == ("kedmi", "runs/att_target", 4, "att_faces")
  assert load("gan.py", "kind=gmi,data=mnist").target == ""
  assert load("gnime.py", "explanation=gradcam,data=att").gnime.a == 500.0
  # A defended target is the plain target but for what its method changes.
  target = load("classifier.py", "role=target,data=att")
  defended = load("defense.py", "method=nls,data=att").target
  assert defended == dataclasses.replace(target, name="defense_nls_att")
  half = load("classifier.py", "role=gnime_eval,data=mnist")
  assert (half.role, half.model.arch, half.train.seed, half.train.epochs) == ("evaluation", "resnet", 1, 5)
  assert half.data.public_ids == () and half.data.test_fraction == 0.5


@pytest.mark.parametrize(
  "arg, fragment",
  [
    (
      "method=mdi,data=att",
      "argument 'method': expected one of bido, bido_coco, mid, nls, calor, tl_dmi, dp_sgd, trap_mid, got 'mdi'",
    ),
    ("method=mid,data=cifar", "argument 'data': expected one of mnist, att, got 'cifar'"),
    (
      "method=mid,dat=att",
      "unknown argument 'dat'; expected method=bido|bido_coco|mid|nls|calor|tl_dmi|dp_sgd|trap_mid,data=mnist|att",
    ),
    ("method=mid", "missing argument 'data'"),
    ("method=mid,data=att,method=nls", "repeated argument 'method'"),
    ("mid", "argument 'mid' is not of the form key=value"),
  ],
)
def test_bad_recipe_arguments_name_the_file_and_the_choices(arg, fragment):
  with pytest.raises(ConfigError) as e:
    load("defense.py", arg)
  msg = str(e.value)
  assert msg.startswith(f"{CONFIGS}/defense.py:{arg}: ") and fragment in msg and "\n" not in msg


def test_a_recipe_needs_its_argument_and_a_plain_file_takes_none(tmp_path):
  with pytest.raises(ConfigError, match=r"defense.py: missing argument 'method'; expected method="):
    config_lib.load_config(CONFIGS / "defense.py")
  (tmp_path / "plain.py").write_text(
    "from jaxmi.train import ClassifierConfig\n\n\ndef get_config():\n  return ClassifierConfig(name='plain')\n"
  )
  assert config_lib.load_config(tmp_path / "plain.py").name == "plain"
  with pytest.raises(ConfigError, match=r"plain.py: get_config\(\) takes no argument; got ':data=att'"):
    config_lib.load_config(f"{tmp_path}/plain.py:data=att")


def test_split_arg_splits_at_the_first_py_colon():
  assert config_lib.split_arg("configs/defense.py:method=mid,data=att") == (
    Path("configs/defense.py"),
    "method=mid,data=att",
  )
  assert config_lib.split_arg("/a:b/c.py:teacher=runs/x") == (Path("/a:b/c.py"), "teacher=runs/x")
  assert config_lib.split_arg(Path("configs/gan.py")) == (Path("configs/gan.py"), None)
  assert config_lib.split_arg("configs/gan.py:") == (Path("configs/gan.py"), "")


def test_parse_arg_types_values():
  assert config_lib.parse_arg(" n = 3 , lr=0.5,on=yes", n=int, lr=float, on=bool) == {"n": 3, "lr": 0.5, "on": True}
  with pytest.raises(ConfigError, match="argument 'n': expected int, got 'x'"):
    config_lib.parse_arg("n=x", n=int)


def test_overrides_are_parsed_by_field_type():
  cfg = load(
    "classifier.py",
    "role=target,data=att",
    [
      "train.epochs=2",
      "optim.learning_rate=3e-3",
      "train.augment.hflip=false",
      "data.private_ids=0:5",
      "data.public_ids=5,6,7",
      "model.width_divisor=8",
      "data.data_dir=/x/y",
    ],
  )
  assert cfg.train.epochs == 2 and isinstance(cfg.train.epochs, int)
  assert cfg.optim.learning_rate == pytest.approx(3e-3)
  assert cfg.train.augment.hflip is False
  assert cfg.data.private_ids == (0, 1, 2, 3, 4) and cfg.data.public_ids == (5, 6, 7)
  assert cfg.model.width_divisor == 8 and cfg.data.data_dir == "/x/y"
  assert dataclasses.is_dataclass(cfg) and cfg.name == "att_target"


@pytest.mark.parametrize(
  "override, fragment",
  [
    ("train.epoch=3", "unknown field 'train.epoch'"),
    ("nonsense=1", "unknown field 'nonsense'"),
    ("train.epochs=three", "field 'train.epochs': expected int"),
    ("train.epochs=2.5", "field 'train.epochs': expected int"),
    ("train.augment.hflip=maybe", "expected true/false"),
    ("train.epochs", "not of the form field=value"),
    ("name.sub=1", "has no sub-fields"),
  ],
)
def test_bad_overrides_name_the_file_and_field(override, fragment):
  with pytest.raises(ConfigError) as e:
    config_lib.load_config(MNIST_TARGET, [override])
  msg = str(e.value)
  assert fragment in msg and "classifier.py:role=target,data=mnist: " in msg and "\n" not in msg


def test_bad_config_files(tmp_path):
  with pytest.raises(ConfigError, match="config file not found"):
    config_lib.load_config(tmp_path / "missing.py")
  (tmp_path / "empty.py").write_text("x = 1\n")
  with pytest.raises(ConfigError, match="defines no get_config"):
    config_lib.load_config(tmp_path / "empty.py")
  (tmp_path / "broken.py").write_text("def get_config():\n  return 1 / 0\n")
  with pytest.raises(ConfigError, match="ZeroDivisionError"):
    config_lib.load_config(tmp_path / "broken.py")


def test_diff_lists_changed_dotted_keys():
  a = config_lib.to_dict(config_lib.load_config(MNIST_TARGET))
  b = config_lib.to_dict(config_lib.load_config(MNIST_TARGET, ["train.seed=5", "data.split_seed=2"]))
  assert config_lib.diff(a, b) == ["data.split_seed", "train.seed"]


def test_defense_recipes_are_consistent():
  from jaxmi.experiments.defend import DefendConfig
  from jaxmi.train.step import Defense

  defenses = [arg for recipe, arg in ALL if recipe == "defense.py"]
  assert len(defenses) >= 14
  for arg in defenses:
    cfg = load("defense.py", arg)
    assert isinstance(cfg, DefendConfig) and isinstance(cfg.defense, Defense), arg
    # Named after the method and data, as the workdir the documented defend and attack commands use.
    method, data = (kv.split("=")[1] for kv in arg.split(","))
    assert cfg.target.name == f"defense_{method}_{data}" and cfg.target.role == "target", arg
    if cfg.pretrain is not None and cfg.pretrain_on == "public":
      assert not set(cfg.pretrain.data.private_ids) & set(cfg.target.data.private_ids), arg


@pytest.mark.parametrize(
  "override, field",
  [
    ("optim.name=sgdd", "optim.name"),
    ("optim.schedule=cosin", "optim.schedule"),
    ("model.arch=resnett", "model.arch"),
    ("model.norm=layer", "model.norm"),
    ("data.dataset=mnits", "data.dataset"),
  ],
)
def test_choice_typos_are_refused_when_the_config_loads(override, field):
  # Before: accepted here and refused only after the data was prepared (or not at all).
  with pytest.raises(ConfigError) as e:
    config_lib.load_config(MNIST_TARGET, [override])
  msg = str(e.value)
  assert f"field '{field}': expected one of" in msg and override.split("=")[1] in msg and "\n" not in msg


def test_choice_typos_in_attack_and_gan_configs():
  for path, override, field in [
    ("attack.py:method=gmi,data=mnist", "attack=gmii", "attack"),
    ("attack.py:method=gmi,data=mnist", "inversion.identity_loss=logits", "inversion.identity_loss"),
    ("attack.py:method=gmi,data=mnist", "inversion.optimizer=sgd", "inversion.optimizer"),
    ("gan.py:kind=gmi,data=mnist", "kind=wgan", "kind"),
  ]:
    with pytest.raises(ConfigError, match=f"field '{field}': expected one of"):
      config_lib.load_config(f"{CONFIGS}/{path}", [override])


def test_choice_typo_written_in_the_config_file(tmp_path):
  (tmp_path / "typo.py").write_text(
    "from jaxmi.nets import ModelConfig\n"
    "from jaxmi.train.classifier import ClassifierConfig\n"
    "def get_config():\n"
    "  return ClassifierConfig(model=ModelConfig(arch='resnett'))\n"
  )
  with pytest.raises(
    ConfigError, match=r"typo.py: field 'model.arch': expected one of cnn, resnet, vgg, .*got 'resnett'"
  ):
    config_lib.load_config(tmp_path / "typo.py")


def test_overrides_of_fields_the_redesign_moved_name_their_new_place():
  """Issue 14 moved how an attack runs out of ``inversion``: an old override says where it went, not just "unknown"."""
  cfg = config_lib.load_config(REPO / "configs/attack.py:method=gmi,data=mnist")
  with pytest.raises(ConfigError, match=r"'inversion.max_batch' has moved: use execution.max_batch"):
    config_lib.apply_overrides(cfg, ["inversion.max_batch=4"], source="x")
  with pytest.raises(ConfigError, match=r"inversion.z_clip .* or inversion.draw_clamp"):
    config_lib.apply_overrides(cfg, ["inversion.clip_z=1"], source="x")
  assert config_lib.apply_overrides(cfg, ["execution.max_batch=4"], source="x").execution.max_batch == 4


def test_a_workdir_override_names_the_workdir_flag():
  """Issue 14 made the workdir a run's argument: ``workdir=...`` on a recipe says to use --workdir instead."""
  with pytest.raises(ConfigError) as e:
    load("gan.py", "kind=gmi,data=mnist", ["workdir=runs/x"])
  msg = str(e.value)
  assert "gan.py:kind=gmi,data=mnist: field 'workdir' has moved: use the --workdir flag" in msg and "\n" not in msg
