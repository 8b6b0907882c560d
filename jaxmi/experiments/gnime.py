"""``bin/jaxmi gnime``: train GNIME for a target and evaluate it against an adaptive ExpMI attacker.

Data (as the official GNIME code splits it): the target's training images are the defender's half, its test
split (same identities, other images) is the attacker's half. GNIME trains on 80% of the
defender's images; the other 20% are the QUERIES whose released explanations the attacker
inverts. For each release scenario a FRESH inverter is trained on the attacker's images with
explanations released the same way (the adaptive attacker), then reconstructs the queries:

  none    the clean explanation
  rnd     the clean explanation + Gaussian noise with GNIME's measured explanation MSE (not clipped)
  gnime   GNIME's released explanation
  predmi  no explanation, logits only (the floor any explanation release is compared with)

Metrics per scenario: image MSE, PSNR, SSIM, TCA (an independently trained classifier's
accuracy on the reconstructions), the target's accuracy on them, explanation MSE to the clean
explanation and its Spearman rank correlation (fidelity beyond MSE).

A killed run resumes when the same command is run again: ``<workdir>/state`` keeps the config,
GNIME's and each attacker's checkpoints, and each finished scenario's evaluation; rows.png,
results.csv and results.json are written last, then the checkpoints are removed. NaN/inf anywhere stops the run with
NonFiniteError (exit 2) and nothing is saved from that state.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxmi import config as config_lib
from jaxmi import plots, records
from jaxmi.attacks.expmi import InverterConfig, StopHook, reconstruct, train_inverter
from jaxmi.attacks.expmi import validate as validate_inverter
from jaxmi.data import load_splits
from jaxmi.defenses.gnime import GNIMEConfig, release, train_gnime
from jaxmi.defenses.gnime import validate as validate_gnime
from jaxmi.errors import ConfigError, DataError, Interrupted, NonFiniteError
from jaxmi.explain import METHODS, make_explainer, postprocess
from jaxmi.explain.gradcam import LAYERS as GRADCAM_LAYERS
from jaxmi.metrics import image as image_metrics
from jaxmi.metrics.attack import batched_apply, classifier_outputs
from jaxmi.records import fingerprint
from jaxmi.train import load_classifier
from jaxmi.train.classifier import refuse_config_change
from jaxmi.workdir import Workdir

log = logging.getLogger(__name__)

SCENARIOS = ("none", "rnd", "gnime", "predmi")


@dataclasses.dataclass(frozen=True, kw_only=True)
class GNIMERunConfig:
  name: str = "gnime"
  target: str = ""  # workdir of the explained classifier (trained on the defender's half)
  evaluator: str = ""  # workdir of an independently trained classifier (TCA)
  method: str = "grad"  # one of jaxmi.explain.METHODS
  variant: str = "standard"  # gradcam / lrp: "gnime" reproduces the reference's definitions
  gradcam_layer: str = "last_conv"  # gradcam: the reference's last conv before pooling, or "last_pool"
  explain_batch_size: int = 256  # explanation batches; GNIME's Grad-CAM pools its weights over each (reference: 256)
  max_defender: int = 0  # cap on the defender's images (0 = all)
  max_attacker: int = 0  # cap on the attacker's images (0 = all)
  query_fraction: float = 0.2  # defender images held out from GNIME training as queries
  gnime: GNIMEConfig = GNIMEConfig()
  attacker: InverterConfig = InverterConfig()
  predmi_b1: float = 0.5  # PredMI's Adam beta1 (reference)
  rows: int = 8  # examples shown in rows.png
  seed: int = 0


# Fields a rerun may change without invalidating the finished stages ("workdir": recorded by older runs).
RESUMABLE_CHANGES = ("name", "workdir", "rows", "gnime.checkpoint_every", "attacker.checkpoint_every")


def _validate(cfg: GNIMERunConfig) -> None:
  """Every field that needs no data, before anything is loaded or written."""
  if not cfg.target or not cfg.evaluator:
    raise ConfigError("target, evaluator: both must name trained classifier workdirs")
  if cfg.method not in METHODS:
    raise ConfigError(f"method: expected one of {', '.join(METHODS)}, got '{cfg.method}'")
  if cfg.variant not in ("standard", "gnime"):
    raise ConfigError(f"variant: expected 'standard' or 'gnime', got '{cfg.variant}'")
  if cfg.gradcam_layer not in GRADCAM_LAYERS:
    raise ConfigError(f"gradcam_layer: expected one of {', '.join(GRADCAM_LAYERS)}, got '{cfg.gradcam_layer}'")
  if not 0 < cfg.query_fraction < 1:
    raise ConfigError(f"query_fraction: expected a value in (0, 1), got {cfg.query_fraction}")
  for field in ("max_defender", "max_attacker", "rows"):
    if getattr(cfg, field) < 0:
      raise ConfigError(f"{field}: expected an integer >= 0, got {getattr(cfg, field)}")
  if cfg.explain_batch_size < 1:
    raise ConfigError(f"explain_batch_size: expected an integer >= 1, got {cfg.explain_batch_size}")
  if not 0 <= cfg.predmi_b1 < 1:
    raise ConfigError(f"predmi_b1: expected a value in [0, 1), got {cfg.predmi_b1}")
  validate_gnime(cfg.gnime, "gnime")
  validate_inverter(cfg.attacker, "attacker")


def explanations_of(clf, images, method: str, variant: str, layer: str = "last_conv", batch_size: int = 256):
  """Released-form explanations [N, h, w, c] in [0, 1] for the predicted class, and the logits.

  Batches are zero-padded to ``batch_size`` and masked, so GNIME's batch-pooled Grad-CAM weights
  come from the real images of each batch only.
  """
  options = {"variant": variant} if method in ("gradcam", "lrp") else {}
  if method == "gradcam":
    options["layer"] = layer
  explainer = make_explainer(method, clf.module, **options)
  logits = classifier_outputs(clf, images)[0]

  def released(variables, x, targets, mask):
    e = postprocess(explainer(variables, x, targets, None, mask))
    return e[..., None] if e.ndim == 3 else e

  real = np.ones(len(images), np.float32)  # batched_apply pads it with zeros
  return batched_apply(
    released, clf.variables, (images, np.argmax(logits, -1).astype(np.int32), real), batch_size
  ), logits


def _require_finite(stage: str, what: str, *arrays) -> None:
  for a in arrays:
    if not np.all(np.isfinite(a)):
      raise NonFiniteError(f"[{stage}] non-finite {what}; nothing saved from that state")


def _scores(recon, images, labels, evaluator, target) -> dict:
  recon_j, images_j = jnp.asarray(recon), jnp.asarray(images)
  predict = lambda clf: np.argmax(classifier_outputs(clf, recon)[0], -1)
  return {
    "image_mse": float(jnp.mean(image_metrics.mse(recon_j, images_j))),
    "psnr": float(jnp.mean(image_metrics.psnr(recon_j, images_j))),
    "ssim": float(jnp.mean(image_metrics.ssim(recon_j, images_j))),
    "tca": float(np.mean(predict(evaluator) == labels)),
    "target_acc_on_reconstructions": float(np.mean(predict(target) == labels)),
  }


def _fidelity(clean, released) -> dict:
  if released is None:
    return {"explanation_mse": None, "explanation_spearman": None}
  c, r = jnp.asarray(clean), jnp.asarray(released)
  return {
    "explanation_mse": float(jnp.mean(jnp.square(c - r))),
    "explanation_spearman": float(jnp.mean(image_metrics.spearman(c, r))),
  }


def _write_atomic(path: Path, write) -> None:
  """``write(tmp_path)`` then rename: a kill leaves the old file or none, never half of one."""
  tmp = path.with_name(path.name + ".tmp")
  write(tmp)
  os.replace(tmp, path)


class _Stages:
  """``<workdir>/state``: the run's config, GNIME's and each attacker's checkpoints, each finished evaluation.

  An evaluation is finished when ``eval_<scenario>.json`` exists; it is written (atomically) after
  the reconstructions it shows in rows.png (``eval_<scenario>.npz``).
  """

  def __init__(self, workdir: Path):
    self.dir = workdir / "state"

  def config(self) -> dict | None:
    path = self.dir / "config.json"
    return json.loads(path.read_text()) if path.exists() else None

  def checkpoints(self, stage: str) -> Path:
    return self.dir / stage

  def evaluation(self, scenario: str) -> tuple[dict, np.ndarray] | None:
    scores, rows = self.dir / f"eval_{scenario}.json", self.dir / f"eval_{scenario}.npz"
    if not (scores.exists() and rows.exists()):
      return None
    with np.load(rows) as f:
      return json.loads(scores.read_text()), f["reconstructions"]

  def drop_checkpoints(self) -> None:
    """Removes the training checkpoints (tens of MB per run); config and evaluations stay as a record."""
    for stage in ("gnime", *(f"attacker_{s}" for s in SCENARIOS)):
      shutil.rmtree(self.checkpoints(stage), ignore_errors=True)

  def save_evaluation(self, scenario: str, scores: dict, rows: np.ndarray) -> None:
    def npz(tmp):
      with open(tmp, "wb") as f:
        np.savez(f, reconstructions=rows)

    _write_atomic(self.dir / f"eval_{scenario}.npz", npz)
    records.write_json(self.dir / f"eval_{scenario}.json", scores)


def run_gnime(
  cfg: GNIMERunConfig,
  workdir: str | Path | Workdir,
  *,
  progress: bool = True,
  overwrite: bool = False,
  allow_config_change: bool = False,
  stop: StopHook | None = None,
) -> dict:
  """Trains GNIME and its adaptive attackers in ``workdir``, or continues an interrupted run of the same config.

  Finished stages are not redone: GNIME's and each attacker's training resume from their newest
  checkpoint (a finished one is restored), each scenario's finished evaluation is read back.
  A rerun whose config differs (outside RESUMABLE_CHANGES) is refused unless
  ``allow_config_change``; one whose target or evaluator changed is refused (``overwrite``
  starts over). rows.png, results.csv and finally results.json are written last.
  ``stop(stage, epoch)`` ends the run after that epoch (stages "gnime", "attacker vs <scenario>")
  or that evaluation ("evaluation vs <scenario>", epoch 0) as Ctrl-C would: for resume tests.
  """
  _validate(cfg)
  workdir = Workdir.of(workdir)
  if (workdir / "results.json").exists() and not overwrite:
    raise ConfigError(f"{workdir}/results.json: exists; pass --overwrite or choose another workdir")
  stages = _Stages(workdir.path)
  saved = None if overwrite else stages.config()
  config = config_lib.to_dict(cfg)
  if saved is not None:
    changed = [k for k in config_lib.diff(saved["config"], config) if not k.startswith(RESUMABLE_CHANGES)]
    refuse_config_change(cfg.name, f"{stages.dir}/config.json", changed, allow_config_change)
  t0 = time.time()
  target = load_classifier(cfg.target, expect_role="target")
  evaluator = load_classifier(cfg.evaluator, expect_role="evaluation")
  models = {"target": fingerprint(target.variables), "evaluator": fingerprint(evaluator.variables)}
  if saved is not None:
    for role in ("target", "evaluator"):
      if saved["models"][role] != models[role]:
        raise ConfigError(
          f"{getattr(cfg, role)}: the {role} classifier changed since this workdir's unfinished run "
          "started; pass --overwrite to start over"
        )
  splits = load_splits(target.config.data)
  cap = lambda split, n: (split.images[:n], split.labels[:n]) if n else (split.images, split.labels)
  def_images, def_labels = cap(splits.private_train, cfg.max_defender)
  att_images, _ = cap(splits.private_test, cfg.max_attacker)
  to_float = lambda a: np.asarray(a, np.float32) / 255.0
  def_images, att_images = to_float(def_images), to_float(att_images)
  n_query = max(int(round(cfg.query_fraction * len(def_images))), 1)
  if len(def_images) - n_query < 1 or len(att_images) < 2:
    raise DataError(
      f"{cfg.target}: its data give {len(def_images)} defender images ({n_query} queries) and "
      f"{len(att_images)} attacker images; GNIME needs >= 1 defender image besides the queries and "
      "the attacker >= 2 (check max_defender, max_attacker, query_fraction)"
    )
  if overwrite:  # everything loaded: only now replace the previous run's outputs
    for name in ("results.json", "results.csv", "rows.png"):
      (workdir / name).unlink(missing_ok=True)
    shutil.rmtree(stages.dir, ignore_errors=True)
  records.write_json(
    stages.dir / "config.json", {"config": config if saved is None else saved["config"], "models": models}
  )
  order = np.random.default_rng(cfg.seed).permutation(len(def_images))
  query_idx, gnime_idx = np.sort(order[:n_query]), np.sort(order[n_query:])
  log.info(
    f"[{cfg.name}] {cfg.method} explanations of {target.config.name}: GNIME trains on {len(gnime_idx)} defender "
    f"images, the attacker on {len(att_images)} of its own; {n_query} queries are inverted"
    + (f" (resuming {stages.dir})" if saved is not None else "")
  )

  explain = lambda images: explanations_of(
    target, images, cfg.method, cfg.variant, cfg.gradcam_layer, cfg.explain_batch_size
  )
  def_e, def_logits = explain(def_images)
  att_e, att_logits = explain(att_images)
  _require_finite(
    "explanations", f"{cfg.method} explanations or logits of {cfg.target}", def_e, def_logits, att_e, att_logits
  )
  q_images, q_labels, q_e, q_logits = (
    def_images[query_idx],
    np.asarray(def_labels)[query_idx],
    def_e[query_idx],
    def_logits[query_idx],
  )

  nets, state, mu, sigma, gnime_history = train_gnime(
    def_e[gnime_idx],
    def_logits[gnime_idx],
    def_images[gnime_idx],
    cfg.gnime,
    progress=progress,
    ckpt_dir=stages.checkpoints("gnime"),
    stop=stop,
  )
  released_fn = jax.jit(lambda p, e, y: release(nets, p, e, y, mu, sigma))
  gnime_release = lambda e, y: batched_apply(released_fn, state.noiser, (e, y), 250)
  released = {"none": (att_e, q_e), "gnime": (gnime_release(att_e, att_logits), gnime_release(q_e, q_logits))}
  _require_finite("gnime", "released explanations", *released["gnime"])
  budget = float(np.mean(np.square(released["gnime"][1] - q_e)))
  noise = np.random.default_rng(cfg.seed + 1)
  rnd = lambda e: (e + np.sqrt(budget) * noise.standard_normal(e.shape)).astype(np.float32)  # unclipped
  released["rnd"] = (rnd(att_e), rnd(q_e))

  results = {
    "name": cfg.name,
    "method": cfg.method,
    "variant": cfg.variant,
    "target": cfg.target,
    "evaluator": cfg.evaluator,
    "gnime_explanation_mse_budget": budget,
    "mu": mu,
    "sigma": sigma,
    "queries": n_query,
    "attacker_images": len(att_images),
    "defender_images": len(gnime_idx),
    "scenarios": {},
  }
  recon_rows, reused = {}, []
  for scenario in SCENARIOS:
    done = stages.evaluation(scenario)
    if done is not None:
      results["scenarios"][scenario], recon_rows[scenario] = done
      reused.append(scenario)
      continue
    kind = "predmi" if scenario == "predmi" else "expmi"
    train_e, query_e = released.get(scenario, (att_e, q_e))
    inv_cfg = cfg.attacker if kind == "expmi" else dataclasses.replace(cfg.attacker, b1=cfg.predmi_b1)
    module, params, info = train_inverter(
      kind,
      train_e,
      att_logits,
      att_images,
      inv_cfg,
      name=f"attacker vs {scenario}",
      progress=progress,
      ckpt_dir=stages.checkpoints(f"attacker_{scenario}"),
      stop=stop,
    )
    recon = reconstruct(module, params, kind, query_e, q_logits)
    _require_finite(f"attacker vs {scenario}", "reconstructions", recon)
    scores = {
      **_scores(recon, q_images, q_labels, evaluator, target),
      **_fidelity(q_e, None if scenario in ("none", "predmi") else query_e),
      "attacker_epochs": info["epochs_run"],
      "attacker_best_val_mse": info["best_val_mse"],
    }
    bad = [k for k, v in scores.items() if isinstance(v, float) and not np.isfinite(v)]
    if bad:
      raise NonFiniteError(f"[evaluation vs {scenario}] non-finite {bad[0]}; nothing saved from that state")
    stages.save_evaluation(scenario, scores, recon[: cfg.rows])
    results["scenarios"][scenario], recon_rows[scenario] = scores, recon[: cfg.rows]
    if stop is not None and stop(f"evaluation vs {scenario}", 0):
      raise Interrupted(
        f"interrupted after the evaluation vs {scenario}; saved in {stages.dir}; run the same command again to resume",
        0,  # the stop hook's step of an evaluation stage
      )
  for scenario in SCENARIOS:
    scores = results["scenarios"][scenario]
    log.info(
      f"[{cfg.name}] {scenario:>6}: TCA {100 * scores['tca']:.1f}%  SSIM {scores['ssim']:.3f}  "
      f"MSE {scores['image_mse']:.4f}"
      + (f"  explanation MSE {scores['explanation_mse']:.4f}" if scores["explanation_mse"] is not None else "")
      + ("  (finished earlier)" if scenario in reused else "")
    )
  results["seconds_this_run"] = round(time.time() - t0, 1)
  results["reused_evaluations"] = reused
  results["config"] = config
  results["gnime_history"] = gnime_history
  # Results last: a kill before this point leaves a workdir the same command resumes.
  plots.image_columns(
    [
      ("image", q_images),
      ("explanation", q_e),
      ("GNIME explanation", released["gnime"][1]),
      ("RND explanation", released["rnd"][1]),
      ("ExpMI, no defense", recon_rows["none"]),
      ("ExpMI vs RND", recon_rows["rnd"]),
      ("ExpMI vs GNIME", recon_rows["gnime"]),
      ("PredMI", recon_rows["predmi"]),
    ],
    workdir / "rows.png",
    cfg.rows,
    f"{cfg.name}: {cfg.method} explanations, GNIME a={cfg.gnime.a}",
  )

  def csv(tmp):
    keys = [
      "tca",
      "ssim",
      "psnr",
      "image_mse",
      "explanation_mse",
      "explanation_spearman",
      "target_acc_on_reconstructions",
    ]
    with open(tmp, "w") as f:
      f.write("scenario," + ",".join(keys) + "\n")
      for s, sc in results["scenarios"].items():
        f.write(s + "," + ",".join("" if sc[k] is None else f"{sc[k]:.6g}" for k in keys) + "\n")

  _write_atomic(workdir / "results.csv", csv)
  workdir.write_json("results.json", results)
  stages.drop_checkpoints()  # a finished run is never resumed (a rerun needs --overwrite)
  log.info(
    f"[{cfg.name}] results in {workdir} (results.json, results.csv, rows.png), {results['seconds_this_run']} s this run"
  )
  return results
