"""A K-setting defense grid trained in one vmapped program vs K separate runs, K in 1, 2, 4, 8.

The grid is ``jaxmi.train.grid.make_grid_step`` (the training state stacked to [K, ...], the settings passed as
arrays, the batch shared); the separate runs are K programs of ``make_train_step``, one per setting, as K
``bin/jaxmi defend`` runs compile and train them. The recipe is the MNIST defended target's
(``configs/defense.py:method=<defense>,data=mnist``: the 32x32 CNN, batch 64, SGD); batches are random uint8 images,
so no data files (and no tensorflow_datasets) are needed: the speed of a step does not depend on its pixels.

Reported per K: compile time (the first call, compile plus one step) of the grid and the sum over the K separate
programs; setting-steps/s at steady state; settings per hour of the recipe's full run (3 epochs of the 30,596
private MNIST digits), at steady state and with compilation; the speed-up; XLA's memory analysis of the grid
program; and the largest parameter difference between the grid's settings and the separate runs after the timed
steps (float32 rounding of the vmapped convolutions only).

  python bench/defense_grid.py                          # K = 1, 2, 4, 8 of MID
  python bench/defense_grid.py --defense nls --ks 1,4 --steps 30 --out /tmp/grid.json
  python bench/defense_grid.py --quick                  # K = 1, 2, a few steps: checks it runs anywhere
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from jaxmi import config as config_lib  # noqa: E402
from jaxmi.defenses import MID, NegativeLabelSmoothing  # noqa: E402
from jaxmi.nets import build_classifier  # noqa: E402
from jaxmi.train.grid import init_grid_state, make_grid_step, stack_hyper, unstack  # noqa: E402
from jaxmi.train.optim import make_optimizer  # noqa: E402
from jaxmi.train.step import RunFacts, make_train_step  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MNIST_PRIVATE_TRAIN = 30596  # official MNIST training images of digits 0-4 (the recipe's private split)
NUM_CLASSES = 5


def settings(defense: str, k: int):
  """K settings spread over the range a trade-off curve needs."""
  if defense == "mid":
    return [MID(beta=0.001 * 2.0**i) for i in range(k)]
  return [NegativeLabelSmoothing(alpha=-0.02 * (i + 1)) for i in range(k)]


def block(tree):
  return jax.block_until_ready(tree)


def measure(defense: str, k: int, steps: int, say) -> dict:
  recipe = config_lib.load_config(f"{REPO / 'configs/defense.py'}:method={defense},data=mnist")
  cfg = recipe.target
  image_shape = (cfg.data.image_size, cfg.data.image_size, cfg.data.channels)
  batch_size = cfg.train.batch_size
  spe = MNIST_PRIVATE_TRAIN // batch_size
  run_steps = spe * cfg.train.epochs
  module = build_classifier(cfg.model, NUM_CLASSES)
  tx = make_optimizer(cfg.optim, spe, run_steps)
  facts = RunFacts(
    steps_per_epoch=spe,
    total_steps=run_steps,
    batch_size=batch_size,
    num_examples=MNIST_PRIVATE_TRAIN,
    module=module,
    image_shape=image_shape,
    num_classes=NUM_CLASSES,
    optimizer=tx,
  )
  defenses = settings(defense, k)
  rng = np.random.default_rng(0)
  batches = [
    {
      "image": jax.device_put(rng.integers(0, 256, (batch_size, *image_shape)).astype(np.uint8)),
      "label": jax.device_put(rng.integers(0, NUM_CLASSES, batch_size).astype(np.int32)),
    }
    for _ in range(4)
  ]

  # One program for the K settings.
  state, _ = init_grid_state(cfg, defenses, module, tx, facts, NUM_CLASSES)
  hyper = stack_hyper(defenses)
  grid_step = make_grid_step(module, tx, defenses[0], cfg.train.augment, facts)
  t0 = time.perf_counter()
  state, _ = block(grid_step(state, hyper, batches[0]))
  grid_compile = time.perf_counter() - t0
  t0 = time.perf_counter()
  for i in range(steps):
    state, metrics = grid_step(state, hyper, batches[(i + 1) % len(batches)])
  block((state, metrics))
  grid_rate = steps / (time.perf_counter() - t0)  # grid steps/s: K setting-steps each
  assert grid_step._cache_size() == 1
  # After the timing: lowering and compiling ahead of time may fill the cache the first call would have compiled.
  try:
    memory = grid_step.lower(state, hyper, batches[0]).compile().memory_analysis()
    memory_mb = (memory.argument_size_in_bytes + memory.output_size_in_bytes + memory.temp_size_in_bytes) / 2**20
  except Exception:  # not every backend reports it
    memory_mb = None
  say(f"  K={k} grid: compile {grid_compile:.1f}s, {grid_rate * k:.1f} setting-steps/s")

  # K separate programs, one after another.
  seq_compile, seq_time, max_diff = 0.0, 0.0, 0.0
  for i, setting in enumerate(defenses):
    single, _ = init_grid_state(cfg, [setting], module, tx, facts, NUM_CLASSES)
    single = unstack(single, 0)
    step = make_train_step(module, setting.optimizer(tx, single.params, facts), setting, cfg.train.augment, facts)
    t0 = time.perf_counter()
    single, _ = block(step(single, batches[0]))
    seq_compile += time.perf_counter() - t0
    t0 = time.perf_counter()
    for j in range(steps):
      single, metrics = step(single, batches[(j + 1) % len(batches)])
    block((single, metrics))
    seq_time += time.perf_counter() - t0
    diffs = jax.tree.map(lambda a, b: jnp.max(jnp.abs(a - b)), unstack(state.params, i), single.params)
    max_diff = max(max_diff, max(float(d) for d in jax.tree.leaves(diffs)))
  seq_rate = k * steps / seq_time  # setting-steps/s
  say(f"  K={k} separate: compile {seq_compile:.1f}s (all {k}), {seq_rate:.1f} setting-steps/s")

  grid_hours = (grid_compile + run_steps / grid_rate) / 3600
  seq_hours = (seq_compile + k * run_steps / seq_rate) / 3600
  return {
    "k": k,
    "defense": defense,
    "steps_timed": steps,
    "grid_compile_s": round(grid_compile, 2),
    "separate_compile_s": round(seq_compile, 2),
    "grid_setting_steps_per_s": round(grid_rate * k, 2),
    "separate_setting_steps_per_s": round(seq_rate, 2),
    "speedup_steady": round(grid_rate * k / seq_rate, 2),
    "run_steps": run_steps,
    "grid_settings_per_hour_steady": round(3600 * grid_rate * k / run_steps, 2),
    "separate_settings_per_hour_steady": round(3600 * seq_rate / run_steps, 2),
    "grid_settings_per_hour": round(k / grid_hours, 2),
    "separate_settings_per_hour": round(k / seq_hours, 2),
    "speedup_with_compile": round(seq_hours / grid_hours, 2),
    "grid_memory_mb": None if memory_mb is None else round(memory_mb, 1),
    "max_param_diff": max_diff,
  }


def markdown(rows: list[dict]) -> str:
  head = (
    "| K | grid setting-steps/s | separate setting-steps/s | speed-up | settings/h grid (with compile) | "
    "settings/h separate (with compile) | compile grid / separate (s) | grid memory (MB) | max param diff |"
  )
  lines = [head, "|" + "---|" * 9]
  for r in rows:
    lines.append(
      f"| {r['k']} | {r['grid_setting_steps_per_s']} | {r['separate_setting_steps_per_s']} | {r['speedup_steady']}x | "
      f"{r['grid_settings_per_hour_steady']} ({r['grid_settings_per_hour']}) | "
      f"{r['separate_settings_per_hour_steady']} ({r['separate_settings_per_hour']}) | "
      f"{r['grid_compile_s']} / {r['separate_compile_s']} | {r['grid_memory_mb']} | {r['max_param_diff']:.1e} |"
    )
  return "\n".join(lines)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(
    description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument("--defense", choices=("mid", "nls"), default="mid")
  p.add_argument("--ks", default="1,2,4,8", help="comma list of grid sizes")
  p.add_argument("--steps", type=int, default=20, help="timed steps per program (after the compiling first call)")
  p.add_argument("--budget-s", type=float, default=0.0, help="start no new K after this many seconds (0: no limit)")
  p.add_argument("--quick", action="store_true", help="K = 1, 2 and 3 steps: checks the bench runs")
  p.add_argument("--out", default="", help="write the JSON report here (rewritten after each K)")
  args = p.parse_args(argv)
  ks = [1, 2] if args.quick else [int(k) for k in args.ks.split(",")]
  steps = 3 if args.quick else args.steps

  def say(*a):
    print(*a, file=sys.stderr, flush=True)

  report = {
    "bench": "defense_grid",
    "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    "device": f"{jax.devices()[0].platform}: {jax.devices()[0].device_kind} x{jax.device_count()}",
    "host": platform.processor() or platform.machine(),
    "jax": jax.__version__,
    "defense": args.defense,
    "rows": [],
    "skipped_ks": [],
  }
  start = time.perf_counter()
  for k in ks:
    if args.budget_s and time.perf_counter() - start > args.budget_s:
      report["skipped_ks"].append(k)
      say(f"K={k}: skipped (budget of {args.budget_s:.0f}s spent)")
      continue
    say(f"K={k}: {args.defense} grid vs {k} separate runs, {steps} timed steps each")
    report["rows"].append(measure(args.defense, k, steps, say))
    if args.out:
      Path(args.out).write_text(json.dumps(report, indent=2))
  print(markdown(report["rows"]))
  if args.out:
    Path(args.out).write_text(json.dumps(report, indent=2))
  return 0


if __name__ == "__main__":
  sys.exit(main())
