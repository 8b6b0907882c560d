"""Latent-steps per second of one GMI attack step: jaxmi against the PyTorch reference, same networks, same weights.

One step = generator + WGAN critic + target, forward and backward to z, GMI's Nesterov update and clip.
jaxmi runs the library's own compiled engine program (``Inverter.segment``: a block of ``--unroll``
unrolled steps over a batch of independent latents, sharded over ``--devices``); PyTorch runs
``bench/torch_reference.py`` the way the official GMI code loops: batches of 60 identities, one after
another (``torch official``). The better of that and one PyTorch batch of all B latents (``torch one
batch``, a stronger baseline than the official code) is the denominator of every ratio.

  python bench/attack_throughput.py                          # both configs, CPU-sized batch list
  python bench/attack_throughput.py --json                   # one JSON object; "ratios": config -> ratio at 64
  python bench/attack_throughput.py --configs vgg64 --batch-sizes 64,256,1024,4096 --dtypes float32,bfloat16
  XLA_FLAGS=--xla_force_host_platform_device_count=8 python bench/attack_throughput.py --devices 1,8
  python bench/attack_throughput.py --configs vgg64 --protocol   # 300 ids x 5 restarts x 2400 steps, end to end
  python bench/attack_throughput.py --configs vgg64 --capacity 10000 --remat   # memory of 10,000 concurrent latents
  # on a GPU (no PyTorch there): the table, the full protocol and the capacity, FLOP/s against the peak
  python bench/attack_throughput.py --configs vgg64 --batch-sizes 64,256,1024,4096 --dtypes float32,bfloat16 \
      --protocol --capacity 10000 --remat --peak-tflops 989 --no-torch --out bench/gpu.json

Memory is XLA's analysis of the compiled step program (arguments + outputs + temporaries, per
device); on a GPU also the allocator's peak. FLOP/s divides XLA's cost analysis of the program by
its measured time. Before timing, each config checks that one jaxmi engine step and one PyTorch
step move the same z the same way (``--no-check`` skips it). PyTorch is a benchmark-only
dependency (``pip install torch==2.13.0``); without it only the jaxmi columns are measured.
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
sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from jaxmi import parallel  # noqa: E402
from jaxmi.attacks import AttackModels, ExecutionConfig, InversionConfig, build_gmi  # noqa: E402
from jaxmi.attacks.engine import cast_floats, plan  # noqa: E402

CPU_SPLIT = parallel.cpu_device_per_core()  # as bin/jaxmi attack does: one XLA:CPU device per core

try:
  import torch  # noqa: E402
  import torch_reference as ref  # noqa: E402
except ImportError:  # jaxmi alone (e.g. on an accelerator host without PyTorch)
  torch = None
  ref = None

OFFICIAL_BATCH = 60  # GMI inverts 60 identities per batch in the CelebA protocol
LR, MOMENTUM, LAMBDA = 0.02, 0.9, 100.0


def _nets(config: str):
  if ref is not None:
    return ref.jax_nets(config)
  raise SystemExit(
    "bench needs bench/torch_reference.py's network builders, which import torch; "
    "install it with `pip install torch==2.13.0`"
  )


def _median_time(fn, repeats: int) -> float:
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def _attack(nets, cfg: InversionConfig, run: ExecutionConfig):
  """The GMI inverter over ``nets`` (from ``torch_reference.jax_nets``) and its variables."""
  gen, gvars = nets["generator"]
  critic, cvars = nets["critic"]
  target, tvars = nets["target"]
  models = AttackModels(gen, critic, (target,), (nets["image_shape"],))
  return build_gmi(models, gen.cfg.z_dim, cfg, run), {"generator": gvars, "critic": cvars, "targets": (tvars,)}


class JaxmiStep:
  """The engine's compiled block of GMI steps for ``batch`` latents on ``devices`` devices (AOT-compiled once)."""

  def __init__(
    self, nets, batch: int, devices: int, dtype: str, remat: bool, unroll: int, seed: int = 0, steps: int = 100
  ):
    cfg = InversionConfig(
      steps=steps,
      restarts=1,
      learning_rate=LR,
      momentum=MOMENTUM,
      identity_weight=LAMBDA,
      reference_batch=OFFICIAL_BATCH,
    )
    run = ExecutionConfig(
      unroll=unroll, log_every=100, devices=devices, compute_dtype=dtype, remat=remat, max_batch=batch
    )
    inv, variables = _attack(nets, cfg, run)
    self.inv = inv
    self.mesh = mesh = parallel.latent_mesh(devices)
    self.batch = batch
    row, rep = parallel.rows(mesh), parallel.replicated(mesh)
    self.variables = parallel.put_tree(cast_floats(variables, inv.dtype), rep)
    self.terms = parallel.put_tree(inv.terms, rep)  # GMI's terms hold no arrays
    rng = np.random.default_rng(seed)
    self.keys = parallel.put(np.asarray(jax.random.split(jax.random.PRNGKey(seed), batch)), row)
    self.labels = parallel.put(rng.integers(0, nets["config"]["num_classes"], batch).astype(np.int32), row)
    self.mask = parallel.put(np.ones(batch, np.float32), row)
    self.carry = inv.start(self.keys, mesh)
    # steps per call as the engine runs them (unroll 0: per platform)
    _, self.unroll, rolled = plan(run, cfg.steps, mesh.devices.flat[0].platform)
    start = time.perf_counter()
    self.compiled = inv.segment.lower(
      self.carry, self.variables, self.terms, self.labels, self.keys, self.mask, num_steps=self.unroll, rolled=rolled
    ).compile()
    self.compile_seconds = time.perf_counter() - start

  def block(self):
    self.carry, parts = self.compiled(self.carry, self.variables, self.terms, self.labels, self.keys, self.mask)
    jax.block_until_ready((self.carry, parts))

  def memory_bytes(self) -> float:
    return parallel.program_bytes(self.compiled)

  def flops_per_step(self) -> float | None:
    """XLA's FLOPs for one step of the whole batch, from the lowered (not compiled) program of one
    straight-line step: a compiled program's cost analysis counts a rolled loop's body once, and on GPU
    leaves out the cuDNN convolutions (measured: 1 MFLOP per latent-step for VGG16 instead of 6 GFLOP)."""
    lowered = self.inv.segment.lower(
      self.carry, self.variables, self.terms, self.labels, self.keys, self.mask, num_steps=1, rolled=False
    )
    cost = lowered.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return (cost or {}).get("flops")

  def seconds_per_step(self, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
      self.block()
    return _median_time(self.block, repeats) / self.unroll


class TorchSteps:
  """The PyTorch reference's GMI step at any batch size, timings cached per size."""

  def __init__(self, nets, warmup: int, repeats: int, seed: int = 0):
    self.G, self.D, self.T = ref.torch_nets(nets)
    self.z_dim, self.classes = nets["config"]["gan"].z_dim, nets["config"]["num_classes"]
    self.warmup, self.repeats, self.seed = warmup, repeats, seed
    self.cache: dict[int, float] = {}

  def seconds(self, batch: int) -> float:
    if batch not in self.cache:
      gen = torch.Generator().manual_seed(self.seed)
      state = {"z": torch.randn(batch, self.z_dim, generator=gen).clamp(-1, 1), "v": torch.zeros(batch, self.z_dim)}
      labels = torch.randint(0, self.classes, (batch,), generator=gen)

      def step():
        state["z"], state["v"] = ref.gmi_torch_step(
          self.G, self.D, self.T, state["z"], labels, state["v"], LR, MOMENTUM, LAMBDA, OFFICIAL_BATCH
        )

      for _ in range(self.warmup):
        step()
      self.cache[batch] = _median_time(step, self.repeats)
    return self.cache[batch]

  def official_seconds(self, batch: int) -> float:
    """The official loop: full batches of 60, then the remainder, one after another."""
    full, rest = divmod(batch, OFFICIAL_BATCH)
    return full * self.seconds(OFFICIAL_BATCH) + (self.seconds(rest) if rest else 0.0)


def check_same_step(nets, torch_steps: TorchSteps | None) -> float | None:
  """Max |z_jaxmi - z_torch| after one engine step and one PyTorch step from the same z (batch 4)."""
  if torch_steps is None:
    return None
  step = JaxmiStep(nets, batch=4, devices=1, dtype="float32", remat=False, unroll=1)  # one step per call
  z0 = np.asarray(step.carry[0])
  labels = np.asarray(step.labels)
  step.block()
  z_t, _ = ref.gmi_torch_step(
    torch_steps.G,
    torch_steps.D,
    torch_steps.T,
    torch.from_numpy(z0.copy()),
    torch.from_numpy(labels).long(),
    torch.zeros(z0.shape),
    LR,
    MOMENTUM,
    LAMBDA,
    OFFICIAL_BATCH,
  )
  return float(np.abs(np.asarray(step.carry[0]) - z_t.numpy()).max())


def protocol_run(nets, dtype: str, remat: bool, identities: int, restarts: int, steps: int, max_batch: int) -> dict:
  """The whole attack through ``Inverter.run``: compile, every chunk, the final images; wall time."""
  cfg = InversionConfig(
    steps=steps,
    restarts=restarts,
    learning_rate=LR,
    momentum=MOMENTUM,
    identity_weight=LAMBDA,
    reference_batch=OFFICIAL_BATCH,
  )
  inv, variables = _attack(
    nets, cfg, ExecutionConfig(compute_dtype=dtype, remat=remat, max_batch=max_batch, log_every=100)
  )
  start = time.perf_counter()
  result = inv.run(variables, list(range(identities)))
  seconds = time.perf_counter() - start
  return {
    "identities": identities,
    "restarts": restarts,
    "steps": steps,
    "chunk": result.stats.chunk_size,
    "devices": result.stats.devices,
    "dtype": dtype,
    "seconds": round(seconds, 1),
    "latent_steps_per_second": round(identities * restarts * steps / seconds, 1),
    "finite": bool(np.isfinite(result.loss_curve).all()),
  }


def device_text() -> str:
  d = jax.devices()[0]
  kind = getattr(d, "device_kind", d.platform)
  if d.platform == "cpu":
    kind = f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores"
  return f"{jax.device_count()} x {kind} ({d.platform})"


def main(argv=None) -> int:
  p = argparse.ArgumentParser(
    description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument("--configs", default="small,vgg64")
  p.add_argument("--batch-sizes", default="", help="comma list; default: 64..4096 for small, 64,256 for vgg64 on CPU")
  p.add_argument(
    "--devices",
    default="",
    help="comma list of device counts; default: 1 and all (on CPU: one "
    "device per core, as bin/jaxmi attack sets up; the ratio is taken on all)",
  )
  p.add_argument("--dtypes", default="float32", help="float32,bfloat16")
  p.add_argument("--remat", action="store_true", help="rematerialise the networks in the backward pass")
  p.add_argument(
    "--unroll",
    type=int,
    default=ExecutionConfig().unroll,
    help="steps per compiled call; 0 (the engine default) = 10 unrolled on CPU, a rolled loop of 100 "
    "(one log interval) on accelerators",
  )
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--warmup", type=int, default=1)
  p.add_argument(
    "--torch-max-batch",
    type=int,
    default=0,
    help="largest batch PyTorch also runs as one batch (default: 4096 small, 256 vgg64)",
  )
  p.add_argument("--no-torch", action="store_true")
  p.add_argument("--no-check", action="store_true")
  p.add_argument("--protocol", action="store_true", help="also run 300 ids x 5 restarts x 2400 steps end to end")
  p.add_argument("--protocol-max-batch", type=int, default=1500)
  p.add_argument(
    "--capacity", type=int, default=0, help="also compile (not run) a chunk of this many latents and report its memory"
  )
  p.add_argument(
    "--peak-tflops",
    type=float,
    default=0.0,
    help="the device's peak TFLOP/s for the dtype "
    "(e.g. H100 SXM dense: 67 fp32, 989 bf16) to report achieved FLOP/s as a fraction of it",
  )
  p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
  p.add_argument("--out", default="", help="also write the JSON object to this file")
  args = p.parse_args(argv)

  use_torch = torch is not None and not args.no_torch
  on_cpu = jax.devices()[0].platform == "cpu"
  device_counts = [int(d) for d in args.devices.split(",") if d] or sorted({1, jax.device_count()})
  say = (lambda *a: print(*a, file=sys.stderr, flush=True)) if args.json else (lambda *a: print(*a, flush=True))
  report = {
    "date": datetime.date.today().isoformat(),
    "device": device_text(),
    "jax": jax.__version__,
    "torch": torch.__version__ if use_torch else None,
    "torch_threads": torch.get_num_threads() if use_torch else None,
    "steps_per_call": None,
    "configs": {},
    "ratios": {},
  }
  say(f"# {report['device']}, jax {jax.__version__}" + (f", torch {torch.__version__}" if use_torch else ""))
  for name in args.configs.split(","):
    if args.batch_sizes:
      batches = [int(b) for b in args.batch_sizes.split(",")]
    else:
      batches = [64, 256] if (name == "vgg64" and on_cpu) else [64, 256, 1024, 4096]
    torch_max = args.torch_max_batch or (256 if name == "vgg64" else 4096)
    nets = _nets(name)
    torch_steps = TorchSteps(nets, args.warmup, args.repeats) if use_torch else None
    entry = {"rows": []}
    if not args.no_check:
      entry["check_max_abs_z_diff"] = diff = check_same_step(nets, torch_steps)
      if diff is not None:
        say(f"[{name}] one step, jaxmi engine vs PyTorch from the same z: max |dz| = {diff:.1e}")
        if diff > 1e-4:
          raise SystemExit(f"[{name}] jaxmi and PyTorch disagree on one step (max |dz| {diff:.1e}); not timing")
    for batch in batches:
      t_official = torch_steps.official_seconds(batch) if torch_steps else None
      t_one = torch_steps.seconds(batch) if (torch_steps and batch <= torch_max) else None
      for devices in device_counts:
        for dtype in args.dtypes.split(","):
          step = JaxmiStep(nets, batch, devices, dtype, args.remat, args.unroll)
          sec = step.seconds_per_step(args.warmup, args.repeats)
          report["steps_per_call"] = step.unroll
          flops = step.flops_per_step()
          row = {
            "batch": batch,
            "devices": devices,
            "dtype": dtype,
            "remat": args.remat,
            "jaxmi": round(batch / sec, 1),
            "jaxmi_compile_s": round(step.compile_seconds, 1),
            "jaxmi_memory_mb": round(step.memory_bytes() / 2**20, 1),
            "jaxmi_gflops": None if flops is None else round(flops / sec / 1e9, 1),
            "torch_official": None if t_official is None else round(batch / t_official, 1),
            "torch_one_batch": None if t_one is None else round(batch / t_one, 1),
          }
          stats = step.mesh.devices.flat[0].memory_stats() if not on_cpu else None
          if stats and "peak_bytes_in_use" in stats:
            row["device_peak_mb"] = round(stats["peak_bytes_in_use"] / 2**20, 1)
          best_torch = (
            max(r for r in (row["torch_official"], row["torch_one_batch"]) if r is not None) if use_torch else None
          )
          row["ratio"] = None if best_torch is None else round(row["jaxmi"] / best_torch, 2)
          if args.peak_tflops and row["jaxmi_gflops"] is not None:
            row["fraction_of_peak"] = round(row["jaxmi_gflops"] / (1e3 * args.peak_tflops), 3)
          entry["rows"].append(row)
          say(
            f"[{name}] batch {batch:5d} devices {devices} {dtype:8s}: jaxmi {row['jaxmi']:9.1f} latent-steps/s"
            + (
              f", torch official {row['torch_official']:.1f}, one batch {row['torch_one_batch']}, ratio {row['ratio']}"
              if use_torch
              else ""
            )
            + f"; {row['jaxmi_memory_mb']} MB, {row['jaxmi_gflops']} GFLOP/s, compile {row['jaxmi_compile_s']} s"
          )
          del step
    # The headline: jaxmi as `bin/jaxmi attack` runs it, on all devices (on CPU one per core).
    first = [
      r
      for r in entry["rows"]
      if r["batch"] == 64 and r["dtype"] == args.dtypes.split(",")[0] and r["devices"] == device_counts[-1]
    ]
    if first and first[0]["ratio"] is not None:
      report["ratios"][name] = first[0]["ratio"]
    if args.capacity:
      # One step per program: what a rolled loop (the accelerator default) holds at once. Compiled, not run.
      entry["capacity"] = []
      for remat in sorted({False, args.remat}):
        step = JaxmiStep(nets, args.capacity, device_counts[-1], args.dtypes.split(",")[-1], remat, 1)
        entry["capacity"].append(
          {
            "latents": args.capacity,
            "devices": device_counts[-1],
            "remat": remat,
            "dtype": args.dtypes.split(",")[-1],
            "memory_gb_per_device": round(step.memory_bytes() / 1e9, 2),
          }
        )
        say(
          f"[{name}] {args.capacity} concurrent latents, one step, remat={remat}: "
          f"{entry['capacity'][-1]['memory_gb_per_device']} GB per device (XLA memory analysis, this backend)"
        )
        del step
    if args.protocol:
      entry["protocol"] = protocol_run(
        nets, args.dtypes.split(",")[-1], args.remat, 300, 5, 2400, args.protocol_max_batch
      )
      say(f"[{name}] protocol: {entry['protocol']}")
    report["configs"][name] = entry
  if not args.json:
    print(markdown_table(report))
  else:
    print(json.dumps(report))
  if args.out:
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
  return 0


def markdown_table(report: dict) -> str:
  lines = [
    f"{report['date']}, {report['device']}, jax {report['jax']}, torch {report['torch']} "
    f"({report['torch_threads']} threads), {report['steps_per_call']} steps per compiled call",
    "",
    "| config | batch | devices | dtype | jaxmi latent-steps/s | torch official | torch one batch | ratio | "
    "jaxmi memory (MB) | jaxmi GFLOP/s |",
    "|---" * 10 + "|",
  ]
  for name, entry in report["configs"].items():
    for r in entry["rows"]:
      lines.append(
        f"| {name} | {r['batch']} | {r['devices']} | {r['dtype']} | {r['jaxmi']} | {r['torch_official']} | "
        f"{r['torch_one_batch']} | {r['ratio']} | {r['jaxmi_memory_mb']} | {r['jaxmi_gflops']} |"
      )
  lines.append("")
  lines.append("ratios at batch 64 on all devices: " + json.dumps(report["ratios"]))
  return "\n".join(lines)


if __name__ == "__main__":
  raise SystemExit(main())
