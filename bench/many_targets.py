"""K targets attacked in one compiled program (``Inverter.run_many``) vs K separate runs: cells per hour.

A cell is one GMI attack of one target: ``--identities`` x ``--restarts`` latents, ``--steps`` steps, through the
engine's host driver (``Inverter.run`` / ``run_many``: chunks, log intervals, final images, restart selection).
For each K in ``--ks`` the K targets (one architecture, random weights, each its own) are attacked

- one after another (``Inverter.run`` per target; one compilation shared by all): steady state, K x the time of one
  cell, measured over ``--seq-runs`` cells;
- in one program (``run_many``, the targets' variables stacked and vmapped, latents [K x identities x restarts]),
  with the targets' convolutions grouped and/or as batched matrix products (``--convs``, see
  ``jaxmi.attacks.stacked``).

Reported per K: cells per hour (steady state, and with the program's compilation amortised over these K cells),
latent-steps/s, the speed-up over the separate runs, compile time (tracing + lowering + XLA, from JAX's monitoring
events, taken on a first call stopped after one log interval), XLA's memory analysis of the compiled step program
(per device) and, on a GPU, the device's peak memory; and as a check, the largest |latent| difference between
target 0 of the stacked run and its separate run (float rounding only).

Configurations (no data files, no PyTorch, no tensorflow_datasets; weights random): ``small`` = the MNIST-scale
demo networks of ``bench/torch_reference.py`` (32-px 1-channel GMI generator and critic of width 16, SmallCNN
target 32/128, 10 classes); ``vgg64`` = the CelebA-protocol generator and critic at 64 px with a VGG16-BN target,
1000 classes (accelerators only, in practice).

  python bench/many_targets.py --quick                       # tiny sizes: checks the script runs, anywhere
  python bench/many_targets.py --budget-s 200 --out X.json   # on a lent GPU, ~4 minutes
  python bench/many_targets.py --configs small,vgg64 --identities 60 --budget-s 500 --out X.json

The JSON (``--out``) is rewritten after every part, so a run cut short by its budget still reports what it
finished; parts that would not fit the budget are skipped and listed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jaxmi import parallel  # noqa: E402

CPU_SPLIT = parallel.cpu_device_per_core()  # as bin/jaxmi attack does: one XLA:CPU device per core

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from jaxmi.attacks import AttackModels, ExecutionConfig, InversionConfig, build_gmi  # noqa: E402
from jaxmi.attacks.engine import Layout, cast_floats, chunk_size, plan  # noqa: E402
from jaxmi.attacks.stacked import stack_variables  # noqa: E402
from jaxmi.errors import Interrupted  # noqa: E402
from jaxmi.nets import ModelConfig, build_classifier  # noqa: E402
from jaxmi.nets.gan import Critic, GANConfig, Generator  # noqa: E402

# bench/torch_reference.py's CONFIGS, without importing PyTorch
CONFIGS = {
  "small": dict(
    gan=GANConfig(z_dim=100, base_width=16, stages=3, channels=1),
    critic_width=16,
    target=ModelConfig(arch="cnn", width=32, feature_dim=128),
    num_classes=10,
  ),
  "vgg64": dict(
    gan=GANConfig(z_dim=100, base_width=64, stages=4, channels=3),
    critic_width=64,
    target=ModelConfig(arch="vgg", vgg_layout="vgg16"),
    num_classes=1000,
  ),
}
LR, MOMENTUM, LAMBDA, OFFICIAL_BATCH = 0.02, 0.9, 100.0, 60  # GMI's settings (bench/attack_throughput.py)
COMPILE_EVENTS = (
  "/jax/core/compile/jaxpr_trace_duration",
  "/jax/core/compile/jaxpr_to_mlir_module_duration",
  "/jax/core/compile/backend_compile_duration",
)


class Clock:
  def __init__(self, budget: float):
    self.start, self.budget = time.perf_counter(), budget

  def left(self) -> float:
    return self.budget - (time.perf_counter() - self.start)

  def elapsed(self) -> float:
    return time.perf_counter() - self.start


class CompileTimer:
  """Seconds JAX spends tracing, lowering and compiling while active (JAX's monitoring events)."""

  def __init__(self):
    self.seconds, self.active = 0.0, False
    jax.monitoring.register_event_duration_secs_listener(self._record)

  def _record(self, event: str, duration: float, **_) -> None:
    if self.active and event in COMPILE_EVENTS:
      self.seconds += duration

  def measure(self, fn):
    self.seconds, self.active = 0.0, True
    try:
      fn()
    finally:
      self.active = False
    return self.seconds


def build(config: str, targets: int, seed: int = 0):
  """(AttackModels, shared variables, [per-target variables]) with random weights; target k from key seed + k."""
  cfg = CONFIGS[config]
  gan = cfg["gan"]
  image_shape = (gan.image_size, gan.image_size, gan.channels)
  generator, critic = Generator(gan), Critic(base_width=cfg["critic_width"], stages=gan.stages)
  target = build_classifier(cfg["target"], cfg["num_classes"])
  keys = jax.random.split(jax.random.PRNGKey(seed), 2 + targets)
  shared = {
    "generator": jax.jit(lambda k: generator.init(k, jnp.zeros((2, gan.z_dim)), train=False))(keys[0]),
    "critic": jax.jit(lambda k: critic.init(k, jnp.zeros((2, *image_shape))))(keys[1]),
  }
  init_target = jax.jit(lambda k: target.init(k, jnp.zeros((2, *image_shape)), train=False))
  # as jaxmi.nets.init_variables keeps them (not the Grad-CAM perturbation slots), one compiled init for all
  keep = lambda v: {"params": v["params"], "batch_stats": v.get("batch_stats", {})}
  per_target = [jax.tree.map(np.asarray, keep(init_target(k))) for k in keys[2:]]
  models = AttackModels(generator, critic, (target,), (image_shape,))
  return models, shared, per_target


def xla_memory_mb(inv, program, variables, terms, labels: int, restarts: int, seed: int, width: int) -> float:
  """XLA's memory analysis (per device) of the compiled step program of this run's chunk (compiled ahead of time)."""
  mesh = parallel.latent_mesh(inv.execution.devices)
  rep = parallel.replicated(mesh)
  compute_vars = cast_floats(parallel.put_tree(variables, rep), inv.dtype)
  compute_terms = cast_floats(parallel.put_tree(terms, rep), inv.dtype)
  _, block, rolled = plan(inv.execution, inv.cfg.steps, mesh.devices.flat[0].platform)
  chunk = chunk_size(program, labels * restarts, mesh, compute_vars, compute_terms, block, rolled, width=width)
  lay = Layout.of(np.zeros(labels, np.int32), restarts, seed, chunk)
  row = parallel.rows(mesh)
  args = [parallel.put(a[:chunk], row) for a in (lay.flat_labels, lay.keys, lay.mask)]
  compiled = program.segment.lower(
    program._abstract_carry(chunk, mesh), compute_vars, compute_terms, *args, num_steps=block, rolled=rolled
  ).compile()
  return round(parallel.program_bytes(compiled) / 2**20, 1)


def device_text() -> str:
  d = jax.devices()[0]
  kind = getattr(d, "device_kind", d.platform)
  if d.platform == "cpu":
    kind = f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores"
  return f"{jax.device_count()} x {kind} ({d.platform})"


def peak_mb() -> float | None:
  stats = jax.devices()[0].memory_stats() if jax.devices()[0].platform != "cpu" else None
  return round(stats["peak_bytes_in_use"] / 2**20, 1) if stats and "peak_bytes_in_use" in stats else None


def first_interval(timer: CompileTimer, fn, seg: int) -> float:
  """Compile seconds of ``fn``'s programs: a first call, stopped after its first log interval (``seg`` steps)."""

  def call():
    try:
      fn(stop_at_step=seg)
    except Interrupted:
      pass

  return timer.measure(call)


def bench_config(name: str, args, clock: Clock, timer: CompileTimer, say, entry: dict, save) -> None:
  ks = sorted(int(k) for k in args.ks.split(","))
  models, shared, targets = build(name, max(ks), args.seed)
  cfg = InversionConfig(
    steps=args.steps,
    restarts=args.restarts,
    learning_rate=LR,
    momentum=MOMENTUM,
    identity_weight=LAMBDA,
    reference_batch=OFFICIAL_BATCH,
    seed=args.seed,
  )
  run = ExecutionConfig(
    log_every=args.log_every, devices=args.devices, max_batch=args.max_batch, compute_dtype=args.dtype
  )
  inv = build_gmi(models, CONFIGS[name]["gan"].z_dim, cfg, run)
  labels = list(range(args.identities))
  seg = plan(run, cfg.steps, jax.devices()[0].platform)[0]
  latent_steps = args.identities * args.restarts * args.steps  # per cell
  entry.update(
    {
      "identities": args.identities,
      "restarts": args.restarts,
      "steps": args.steps,
      "dtype": args.dtype,
      "latent_steps_per_cell": latent_steps,
    }
  )

  # K separate runs: one compilation, then each cell takes the same time (steady state)
  one = lambda k, **kw: inv.run({**shared, "targets": (targets[k],)}, labels, **kw)
  # a whole first cell: its host side also compiles small eager programs (restart selection) the stacked runs reuse
  seq_compile = timer.measure(lambda: one(0))
  times, singles = [], []
  for i in range(args.seq_runs):
    if i and clock.left() < args.reserve_s + 2 * times[-1]:
      break
    start = time.perf_counter()
    singles.append(one(i % len(targets)))
    times.append(time.perf_counter() - start)
  cell_s = statistics.median(times)
  mem = xla_memory_mb(inv, inv, {**shared, "targets": (targets[0],)}, inv.terms, args.identities, args.restarts, 0, 1)
  entry["separate"] = {
    "cell_s": round(cell_s, 3),
    "cells_measured": len(times),
    "compile_s": round(seq_compile, 2),
    "cells_per_hour": round(3600 / cell_s, 1),
    "latent_steps_per_s": round(latent_steps / cell_s, 1),
    "xla_memory_mb": mem,
    "chunk": singles[0].stats.chunk_size,
  }
  say(f"[{name}] separate runs: {entry['separate']}")
  save()
  entry["stacked"] = []
  for k, convs in [(k, c) for k in ks for c in args.convs.split(",")]:
    try:
      stacked_row(name, k, convs, args, clock, timer, say, entry, save, inv, shared, targets, labels, singles, seg)
    except Exception as e:  # noqa: BLE001  (e.g. out of memory: keep the other rows)
      entry.setdefault("errors", []).append(f"K={k} {convs}: {type(e).__name__}: {e}"[:1000])
      say(f"[{name}] K={k} {convs} FAILED: {type(e).__name__}: {str(e)[:300]}")
    save()


def stacked_row(name, k, convs, args, clock, timer, say, entry, save, inv, shared, targets, labels, singles, seg):
  """One stacked run of ``k`` targets (``convs``): its row in ``entry["stacked"]``, or a note in ``skipped``."""
  sep = entry["separate"]
  cell_s, seq_compile = sep["cell_s"], sep["compile_s"]
  latent_steps = entry["latent_steps_per_cell"]
  # the stacked run takes at most ~K cells' time where the device is saturated, plus its compilation
  estimate = k * cell_s + 2 * seq_compile
  if clock.left() < args.reserve_s + estimate:
    entry.setdefault("skipped", []).append(f"K={k} {convs}: budget (estimated {estimate:.0f} s)")
    say(f"[{name}] K={k} {convs}: skipped, {clock.left():.0f} s left, estimated {estimate:.0f} s")
    return
  stacked = {**shared, "targets": (stack_variables(targets[:k]),)}
  many = lambda **kw: inv.run_many(stacked, labels, convs=convs, **kw)
  compile_s = first_interval(timer, many, seg)
  start = time.perf_counter()
  results = many()
  seconds = time.perf_counter() - start
  row = {
    "K": k,
    "convs": convs,
    "seconds": round(seconds, 3),
    "compile_s": round(compile_s, 2),
    "cells_per_hour": round(3600 * k / seconds, 1),
    "cells_per_hour_with_compile": round(3600 * k / (seconds + compile_s), 1),
    "separate_cells_per_hour_with_compile": round(3600 * k / (k * cell_s + seq_compile), 1),
    "latent_steps_per_s": round(k * latent_steps / seconds, 1),
    "speedup": round(k * cell_s / seconds, 2),
    "chunk_rows": results[0].stats.chunk_size,
    "compilations_in_timed_run": results[0].stats.compilations,
    "max_abs_latent_diff_vs_separate": float(np.abs(results[0].latents - singles[0].latents).max()),
  }
  if clock.left() > args.reserve_s + compile_s:
    row["xla_memory_mb"] = xla_memory_mb(
      inv, inv._stacks[k, convs], stacked, stack_variables([inv.terms] * k), args.identities, args.restarts, 0, k
    )
  row["device_peak_mb_so_far"] = peak_mb()
  entry["stacked"].append(row)
  say(
    f"[{name}] K={k} {convs}: {row['cells_per_hour']} cells/h vs {entry['separate']['cells_per_hour']} separate "
    f"(x{row['speedup']}), {row['latent_steps_per_s']} latent-steps/s, compile {row['compile_s']} s, "
    f"{row.get('xla_memory_mb')} MB, |dz| {row['max_abs_latent_diff_vs_separate']:.1e}"
  )
  save()


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--configs", default="small", help="small (MNIST scale), vgg64 (CelebA protocol nets)")
  p.add_argument("--ks", default="1,2,4,8", help="numbers of targets attacked in one program")
  p.add_argument("--identities", type=int, default=10)
  p.add_argument("--restarts", type=int, default=5)
  p.add_argument("--steps", type=int, default=300, help="steps per cell (GMI's protocol: 1500)")
  p.add_argument("--log-every", type=int, default=100)
  p.add_argument("--seq-runs", type=int, default=3, help="separate cells timed (their median is one cell's time)")
  p.add_argument("--devices", type=int, default=0, help="devices the latents are sharded over; 0 = all")
  p.add_argument("--max-batch", type=int, default=4096, help="latents per compiled chunk, over all targets")
  p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  p.add_argument(
    "--convs",
    default="",
    help="comma list of run_many's target convolutions (grouped, matmul, auto); default: matmul on CPU (its grouped "
    "convolutions are ~8x slower), both grouped and matmul elsewhere",
  )
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--budget-s", type=float, default=0.0, help="wall-clock budget; 0 = none")
  p.add_argument("--reserve-s", type=float, default=10.0, help="stop starting new parts with less than this left")
  p.add_argument("--quick", action="store_true", help="tiny sizes: check that the script runs, anywhere")
  p.add_argument("--json", action="store_true", help="print one JSON object at the end")
  p.add_argument("--out", default="", help="write the JSON object to this file (rewritten after every part)")
  args = p.parse_args(argv)
  if args.quick:
    args.configs, args.ks, args.identities, args.restarts, args.steps, args.log_every = "small", "1,2", 2, 2, 4, 2
    args.seq_runs = 2

  if not args.convs:
    args.convs = "matmul" if jax.devices()[0].platform == "cpu" else "grouped,matmul"
  clock = Clock(args.budget_s or float("inf"))
  timer = CompileTimer()
  log = lambda *a: print(f"[{clock.elapsed():6.1f}s]", *a, file=sys.stderr if args.json else sys.stdout, flush=True)
  report = {
    "date": datetime.date.today().isoformat(),
    "device": device_text(),
    "jax": jax.__version__,
    "args": vars(args),
    "configs": {},
  }
  log(f"# {report['device']}, jax {jax.__version__}")

  def save():
    report["elapsed_s"] = round(clock.elapsed(), 1)
    if args.out:
      Path(args.out).write_text(json.dumps(report, indent=1) + "\n")

  for name in args.configs.split(","):
    if clock.left() < args.reserve_s:
      report.setdefault("skipped", []).append(name)
      continue
    entry = report["configs"].setdefault(name, {})
    try:
      bench_config(name, args, clock, timer, log, entry, save)
    except Exception as e:  # noqa: BLE001  (one failing config must not lose the others' numbers)
      entry["error"] = f"{type(e).__name__}: {e}"[:2000]
      log(f"[{name}] FAILED: {entry['error'][:300]}")
    save()
  save()
  for name, entry in report["configs"].items():
    log(markdown_table(name, entry))
  if args.json:
    print(json.dumps(report))
  return 0


def markdown_table(name: str, entry: dict) -> str:
  if "separate" not in entry:
    return f"{name}: no numbers ({entry.get('error', 'skipped')})"
  sep = entry["separate"]
  lines = [
    (
      f"{name}: {entry['identities']} identities x {entry['restarts']} restarts x {entry['steps']} steps per cell, "
      f"{entry['dtype']}; separate runs: {sep['cells_per_hour']} cells/h, {sep['latent_steps_per_s']} latent-steps/s, "
      f"compile {sep['compile_s']} s, {sep['xla_memory_mb']} MB"
    ),
    "",
    (
      "| K | convs | cells/h (one program) | speed-up vs separate | cells/h incl. compile | latent-steps/s | compile (s) "
      "| XLA memory (MB) |"
    ),
    "|---" * 8 + "|",
  ]
  for r in entry.get("stacked", []):
    lines.append(
      f"| {r['K']} | {r['convs']} | {r['cells_per_hour']} | {r['speedup']} | {r['cells_per_hour_with_compile']} | "
      f"{r['latent_steps_per_s']} | {r['compile_s']} | {r.get('xla_memory_mb')} |"
    )
  return "\n".join(lines)


if __name__ == "__main__":
  raise SystemExit(main())
