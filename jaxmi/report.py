"""``bin/jaxmi report``: one table (and one plot) of defenses x attack results.

Reads attack workdirs (``results.json``) and the summaries of the targets they attacked. Runs of
the same target *and* the same attack settings (attack, prior kind, surrogates, evaluator, GAN
and the inversion fields that define the method; not the seed nor how it ran) are seeds of one
row; a different attack on the same target is another row. Per row: the attack, the target's
defense and natural accuracy, the attack's acc@1 / acc@5 over all reconstructions (mean and
sample std, ddof=1, over seeds; no std for a single seed), the selected-restart acc@1, the KNN
distance, and the prior baseline (the same metrics for the prior's un-optimised samples, in
``results.json["prior_baseline"]``) with attack minus baseline, blank for runs that predate it.
Non-finite numbers (which jaxmi writes as the strings "nan"/"inf") are shown as such, with one
warning line per file. The plot puts natural accuracy against attack accuracy, each point
joined to its prior baseline: the privacy/utility trade-off at a glance.
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys
from pathlib import Path
from typing import Callable


from jaxmi import config as config_lib
from jaxmi import plots
from jaxmi.errors import ConfigError
from jaxmi.experiments.attack import AttackConfig
from jaxmi.metrics.attack import over_seeds

COLUMNS = (
  "target",
  "defense",
  "setting",
  "attack",
  "attack_setting",
  "natural_acc",
  "attack_acc1",
  "attack_acc1_std",
  "attack_acc5",
  "attack_acc5_std",
  "selected_acc1",
  "knn_dist",
  "knn_dist_std",
  "baseline_acc1",
  "baseline_acc5",
  "baseline_knn_dist",
  "delta_acc1",
  "delta_acc1_std",
  "delta_acc5",
  "delta_acc5_std",
  "baseline_seeds",
  "seeds",
  "epsilon",
)

# Defense-config fields that are not hyper-parameters a reader compares: the name (its own column), DP-SGD's noise
# seed (runs differing only in it are seeds of one row) and its accountant's delta (shown with epsilon).
NOT_SETTINGS = ("name", "seed", "delta")

# Attack-config fields that do not define the attack: naming, the seed (runs differing only in it are the seeds
# of one row) and how it runs (devices, batching, precision, logging, checkpointing). Everything else, including
# fields added later, separates rows: merging two different attacks silently is the failure to avoid.
NOT_ATTACK_SETTINGS = (
  "name",
  "workdir",
  "target",
  "seed",
  "devices",
  "max_batch",
  "memory_budget_gb",
  "unroll",
  "compute_dtype",
  "remat",
  "log_every",
)
NOT_ATTACK_SETTING_WORDS = ("checkpoint", "resume")

# results.json numbers the report reads (top level and inside "prior_baseline").
METRICS = ("acc1", "acc1_all_restarts_mean", "acc5_all_restarts_mean", "knn_dist_all_restarts")
PRIORS = {"gmi": "WGAN-GP", "kedmi": "KEDMI", "plg": "PLG-MI cGAN"}  # results.json "gan_kind" -> what the prior is
NON_FINITE = {
  "nan": math.nan,
  "inf": math.inf,
  "+inf": math.inf,
  "-inf": -math.inf,
  "infinity": math.inf,
  "-infinity": -math.inf,
}


def _read(path: Path) -> dict:
  try:
    return json.loads(path.read_text())
  except FileNotFoundError:
    raise ConfigError(f"{path}: not found; expected a finished run") from None
  except json.JSONDecodeError as e:
    raise ConfigError(f"{path}: not valid JSON ({e})") from None


def _number(value, path: Path, key: str) -> float:
  """A JSON number, or one of the strings jaxmi writes for non-finite floats ("nan", "inf", "-inf")."""
  if isinstance(value, str) and value.strip().lower() in NON_FINITE:
    return NON_FINITE[value.strip().lower()]
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    raise ConfigError(f"{path}: {key} is {value!r}; expected a number")
  return float(value)


def _numbers(data: dict, keys, path: Path, prefix: str = "", optional: bool = False) -> dict:
  out = {}
  for k in keys:
    if k not in data:
      if optional:
        continue
      raise ConfigError(f"{path}: no {prefix}{k}; expected the results.json of a finished attack")
    out[k] = _number(data[k], path, prefix + k)
  return out


def _warn_non_finite(path: Path, values: dict, warn: Callable[[str], None]) -> None:
  bad = [f"{k}={v}" for k, v in values.items() if not math.isfinite(v)]
  if bad:
    warn(f"jaxmi: warning: {path}: non-finite {', '.join(bad)}; the report shows them as nan/inf")


def _setting(summary: dict) -> str:
  """The defense's hyper-parameters and any non-default head/normalisation, as one short tag."""
  cfg = {k: v for k, v in (summary.get("defense_config") or {}).items() if k not in NOT_SETTINGS}
  head = summary.get("config", {}).get("model", {})
  parts = [f"{k}={v}" for k, v in cfg.items() if not isinstance(v, (list, dict))]
  if head.get("head", "linear") != "linear":
    parts.append(f"head={head['head']}")
  if head.get("norm", "batch") != "batch":
    parts.append(f"norm={head['norm']}")
  effective = summary.get("effective") or {}
  if effective.get("active_steps") == 0:  # a schedule that never switched on: no defense, whatever it says
    parts.append("never active")
  elif "alpha_reached" in effective:
    parts.append(f"alpha reached {float(effective['alpha_reached']):.4g}")
  return ", ".join(parts)


# Attack-config fields renamed since older results.json files were written: read under their current name. The
# old clip_z was split by meaning: GMI's z clip after each update, KEDMI's clamp of each sampled z.
RENAMED_SETTINGS = {"inversion.clip_z": "inversion.z_clip"}
RENAMED_SETTINGS_BY_ATTACK = {"kedmi": {"inversion.clip_z": "inversion.draw_clamp"}}


def _settings(config: dict, attack: str = "") -> dict:
  """Flat {dotted field: value} of an attack config's settings (NOT_ATTACK_SETTINGS left out, renames applied)."""
  renamed = {**RENAMED_SETTINGS, **RENAMED_SETTINGS_BY_ATTACK.get(attack, {})}
  flat = {}

  def walk(d: dict, prefix: str = ""):
    for k, v in d.items():
      if k in NOT_ATTACK_SETTINGS or any(w in k for w in NOT_ATTACK_SETTING_WORDS):
        continue
      if isinstance(v, dict):
        walk(v, prefix + k + ".")
      else:
        flat.setdefault(renamed.get(prefix + k, prefix + k), v)

  walk(config)
  return flat


def _method(result: dict) -> dict:
  """Flat {field: value} of what defines the attack a run made (the grouping key besides the target). A field
  added after the run was made counts as its default (the run could not set it), so old and new runs of one
  attack share a row."""
  method = {"attack": result.get("attack", "?"), "prior": result.get("gan_kind", "")}
  method.update(_settings(result.get("config") or {}, method["attack"]))
  for k, v in _settings(config_lib.to_dict(AttackConfig())).items():
    method.setdefault(k, v)
  return method


def _attack_label(method: dict) -> str:
  """``gmi``, ``kedmi``, ``gmi+lomma`` (logit loss, feature regulariser and surrogates together), plus the prior
  when it is not the attack's own (KEDMI on a plain WGAN)."""
  label = str(method["attack"])
  if (
    method.get("surrogates")
    and method.get("inversion.identity_loss") == "logit"
    and method.get("inversion.feature_reg_weight")
  ):
    label += "+lomma"
  if method["prior"] and method["prior"] != method["attack"]:
    label += f" ({PRIORS.get(method['prior'], method['prior'])} prior)"
  return label


def _short(value) -> str:
  if isinstance(value, list):  # surrogates, identities: names, not full paths
    return "[" + ",".join(Path(v).name if isinstance(v, str) else str(v) for v in value) + "]"
  return str(value)


def collect(attack_dirs: list[str | Path], warn: Callable[[str], None] | None = None) -> list[dict]:
  """Rows, one per (target, attack settings), in the order they first appear in ``attack_dirs``."""
  warn = warn or (lambda line: print(line, file=sys.stderr))
  groups: dict[tuple, list[dict]] = {}
  for d in attack_dirs:
    path = Path(d) / "results.json"
    result = _read(path)
    if not isinstance(result, dict) or "target" not in result:
      raise ConfigError(f"{path}: no target; expected the results.json of a finished attack")
    values = _numbers(result, METRICS, path)
    baseline = result.get("prior_baseline")
    if baseline is not None:
      if not isinstance(baseline, dict):
        raise ConfigError(f"{path}: prior_baseline is {baseline!r}; expected a dict of metrics")
      baseline = _numbers(baseline, METRICS, path, "prior_baseline.", optional=True)
    _warn_non_finite(path, {**values, **{"prior_baseline." + k: v for k, v in (baseline or {}).items()}}, warn)
    method = _method(result)
    key = (os.path.normpath(str(result["target"])), json.dumps(method, sort_keys=True))
    groups.setdefault(key, []).append(
      {
        "path": path,
        "target": str(result["target"]),
        "method": method,
        "seed": (result.get("config") or {}).get("inversion", {}).get("seed"),
        "values": values,
        "baseline": baseline,
      }
    )

  labels = {key: _attack_label(runs[0]["method"]) for key, runs in groups.items()}
  targets: dict[Path, tuple] = {}  # summary.json path -> (summary, natural accuracy, epsilon), read and warned once
  for runs in groups.values():
    spath = Path(runs[0]["target"]) / "summary.json"
    if spath not in targets:
      summary = _read(spath)
      natural = _numbers(summary, ("natural_accuracy",), spath)["natural_accuracy"]
      epsilon = summary.get("privacy", {}).get("epsilon", "")
      epsilon = _number(epsilon, spath, "privacy.epsilon") if epsilon != "" else ""
      _warn_non_finite(
        spath, {"natural_accuracy": natural, **({"privacy.epsilon": epsilon} if epsilon != "" else {})}, warn
      )
      targets[spath] = summary, natural, epsilon
  rows = []
  for key, runs in groups.items():
    target, method = runs[0]["target"], runs[0]["method"]
    summary, natural, epsilon = targets[Path(target) / "summary.json"]
    seeds = [r["seed"] for r in runs if r["seed"] is not None]
    if len(set(seeds)) < len(seeds):
      warn(
        f"jaxmi: warning: {target} ({labels[key]}): {len(seeds)} runs but only {len(set(seeds))} distinct "
        f"inversion.seed values; runs with the same seed are repeats, not independent seeds"
      )
    # Settings that tell this row apart from other rows of the same attack (e.g. two learning rates).
    others = [k for k, lab in labels.items() if lab == labels[key] and k != key]
    other_methods = [groups[k][0]["method"] for k in others]
    differ = [f for f in method if f not in ("attack", "prior") and any(m.get(f) != method[f] for m in other_methods)]
    paired = [r for r in runs if r["baseline"] is not None]
    if paired and len(paired) < len(runs):
      warn(
        f"jaxmi: warning: {target} ({labels[key]}): {len(runs) - len(paired)} of {len(runs)} runs have no "
        f"prior_baseline (made before it existed); the baseline columns use the other {len(paired)}"
      )
    numbers = over_seeds([(r["values"], r["baseline"]) for r in runs])
    attack_keys = ("acc1", "acc1_std", "acc5", "acc5_std")
    row = {
      "target": target,
      "defense": summary.get("defense", "none"),
      "setting": _setting(summary),
      "attack": labels[key],
      "attack_setting": ", ".join(f"{f.removeprefix('inversion.')}={_short(method[f])}" for f in differ),
      "natural_acc": natural,
      **{f"attack_{k}": numbers[k] for k in attack_keys},
      **{k: v for k, v in numbers.items() if k not in attack_keys},
      "epsilon": epsilon,
    }
    rows.append(row)
  return rows


def _pct(v, s=None) -> str:
  """``64.0% ± 5.7``; blank for a missing value; a std of 0 is shown (it is a measurement), a missing one is not."""
  if v is None:
    return ""
  return f"{100 * v:.1f}%" + (f" ± {100 * s:.1f}" if s is not None else "")


def _points(v, s=None) -> str:
  if v is None:
    return ""
  return f"{100 * v:+.1f}" + (f" ± {100 * s:.1f}" if s is not None else "")


def markdown(rows: list[dict]) -> str:
  lines = [
    "| attack | defense | setting | natural acc | attack acc@1 | attack acc@5 | selected acc@1 | KNN dist | "
    "baseline acc@1 | baseline acc@5 | Δacc@1 vs prior | seeds |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  for r in rows:
    eps = [f"ε={r['epsilon']:.3g}"] if isinstance(r["epsilon"], float) else []
    setting = ", ".join([r["setting"]] * bool(r["setting"]) + eps)
    attack = r["attack"] + (f" ({r['attack_setting']})" if r["attack_setting"] else "")
    lines.append(
      f"| {attack} | {r['defense']} | {setting} | {_pct(r['natural_acc'])} | "
      f"{_pct(r['attack_acc1'], r['attack_acc1_std'])} | {_pct(r['attack_acc5'], r['attack_acc5_std'])} | "
      f"{_pct(r['selected_acc1'])} | {r['knn_dist']:.2f} | {_pct(r['baseline_acc1'])} | "
      f"{_pct(r['baseline_acc5'])} | {_points(r['delta_acc1'], r['delta_acc1_std'])} | {r['seeds']} |"
    )
  return "\n".join(lines)


def write_report(
  attack_dirs: list[str | Path],
  out: str | Path,
  title: str = "defenses vs attacks",
  warn: Callable[[str], None] | None = None,
) -> list[dict]:
  """Writes ``<out>.md``, ``<out>.csv`` and ``<out>.png`` (after every input has been read); returns the rows."""
  rows = collect(attack_dirs, warn)
  out = Path(out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.with_suffix(".md").write_text(markdown(rows) + "\n")
  with open(out.with_suffix(".csv"), "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
  plots.privacy_utility(rows, out.with_suffix(".png"), title)
  return rows
