"""``bin/jaxmi attack``: load target, evaluation model and GAN prior; invert; evaluate; write results.

Outputs in the workdir: ``latents.npz``, ``per_identity.csv``, ``grid.png`` (per identity: a real
private image, the selected reconstruction, the other restarts), ``loss.png`` (loss terms over
steps) and, written last, ``results.json`` (metrics, the prior baseline's metrics, runtime, config):
a workdir with ``results.json`` holds every output.

Every metric is also computed for the prior baseline, the initial (un-optimised) latents evaluated
and selected the same way (``results.json["prior_baseline"]`` with the top level's metric keys,
``baseline_*`` columns in per_identity.csv): what the prior alone "recovers" when the evaluation
model has a default class, which chance (1/K) does not show.

While it runs, ``attack_state/`` keeps each chunk's latents and optimiser state every
``execution.checkpoint_every`` steps; rerunning the same command continues from there with the
same final result (``jaxmi.attacks.resume``). It is removed once ``results.json`` is written.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import os
import time
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxmi import config as config_lib
from jaxmi import plots
from jaxmi.attacks import ATTACKS, AttackModels, ExecutionConfig, InversionConfig
from jaxmi.attacks.lomma import lomma_terms
from jaxmi.attacks.resume import AttackState
from jaxmi.attacks.stacked import stack_variables
from jaxmi.data import Splits, load_splits
from jaxmi.errors import CheckpointError, ConfigError, NonFiniteError
from jaxmi.metrics import evaluate_inversion, real_images_of
from jaxmi.metrics.fid import InceptionFeatures, load_fid_weights
from jaxmi.nets import path_name, shape_signature
from jaxmi.records import fingerprint
from jaxmi.train import load_classifier
from jaxmi.train.gan import load_gan
from jaxmi.workdir import Workdir

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, kw_only=True)
class EvaluationConfig:
  """How the reconstructions are judged (``AttackConfig.evaluation``); not part of the attack state's fingerprint.

  resize: how reconstructions of another size than the evaluation model's input reach it. "pil" (default): the
    reference's ``utils.low2high`` (uint8 truncation, PIL bilinear, /255; ``jaxmi.metrics.attack.pil_resize``), as
    the GMI/KEDMI/LOMMA evaluations feed FaceNet-112 their 64-px images: the papers' accuracies and KNN distances
    were measured through it. "bilinear": jaxmi's in-graph float resize (PLG-MI's kornia ``Resize`` is of this
    kind). Runs whose images already have the evaluation model's size are unaffected by either.
  fid_weights: pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` (read without torch). Set: results.json gets
    the papers' ``fid`` (Inception-v3 pool3, successful reconstructions vs the attacked identities' private images)
    with ``fid_feature_space: "inception-v3"``, and PRDC in those features. Empty: no Inception; PRDC in the
    evaluation model's features.
  prdc_k: PRDC's nearest neighbours (Naeem et al. 2020; PPA uses 3).
  """

  resize: typing.Literal["pil", "bilinear"] = "pil"
  fid_weights: str = ""
  prdc_k: int = 3

  def validate(self) -> None:
    if self.resize not in ("pil", "bilinear"):
      raise ConfigError(f"evaluation.resize: expected 'pil' or 'bilinear', got {self.resize!r}")
    if self.prdc_k < 1:
      raise ConfigError(f"evaluation.prdc_k: expected a positive number of neighbours, got {self.prdc_k}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class AttackConfig:
  name: str = "attack"
  attack: typing.Literal["gmi", "kedmi", "plg"] = "gmi"
  target: str = "runs/mnist_target"  # workdir of the trained target classifier
  evaluator: str = "runs/mnist_eval"  # workdir of the independent evaluation model
  gan: str = "runs/gan_mnist"  # workdir of the GAN prior (trained on public data)
  identities: tuple[int, ...] = ()  # target classes to attack; () = all of them
  surrogates: tuple[str, ...] = ()  # LOMMA: workdirs of surrogates distilled from the target
  p_reg_images: int = 5000  # LOMMA: public images for p_reg (the official code uses ~5,050)
  inversion: InversionConfig = InversionConfig()  # what is optimised (the method)
  execution: ExecutionConfig = ExecutionConfig()  # how it runs (devices, chunks, dtype, logging, checkpoints)
  evaluation: EvaluationConfig = EvaluationConfig()  # how the reconstructions are judged (resize, FID, PRDC)


# role -> (what the message calls it, the command that makes it)
ROLES = {
  "target": (
    "target",
    "bin/jaxmi train-classifier --config configs/classifier.py:role=target,data=mnist (or bin/jaxmi defend)",
  ),
  "evaluation": ("evaluation model", "bin/jaxmi train-classifier --config configs/classifier.py:role=eval,data=mnist"),
  "gan": ("GAN prior", "bin/jaxmi train-gan --config configs/gan.py:kind=gmi,data=mnist (kind=kedmi for KEDMI's GAN)"),
  "surrogate": ("surrogate", "bin/jaxmi distill --config configs/surrogate.py:data=mnist"),
}


def _load(role: str, field: str, workdir: str, loader):
  """``loader()`` for the model in ``workdir``; a missing one is refused naming its role and the command
  that trains it, before anything (not even ``<workdir>/checkpoints``) is created."""
  name, command = ROLES[role]
  missing = (
    f"{field}: {workdir}: no trained {name} found (no checkpoint found in {Path(workdir) / 'checkpoints'}); "
    f"make it first with {command} --workdir {workdir}"
  )
  ckpt_dir = Path(workdir) / "checkpoints"
  if not ckpt_dir.is_dir() or not any(ckpt_dir.iterdir()):
    raise CheckpointError(missing)
  try:
    return loader()
  except CheckpointError as e:
    if "no checkpoint found" in str(e):
      raise CheckpointError(missing) from None
    raise


def config_fingerprint(cfg: AttackConfig, variables: dict, terms: tuple = ()) -> str:
  """What a saved attack state depends on: the config and the bytes of every network's variables and of the
  loss terms' arrays (p_reg). Not the name and checkpoint interval, nor the execution fields that only
  lay the latents out in chunks: the state's layout fingerprint (``AttackState.bind_layout``) checks those. The
  compute dtype and remat change the arithmetic, so they count."""
  saved = config_lib.to_dict(cfg)
  saved.pop("name")
  saved.pop("evaluation")  # judging the result does not change it: a run resumes under another evaluation
  layout_only = ("checkpoint_every", "max_batch", "memory_budget_gb", "devices", "unroll", "log_every")
  saved["execution"] = {k: v for k, v in saved["execution"].items() if k not in layout_only}
  return fingerprint(saved, variables, terms)


@dataclasses.dataclass
class _Loaded:
  """One attack's models, data and inverter, loaded and checked (nothing written yet)."""

  cfg: AttackConfig
  target: Any
  evaluator: Any
  gan: Any
  attacked: list  # the target, then each surrogate
  splits: Splits
  labels: tuple
  variables: dict
  inverter: Any
  fid_features: Any


def _load_attack(
  cfg: AttackConfig, workdir: Workdir, splits: Splits | None, overwrite: bool, cache: dict | None = None
) -> _Loaded:
  """Validates ``cfg`` and loads what it attacks with; ConfigError / CheckpointError before anything is written.
  ``cache``: splits loaded before, by the target's data config (several attacks on one dataset)."""
  if (workdir / "results.json").exists() and not overwrite:
    raise ConfigError(f"{workdir / 'results.json'}: already exists; choose another --workdir or pass --overwrite")
  if cfg.attack not in ATTACKS:
    raise ConfigError(f"attack: unknown attack '{cfg.attack}'; expected one of {', '.join(ATTACKS)}")
  cfg.inversion.validate()
  cfg.execution.validate()
  cfg.evaluation.validate()
  target = _load("target", "target", cfg.target, lambda: load_classifier(cfg.target, expect_role="target"))
  evaluator = _load(
    "evaluation", "evaluator", cfg.evaluator, lambda: load_classifier(cfg.evaluator, expect_role="evaluation")
  )
  gan = _load("gan", "gan", cfg.gan, lambda: load_gan(cfg.gan))
  ev = cfg.evaluation
  # Read before the attack: a wrong weights file is refused before hours of optimisation, not after.
  fid_features = InceptionFeatures(load_fid_weights(ev.fid_weights)) if ev.fid_weights else None
  if evaluator.num_classes != target.num_classes:
    raise ConfigError(
      f"evaluator: {cfg.evaluator} has {evaluator.num_classes} classes but the target has "
      f"{target.num_classes}; the evaluation model must be trained on the target's private identities"
    )
  labels = tuple(cfg.identities) or tuple(range(target.num_classes))
  bad = [i for i in labels if not 0 <= i < target.num_classes]
  if bad:
    raise ConfigError(
      f"identities: {bad} out of range; the target {cfg.target} has classes 0..{target.num_classes - 1}"
    )

  conditional = gan.kind == "plg"  # PLG-MI's G(z, y): each latent generates in its attacked class
  if conditional and gan.num_classes != target.num_classes:
    raise ConfigError(
      f"gan: {cfg.gan} generates {gan.num_classes} classes but the target has {target.num_classes}; train the "
      "conditional GAN on this target's pseudo-labels"
    )
  surrogates = [
    _load("surrogate", "surrogates", w, lambda w=w: load_classifier(w, expect_role="surrogate")) for w in cfg.surrogates
  ]
  for path, s in zip(cfg.surrogates, surrogates):
    if s.num_classes != target.num_classes:
      raise ConfigError(f"surrogates: {path} has {s.num_classes} classes but the target has {target.num_classes}")
  if splits is None:
    data_key = json.dumps(config_lib.to_dict(target.config.data), sort_keys=True)
    cache = {} if cache is None else cache
    splits = cache[data_key] = cache.get(data_key) or load_splits(target.config.data)
  attacked = [target, *surrogates]  # equal weights: the identity term averages over them
  models = AttackModels(
    generator=gan.generator,
    critic=gan.critic,
    targets=tuple(m.module for m in attacked),
    target_shapes=tuple(m.image_shape for m in attacked),
    conditional=conditional,
  )
  variables = {"generator": gan.g_variables, "critic": gan.d_variables, "targets": tuple(m.variables for m in attacked)}
  public = None
  if cfg.inversion.feature_reg_weight:
    public = splits.public.images[: max(cfg.p_reg_images, 0)]
    if len(public) == 0:
      where = (
        "p_reg_images: expected a positive number of public images"
        if cfg.p_reg_images <= 0
        else f"data.public_ids: the target's public split ({target.config.data.dataset}, public_ids "
        f"{tuple(target.config.data.public_ids)}) has no images"
      )
      raise ConfigError(
        f"{where}; LOMMA's feature regulariser (inversion.feature_reg_weight "
        f"{cfg.inversion.feature_reg_weight}) needs public images for p_reg "
        "(or set inversion.feature_reg_weight=0)"
      )
  lomma = lomma_terms(cfg.inversion, target, public)  # LOMMA's feature regulariser, if weighted
  inverter = ATTACKS[cfg.attack](models, gan.config.z_dim, cfg.inversion, cfg.execution, lomma)
  return _Loaded(cfg, target, evaluator, gan, attacked, splits, labels, variables, inverter, fid_features)


def _open_state(directory: Path, config_fp: str, cfg: AttackConfig, overwrite: bool, writer: bool, say):
  """The attack state in ``directory`` (None without checkpoints); a state of another config is refused unless
  ``overwrite``, which discards it."""
  if not cfg.execution.checkpoint_every:
    return None
  state = AttackState(directory, config_fp, cfg.execution.checkpoint_every, write=writer)
  foreign = state.foreign()
  if foreign is not None:
    if not overwrite:
      raise ConfigError(
        f"{state.directory}: holds the saved state of an attack with another config or other "
        f"models (fingerprint {foreign}, this run {state.config_fp}); rerun the same command, "
        "choose another --workdir, or pass --overwrite to start over"
      )
    say(f"[{cfg.name}] --overwrite: discarding {state.directory} (another config or other models)")
    if writer:
      state.clear()
  elif state.exists():
    say(f"[{cfg.name}] resuming from the attack state saved in {state.directory}")
  return state


def _announce(a: _Loaded, say, warn, targets: int = 1) -> None:
  cfg, gan = a.cfg, a.gan
  chunk_text = f"at most {cfg.execution.max_batch}" if cfg.execution.max_batch else "memory-fitted"
  prior = {"gmi": "WGAN critic -D(G(z))", "kedmi": "KEDMI K+1 discriminator -log P(real)"}.get(gan.kind, gan.kind)
  prior_text = f"{prior} of {cfg.gan} (weight {cfg.inversion.prior_weight})"
  if not cfg.inversion.prior_weight:
    prior_text = f"none (generator of {cfg.gan})"
  augmented = (
    f"; the attacked models see {cfg.inversion.augment_views} augmented views" if cfg.inversion.augment_views else ""
  )
  stacked = f" x {targets} targets in one program" if targets > 1 else ""
  say(
    f"[{cfg.name}] {cfg.attack}: {len(a.labels)} identities x {cfg.inversion.restarts} restarts{stacked} x "
    f"{cfg.inversion.steps} steps, chunks of {chunk_text} latents over "
    f"{cfg.execution.devices or jax.device_count()} device(s), "
    f"{cfg.execution.compute_dtype}; prior: {prior_text}; "
    f"attacking {len(a.attacked)} model(s){augmented}; restarts selected by target {cfg.inversion.select_by}"
  )
  if cfg.attack == "kedmi" and gan.kind != "kedmi":
    # A legitimate ablation (KEDMI's distributional latent with GMI's prior), but never a silent one.
    warn(
      f"[{cfg.name}] warning: KEDMI expects its inversion-specific GAN with the K+1 discriminator "
      f"(bin/jaxmi train-gan --kind kedmi); {cfg.gan} is a '{gan.kind}' GAN, so the prior is its {prior}"
    )


def _invert(name: str, total: int, run: Callable, progress: bool) -> tuple[Any, float]:
  """``run(update)`` (under a progress bar of ``total`` latent-steps) and its seconds; NaN/inf errors name ``name``."""
  bar = None
  if progress:
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=name, unit=" latent-steps", unit_scale=True, dynamic_ncols=True)
  update = (
    None
    if bar is None
    else (lambda n, parts: (bar.update(n), bar.set_postfix({k: f"{v:.3f}" for k, v in parts.items()})))
  )
  t0 = time.time()
  try:
    result = run(update)
  except NonFiniteError as e:
    raise NonFiniteError(f"[{name}] {e}") from None
  finally:
    if bar is not None:
      bar.close()
  return result, time.time() - t0


def run_attack(
  cfg: AttackConfig,
  workdir: str | Path | Workdir,
  *,
  splits: Splits | None = None,
  progress: bool = True,
  overwrite: bool = False,
  stop_at_step: int | None = None,
) -> dict:
  """Runs the attack ``cfg`` and writes its outputs to ``workdir`` (the caller holds its lock).

  Args:
    cfg: the attack: models to load, ``inversion`` (what is optimised) and ``execution`` (how it runs).
    splits: the target's data splits (private images for the metrics, public ones for LOMMA's p_reg); None =
      load them from the target's data config.
    progress: show a progress bar.
    overwrite: replace an existing ``results.json`` (and a saved state of another config).
    stop_at_step: raises ``Interrupted`` once chunk index * steps + step reaches it, as a kill would there:
      the saved attack state stays and a rerun continues from it (for tests).

  Returns:
    The summary written to ``results.json`` (metrics, prior baseline, run stats, config).

  Raises:
    ConfigError, CheckpointError: bad config or missing models, before anything is written.
    NonFiniteError: the optimisation diverged (naming the step and quantity); nothing saved from that state.
    Interrupted: Ctrl-C or ``stop_at_step``, after saving the attack state (rerunning resumes).
  """
  workdir = Workdir.of(workdir)
  writer = jax.process_index() == 0
  # Multi-host: every process computes, the first one reports.
  say, warn = (log.info, log.warning) if writer else ((lambda *_: None),) * 2
  a = _load_attack(cfg, workdir, splits, overwrite)
  fp = config_fingerprint(cfg, a.variables, a.inverter.terms)
  state = _open_state(workdir / "attack_state", fp, cfg, overwrite, writer, say)
  _announce(a, say, warn)
  result, seconds = _invert(
    cfg.name,
    len(a.labels) * cfg.inversion.restarts * cfg.inversion.steps,
    lambda update: a.inverter.run(a.variables, a.labels, progress=update, state=state, stop_at_step=stop_at_step),
    progress and writer,
  )
  summary = _finish(a, workdir, result, seconds, writer, say, warn)
  if writer and state is not None:
    state.clear()  # the outputs hold everything it had
  return summary


def stack_key(cfg: AttackConfig) -> str:
  """Attacks with equal keys differ only in their target (and its surrogates), so ``run_attacks`` can run them as
  one program: the same method, prior, evaluation model, identities, seed, inversion and execution."""
  d = config_lib.to_dict(cfg)
  for field in ("name", "target", "surrogates"):
    d.pop(field)
  return json.dumps({**d, "surrogate_count": len(cfg.surrogates)}, sort_keys=True, default=str)


def run_attacks(
  cfgs: Sequence[AttackConfig],
  workdirs: Sequence[str | Path | Workdir],
  state_dir: str | Path,
  *,
  progress: bool = True,
  convs: str = "auto",
  stop_at_step: int | None = None,
  finish: Sequence[bool] | None = None,
) -> list[dict | None]:
  """``run_attack`` of each ``cfgs[k]`` into ``workdirs[k]``, the targets of one architecture attacked in one
  compiled program (``Inverter.run_many``: latents [targets x identities x restarts], the prior shared).

  The configs must have equal ``stack_key``s (the same attack on other targets); targets of another architecture
  than the first (another parameter layout) are run by themselves, in groups of their own. Each workdir gets what
  ``run_attack`` writes, equal to its separate run up to float rounding (``Inverter.run_many``), plus
  ``stacked_targets`` (K) in results.json; ``attack_seconds`` is the shared program's. The caller holds every
  workdir's lock. The shared attack state lives in ``state_dir`` (group g of several in ``state_dir/group<g>``): a
  rerun of the same call resumes it; a state of other configs or models there is discarded. Returns the summaries
  in the order of ``cfgs``.

  ``finish[k]`` False: target k is attacked again with its group (the saved state was made with it, so leaving it
  out would change the group and start over) but its workdir is not written and its summary is None. A rerun after
  a kill that came between two targets' outputs passes this for the targets already written; a group with nothing
  left to write is not run at all.
  """
  if len(cfgs) != len(workdirs) or not cfgs:
    raise ConfigError(f"run_attacks: {len(cfgs)} configs for {len(workdirs)} workdirs; expected one each, at least one")
  finish = [True] * len(cfgs) if finish is None else list(finish)
  if len(finish) != len(cfgs):
    raise ConfigError(f"run_attacks: {len(finish)} finish flags for {len(cfgs)} configs; expected one each")
  keys = {stack_key(c) for c in cfgs}
  if len(keys) > 1:
    raise ConfigError(
      "run_attacks: the configs differ in more than their target and surrogates (name, target, surrogates); "
      "attacks with other settings cannot share a program"
    )
  workdirs = [Workdir.of(w) for w in workdirs]
  writer = jax.process_index() == 0
  say, warn = (log.info, log.warning) if writer else ((lambda *_: None),) * 2
  cache: dict = {}  # the targets' data is usually one dataset: its splits are loaded once
  # a target whose outputs are not written again may have them already
  loaded = [_load_attack(cfg, w, None, not f, cache) for cfg, w, f in zip(cfgs, workdirs, finish)]
  groups: dict[str, list[int]] = {}  # one architecture (the attacked models' parameter shapes) per program
  for k, a in enumerate(loaded):
    layout = json.dumps([shape_signature(v) for v in a.variables["targets"]], sort_keys=True)
    groups.setdefault(layout, []).append(k)
  summaries: dict[int, dict | None] = {k: None for k in range(len(cfgs))}
  for g, members in enumerate(groups.values()):
    if not any(finish[k] for k in members):
      continue
    directory = Path(state_dir) / f"group{g}" if len(groups) > 1 else Path(state_dir)
    group = [loaded[k] for k in members]
    first = group[0]
    fp = fingerprint(*(config_fingerprint(a.cfg, a.variables, a.inverter.terms) for a in group))
    state = _open_state(directory, fp, first.cfg, True, writer, say)
    if len(group) == 1:
      variables, terms = first.variables, None
    else:
      variables = {
        **first.variables,
        "targets": tuple(
          stack_variables([a.variables["targets"][i] for a in group]) for i in range(len(first.attacked))
        ),
      }
      terms = [a.inverter.terms for a in group]

    def run(update, first=first, variables=variables, terms=terms, state=state):
      kwargs = {"progress": update, "state": state, "stop_at_step": stop_at_step}
      if terms is None:
        return [first.inverter.run(variables, first.labels, **kwargs)]
      return first.inverter.run_many(variables, first.labels, terms=terms, convs=convs, **kwargs)

    _announce(first, say, warn, len(group))
    total = len(group) * len(first.labels) * first.cfg.inversion.restarts * first.cfg.inversion.steps
    results, seconds = _invert(" + ".join(a.cfg.name for a in group), total, run, progress and writer)
    for k, a, result in zip(members, group, results):
      if finish[k]:
        summaries[k] = _finish(a, workdirs[k], result, seconds, writer, say, warn, targets=len(group))
    if writer and state is not None:
      state.clear()
  return [summaries[k] for k in range(len(cfgs))]


def _finish(a: _Loaded, workdir: Workdir, result, seconds: float, writer: bool, say, warn, targets: int = 1) -> dict:
  """Judges ``result`` and writes the workdir's outputs, results.json last; returns the summary."""
  cfg, evaluator, splits, gan, ev = a.cfg, a.evaluator, a.splits, a.gan, a.cfg.evaluation
  total_latents = targets * len(a.labels) * cfg.inversion.restarts
  collapse = draw_collapse(result, cfg.inversion.draw_clamp)
  if collapse is not None and collapse > 0.5:
    warn(
      f"[{cfg.name}] warning: the {result.draws} draws per distribution coincide in {100 * collapse:.0f}% of the "
      f"latent dimensions: mu moved beyond the clamp inversion.draw_clamp={cfg.inversion.draw_clamp}, so clamped "
      "draws are (nearly) the same image; see jaxmi.attacks.kedmi"
    )

  judge = {"fid_features": a.fid_features, "resize": ev.resize, "prdc_k": ev.prdc_k}
  if tuple(result.images.shape[2:4]) != tuple(evaluator.image_shape[:2]):
    how = "uint8 PIL bilinear (the reference's low2high)" if ev.resize == "pil" else "in-graph bilinear"
    say(
      f"[{cfg.name}] evaluation: {'x'.join(map(str, result.images.shape[2:4]))} reconstructions reach the "
      f"evaluation model's {'x'.join(map(str, evaluator.image_shape[:2]))} input by {how} (evaluation.resize)"
    )
  metrics = evaluate_inversion(result, evaluator, splits.private_train.images, splits.private_train.labels, **judge)
  base = evaluate_inversion(
    result.baseline, evaluator, splits.private_train.images, splits.private_train.labels, **judge
  )
  scalar = lambda m: {k: v for k, v in m.items() if k not in ("per_identity", "eval_predictions")}
  summary = {
    "name": cfg.name,
    "attack": cfg.attack,
    **scalar(metrics),
    "prior_baseline": scalar(base),
    "attack_seconds": round(seconds, 2),
    "latent_steps_per_second": round(total_latents * cfg.inversion.steps / seconds, 1),
    "optimisation_steps_run": result.stats.steps_run,
    "compilations": result.stats.compilations,
    "devices": result.stats.devices,
    "chunk_size": result.stats.chunk_size,
    "stacked_targets": targets,  # targets attacked in this program (attack_seconds and the rate are the program's)
    "target": str(cfg.target),
    "evaluator": str(cfg.evaluator),
    "gan": str(cfg.gan),
    "gan_kind": gan.kind,
    "draws_per_latent": result.draws,
    "select_by": cfg.inversion.select_by,
    "config": config_lib.to_dict(cfg),
  }
  if not writer:
    return summary
  # results.json last: a kill before it leaves a workdir that the rerun completes, never a partial one it refuses.
  workdir.path.mkdir(parents=True, exist_ok=True)
  params = {}
  if result.latent_params is not None:
    leaves, _ = jax.tree_util.tree_flatten_with_path(result.latent_params)
    params = {"param_" + (path_name(path, "_") or "z"): v for path, v in leaves}
  tmp = workdir / "latents.tmp.npz"
  np.savez_compressed(
    tmp,
    latents=result.latents,
    labels=result.labels,
    target_confidence=result.target_confidence,
    target_logit=result.target_logit,
    best_restart=result.best_restart,
    baseline_latents=result.baseline.latents,
    baseline_best_restart=result.baseline.best_restart,
    **params,
  )
  os.replace(tmp, workdir / "latents.npz")
  rows = [
    {**row, **{f"baseline_{k}": v for k, v in brow.items() if k != "label"}}
    for row, brow in zip(metrics["per_identity"], base["per_identity"])
  ]
  with open(workdir / "per_identity.csv.tmp", "w", newline="") as f:
    writer_csv = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer_csv.writeheader()
    writer_csv.writerows(rows)
  os.replace(workdir / "per_identity.csv.tmp", workdir / "per_identity.csv")
  write_eval_results(workdir, cfg, summary)
  real = real_images_of(
    result.labels, splits.private_train.images, splits.private_train.labels, result.images.shape[2:]
  )
  plots.reconstructions(result, real, workdir / "grid.png", eval_predictions=metrics["eval_predictions"])
  plots.loss_terms(result.loss_parts, workdir / "loss.png", f"{cfg.name}: loss terms (mean over latents)")
  workdir.write_json("results.json", summary)
  say(format_summary(summary))
  outputs = "results.json, Eval_results.csv, per_identity.csv, grid.png, loss.png, latents.npz"
  say(f"[{cfg.name}] results in {workdir.path.absolute()} ({outputs})")
  return summary


# The official evaluation's CSV (Re-thinking_MI / PLG-MI ``evaluation.py``), with its spelling.
EVAL_RESULTS_COLUMNS = ("Save_dir", "Method", "Succesful_samples", "acc", "std", "acc5", "std5", "fid", "knn")


def method_label(cfg: AttackConfig) -> str:
  """``gmi``, ``kedmi``, ``plg``, ``+lomma`` when LOMMA's three parts are all on (as ``bin/jaxmi report`` names it)."""
  inv = cfg.inversion
  lomma = cfg.surrogates and inv.identity_loss == "logit" and inv.feature_reg_weight
  return cfg.attack + ("+lomma" if lomma else "")


def write_eval_results(workdir: Workdir, cfg: AttackConfig, summary: dict) -> None:
  """``Eval_results.csv``: the run as one row of the official evaluation's table, so its numbers sit next to the
  papers' without conversion. acc/acc5 are the mean over restarts of the per-restart accuracy and std/std5 the
  reference's ddof=1 std over restarts (per batch of 60 identities, averaged; blank with one restart); knn is the
  mean over all reconstructions; fid is the papers' FID, written only when it was computed in Inception-v3
  features (``evaluation.fid_weights``; blank otherwise: an FID in other features is not comparable)."""
  blank = lambda v: "" if v is None else v
  row = {
    "Save_dir": str(workdir.path),
    "Method": method_label(cfg),
    "Succesful_samples": summary["successful_samples"],
    "acc": summary["acc1_all_restarts_mean"],
    "std": blank(summary.get("acc1_protocol_std", summary["acc1_all_restarts_std"])),
    "acc5": summary["acc5_all_restarts_mean"],
    "std5": blank(summary.get("acc5_protocol_std", summary["acc5_all_restarts_std"])),
    "fid": blank(summary.get("fid")) if summary["fid_feature_space"] == "inception-v3" else "",
    "knn": summary["knn_dist_all_restarts"],
  }
  with open(workdir / "Eval_results.csv.tmp", "w", newline="") as f:
    out = csv.DictWriter(f, fieldnames=EVAL_RESULTS_COLUMNS)
    out.writeheader()
    out.writerow(row)
  os.replace(workdir / "Eval_results.csv.tmp", workdir / "Eval_results.csv")


def draw_collapse(result, clip: float) -> float | None:
  """Distributional latents with a clamp: the fraction of (identity, latent dimension) pairs in which every
  evaluation draw is the same clamped value (mu beyond the clamp); None when it does not apply."""
  if result.draws < 2 or not clip:
    return None
  z = result.latents.reshape(len(result.labels), -1, result.draws, result.latents.shape[-1])
  return float(np.mean(np.all(z == z[:, :, :1], axis=2)))


def _pct(v) -> str:
  return "n/a" if v is None else f"{100 * v:.1f}"


def format_summary(s: dict) -> str:
  b = s.get("prior_baseline", {})
  vs = lambda key, fmt=_pct: f"{fmt(s[key])}" + (f" (prior baseline {fmt(b[key])})" if key in b else "")
  fid = f"FID (Inception-v3, successful reconstructions) {s['fid']:.2f}, " if s.get("fid") is not None else ""
  return (
    f"[{s['name']}] attack acc@1 {vs('acc1')}% (chance {100 * s['chance_acc1']:.1f}%), "
    f"acc@5 {vs('acc5')}% (selected); over all reconstructions acc@1 "
    f"{vs('acc1_all_restarts_mean')} +/- {_pct(s['acc1_all_restarts_std'])}%, acc@5 "
    f"{vs('acc5_all_restarts_mean')}%, KNN dist {vs('knn_dist_all_restarts', lambda v: f'{v:.2f}')}; "
    f"feature-FID {vs('feature_fid', lambda v: f'{v:.2f}')}, {fid}{s['attack_seconds']:.1f}s"
  )
