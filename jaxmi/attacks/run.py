"""``bin/jaxmi attack``: load target, evaluation model and GAN prior; invert; evaluate; write results.

Outputs in the workdir: ``results.json`` (metrics, runtime, config), ``per_identity.csv``,
``grid.png`` (per identity: a real private image, the selected reconstruction, other restarts),
``loss.png`` (loss terms over steps) and ``latents.npz``.
"""

from __future__ import annotations

import csv
import dataclasses
import time
from pathlib import Path

import jax
import numpy as np

from jaxmi import config as config_lib
from jaxmi import records
from jaxmi.attacks import ATTACKS, AttackModels, InversionConfig
from jaxmi.attacks.lomma import public_feature_reg
from jaxmi.data import Splits, load_splits
from jaxmi.errors import ConfigError
from jaxmi.metrics import evaluate_inversion, pair_grid
from jaxmi.nets import path_name
from jaxmi.train import load_classifier
from jaxmi.train.gan import load_gan


@dataclasses.dataclass(frozen=True, kw_only=True)
class AttackConfig:
  name: str = "attack"
  attack: str = "gmi"
  workdir: str = "runs/attack"
  target: str = "runs/mnist_target"       # workdir of the trained target classifier
  evaluator: str = "runs/mnist_eval"      # workdir of the independent evaluation model
  gan: str = "runs/gan_mnist"             # workdir of the GAN prior (trained on public data)
  identities: tuple[int, ...] = ()        # target classes to attack; () = all of them
  surrogates: tuple[str, ...] = ()        # LOMMA: workdirs of surrogates distilled from the target
  p_reg_images: int = 5000                # LOMMA: public images for p_reg (the official code uses ~5,050)
  inversion: InversionConfig = InversionConfig()


def run_attack(cfg: AttackConfig, *, splits: Splits | None = None, progress: bool = True, overwrite: bool = False,
               log=print) -> dict:
  workdir = Path(cfg.workdir)
  if jax.process_index() != 0:  # multi-host: every process computes, the first one reports and writes
    progress, log = False, lambda *_: None
  if (workdir / "results.json").exists() and not overwrite:
    raise ConfigError(f"{workdir / 'results.json'}: already exists; choose another --workdir or pass --overwrite")
  if cfg.attack not in ATTACKS:
    raise ConfigError(f"attack: unknown attack '{cfg.attack}'; expected one of {', '.join(ATTACKS)}")
  target = load_classifier(cfg.target, expect_role="target")
  evaluator = load_classifier(cfg.evaluator, expect_role="evaluation")
  gan = load_gan(cfg.gan)
  if evaluator.num_classes != target.num_classes:
    raise ConfigError(f"evaluator: {cfg.evaluator} has {evaluator.num_classes} classes but the target has "
                      f"{target.num_classes}; the evaluation model must be trained on the target's private identities")
  labels = tuple(cfg.identities) or tuple(range(target.num_classes))
  bad = [i for i in labels if not 0 <= i < target.num_classes]
  if bad:
    raise ConfigError(f"identities: {bad} out of range; the target {cfg.target} has classes 0..{target.num_classes - 1}")

  surrogates = [load_classifier(w, expect_role="surrogate") for w in cfg.surrogates]
  for path, s in zip(cfg.surrogates, surrogates):
    if s.num_classes != target.num_classes:
      raise ConfigError(f"surrogates: {path} has {s.num_classes} classes but the target has {target.num_classes}")
  splits = splits if splits is not None else load_splits(target.config.data)
  attacked = [target, *surrogates]  # equal weights: the identity term averages over them
  models = AttackModels(generator=gan.generator, critic=gan.critic, targets=tuple(m.module for m in attacked),
                        target_shapes=tuple(m.image_shape for m in attacked))
  inverter = ATTACKS[cfg.attack](models, gan.config.z_dim, cfg.inversion)
  variables = {"generator": gan.g_variables, "critic": gan.d_variables,
               "targets": tuple(m.variables for m in attacked)}
  if cfg.inversion.feature_reg_weight:
    variables["extras"] = {"p_reg": public_feature_reg(target, splits.public.images[:cfg.p_reg_images],
                                                       cfg.inversion.p_reg)}
  total_latents = len(labels) * cfg.inversion.restarts
  chunk_text = f"at most {cfg.inversion.max_batch}" if cfg.inversion.max_batch else "memory-fitted"
  prior = {"gmi": "WGAN critic -D(G(z))", "kedmi": "KEDMI discriminator -log P(real)"}.get(gan.kind, gan.kind)
  log(f"[{cfg.name}] {cfg.attack}: {len(labels)} identities x {cfg.inversion.restarts} restarts x "
      f"{cfg.inversion.steps} steps, chunks of {chunk_text} latents over {cfg.inversion.devices or jax.device_count()} device(s), "
      f"{cfg.inversion.compute_dtype}; prior: {prior}; "
      f"attacking {len(attacked)} model(s)")

  bar = None
  if progress:
    from tqdm.auto import tqdm
    bar = tqdm(total=total_latents * cfg.inversion.steps, desc=cfg.name, unit=" latent-steps", unit_scale=True,
               dynamic_ncols=True)
  update = None if bar is None else (lambda n, parts: (bar.update(n), bar.set_postfix(
      {k: f"{v:.3f}" for k, v in parts.items()})))
  t0 = time.time()
  result = inverter.run(variables, labels, progress=update)
  seconds = time.time() - t0
  if bar is not None:
    bar.close()

  metrics = evaluate_inversion(result, evaluator, splits.private_train.images, splits.private_train.labels)
  summary = {
      "name": cfg.name, "attack": cfg.attack, **{k: v for k, v in metrics.items() if k not in ("per_identity", "eval_predictions")},
      "attack_seconds": round(seconds, 2), "latent_steps_per_second": round(total_latents * cfg.inversion.steps / seconds, 1),
      "compilations": inverter.traces, "devices": inverter.mesh.size, "chunk_size": inverter.chunk_size,
      "target": str(cfg.target), "evaluator": str(cfg.evaluator), "gan": str(cfg.gan),
      "gan_kind": gan.kind, "draws_per_latent": result.draws,
      "config": config_lib.to_dict(cfg),
  }
  if jax.process_index() != 0:
    return summary
  workdir.mkdir(parents=True, exist_ok=True)
  records.write_json(workdir / "results.json", summary)
  with open(workdir / "per_identity.csv", "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(metrics["per_identity"][0]))
    writer.writeheader()
    writer.writerows(metrics["per_identity"])
  params = {}
  if result.latent_params is not None:
    leaves, _ = jax.tree_util.tree_flatten_with_path(result.latent_params)
    params = {"param_" + (path_name(path, "_") or "z"): v for path, v in leaves}
  np.savez_compressed(workdir / "latents.npz", latents=result.latents, labels=result.labels,
                      target_confidence=result.target_confidence, best_restart=result.best_restart, **params)
  pair_grid(result, splits.private_train.images, splits.private_train.labels, workdir / "grid.png",
            eval_predictions=metrics["eval_predictions"])
  records.plot_loss_parts(result.loss_parts, workdir / "loss.png", f"{cfg.name}: loss terms (mean over latents)")
  log(format_summary(summary))
  log(f"[{cfg.name}] results in {workdir.absolute()} (results.json, per_identity.csv, grid.png, loss.png)")
  return summary


def format_summary(s: dict) -> str:
  return (f"[{s['name']}] attack acc@1 {100 * s['acc1']:.1f}% (chance {100 * s['chance_acc1']:.1f}%), "
          f"acc@5 {100 * s['acc5']:.1f}% (selected); over all reconstructions acc@1 "
          f"{100 * s['acc1_all_restarts_mean']:.1f} +/- {100 * s['acc1_all_restarts_std']:.1f}%, acc@5 "
          f"{100 * s['acc5_all_restarts_mean']:.1f}%, KNN dist {s['knn_dist_all_restarts']:.2f}; "
          f"feature-FID {s['feature_fid']:.2f}, {s['attack_seconds']:.1f}s")
