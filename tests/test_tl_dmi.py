"""TL-DMI: layers in forward order, the freeze (parameters and BN statistics) on real MNIST, the
`defend` command's public pretraining stage, and per-layer Fisher information against its closed form."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxmi import cli
from jaxmi.data import DataConfig, load_splits
from jaxmi.defenses import TransferLearning, layer_groups
from jaxmi.experiments.defend import PRETRAIN_DIR, DefendConfig, defend, public_pretraining
from jaxmi.errors import ConfigError
from jaxmi.metrics.fisher import layer_fisher
from jaxmi.nets import VGG, ModelConfig, build_classifier, init_variables
from jaxmi.train import ClassifierConfig, OptimConfig, TrainConfig, load_classifier, train_classifier
from jaxmi.train.state import TrainState
from jaxmi.train.step import RunFacts, make_train_step

DATA = DataConfig(
  dataset="mnist", image_size=32, channels=1, private_ids=(0, 1, 2, 3, 4), public_ids=(5, 6, 7, 8, 9), max_per_class=200
)
MODEL = ModelConfig(arch="cnn", width=8, feature_dim=32)


def target_config(name="target", epochs=2) -> ClassifierConfig:
  return ClassifierConfig(
    name=name,
    role="target",
    data=DATA,
    model=MODEL,
    optim=OptimConfig(name="sgd", learning_rate=0.05, momentum=0.9, weight_decay=1e-3),
    train=TrainConfig(epochs=epochs, batch_size=50, log_every=5),
  )


def test_layers_follow_the_forward_pass_not_dict_order():
  vgg = build_classifier(ModelConfig(arch="vgg", vgg_layout="vgg16", width_divisor=16), 7)
  groups = layer_groups(vgg, (64, 64, 1))
  # conv10 comes after conv9 (a sorted dict would put it after conv1); the BN1d of the flattened
  # features belongs to the head group (the reference always trains a fresh one), not to the last conv.
  assert [g[0] for g in groups] == [f"conv{i}" for i in range(13)] + ["head"]
  assert groups[0] == ("conv0", "bn0") and groups[12] == ("conv12", "bn12") and groups[13] == ("head", "bn_feat")
  # The CNN's bn_feat normalises its dense feature layer's output: it stays with fc_feat.
  assert layer_groups(build_classifier(MODEL, 5), (32, 32, 1))[2] == ("fc_feat", "bn_feat")
  resnet = build_classifier(ModelConfig(arch="resnet", width=8, blocks=(1, 2)), 3)
  assert layer_groups(resnet, (32, 32, 1)) == (
    ("stem", "stem_bn"),
    ("stage0_block0",),
    ("stage1_block0",),
    ("stage1_block1",),
    ("head",),
  )
  with pytest.raises(ConfigError, match="defense.frozen_layers: this model has 3 layers before its head"):
    TransferLearning(frozen_layers=4).layers(RunFacts(1, 1, module=build_classifier(MODEL, 5), image_shape=(32, 32, 1)))


def test_freezing_every_vgg_conv_still_trains_the_bn1d_before_the_head():
  """frozen_layers=-1 freezes every conv (and its BN) but not VGG's BN1d, which the reference's TL
  model always trains with its new classifier (a 3-conv VGG: the VGG16 rule, fast to compile)."""
  model = VGG(3, layout=(4, "M", 8, "M", 8, "M"))
  variables = init_variables(model, jax.random.PRNGKey(0), (32, 32, 1))
  defense, facts = TransferLearning(frozen_layers=-1), RunFacts(1, 1, module=model, image_shape=(32, 32, 1))
  frozen = defense.frozen(facts)
  assert frozen == {"conv0", "bn0", "conv1", "bn1", "conv2", "bn2"}
  tx = defense.optimizer(optax.sgd(0.1), variables["params"], facts)
  state = TrainState(
    step=jnp.zeros((), jnp.int32),
    params=variables["params"],
    batch_stats=variables["batch_stats"],
    opt_state=tx.init(variables["params"]),
    defense_state={},
    rng=jax.random.PRNGKey(1),
  )
  batch = {"image": jax.random.uniform(jax.random.PRNGKey(2), (8, 32, 32, 1)), "label": jnp.arange(8) % 3}
  before = jax.device_get(variables)
  after, _ = make_train_step(model, tx, defense, facts=facts)(jax.tree.map(jnp.copy, state), batch)
  after = jax.device_get(after.params)
  for name in frozen:
    jax.tree.map(np.testing.assert_array_equal, after[name], before["params"][name])
  for leaf in ("scale", "bias"):
    assert not np.array_equal(after["bn_feat"][leaf], before["params"]["bn_feat"][leaf]), leaf
  assert not np.array_equal(after["head"]["fc"]["kernel"], before["params"]["head"]["fc"]["kernel"])


@pytest.mark.slow  # trains on real MNIST end to end
def test_frozen_layers_keep_parameters_and_statistics_while_the_rest_trains(tmp_path, cache_root, data_root):
  splits = load_splits(DATA)
  public = public_pretraining(target_config(), name="public")
  assert set(public.data.private_ids) == {5, 6, 7, 8, 9} and public.data.public_ids == ()
  train_classifier(public, tmp_path / "public", progress=False)
  before = load_classifier(tmp_path / "public").variables

  def finetune(name, defense):
    cfg = target_config(name, epochs=1)
    cfg = ClassifierConfig(**{**cfg.__dict__, "init_from": str(tmp_path / "public"), "init_head": False})
    summary = train_classifier(cfg, tmp_path / name, splits=splits, defense=defense, progress=False)
    return summary, load_classifier(tmp_path / name).variables

  summary, after = finetune("tl", TransferLearning(frozen_layers=2))
  assert summary["frozen_layers"] == [["conv0", "bn0"], ["conv1", "bn1"]]
  # The recorded config holds the defense's settings, not the layers it derived from the model.
  assert summary["defense_config"] == {"name": "tl_dmi", "frozen_layers": 2, "freeze_statistics": True}
  for name in ("conv0", "bn0", "conv1", "bn1"):  # bit-identical: no update, no decay, no statistics drift
    jax.tree.map(np.testing.assert_array_equal, after["params"][name], before["params"][name])
  for name in ("bn0", "bn1"):
    jax.tree.map(np.testing.assert_array_equal, after["batch_stats"][name], before["batch_stats"][name])
  assert not np.allclose(after["params"]["fc_feat"]["kernel"], before["params"]["fc_feat"]["kernel"])
  assert not np.allclose(after["batch_stats"]["bn_feat"]["mean"], before["batch_stats"]["bn_feat"]["mean"])
  # Public digits 5-9 features + a private head: well above the 20% chance of 5 classes (measured 93.2%).
  assert summary["natural_accuracy"] > 0.8, summary
  # The official code's behaviour (statistics of frozen layers adapt to private data) is an option, and differs.
  _, drifted = finetune("tl_drift", TransferLearning(frozen_layers=2, freeze_statistics=False))
  jax.tree.map(np.testing.assert_array_equal, drifted["params"]["conv0"], before["params"]["conv0"])
  assert not np.allclose(drifted["batch_stats"]["bn0"]["mean"], before["batch_stats"]["bn0"]["mean"])
  # TL-DMI without pretrained weights is refused before anything is written.
  with pytest.raises(ConfigError, match="tl_dmi: needs pretrained weights"):
    train_classifier(
      target_config("no_init"), tmp_path / "no_init", splits=splits, defense=TransferLearning(), progress=False
    )
  assert not (tmp_path / "no_init").exists()


@pytest.mark.slow  # trains on real MNIST end to end
def test_defend_command_pretrains_on_public_data_then_fine_tunes(tmp_path, cache_root, data_root, monkeypatch):
  target = target_config("defended", epochs=1)
  pretrain = public_pretraining(target, name="pre", epochs=1)
  cfg = DefendConfig(target=target, pretrain=pretrain, defense=TransferLearning(frozen_layers=1))
  leaking = DefendConfig(target=target, pretrain=target_config("pre2"), defense=TransferLearning())
  with pytest.raises(ConfigError, match="overlap the target's private identities"):
    defend(leaking, tmp_path / "defended", progress=False)
  summary = defend(cfg, tmp_path / "defended", progress=False)
  # The first stage lives in <workdir>/pretrain, and the defended target starts from it.
  pre_dir = tmp_path / "defended" / PRETRAIN_DIR
  pre = json.loads((pre_dir / "summary.json").read_text())
  assert pre["config"]["data"]["private_ids"] == [5, 6, 7, 8, 9]
  assert summary["config"]["init_from"] == str(pre_dir) and summary["defense"] == "tl_dmi"
  assert summary["defense_config"]["frozen_layers"] == 1 and np.isfinite(summary["natural_accuracy"])


@pytest.mark.slow  # trains on real MNIST first
def test_fisher_of_the_head_matches_its_closed_form(tmp_path, cache_root, data_root, capsys):
  cfg = target_config("fisher_model", epochs=1)
  train_classifier(cfg, tmp_path / "fisher_model", progress=False)
  clf = load_classifier(tmp_path / "fisher_model")
  split = load_splits(DATA).private_test
  rows = {r["layer"]: r for r in layer_fisher(clf, split, max_examples=100, batch_size=32)}
  assert list(rows) == ["conv0", "conv1", "fc_feat", "head"]
  # For a linear head, d log p(y|x) / dW = f (onehot(y) - p)^T and d/db = onehot(y) - p.
  out = clf.module.apply(clf.variables, jnp.asarray(split.images[:100], jnp.float32) / 255.0)
  f, p = np.asarray(out.features, np.float64), np.asarray(jax.nn.softmax(out.logits), np.float64)
  r = np.eye(5)[split.labels[:100]] - p
  per_example = np.sum(f**2, 1) * np.sum(r**2, 1) + np.sum(r**2, 1)
  expected = per_example.mean()
  assert rows["head"]["total"] == pytest.approx(expected, rel=1e-3)
  assert rows["head"]["params"] == 32 * 5 + 5
  assert sum(r["share"] for r in rows.values()) == pytest.approx(1.0)
  # The command prints the table and writes JSON + PNG.
  assert (
    cli.main(
      [
        "fisher",
        str(tmp_path / "fisher_model"),
        "--split",
        "private_test",
        "--examples",
        "64",
        "--out",
        str(tmp_path / "f"),
      ]
    )
    == 0
  )
  assert "fc_feat" in capsys.readouterr().out
  assert (tmp_path / "f.png").stat().st_size > 0 and len(json.loads((tmp_path / "f.json").read_text())["layers"]) == 4


def test_fine_tuning_with_a_fresh_head_also_starts_a_fresh_vgg_bn1d(monkeypatch):
  """init_head=False (TL-DMI's public pretraining -> private fine-tuning) copies the convs but not VGG's
  BN1d, which the reference re-creates with its classifier; the CNN's bn_feat belongs to its fc_feat and is kept."""
  from types import SimpleNamespace

  from jaxmi.train import classifier as classifier_lib

  for model, shape, fresh in (
    (VGG(3, layout=(4, "M", 8, "M")), (16, 16, 1), {"head", "bn_feat"}),
    (build_classifier(MODEL, 3), (32, 32, 1), {"head"}),
  ):
    pretrained = init_variables(model, jax.random.PRNGKey(1), shape)
    pretrained = jax.tree.map(lambda a: a + 0.5, pretrained)  # BN scales/statistics differ from a fresh init too
    monkeypatch.setattr(classifier_lib, "load_classifier", lambda _: SimpleNamespace(variables=pretrained))
    fresh_vars = init_variables(model, jax.random.PRNGKey(2), shape)
    cfg = ClassifierConfig(init_from="pretrained", init_head=False, model=MODEL)
    started = classifier_lib._start_from(cfg, fresh_vars, 3)
    for col in ("params", "batch_stats"):
      for name in started[col]:
        source = fresh_vars if name in fresh else pretrained
        jax.tree.map(np.testing.assert_array_equal, started[col][name], source[col][name])
