"""Every picture jaxmi writes: training curves, image grids, reconstruction grids, report plots.

Pure drawing over numpy arrays and plain records, so any layer may call it (it imports nothing
from jaxmi). Each figure is written to a temporary file and renamed, so a kill never leaves a
half-written PNG where a finished one is expected.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np


def _pyplot():
  import matplotlib

  matplotlib.use("Agg")  # no display on servers; set before pyplot is imported
  import matplotlib.pyplot as plt

  return plt


def _save(fig, path, dpi: int) -> None:
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.png")  # several processes may draw one plot (sweeps)
  fig.savefig(tmp, dpi=dpi)
  _pyplot().close(fig)
  os.replace(tmp, path)


def _show(ax, img) -> None:
  img = np.asarray(img)
  grey = img.shape[-1] == 1
  ax.imshow(img[..., 0] if grey else np.clip(img, 0, 1), cmap="gray" if grey else None, vmin=0, vmax=1)
  ax.set_xticks([])
  ax.set_yticks([])


def training_curves(records: list[dict], path, title: str) -> None:
  """Training loss and test accuracy against steps (records as written to metrics.jsonl)."""
  plt = _pyplot()
  train = [r for r in records if "train/loss" in r]
  test = [r for r in records if "test/acc" in r]
  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.4))
  if train:
    ax1.plot([r["step"] for r in train], [r["train/loss"] for r in train], label="train loss")
    if min(r["train/loss"] for r in train) > 0:  # some defenses' losses are negative (CALoR, NLS)
      ax1.set_yscale("log")
  ax1.set_xlabel("step")
  ax1.set_title("training loss")
  if test:
    ax2.plot([r["step"] for r in test], [100 * r["test/acc"] for r in test], "o-", label="test top-1")
    ax2.plot([r["step"] for r in train], [100 * r["train/acc"] for r in train], alpha=0.5, label="train top-1")
    ax2.legend()
  ax2.set_xlabel("step")
  ax2.set_ylabel("accuracy (%)")
  ax2.set_title("accuracy")
  fig.suptitle(title)
  fig.tight_layout()
  _save(fig, path, 110)


def image_grid(images, path, *, ncol: int | None = None, pad: int = 2, scale: int = 1) -> None:
  """Images ([N, H, W, C] in [0, 1]) as one PNG grid, row-major, at pixel resolution (no resampling)."""
  from PIL import Image

  images = np.clip(np.asarray(images, np.float32), 0.0, 1.0)
  n, h, w, c = images.shape
  ncol = ncol or int(np.ceil(np.sqrt(n)))
  nrow = int(np.ceil(n / ncol))
  canvas = np.ones((nrow * (h + pad) + pad, ncol * (w + pad) + pad, c), np.float32)
  for i in range(n):
    r, col = divmod(i, ncol)
    canvas[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + col * (w + pad) : pad + col * (w + pad) + w] = images[i]
  pixels = (canvas * 255 + 0.5).astype(np.uint8)
  img = Image.fromarray(pixels[..., 0] if c == 1 else pixels)
  if scale > 1:
    img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.png")  # several processes may draw one plot (sweeps)
  img.save(tmp)
  os.replace(tmp, path)


def loss_terms(parts: dict, path, title: str) -> None:
  """Each weighted loss term against optimisation step."""
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(6, 3.4))
  for name, curve in parts.items():
    ax.plot(np.arange(1, len(curve) + 1), curve, label=name)
  ax.set_xlabel("step")
  ax.set_ylabel("weighted term")
  ax.set_title(title)
  ax.legend()
  fig.tight_layout()
  _save(fig, path, 110)


def reconstructions(
  result,
  real_images: np.ndarray,
  path,
  *,
  eval_predictions: np.ndarray | None = None,
  max_rows: int = 40,
  per_row: int = 5,
) -> list[list[int]]:
  """Per identity: a real private image, the selected reconstruction, then other restarts.

  Args:
    result: an ``InversionResult`` (labels, images [I, R, H, W, C], best_restart, target_confidence, draws).
    real_images: [I, H, W, C] in [0, 1], one private image per attacked identity, at the reconstructions' size.
    path: the PNG to write.
    eval_predictions: [I, R] evaluation-model predictions; titles then give its verdict.
    max_rows, per_row: at most this many identities, and reconstructions per identity (GMI's 5
      restarts or KEDMI's 5 draws all fit).

  Returns:
    The reconstruction indices shown per row (selected first).
  """
  plt = _pyplot()
  num_ids = min(len(result.labels), max_rows)
  restarts = result.images.shape[1]
  ncol = 1 + min(restarts, per_row)
  height = 1.6 * num_ids + 0.5
  fig, axes = plt.subplots(num_ids, ncol, figsize=(1.5 * ncol, height), squeeze=False)
  shown = []
  for i in range(num_ids):
    label = int(result.labels[i])
    _show(axes[i, 0], real_images[i])
    axes[i, 0].set_title(f"private id {label}", fontsize=7)
    best = int(result.best_restart[i])
    order = [best] + [r for r in range(restarts) if r != best][: ncol - 2]
    shown.append(order)
    for j, r in enumerate(order, start=1):
      _show(axes[i, j], result.images[i, r])
      name = f"draw {r}" if result.draws > 1 and restarts == result.draws else f"restart {r}"
      title = ("selected" if j == 1 else name) + f"\nT {result.target_confidence[i, r]:.2f}"
      correct = eval_predictions is None or eval_predictions[i, r] == label
      if eval_predictions is not None:
        title += f", E: {int(eval_predictions[i, r])} " + ("ok" if correct else "x")
      axes[i, j].set_title(title, fontsize=6, color="black" if correct else "firebrick")
  fig.suptitle("real private image | reconstructions (T: target confidence, E: evaluation model)", fontsize=7)
  fig.tight_layout(rect=(0, 0, 1, 1 - 0.4 / height))  # keep the title clear of the first row
  _save(fig, path, 120)
  return shown


def fisher_layers(rows: list[dict], path, title: str) -> None:
  """Bar charts of each layer's mean diagonal Fisher (log scale) and its share of the total."""
  plt = _pyplot()
  names = [r["layer"] for r in rows]
  fig, axes = plt.subplots(1, 2, figsize=(max(8, 0.55 * len(rows) + 4), 3.8))
  axes[0].bar(names, [r["mean"] for r in rows], color="tab:blue")
  axes[0].set_yscale("log")
  axes[0].set_title("mean Fisher per parameter")
  axes[1].bar(names, [100 * r["share"] for r in rows], color="tab:orange")
  axes[1].set_title("share of total Fisher (%)")
  for ax in axes:
    ax.tick_params(axis="x", rotation=60)
    ax.set_xlabel("layer (input -> head)")
  fig.suptitle(title)
  fig.tight_layout()
  _save(fig, path, 120)


def privacy_utility(rows: list[dict], path, title: str) -> None:
  """Natural accuracy against attack acc@1 (± std over seeds), each point linked to its prior baseline.

  ``rows`` as ``jaxmi.report.collect`` returns them.
  """
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(6.4, 4.6))
  several_attacks = len({r["attack"] for r in rows}) > 1
  shown_baseline = False
  for r in rows:
    x, y = 100 * r["natural_acc"], 100 * r["attack_acc1"]
    yerr = None if r["attack_acc1_std"] is None else 100 * r["attack_acc1_std"]
    line = ax.errorbar(x, y, yerr=yerr, fmt="o", capsize=3)
    if r["baseline_acc1"] is not None:  # the prior's un-optimised samples: what the attack adds is the gap
      b = 100 * r["baseline_acc1"]
      color = line[0].get_color()
      ax.plot([x, x], [b, y], ":", color=color, lw=1)
      ax.plot(x, b, "o", mfc="none", color=color, label=None if shown_baseline else "prior baseline")
      shown_baseline = True
    # The run's directory tells two settings of one defense apart (defense_bido_coco_mnist -> bido_coco_mnist).
    label = r["defense"] if r["defense"] == "none" else Path(r["target"]).name.removeprefix("defense_")
    if several_attacks:
      label += f", {r['attack']}"
    ax.annotate(label, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
  if shown_baseline:
    ax.legend(fontsize=8, loc="best")
  ax.set_xlabel("natural accuracy (%)  - higher is more useful")
  ax.set_ylabel("attack acc@1 (%)  - lower is more private")
  ax.set_title(title)
  ax.grid(alpha=0.3)
  fig.tight_layout()
  _save(fig, path, 120)


def image_columns(columns: Sequence[tuple[str, np.ndarray]], path, n: int, title: str) -> None:
  """The first ``n`` rows of several image arrays side by side, one titled column per array."""
  n = min([n] + [len(arr) for _, arr in columns])
  if n <= 0:
    return
  plt = _pyplot()
  fig, axes = plt.subplots(n, len(columns), figsize=(1.5 * len(columns), 1.5 * n + 0.4), squeeze=False)
  for j, (label, arr) in enumerate(columns):
    for i in range(n):
      _show(axes[i, j], arr[i])
      if i == 0:
        axes[i, j].set_title(label, fontsize=7)
  fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  _save(fig, path, 110)


def sweep_tradeoff(rows: list[dict], path: Path, pareto_front) -> None:
  """A sweep's natural accuracy vs attack acc@1 (± std over seeds), one panel per attack, the front that
  ``pareto_front(points)`` returns marked. ``rows``: the sweep table's records with a ``label``."""
  plt = _pyplot()
  attacks = list(dict.fromkeys(r["attack"] for r in rows))
  fig, axes = plt.subplots(1, len(attacks), figsize=(5.2 * len(attacks), 4.4), squeeze=False)
  for ax, attack in zip(axes[0], attacks):
    sub = [r for r in rows if r["attack"] == attack]
    pts = [(100 * r["natural_acc"], 100 * r["acc1"]) for r in sub]
    for r, (x, y) in zip(sub, pts):
      ax.errorbar(
        x, y, yerr=None if r["acc1_std"] is None else 100 * r["acc1_std"], fmt="o", capsize=3, color="tab:blue"
      )
      ax.annotate(r["label"], (x, y), textcoords="offset points", xytext=(5, 4), fontsize=7)
    front = pareto_front(pts)
    ax.plot([pts[i][0] for i in front], [pts[i][1] for i in front], "-", color="tab:red", lw=1.5, label="Pareto front")
    ax.plot([pts[i][0] for i in front], [pts[i][1] for i in front], "o", mfc="none", ms=11, color="tab:red")
    ax.locator_params(nbins=5)  # close accuracies otherwise crowd the axis with 0.005-steps
    ax.set_xlabel("natural accuracy (%)  - higher is more useful")
    ax.set_ylabel("attack acc@1 (%)  - lower is more private")
    ax.set_title(attack)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
  fig.tight_layout()
  _save(fig, path, 120)


def sweep_knn(rows: list[dict], path: Path) -> None:
  """Natural accuracy vs KNN distance of the reconstructions to the private images (higher is more private)."""
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(6.4, 4.6))
  for attack in dict.fromkeys(r["attack"] for r in rows):
    sub = [r for r in rows if r["attack"] == attack]
    xs, ys = [100 * r["natural_acc"] for r in sub], [r["knn_dist"] for r in sub]
    ax.plot(xs, ys, "o", label=attack)
    for r, x, y in zip(sub, xs, ys):
      ax.annotate(r["label"], (x, y), textcoords="offset points", xytext=(5, 4), fontsize=7)
  ax.set_xlabel("natural accuracy (%)")
  ax.set_ylabel("KNN distance to private images\n(higher is more private)")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  _save(fig, path, 120)


def sweep_reconstructions(rows: list[dict], path: Path) -> None:
  """Each cell's reconstruction grid (its first finished seed's grid.png) side by side: settings across, attacks
  down."""
  plt = _pyplot()
  attacks = list(dict.fromkeys(r["attack"] for r in rows))
  settings = list(dict.fromkeys(r["label"] for r in rows))
  fig, axes = plt.subplots(
    len(attacks), len(settings), figsize=(3.2 * len(settings), 3.4 * len(attacks)), squeeze=False
  )
  for ax in axes.flat:
    ax.axis("off")
  for r in rows:
    ax = axes[attacks.index(r["attack"]), settings.index(r["label"])]
    if Path(r["grid"]).is_file():
      ax.imshow(plt.imread(r["grid"]))
    ax.set_title(f"{r['label']}\n{r['attack']}: acc@1 {r['acc1_text']}", fontsize=7)
  fig.tight_layout()
  _save(fig, path, 150)
