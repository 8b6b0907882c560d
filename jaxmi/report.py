"""``bin/jaxmi report``: one table (and one plot) of defenses x attack results.

Reads attack workdirs (``results.json``) and the summaries of the targets they attacked,
groups runs of the same target (seeds) and reports, per target: its defense and natural
accuracy, the attack's acc@1 / acc@5 over all reconstructions (mean and std over seeds),
the selected-restart acc@1 and the KNN distance. The plot puts natural accuracy against
attack accuracy: the privacy/utility trade-off at a glance.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from jaxmi.errors import ConfigError

COLUMNS = ("target", "defense", "setting", "natural_acc", "attack_acc1", "attack_acc1_std", "attack_acc5",
           "attack_acc5_std", "selected_acc1", "knn_dist", "knn_dist_std", "seeds", "epsilon")


# Bookkeeping fields of a defense config, not hyper-parameters a reader compares.
NOT_SETTINGS = ("name", "layers", "num_classes", "seed", "steps_per_epoch", "epochs", "delta")


def _read(path: Path) -> dict:
  try:
    return json.loads(path.read_text())
  except FileNotFoundError:
    raise ConfigError(f"{path}: not found; expected a finished run") from None
  except json.JSONDecodeError as e:
    raise ConfigError(f"{path}: not valid JSON ({e})") from None


def _setting(summary: dict) -> str:
  """The defense's hyper-parameters and any non-default head/normalisation, as one short tag."""
  cfg = {k: v for k, v in (summary.get("defense_config") or {}).items() if k not in NOT_SETTINGS}
  head = summary.get("config", {}).get("model", {})
  parts = [f"{k}={v}" for k, v in cfg.items() if not isinstance(v, (list, dict))]
  if head.get("head", "linear") != "linear":
    parts.append(f"head={head['head']}")
  if head.get("norm", "batch") != "batch":
    parts.append(f"norm={head['norm']}")
  return ", ".join(parts)


def collect(attack_dirs: list[str | Path]) -> list[dict]:
  """Rows in the order targets first appear in ``attack_dirs``."""
  groups: dict[str, list[dict]] = {}
  for d in attack_dirs:
    result = _read(Path(d) / "results.json")
    groups.setdefault(result["target"], []).append(result)
  rows = []
  for target, results in groups.items():
    summary = _read(Path(target) / "summary.json")
    stat = lambda key: (float(np.mean([r[key] for r in results])), float(np.std([r[key] for r in results])))
    acc1, acc1_std = stat("acc1_all_restarts_mean")
    acc5, acc5_std = stat("acc5_all_restarts_mean")
    knn, knn_std = stat("knn_dist_all_restarts")
    rows.append({
        "target": target, "defense": summary.get("defense", "none"), "setting": _setting(summary),
        "natural_acc": summary["natural_accuracy"], "attack_acc1": acc1, "attack_acc1_std": acc1_std,
        "attack_acc5": acc5, "attack_acc5_std": acc5_std, "selected_acc1": stat("acc1")[0], "knn_dist": knn,
        "knn_dist_std": knn_std, "seeds": len(results),
        "epsilon": summary.get("privacy", {}).get("epsilon", ""),
    })
  return rows


def markdown(rows: list[dict]) -> str:
  pct = lambda v, s=None: f"{100 * v:.1f}%" + (f" ± {100 * s:.1f}" if s else "")
  lines = ["| defense | setting | natural acc | attack acc@1 | attack acc@5 | selected acc@1 | KNN dist | seeds |",
           "|---|---|---|---|---|---|---|---|"]
  for r in rows:
    eps = f", ε={r['epsilon']:.3g}" if isinstance(r["epsilon"], float) else ""
    lines.append(f"| {r['defense']} | {r['setting']}{eps} | {pct(r['natural_acc'])} | "
                 f"{pct(r['attack_acc1'], r['attack_acc1_std'])} | {pct(r['attack_acc5'], r['attack_acc5_std'])} | "
                 f"{pct(r['selected_acc1'])} | {r['knn_dist']:.2f} | {r['seeds']} |")
  return "\n".join(lines)


def plot(rows: list[dict], path: str | Path, title: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(6.4, 4.6))
  for r in rows:
    ax.errorbar(100 * r["natural_acc"], 100 * r["attack_acc1"], yerr=100 * r["attack_acc1_std"], fmt="o", capsize=3)
    # The run's directory tells two settings of one defense apart (defense_bido_coco_mnist -> bido_coco_mnist).
    label = r["defense"] if r["defense"] == "none" else Path(r["target"]).name.removeprefix("defense_")
    ax.annotate(label, (100 * r["natural_acc"], 100 * r["attack_acc1"]), textcoords="offset points",
                xytext=(5, 4), fontsize=8)
  ax.set_xlabel("natural accuracy (%)  - higher is more useful")
  ax.set_ylabel("attack acc@1 (%)  - lower is more private")
  ax.set_title(title)
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def write_report(attack_dirs: list[str | Path], out: str | Path, title: str = "defenses vs GMI") -> list[dict]:
  """Writes ``<out>.md``, ``<out>.csv`` and ``<out>.png``; returns the rows."""
  rows = collect(attack_dirs)
  out = Path(out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.with_suffix(".md").write_text(markdown(rows) + "\n")
  with open(out.with_suffix(".csv"), "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
  plot(rows, out.with_suffix(".png"), title)
  return rows
