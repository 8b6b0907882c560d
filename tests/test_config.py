import dataclasses
from pathlib import Path

import pytest

from jaxmi import config as config_lib
from jaxmi.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_repo_configs_load_and_roles():
  for name, role, arch in [("mnist_target", "target", "cnn"), ("mnist_eval", "evaluation", "resnet"),
                           ("att_target", "target", "vgg"), ("att_eval", "evaluation", "resnet")]:
    cfg = config_lib.load_config(REPO / "configs" / f"{name}.py")
    assert (cfg.name, cfg.role, cfg.model.arch) == (name, role, arch)
    assert not set(cfg.data.private_ids) & set(cfg.data.public_ids)


def test_attack_gan_and_surrogate_configs_load():
  lomma = config_lib.load_config(REPO / "configs" / "attack_gmi_lomma_mnist.py", ["inversion.steps=10"])
  assert lomma.inversion.identity_loss == "logit" and lomma.surrogates and lomma.inversion.steps == 10
  assert config_lib.load_config(REPO / "configs" / "surrogate_mnist.py").student.role == "surrogate"
  for name in ("gan_mnist", "gan_att", "attack_gmi_mnist", "attack_gmi_att"):
    assert config_lib.load_config(REPO / "configs" / f"{name}.py").workdir.startswith("runs/")


def test_overrides_are_parsed_by_field_type():
  cfg = config_lib.load_config(REPO / "configs" / "att_target.py", [
      "train.epochs=2", "optim.learning_rate=3e-3", "train.augment.hflip=false", "data.private_ids=0:5",
      "data.public_ids=5,6,7", "model.width_divisor=8", "data.data_dir=/x/y"])
  assert cfg.train.epochs == 2 and isinstance(cfg.train.epochs, int)
  assert cfg.optim.learning_rate == pytest.approx(3e-3)
  assert cfg.train.augment.hflip is False
  assert cfg.data.private_ids == (0, 1, 2, 3, 4) and cfg.data.public_ids == (5, 6, 7)
  assert cfg.model.width_divisor == 8 and cfg.data.data_dir == "/x/y"
  assert dataclasses.is_dataclass(cfg) and cfg.name == "att_target"


@pytest.mark.parametrize("override, fragment", [
    ("train.epoch=3", "unknown field 'train.epoch'"),
    ("nonsense=1", "unknown field 'nonsense'"),
    ("train.epochs=three", "field 'train.epochs': expected int"),
    ("train.epochs=2.5", "field 'train.epochs': expected int"),
    ("train.augment.hflip=maybe", "expected true/false"),
    ("train.epochs", "not of the form field=value"),
    ("name.sub=1", "has no sub-fields"),
])
def test_bad_overrides_name_the_file_and_field(override, fragment):
  with pytest.raises(ConfigError) as e:
    config_lib.load_config(REPO / "configs" / "mnist_target.py", [override])
  msg = str(e.value)
  assert fragment in msg and "mnist_target.py" in msg and "\n" not in msg


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
  a = config_lib.to_dict(config_lib.load_config(REPO / "configs" / "mnist_target.py"))
  b = config_lib.to_dict(config_lib.load_config(REPO / "configs" / "mnist_target.py", ["train.seed=5", "data.split_seed=2"]))
  assert config_lib.diff(a, b) == ["data.split_seed", "train.seed"]


def test_every_shipped_config_loads_and_defense_configs_are_consistent():
  from jaxmi.defenses.run import DefendConfig
  from jaxmi.train.step import Defense

  configs = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.py"))
  defense_configs = [p for p in configs if p.stem.startswith("defense_")]
  assert len(defense_configs) >= 14
  for path in configs:
    cfg = config_lib.load_config(path)  # raises a ConfigError naming the file if broken
    if path in defense_configs:
      assert isinstance(cfg, DefendConfig) and isinstance(cfg.defense, Defense), path
      # The workdir is named after the config, so the documented attack command finds it.
      assert cfg.target.workdir == f"runs/{path.stem}" and cfg.target.role == "target", path
      if cfg.pretrain is not None and cfg.pretrain_on == "public":
        assert not set(cfg.pretrain.data.private_ids) & set(cfg.target.data.private_ids), path


@pytest.mark.parametrize("override, field", [
    ("optim.name=sgdd", "optim.name"),
    ("optim.schedule=cosin", "optim.schedule"),
    ("model.arch=resnett", "model.arch"),
    ("model.norm=layer", "model.norm"),
    ("data.dataset=mnits", "data.dataset"),
])
def test_choice_typos_are_refused_when_the_config_loads(override, field):
  # Before: accepted here and refused only after the data was prepared (or not at all).
  with pytest.raises(ConfigError) as e:
    config_lib.load_config(REPO / "configs" / "mnist_target.py", [override])
  msg = str(e.value)
  assert f"field '{field}': expected one of" in msg and override.split("=")[1] in msg and "\n" not in msg


def test_choice_typos_in_attack_and_gan_configs():
  for path, override, field in [("attack_gmi_mnist.py", "attack=gmii", "attack"),
                                ("attack_gmi_mnist.py", "inversion.identity_loss=logits", "inversion.identity_loss"),
                                ("attack_gmi_mnist.py", "inversion.optimizer=sgd", "inversion.optimizer"),
                                ("gan_mnist.py", "kind=wgan", "kind")]:
    with pytest.raises(ConfigError, match=f"field '{field}': expected one of"):
      config_lib.load_config(REPO / "configs" / path, [override])


def test_choice_typo_written_in_the_config_file(tmp_path):
  (tmp_path / "typo.py").write_text(
      "from jaxmi.nets import ModelConfig\n"
      "from jaxmi.train.classifier import ClassifierConfig\n"
      "def get_config():\n"
      "  return ClassifierConfig(model=ModelConfig(arch='resnett'))\n")
  with pytest.raises(ConfigError, match=r"typo.py: field 'model.arch': expected one of cnn, resnet, vgg, got 'resnett'"):
    config_lib.load_config(tmp_path / "typo.py")
