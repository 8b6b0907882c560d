"""``bin/jaxmi gnime``: train GNIME for a target and evaluate it against an adaptive ExpMI attacker.

Data (gnime.md section 5): the target's training images are the defender's half, its test
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
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxmi import config as config_lib
from jaxmi import records
from jaxmi.attacks.expmi import InverterConfig, reconstruct, train_inverter
from jaxmi.data import load_splits
from jaxmi.defenses.gnime import GNIMEConfig, release, train_gnime
from jaxmi.errors import ConfigError
from jaxmi.explain import METHODS, make_explainer, postprocess
from jaxmi.metrics import image as image_metrics
from jaxmi.metrics.attack import batched_apply, classifier_outputs
from jaxmi.train import load_classifier

SCENARIOS = ("none", "rnd", "gnime", "predmi")


@dataclasses.dataclass(frozen=True, kw_only=True)
class GNIMERunConfig:
  name: str = "gnime"
  workdir: str = "runs/gnime"
  target: str = ""                  # workdir of the explained classifier (trained on the defender's half)
  evaluator: str = ""               # workdir of an independently trained classifier (TCA)
  method: str = "grad"              # one of jaxmi.explain.METHODS
  variant: str = "standard"         # gradcam / lrp: "gnime" reproduces the reference's definitions
  max_defender: int = 0             # cap on the defender's images (0 = all)
  max_attacker: int = 0             # cap on the attacker's images (0 = all)
  query_fraction: float = 0.2       # defender images held out from GNIME training as queries
  gnime: GNIMEConfig = GNIMEConfig()
  attacker: InverterConfig = InverterConfig()
  predmi_b1: float = 0.5            # PredMI's Adam beta1 (reference)
  rows: int = 8                     # examples shown in rows.png
  seed: int = 0


def _validate(cfg: GNIMERunConfig) -> None:
  if not cfg.target or not cfg.evaluator:
    raise ConfigError("target, evaluator: both must name trained classifier workdirs")
  if cfg.method not in METHODS:
    raise ConfigError(f"method: expected one of {', '.join(METHODS)}, got '{cfg.method}'")
  if cfg.variant not in ("standard", "gnime"):
    raise ConfigError(f"variant: expected 'standard' or 'gnime', got '{cfg.variant}'")
  if not 0 < cfg.query_fraction < 1:
    raise ConfigError(f"query_fraction: expected a value in (0, 1), got {cfg.query_fraction}")


def explanations_of(clf, images, method: str, variant: str):
  """Released-form explanations [N, h, w, c] in [0, 1] for the predicted class, and the logits."""
  options = {"variant": variant} if method in ("gradcam", "lrp") else {}
  explainer = make_explainer(method, clf.module, **options)
  logits = classifier_outputs(clf, images)[0]

  def released(variables, x, targets):
    e = postprocess(explainer(variables, x, targets))
    return e[..., None] if e.ndim == 3 else e
  return batched_apply(released, clf.variables, (images, np.argmax(logits, -1).astype(np.int32)), 250), logits


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
  return {"explanation_mse": float(jnp.mean(jnp.square(c - r))),
          "explanation_spearman": float(jnp.mean(image_metrics.spearman(c, r)))}


def _rows_png(path, images, clean, released, recon, n: int, title: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  columns = [("image", images), ("explanation", clean), ("GNIME explanation", released["gnime"]),
             ("RND explanation", released["rnd"]), ("ExpMI, no defense", recon["none"]),
             ("ExpMI vs RND", recon["rnd"]), ("ExpMI vs GNIME", recon["gnime"]), ("PredMI", recon["predmi"])]
  n = min(n, images.shape[0])
  fig, axes = plt.subplots(n, len(columns), figsize=(1.5 * len(columns), 1.5 * n + 0.4), squeeze=False)
  for j, (label, arr) in enumerate(columns):
    for i in range(n):
      ax = axes[i, j]
      img = np.asarray(arr[i])
      ax.imshow(img[..., 0] if img.shape[-1] == 1 else np.clip(img, 0, 1), cmap="gray" if img.shape[-1] == 1 else None,
                vmin=0, vmax=1)
      ax.set_xticks([])
      ax.set_yticks([])
      if i == 0:
        ax.set_title(label, fontsize=7)
  fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def run_gnime(cfg: GNIMERunConfig, *, progress: bool = True, overwrite: bool = False, log=print) -> dict:
  _validate(cfg)
  workdir = Path(cfg.workdir)
  if (workdir / "results.json").exists() and not overwrite:
    raise ConfigError(f"{workdir}/results.json: exists; pass --overwrite or choose another workdir")
  t0 = time.time()
  target = load_classifier(cfg.target, expect_role="target")
  evaluator = load_classifier(cfg.evaluator, expect_role="evaluation")
  splits = load_splits(target.config.data)
  cap = lambda split, n: (split.images[:n], split.labels[:n]) if n else (split.images, split.labels)
  def_images, def_labels = cap(splits.private_train, cfg.max_defender)
  att_images, _ = cap(splits.private_test, cfg.max_attacker)
  to_float = lambda a: np.asarray(a, np.float32) / 255.0
  def_images, att_images = to_float(def_images), to_float(att_images)
  n_query = max(int(round(cfg.query_fraction * len(def_images))), 1)
  order = np.random.default_rng(cfg.seed).permutation(len(def_images))
  query_idx, gnime_idx = np.sort(order[:n_query]), np.sort(order[n_query:])
  log(f"[{cfg.name}] {cfg.method} explanations of {target.config.name}: GNIME trains on {len(gnime_idx)} defender "
      f"images, the attacker on {len(att_images)} of its own; {n_query} queries are inverted")

  def_e, def_logits = explanations_of(target, def_images, cfg.method, cfg.variant)
  att_e, att_logits = explanations_of(target, att_images, cfg.method, cfg.variant)
  q_images, q_labels, q_e, q_logits = (def_images[query_idx], np.asarray(def_labels)[query_idx], def_e[query_idx],
                                       def_logits[query_idx])

  nets, state, mu, sigma, gnime_history = train_gnime(def_e[gnime_idx], def_logits[gnime_idx],
                                                      def_images[gnime_idx], cfg.gnime, progress=progress)
  released_fn = jax.jit(lambda p, e, y: release(nets, p, e, y, mu, sigma))
  gnime_release = lambda e, y: batched_apply(released_fn, state.noiser, (e, y), 250)
  released = {"none": (att_e, q_e), "gnime": (gnime_release(att_e, att_logits), gnime_release(q_e, q_logits))}
  budget = float(np.mean(np.square(released["gnime"][1] - q_e)))
  noise = np.random.default_rng(cfg.seed + 1)
  rnd = lambda e: (e + np.sqrt(budget) * noise.standard_normal(e.shape)).astype(np.float32)  # unclipped
  released["rnd"] = (rnd(att_e), rnd(q_e))

  results = {"name": cfg.name, "method": cfg.method, "variant": cfg.variant, "target": cfg.target,
             "evaluator": cfg.evaluator, "gnime_explanation_mse_budget": budget, "mu": mu, "sigma": sigma,
             "queries": n_query, "attacker_images": len(att_images), "defender_images": len(gnime_idx),
             "scenarios": {}}
  recon = {}
  for scenario in SCENARIOS:
    kind = "predmi" if scenario == "predmi" else "expmi"
    train_e, query_e = released.get(scenario, (att_e, q_e))
    inv_cfg = cfg.attacker if kind == "expmi" else dataclasses.replace(cfg.attacker, b1=cfg.predmi_b1)
    module, params, info = train_inverter(kind, train_e, att_logits, att_images, inv_cfg,
                                          name=f"attacker vs {scenario}", progress=progress)
    recon[scenario] = reconstruct(module, params, kind, query_e, q_logits)
    scores = {**_scores(recon[scenario], q_images, q_labels, evaluator, target),
              **_fidelity(q_e, None if scenario in ("none", "predmi") else query_e),
              "attacker_epochs": info["epochs_run"], "attacker_best_val_mse": info["best_val_mse"]}
    results["scenarios"][scenario] = scores
    log(f"[{cfg.name}] {scenario:>6}: TCA {100 * scores['tca']:.1f}%  SSIM {scores['ssim']:.3f}  "
        f"MSE {scores['image_mse']:.4f}" + (f"  explanation MSE {scores['explanation_mse']:.4f}"
                                            if scores["explanation_mse"] is not None else ""))
  results["seconds"] = round(time.time() - t0, 1)
  results["config"] = config_lib.to_dict(cfg)
  results["gnime_history"] = gnime_history
  workdir.mkdir(parents=True, exist_ok=True)
  records.write_json(workdir / "results.json", results)
  with open(workdir / "results.csv", "w") as f:
    keys = ["tca", "ssim", "psnr", "image_mse", "explanation_mse", "explanation_spearman",
            "target_acc_on_reconstructions"]
    f.write("scenario," + ",".join(keys) + "\n")
    for s, sc in results["scenarios"].items():
      f.write(s + "," + ",".join("" if sc[k] is None else f"{sc[k]:.6g}" for k in keys) + "\n")
  _rows_png(workdir / "rows.png", q_images, q_e, {k: v[1] for k, v in released.items()}, recon, cfg.rows,
            f"{cfg.name}: {cfg.method} explanations, GNIME a={cfg.gnime.a}")
  log(f"[{cfg.name}] results in {workdir} (results.json, results.csv, rows.png), {results['seconds']} s")
  return results
