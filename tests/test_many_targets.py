"""Issue 18, item 2: many targets of one architecture attacked with one prior in one compiled program
(``Inverter.run_many``, ``jaxmi.attacks.stacked``): each target's result is the one a separate run gives, a second
run compiles nothing, an interrupted stacked run resumes to the uninterrupted result, and targets of another
architecture are refused naming the mismatch."""

import copy
import dataclasses
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmi.attacks import ExecutionConfig, InversionConfig, build_gmi, build_kedmi
from jaxmi.attacks.lomma import FeatureRegTerm
from jaxmi.attacks.resume import AttackState
from jaxmi.attacks.stacked import conv_as_matmul, conv_pads, stack_variables
from jaxmi.errors import ConfigError, Interrupted, NonFiniteError

from test_attacks import toy_models
from tolerance import rounding_tolerance

LABELS = [0, 1, 2, 3, 4]
K = 3
# reference_batch 1: full-size steps, so 8 steps move the latents far enough for a wrong target to show.
CFG = InversionConfig(steps=8, restarts=3, learning_rate=0.05, reference_batch=1, feature_reg_weight=1.0)
RUN = ExecutionConfig(log_every=4, unroll=2)


def toy_targets(variables, k: int = K) -> list:
  """``k`` targets of the toy architecture: the toy target's variables, each leaf moved by its own random noise
  (on the host: initialising ``k`` new ones eagerly would take ~10 s each)."""
  rng = np.random.default_rng(7)
  noisy = lambda w: (w + rng.normal(0.0, 0.3 * np.std(w) + 1e-2, w.shape)).astype(np.float32)
  return [jax.tree.map(lambda w: noisy(np.asarray(w)), variables["targets"][0]) for _ in range(k)]


def test_stacked_targets_give_each_targets_separate_run_and_a_second_run_compiles_nothing():
  models, variables = toy_models()
  targets = toy_targets(variables)
  # LOMMA's feature regulariser with each target's own p_reg: the terms' arrays are stacked with the targets.
  rng = np.random.default_rng(0)
  p_regs = [rng.normal(size=16).astype(np.float32) for _ in range(K)]
  inv = build_gmi(models, 100, CFG, RUN, extra_terms=(FeatureRegTerm(p_regs[0], 1.0),))
  terms = [(*inv.terms[:-1], FeatureRegTerm(p, 1.0)) for p in p_regs]  # each target's whole objective
  stacked = {**variables, "targets": (stack_variables(targets),)}
  many = inv.run_many(stacked, LABELS, terms=terms)
  assert len(many) == K and [r.stats.compilations for r in many] == [1] * K and many[0].stats.targets == K

  # another target of the architecture stands in for the evaluation model
  evaluator = jax.jit(lambda images: models.targets[0].apply(toy_targets(variables, 1)[0], images, train=False).logits)
  predict = lambda images: np.argmax(evaluator(images), -1)
  for k in range(K):
    single = copy.copy(inv)  # the same compiled program with target k's terms (terms are its arguments)
    single.terms = terms[k]
    one_vars = {**variables, "targets": (targets[k],)}
    alone = single.run(one_vars, LABELS)
    assert alone.stats.compilations == (1 if k == 0 else 0)
    # vmapped over targets, a target's convolutions become one grouped convolution, which may sum in another
    # order: allow what float32 rounding does to this run (its response to one-ulp changes of the weights).
    for field in ("latents", "images", "target_logit"):
      atol = rounding_tolerance(lambda v, f=field, s=single: getattr(s.run(v, LABELS), f), one_vars)
      np.testing.assert_allclose(getattr(many[k], field), getattr(alone, field), atol=atol, err_msg=f"{k} {field}")
    np.testing.assert_array_equal(many[k].best_restart, alone.best_restart)
    np.testing.assert_array_equal(predict(many[k].best_images), predict(alone.best_images))  # the same accuracy
    # the prior baseline is the initial latents: the same keys per identity x restart in both runs
    np.testing.assert_array_equal(many[k].baseline.latents, alone.baseline.latents)
    for name, curve in alone.loss_parts.items():
      np.testing.assert_allclose(many[k].loss_parts[name], curve, rtol=1e-4, err_msg=f"{k} {name}")
    if k == 0:  # XLA's grouped convolutions instead of the CPU default, matrix products: the same attack
      grouped = inv.run_many(stacked, LABELS, terms=terms, convs="grouped")[0]
      atol = rounding_tolerance(lambda v: single.run(v, LABELS).latents, one_vars)
      np.testing.assert_allclose(grouped.latents, alone.latents, atol=atol)
  # the targets differ, so do their attacks (a target axis mixed up would give equal results)
  assert np.abs(many[0].latents - many[1].latents).max() > 1e-2

  again = inv.run_many(stacked, [4, 3, 2, 1, 0], terms=terms)
  assert again[0].stats.compilations == 0 and again[0].stats.steps_run == CFG.steps
  # keys follow the position in the identity list, not the class: the same initial latents
  np.testing.assert_array_equal(again[2].baseline.latents, many[2].baseline.latents)
  # a diverging target stops the run naming the step and that target (the same program: nothing compiles)
  broken = jax.tree.map(lambda w: np.full_like(w, np.nan), targets[1])
  with pytest.raises(NonFiniteError, match=r"loss at step 1 \(identity 0, restart 0, target 1\)"):
    inv.run_many({**variables, "targets": (stack_variables([targets[0], broken, targets[2]]),)}, LABELS, terms=terms)


def test_an_interrupted_stacked_run_resumes_to_the_uninterrupted_result(tmp_path):
  """KEDMI (Adam: a per-target step count in the carry, draws per latent), 2 chunks; killed in chunk 1 at step 4,
  the rerun continues from its saved carry. A state saved with another number of targets is refused."""
  models, variables = toy_models()
  cfg = InversionConfig(steps=8, restarts=2, optimizer="adam", learning_rate=0.05, eval_draws=2)
  # 3 identities x 2 restarts = 6 rows; max_batch 12 over 3 targets: chunks of 4 rows, 2 chunks
  inv = build_kedmi(models, 100, cfg, ExecutionConfig(max_batch=12, log_every=2, unroll=2, checkpoint_every=4))
  stacked = {**variables, "targets": (stack_variables(toy_targets(variables)),)}
  whole = inv.run_many(stacked, [0, 1, 2])
  assert whole[0].stats.chunk_size == 4 and whole[0].images.shape == (3, 4, 32, 32, 1)
  with pytest.raises(Interrupted) as stopped:
    inv.run_many(stacked, [0, 1, 2], state=AttackState(tmp_path, "fp", 4), stop_at_step=8 + 4)
  assert stopped.value.step == 8 + 4
  resumed = inv.run_many(stacked, [0, 1, 2], state=AttackState(tmp_path, "fp", 4))
  assert resumed[0].stats.steps_run == 4 and resumed[0].stats.compilations == 0
  for k in range(K):
    for name in ("latents", "images", "target_logit", "best_restart", "loss_curve"):
      np.testing.assert_array_equal(getattr(resumed[k], name), getattr(whole[k], name), err_msg=f"{k} {name}")
    for name, curve in whole[k].loss_parts.items():
      np.testing.assert_array_equal(resumed[k].loss_parts[name], curve, err_msg=f"{k} {name}")
  two = {**variables, "targets": (stack_variables(toy_targets(variables, 2)),)}
  with pytest.raises(ConfigError, match="another chunk layout"):
    inv.run_many(two, [0, 1, 2], state=AttackState(tmp_path, "fp", 4))


def test_targets_of_another_architecture_are_refused_naming_the_mismatch():
  models, variables = toy_models()
  narrow = toy_targets(variables, 1)[0]

  def edited(path: tuple, value) -> dict:  # ``narrow`` with one leaf replaced (None: removed) or added
    tree = jax.tree.map(lambda x: x, narrow)
    node = tree
    for name in path[:-1]:
      node = node.setdefault(name, {})
    if value is None:
      del node[path[-1]]
    else:
      node[path[-1]] = value
    return tree

  wider = edited(("batch_stats", "bn0", "mean"), np.zeros(16, np.float32))  # a CNN of width 16
  with pytest.raises(
    ConfigError, match=r"targets\[2\]: \['batch_stats'\]\['bn0'\]\['mean'\] is float32\[16\], not float32\[8\]"
  ):
    stack_variables([narrow, narrow, wider])
  more_classes = edited(("params", "head", "fc", "bias"), np.zeros(7, np.float32))
  with pytest.raises(ConfigError, match=r"targets\[1\]: .*\[7\], not float32\[5\]"):
    stack_variables([narrow, more_classes])
  with pytest.raises(ConfigError, match=r"targets\[1\]: has an extra \['params'\]\['extra'\]"):
    stack_variables([narrow, edited(("params", "extra", "kernel"), np.zeros(3, np.float32))])
  with pytest.raises(ConfigError, match=r"targets\[1\]: lacks \['params'\]\['bn0'\]\['bias'\]"):
    stack_variables([narrow, edited(("params", "bn0", "bias"), None)])
  assert stack_variables([narrow, narrow])["params"]["conv0"]["kernel"].shape == (2, 3, 3, 1, 8)
  inv = build_gmi(models, 100, CFG, RUN)
  with pytest.raises(ConfigError, match="leading axis"):  # one target's variables, not stacked
    inv.run_many({**variables, "targets": (narrow,)}, LABELS)


@pytest.mark.parametrize(
  "padding,kernel_hw",
  [("SAME", (3, 3)), ("SAME", (4, 2)), ("VALID", (3, 3)), (1, (3, 3)), (((2, 0), (1, 3)), (3, 2)), ((1, 0), (3, 1))],
)
def test_a_target_convolution_as_patches_times_kernel_is_the_convolution(padding, kernel_hw):
  """``convs="matmul"``: for every padding form ``nn.Conv`` takes (SAME with even kernels too), the patches times
  the kernel give ``nn.Conv``'s stride-1 convolution; in float64 the two agree to rounding on any CPU."""
  rng = np.random.default_rng(0)
  x, kernel = rng.normal(size=(2, 7, 6, 3)), rng.normal(size=(*kernel_hw, 3, 5))
  conv = nn.Conv(5, kernel_hw, padding=padding, use_bias=False, dtype=jnp.float64, param_dtype=jnp.float64)
  with jax.enable_x64(True):
    want = conv.apply({"params": {"kernel": jnp.asarray(kernel)}}, jnp.asarray(x))
    got = conv_as_matmul(jnp.asarray(x), jnp.asarray(kernel), conv_pads(padding, kernel_hw))
    assert got.dtype == jnp.float64
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-12, atol=1e-12)
  assert conv_pads("CIRCULAR", kernel_hw) is None  # left to the grouped convolution


# --- run_attacks: the attack command's stacked form (what ``bin/jaxmi sweep --stack`` calls) ---------------------


def _second_target(root, name: str, width: int, splits):
  """Another tiny target trained from another seed (width 4: the fixture's architecture; else another one)."""
  from jaxmi.nets import ModelConfig
  from jaxmi.train import ClassifierConfig, OptimConfig, TrainConfig, train_classifier

  from test_attacks import TINY_DATA, stopped

  if not (root / name).is_dir():
    stopped(
      train_classifier,
      ClassifierConfig(
        name=name,
        role="target",
        data=TINY_DATA,
        model=ModelConfig(arch="cnn", width=width, feature_dim=8),
        optim=OptimConfig(learning_rate=0.05),
        train=TrainConfig(epochs=1, batch_size=8, seed=5),
      ),
      root / name,
      splits=splits,
      progress=False,
      stop_at_step=3,
    )
  return str(root / name)


@pytest.mark.slow  # ~60 s: five tiny attacks, two of them stacked, on top of the session fixture
def test_run_attacks_writes_each_targets_separate_results_and_resumes_a_stopped_group(tiny, tmp_path, monkeypatch):
  import json

  from jaxmi.experiments import attack as attack_module
  from jaxmi.experiments.attack import run_attack, run_attacks

  from test_attacks import tiny_attack

  root, splits = tiny
  models = tmp_path / "models"
  models.mkdir()
  other = _second_target(models, "target_b", 4, splits)  # the fixture's architecture: stacked with it
  wider = _second_target(models, "target_w", 6, splits)  # another architecture: a program of its own
  base = tiny_attack(root, steps=6, checkpoint_every=2)
  cfgs = [dataclasses.replace(base, name=f"t{k}", target=t) for k, t in enumerate((base.target, other, wider))]
  alone = [run_attack(c, tmp_path / f"alone{k}", splits=splits, progress=False) for k, c in enumerate(cfgs)]

  dirs = [tmp_path / f"many{k}" for k in range(3)]
  with pytest.raises(Interrupted):  # as a kill in the second checkpoint interval of the stacked group
    run_attacks(cfgs, dirs, tmp_path / "stack", progress=False, stop_at_step=3)
  assert not any((d / "results.json").exists() for d in dirs) and any((tmp_path / "stack").rglob("chunk_*"))
  finish, written = attack_module._finish, []

  def killed_in_the_second_finish(a, workdir, *rest, **kw):
    if written:
      raise KeyboardInterrupt
    written.append(finish(a, workdir, *rest, **kw))
    return written[-1]

  monkeypatch.setattr(attack_module, "_finish", killed_in_the_second_finish)
  with pytest.raises(KeyboardInterrupt):  # as a kill between the stacked group's two results
    run_attacks(cfgs, dirs, tmp_path / "stack", progress=False)
  monkeypatch.setattr(attack_module, "_finish", finish)
  first_written = (dirs[0] / "results.json").read_bytes()
  assert not (dirs[1] / "results.json").exists()
  many = run_attacks(cfgs, dirs, tmp_path / "stack", progress=False, finish=[False, True, True])
  assert many[0] is None and (dirs[0] / "results.json").read_bytes() == first_written  # left as written
  many[0] = json.loads(first_written)
  assert [s["stacked_targets"] for s in many] == [2, 2, 1]
  assert not any((tmp_path / "stack").rglob("chunk_*"))  # the shared state goes once the outputs are written
  # the stacked group resumed from the state saved when it stopped (after it, target 0's outputs from the finished
  # state, target 1's from the same state with no step run again); the group after it had not started
  assert [m["optimisation_steps_run"] for m in many][1:] == [0, 6] and many[0]["optimisation_steps_run"] < 6
  for k, (m, a) in enumerate(zip(many, alone)):
    assert m["target"] == cfgs[k].target and json.loads((dirs[k] / "results.json").read_text()) == m
    got, want = np.load(dirs[k] / "latents.npz"), np.load(tmp_path / f"alone{k}" / "latents.npz")
    np.testing.assert_array_equal(got["baseline_latents"], want["baseline_latents"])
    # stacked convolutions may sum in another order (see the first test for the derived bound); 8 Adam steps of
    # size 0.05 move latents by ~0.4, a mixed-up target by far more than 1e-3
    np.testing.assert_allclose(got["latents"], want["latents"], atol=1e-3, err_msg=f"target {k}")
    for key in ("acc1", "acc5", "acc1_all_restarts_mean"):
      assert abs(m[key] - a[key]) <= 1 / 6 + 1e-9, (k, key)  # at most one of 6 reconstructions on a rounding edge
  a0, a1 = (np.load(dirs[k] / "latents.npz")["latents"] for k in (0, 1))
  assert np.abs(a0 - a1).max() > 1e-2  # the two stacked targets were attacked apart

  with pytest.raises(ConfigError, match="differ in more than their target"):
    run_attacks([cfgs[0], dataclasses.replace(cfgs[1], identities=(0, 1))], dirs[:2], tmp_path / "x", progress=False)


def test_attack_targets_on_the_command_line_refuses_what_it_cannot_stack_before_writing(tmp_path, capsys):
  from jaxmi import cli

  recipe = str(Path(__file__).resolve().parents[1] / "configs" / "attack.py") + ":method=gmi,data=mnist"
  out = tmp_path / "out"
  for extra, message in (
    (["--targets", "a/t,b/t"], "--targets: directory names must differ"),
    (["--targets", "a,b", "surrogates=s1"], "surrogates: LOMMA's surrogates are distilled from one target"),
    (["--targets", "a,b", "--overwrite"], "--overwrite: not with --targets"),
  ):
    assert cli.main(["attack", "--config", recipe, "--workdir", str(out), *extra]) == 2
    assert message in capsys.readouterr().err
  assert not out.exists()


@pytest.mark.slow  # two tiny attacks stacked through the command line (~30 s on top of the session fixture)
def test_attack_targets_on_the_command_line_writes_each_targets_results(tiny, tmp_path):
  import json

  from jaxmi import cli

  root, splits = tiny
  other = _second_target(tmp_path, "target_b", 4, splits)
  recipe = str(Path(__file__).resolve().parents[1] / "configs" / "attack.py") + ":method=gmi,data=mnist"
  fields = [f"evaluator={root / 'eval'}", f"gan={root / 'gan'}", "inversion.steps=4", "inversion.restarts=2"]
  fields += ["execution.log_every=2", "execution.unroll=2"]
  args = ["attack", "--config", recipe, "--workdir", str(tmp_path / "out"), "--no-progress"]
  assert cli.main([*args, "--targets", f"{root / 'target'},{other}", *fields]) == 0
  for name, target in (("target", str(root / "target")), ("target_b", other)):
    result = json.loads((tmp_path / "out" / name / "results.json").read_text())
    assert result["target"] == target and result["stacked_targets"] == 2 and result["optimisation_steps_run"] == 4
  # a rerun writes only the targets still without results (here: the state is gone, so both are attacked again)
  (tmp_path / "out" / "target_b" / "results.json").unlink()
  kept = (tmp_path / "out" / "target" / "results.json").read_bytes()
  assert cli.main([*args, "--targets", f"{root / 'target'},{other}", *fields]) == 0
  assert (tmp_path / "out" / "target" / "results.json").read_bytes() == kept
  assert json.loads((tmp_path / "out" / "target_b" / "results.json").read_text())["stacked_targets"] == 2
  assert cli.main([*args, "--targets", f"{root / 'target'},{other}", *fields]) == 2  # nothing left to do
