"""A defense's numeric hyper-parameter grid on one architecture, trained as one vmapped program.

A grid of K settings of one defense (MID's beta, NLS's alpha, BiDO's lambda_x / lambda_y, DP-SGD's sigma: the
fields a defense declares in ``Defense.hyper_fields``) differs only in numbers the step computes with. So the K
models train as one jitted step vmapped over K: the state stacked to [K, ...], the settings passed as arrays
[K] (``Defense.with_hyper`` puts the traced values into the defense the step body reads), the batch shared. The
step body is the one ``make_train_step`` jits (``make_step_body``), so each setting trains what its single run
trains: same initialisation (the config's seed), data order, augmentation and defense randomness; the vmapped
convolutions may round differently, so the parameters agree to float32 rounding, not bit for bit.

Cells that differ in anything but those numbers (the architecture, the optimiser, a defense's other fields, the
defense itself) cannot share a program: ``train_grid`` refuses them (ConfigError), and ``group_cells`` sorts a list
of cells into the groups that can, so a sweep trains each group with ``train_grid`` and every cell left alone
with ``train_classifier``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from jaxmi import config as config_lib
from jaxmi.data import Splits, load_splits, train_batches
from jaxmi.errors import ConfigError, Interrupted
from jaxmi.nets import shape_signature
from jaxmi.train.checkpoint import Checkpointer
from jaxmi.train.classifier import (
  RESUMABLE_CHANGES,
  ClassifierConfig,
  _validate,
  arch_meta,
  changed_fields,
  check_restored_finite,
  evaluate,
  initial_state,
  initial_variables,
  refuse_config_change,
  run_facts,
)
from jaxmi.train.loop import interrupted_message, run_steps
from jaxmi.train.state import TrainState
from jaxmi.train.step import AugmentConfig, Defense, RunFacts, make_eval_step, make_step_body
from jaxmi.workdir import Workdir

log = logging.getLogger(__name__)


def _fixed_part(cfg: ClassifierConfig, defense: Defense) -> dict:
  """Everything a cell's program depends on: the config (but its name) and the defense (but its hyper values)."""
  fixed = {k: v for k, v in config_lib.to_dict(defense).items() if k not in defense.hyper_fields}
  return {
    "config": {k: v for k, v in config_lib.to_dict(cfg).items() if k != "name"},
    "defense": {"class": type(defense).__name__, **fixed},
  }


def grid_key(cfg: ClassifierConfig, defense: Defense) -> str:
  """Cells with equal keys differ only in their defense's ``hyper_fields``: one vmapped program trains them all."""
  return json.dumps(_fixed_part(cfg, defense), sort_keys=True)


def group_cells(cells: Sequence[tuple[ClassifierConfig, Defense]]) -> list[list[int]]:
  """Indices of ``cells`` ((config, defense) pairs) grouped by ``grid_key``, in order of first appearance.

  A group of one is a cell to train alone (``train_classifier``); a larger group is one ``train_grid`` call.
  """
  groups: dict[str, list[int]] = {}
  for i, (cfg, defense) in enumerate(cells):
    groups.setdefault(grid_key(cfg, defense), []).append(i)
  return list(groups.values())


def check_grid(cfg: ClassifierConfig, defenses: Sequence[Defense]) -> None:
  """ConfigError (one line) unless ``defenses`` are settings of one defense that differ only in ``hyper_fields``."""
  if not defenses:
    raise ConfigError("grid: expected at least one defense setting")
  first = _fixed_part(cfg, defenses[0])["defense"]
  for i, defense in enumerate(defenses[1:], 1):
    other = _fixed_part(cfg, defense)["defense"]
    if other != first:
      fields = config_lib.diff(first, other)
      raise ConfigError(
        f"grid: setting {i} ({type(defense).__name__}) differs from setting 0 ({type(defenses[0]).__name__}) in "
        f"{', '.join(fields)}; one program varies only {type(defenses[0]).__name__}'s "
        f"{', '.join(defenses[0].hyper_fields) or 'nothing'}: train the others separately"
      )


def check_cells(cells: Sequence[tuple[ClassifierConfig, Defense]]) -> None:
  """ConfigError (one line) unless every cell's program is the first's (same architecture, recipe and defense)."""
  if not cells:
    raise ConfigError("grid: expected at least one cell")
  first = _fixed_part(*cells[0])
  for i, cell in enumerate(cells[1:], 1):
    fields = config_lib.diff(first["config"], _fixed_part(*cell)["config"])
    if fields:
      raise ConfigError(
        f"grid: cell {i} differs from cell 0 in {', '.join(fields[:4])}; one program trains one architecture "
        "and recipe: train it separately (group_cells sorts cells into groups that can share one)"
      )
  check_grid(cells[0][0], [defense for _, defense in cells])


def stack_hyper(defenses: Sequence[Defense]) -> dict[str, jax.Array]:
  """{field: [K] array} of the settings' ``hyper_fields`` (the default float dtype, as the step's Python floats)."""
  return {name: jnp.asarray([getattr(d, name) for d in defenses]) for name in defenses[0].hyper_fields}


def stack(trees: Sequence[Any]) -> Any:
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def unstack(tree: Any, index: int) -> Any:
  return jax.tree.map(lambda x: x[index], tree)


def make_grid_step(
  model,
  tx,
  defense: Defense,
  augment_cfg: AugmentConfig = AugmentConfig(),
  facts: RunFacts | None = None,
):
  """Returns ``grid_step(state, hyper, batch) -> (state, metrics)``: K training steps as one jitted program.

  ``state`` is a TrainState stacked to [K, ...] (donated), ``hyper`` ``stack_hyper``'s {field: [K]}, the batch
  shared. ``tx`` is the optimiser before the defense wraps it: each setting wraps it with its own (traced)
  values inside the program (DP-SGD's noise scale). ``metrics`` holds one scalar per setting and metric,
  ``setting<i>/<name>``, split inside the program so the host loop sees plain scalars.
  """
  body = make_step_body(model, augment_cfg, facts)

  def one(state, hyper, batch, inputs):
    setting = defense.with_hyper(hyper)
    return body(state, batch, inputs, setting, setting.optimizer(tx, state.params, facts))

  @functools.partial(jax.jit, donate_argnums=(0,))
  def jitted(state: TrainState, hyper: dict, batch: dict, inputs: Any):
    state, metrics = jax.vmap(one, in_axes=(0, 0, None, None))(state, hyper, batch, inputs)
    k = state.step.shape[0]
    return state, {f"setting{i}/{name}": value[i] for i in range(k) for name, value in metrics.items()}

  def grid_step(state: TrainState, hyper: dict, batch: dict):
    return jitted(state, hyper, batch, defense.step_inputs())

  grid_step._cache_size = jitted._cache_size  # compilations so far: the no-recompile test reads it
  grid_step.lower = lambda state, hyper, batch: jitted.lower(state, hyper, batch, defense.step_inputs())  # memory
  return grid_step


def init_grid_state(cfg: ClassifierConfig, defenses: Sequence[Defense], module, tx, facts: RunFacts, num_classes):
  """The stacked [K, ...] step-0 state: each setting's is what ``train_classifier`` starts from with it
  (``initial_state``; the variables initialised once). ``module``, ``tx`` and ``num_classes`` are ``facts``'."""
  variables = initial_variables(cfg, facts)
  return stack([initial_state(cfg, variables, defense, facts)[0] for defense in defenses]), variables


@dataclasses.dataclass(frozen=True)
class GridResult:
  summary: dict  # also <workdir>/summary.json: per setting its defense config, report and accuracies
  variables: list[dict]  # per setting, the final {"params", "batch_stats"}
  state: TrainState  # the stacked final state


def train_grid(
  cfg: ClassifierConfig,
  defenses: Sequence[Defense],
  workdir: str | Path | Workdir,
  *,
  splits: Splits | None = None,
  progress: bool = True,
  stop_at_step: int | None = None,
  release_to: Sequence[str | Path | None] | None = None,
) -> GridResult:
  """Trains (or resumes) ``cfg`` once per setting in ``defenses`` as one vmapped program, in ``workdir``.

  Checkpoints (the stacked state) every ``train.checkpoint_every`` steps and resumes from the newest, as
  ``train_classifier``; a checkpoint of other settings or another config is refused. Evaluates every setting on
  the private test split at each epoch end (``test/setting<i>/acc`` in metrics.jsonl). A NaN/inf in any setting
  stops the whole grid (NonFiniteError naming ``setting<i>``). Settings are validated (``check_grid``,
  ``Defense.check``) before anything is written. ``train.release`` must be "last".

  ``release_to``: one directory per setting, where its final model is released as ``train_classifier`` releases
  one (a checkpoint of its own state and meta, and a ``summary.json``): ``load_classifier`` and the attacks read it,
  and ``train_classifier`` with that setting finds it finished. This is how a sweep turns a grid into its cells.
  A None entry releases nothing for that setting: a rerun after a kill between two releases resumes the finished
  grid and writes only the settings still missing.
  """
  _validate(cfg)
  check_grid(cfg, defenses)
  if release_to is not None and len(release_to) != len(defenses):
    raise ConfigError(f"grid: release_to names {len(release_to)} directories for {len(defenses)} settings")
  if cfg.train.release != "last":
    raise ConfigError(f"train.release: the grid trainer releases the last epoch, got '{cfg.train.release}'")
  splits = splits if splits is not None else load_splits(cfg.data)
  train_split, test_split = splits.private_train, splits.private_test
  num_classes = splits.num_private_classes
  image_shape = tuple(train_split.images.shape[1:])
  facts = run_facts(cfg, len(train_split), image_shape, num_classes)
  module, tx, spe, total_steps = facts.module, facts.optimizer, facts.steps_per_epoch, facts.total_steps
  for defense in defenses:
    defense.check(cfg, facts)
    warning = defense.warning(cfg.train.epochs)
    if warning:
      log.warning(f"[{cfg.name}] warning: {warning}")
  state, variables = init_grid_state(cfg, defenses, module, tx, facts, num_classes)
  hyper = stack_hyper(defenses)
  settings = [config_lib.to_dict(d) for d in defenses]
  meta = {
    "kind": "classifier_grid",
    "defense": defenses[0].name,
    "settings": settings,
    "arch": arch_meta(cfg.model, num_classes, image_shape),
    "signature": shape_signature(variables),  # of one setting's variables
    "config": config_lib.to_dict(cfg),
  }

  workdir = Workdir.of(workdir)
  ckpt = Checkpointer(workdir.checkpoints, every_steps=cfg.train.checkpoint_every, keep=cfg.train.keep_checkpoints)
  start = ckpt.latest_step()
  if start is not None:
    saved = ckpt.meta(start)
    defaults = config_lib.to_dict(ClassifierConfig())
    changed = changed_fields(saved["config"], meta["config"], defaults, RESUMABLE_CHANGES)
    changed += ["settings"] if saved.get("settings") != settings else []
    refuse_config_change(cfg.name, f"{ckpt.directory}/{start}", changed, False)
    state = TrainState.from_dict(ckpt.restore(state.as_dict(), meta, start))
    check_restored_finite(state.as_dict(), f"{ckpt.directory}/{start}")
    log.info(f"[{cfg.name}] resuming the grid from {ckpt.directory}/{start}")
  start = int(start or 0)

  grid_step = make_grid_step(module, tx, defenses[0], cfg.train.augment, facts)
  eval_step = make_eval_step(module)
  last_test = {}  # step -> per-setting evaluations, so the summary reuses the last epoch's
  K = len(defenses)

  def evaluate_all(state) -> list[dict]:
    return [evaluate(eval_step, unstack(state.variables, i), test_split, cfg.train.eval_batch_size) for i in range(K)]

  def epoch_end(state, step):
    tests = last_test[step] = evaluate_all(state)
    return {f"test/setting{i}/{k}": t[k] for i, t in enumerate(tests) for k in ("acc", "loss")}

  batches = train_batches(train_split, cfg.train.batch_size, cfg.train.seed, start_step=start)
  t0 = time.time()
  try:
    result = run_steps(
      state,
      name=cfg.name,
      step_fn=lambda s, batch: grid_step(s, hyper, batch),
      next_input=lambda: next(batches),
      start=start,
      total=total_steps,
      steps_per_epoch=spe,
      ckpt=ckpt,
      meta=meta,
      writer=workdir.metrics,
      log_every=cfg.train.log_every,
      metric_prefix="train/",
      epoch_end=epoch_end,
      progress=progress,
      stop_at_step=stop_at_step,
    )
  finally:
    batches.close()
  elapsed = time.time() - t0
  if result.stopped_early:
    raise Interrupted(interrupted_message(result.step, ckpt), result.step)
  state, step = result.state, result.step
  tests = last_test.get(step) or evaluate_all(state)
  per_setting = [
    {
      "defense_config": settings[i],
      **defenses[i].report(facts, step),
      "natural_accuracy": tests[i]["acc"],
      "natural_accuracy_top5": tests[i]["acc5"],
      "test_loss": tests[i]["loss"],
    }
    for i in range(K)
  ]
  summary = {
    "name": cfg.name,
    "defense": defenses[0].name,
    "settings": per_setting,
    "steps": step,
    "epochs": cfg.train.epochs,
    "train_seconds_this_run": round(elapsed, 2),
    "resumed_from_step": start,
    "data": splits.description,
    "checkpoints": str(ckpt.directory),
    "config": config_lib.to_dict(cfg),
  }
  for i, directory in enumerate(release_to or ()):
    if directory is not None:
      _release(Workdir.of(directory), unstack(state, i), step, cfg, defenses[i], meta, summary, per_setting[i])
  workdir.write_json("summary.json", summary)  # last: a kill before it leaves a grid that resumes (and re-releases)
  log.info(
    f"[{cfg.name}] {K} {defenses[0].name} settings in one program, {step} steps, {elapsed:.1f}s: natural accuracy "
    + ", ".join(f"{100 * t['acc']:.2f}%" for t in tests)
  )
  return GridResult(summary, [unstack(state.variables, i) for i in range(K)], state)


def _release(workdir: Workdir, state: TrainState, step: int, cfg, defense: Defense, meta, summary, own) -> None:
  """One setting's final state as a ``train_classifier`` workdir: its checkpoint, then its summary.json."""
  setting_meta = {
    "kind": "classifier",
    "defense": defense.name,
    "defense_config": config_lib.to_dict(defense),
    "arch": meta["arch"],
    "signature": meta["signature"],
    "config": meta["config"],
  }
  ckpt = Checkpointer(workdir.checkpoints, every_steps=cfg.train.checkpoint_every, keep=cfg.train.keep_checkpoints)
  try:
    ckpt.save(step, state.as_dict(), {**setting_meta, "step": step}, force=True)
  finally:
    ckpt.close()
  workdir.write_json(
    "summary.json",
    {
      "name": cfg.name,
      "role": cfg.role,
      "defense": defense.name,
      **own,
      "released": "last",
      "released_step": step,
      **{k: summary[k] for k in ("steps", "epochs", "data", "config")},
      "grid": summary["checkpoints"],  # trained in this grid's program
    },
  )
