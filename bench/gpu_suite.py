"""The GPU benchmark in one run: published-size GMI steps (jaxmi vs PyTorch on the same GPU), the whole
CelebA-protocol attack, and 10,000 concurrent latents.

A lent GPU comes with minutes, not hours, so everything the issues ask to measure on one sits in this one
script, ordered by what matters most, with a wall-clock budget (``--budget-s``): a part that would not fit
is skipped and said so, and the JSON (``--out``) is rewritten after every part, so a run cut short still
reports what it finished.

1. For each published target (``vgg16``, ``ir152_64``, ``facenet64``; 1000 classes, 64 px) with GMI's
   full-width generator and critic, the weights built as PyTorch modules of the official structure and
   imported through ``import-torch``'s path (``published_throughput.build``): the forward pass is checked
   against PyTorch (float32, highest matmul precision), then one GMI step (G + D + T forward and backward
   to z, Nesterov update, clip) is timed
   - in jaxmi, the engine's compiled program (a rolled loop of ``--steps`` steps per call, as the engine
     runs on accelerators), float32 and bfloat16, at batch 60 and a large batch;
   - in PyTorch on the same GPU: the official loop (batches of 60 one after another, float32, eval mode),
     one batch of the large size, and the same under bf16 autocast.
   Latent-steps/s, XLA's FLOPs per step over the measured time as a fraction of the H200's dense peak
   (bf16 989 TFLOP/s; float32 convolutions run as TF32 on both sides, peak 495), XLA's memory analysis.
2. The protocol's GMI attack end to end through ``Inverter.run``: 300 identities x 5 restarts x 2400 steps,
   vgg16 target, one program of 1500 latents, bfloat16; wall time including compilation. If the measured
   rate says it would not fit the budget, a shorter run is made and the full time extrapolated (said so).
3. 10,000 concurrent latents in one program (vgg16, bfloat16): compiled, run, timed, device peak memory.

  python bench/gpu_suite.py --out /tmp/gpu.json            # on the GPU machine, ~8 minutes
  python bench/gpu_suite.py --quick --out /tmp/q.json      # tiny sizes, any machine: checks the script runs
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))

import attack_throughput as at
import jax
import published_throughput as pt
import torch
import torch_reference as ref

PEAK_TFLOPS = {"bfloat16": 989.0, "float32": 494.7}  # H200 SXM dense: bf16, TF32 (float32 convs run as TF32)


class Clock:
  def __init__(self, budget: float):
    self.start, self.budget = time.perf_counter(), budget

  def left(self) -> float:
    return self.budget - (time.perf_counter() - self.start)


def torch_rate(nets, batch: int, steps: int, autocast: bool, device: str, warmup: int = 1, repeats: int = 3) -> float:
  """Latent-steps/s of PyTorch GMI steps on one batch on ``device``."""
  G, D, T = nets
  gen = torch.Generator().manual_seed(0)
  z = torch.randn(batch, pt.GAN.z_dim, generator=gen).clamp(-1, 1).to(device)
  v = torch.zeros_like(z)
  labels = torch.randint(0, pt.NUM_CLASSES, (batch,), generator=gen).to(device)
  state = {"z": z, "v": v}

  def block():
    for _ in range(steps):
      with torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16, enabled=autocast):
        state["z"], state["v"] = ref.gmi_torch_step(
          G, D, T, state["z"], labels, state["v"], at.LR, at.MOMENTUM, at.LAMBDA, at.OFFICIAL_BATCH
        )
    if device.startswith("cuda"):
      torch.cuda.synchronize()

  for _ in range(warmup):
    block()
  return batch * steps / at._median_time(block, repeats)


def jax_row(nets, batch: int, dtype: str, steps: int, repeats: int = 3) -> dict:
  step = at.JaxmiStep(nets, batch, 1, dtype, remat=False, unroll=0, steps=steps)
  sec = step.seconds_per_step(1, repeats)
  flops = step.flops_per_step()
  row = {
    "batch": batch,
    "dtype": dtype,
    "steps_per_call": step.unroll,
    "jaxmi": round(batch / sec, 1),
    "compile_s": round(step.compile_seconds, 1),
    "memory_mb": round(step.memory_bytes() / 2**20, 1),
    "tflops": None if flops is None else round(flops / sec / 1e12, 2),
  }
  if flops is not None and dtype in PEAK_TFLOPS:
    row["fraction_of_peak"] = round(row["tflops"] / PEAK_TFLOPS[dtype], 3)
  del step
  return row


def published(arch: str, args, clock: Clock, device: str, say) -> dict:
  with tempfile.TemporaryDirectory() as tmp:
    nets, torch_nets = pt.build(arch, Path(tmp))
  with jax.default_matmul_precision("highest"):
    errs = pt.check_forward(nets, torch_nets)
  say(f"[{arch}] forward vs PyTorch (CPU, float32): " + ", ".join(f"{k} {v:.1e}" for k, v in errs.items()))
  entry = {"forward_rel_err": {k: float(f"{v:.1e}") for k, v in errs.items()}, "jaxmi": [], "torch": {}}
  if max(errs.values()) > 1e-4:
    entry["error"] = "forward disagrees with PyTorch; not timed"
    return entry
  torch_nets = tuple(m.to(device) for m in torch_nets)
  torch.backends.cudnn.benchmark = True
  small = args.small_batch
  large = args.large_batch if arch == "vgg16" else args.large_batch_ir  # IR-152 holds ~3x VGG16's activations
  for name, batch, autocast in (("official_60", small, False), (f"one_batch_{large}", large, False)) + (
    ((f"bf16_autocast_{large}", large, True),) if device != "cpu" else ()
  ):
    if clock.left() < args.reserve_s:
      break
    entry["torch"][name] = round(torch_rate(torch_nets, batch, args.torch_steps, autocast, device), 1)
    say(f"[{arch}] torch {name}: {entry['torch'][name]} latent-steps/s")
  del torch_nets
  if device != "cpu":
    torch.cuda.empty_cache()
  rows = ((small, "float32"), (large, "bfloat16"), (large, "float32"), (small, "bfloat16"))
  if arch != "vgg16":  # the IR nets compile slowly: the two rows that matter most
    rows = ((small, "float32"), (large, "bfloat16"))
  for batch, dtype in rows:
    if clock.left() < args.reserve_s:
      entry["skipped"] = "budget"
      break
    try:
      row = jax_row(nets, batch, dtype, args.steps)
    except Exception as e:  # noqa: BLE001  (e.g. out of memory: keep the other rows)
      entry.setdefault("errors", []).append(f"batch {batch} {dtype}: {type(e).__name__}: {e}"[:1000])
      say(f"[{arch}] jaxmi batch {batch} {dtype} FAILED: {type(e).__name__}: {str(e)[:300]}")
      continue
    fp32_torch = entry["torch"].get("official_60" if batch == small else f"one_batch_{large}")
    best = [entry["torch"].get(f"bf16_autocast_{large}")] if (dtype == "bfloat16" and batch == large) else []
    best = [r for r in [fp32_torch, *best] if r]
    row["ratio_vs_best_torch"] = round(row["jaxmi"] / max(best), 2) if best else None
    entry["jaxmi"].append(row)
    say(f"[{arch}] jaxmi {row}")
  return entry


def protocol(args, clock: Clock, say) -> dict:
  with tempfile.TemporaryDirectory() as tmp:
    nets, _ = pt.build("vgg16", Path(tmp))
  ids, restarts, steps = args.protocol_ids, args.protocol_restarts, args.protocol_steps
  latents = ids * restarts
  probe = jax_row(nets, latents, "bfloat16", args.steps, repeats=2)
  say(f"[protocol] probe at {latents} latents, bfloat16: {probe}")
  estimate = latents * steps / probe["jaxmi"] + 2 * probe["compile_s"]
  out = {"probe": probe, "estimated_s": round(estimate, 1)}
  run_steps = steps
  if estimate > clock.left() - args.reserve_s:
    # shorter run, a whole number of 100-step log intervals, extrapolated
    per_100 = 100 * latents / probe["jaxmi"]
    run_steps = int(max(1, (clock.left() - args.reserve_s - 2 * probe["compile_s"]) // per_100)) * 100
    run_steps = min(run_steps, steps)
  r = at.protocol_run(nets, "bfloat16", False, ids, restarts, run_steps, latents)
  out["run"] = r
  if run_steps < steps:
    out["extrapolated_full_s"] = round(r["seconds"] * steps / run_steps, 1)
  say(f"[protocol] {out}")
  return out


def capacity(args, say) -> dict:
  with tempfile.TemporaryDirectory() as tmp:
    nets, _ = pt.build("vgg16", Path(tmp))
  n = args.capacity
  step = at.JaxmiStep(nets, n, 1, "bfloat16", remat=False, unroll=0, steps=args.steps)
  sec = step.seconds_per_step(1, 2)
  stats = step.mesh.devices.flat[0].memory_stats() or {}
  out = {
    "latents": n,
    "steps_per_call": step.unroll,
    "latent_steps_per_s": round(n / sec, 1),
    "compile_s": round(step.compile_seconds, 1),
    "xla_memory_gb": round(step.memory_bytes() / 1e9, 2),
    "device_peak_gb": round(stats.get("peak_bytes_in_use", 0) / 1e9, 2) or None,
  }
  say(f"[capacity] {out}")
  return out


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--out", required=True)
  p.add_argument("--budget-s", type=float, default=480.0)
  p.add_argument("--reserve-s", type=float, default=25.0, help="stop starting new parts with less than this left")
  p.add_argument("--targets", default="vgg16,ir152_64,facenet64")
  p.add_argument("--small-batch", type=int, default=60)
  p.add_argument("--large-batch", type=int, default=1500)
  p.add_argument("--large-batch-ir", type=int, default=512)
  p.add_argument("--steps", type=int, default=20, help="steps per compiled call (one rolled loop)")
  p.add_argument("--torch-steps", type=int, default=5)
  p.add_argument("--protocol-ids", type=int, default=300)
  p.add_argument("--protocol-restarts", type=int, default=5)
  p.add_argument("--protocol-steps", type=int, default=2400)
  p.add_argument("--capacity", type=int, default=10000)
  p.add_argument("--parts", default="published,protocol,capacity")
  p.add_argument("--quick", action="store_true", help="tiny sizes: check that the script runs, anywhere")
  args = p.parse_args(argv)
  if args.quick:
    args.targets, args.small_batch, args.large_batch, args.steps, args.torch_steps = "vgg16,facenet64", 2, 4, 2, 1
    args.large_batch_ir = 3
    args.protocol_ids, args.protocol_restarts, args.protocol_steps, args.capacity = 2, 1, 4, 6

  device = "cuda" if torch.cuda.is_available() else "cpu"
  clock = Clock(args.budget_s)
  say = lambda *a: print(f"[{time.perf_counter() - clock.start:6.1f}s]", *a, flush=True)
  report = {
    "date": datetime.date.today().isoformat(),
    "device": at.device_text(),
    "torch_device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
    "jax": jax.__version__,
    "torch": torch.__version__,
    "args": vars(args),
    "published": {},
  }
  say(f"# {report['device']}, jax {jax.__version__}, torch {torch.__version__} on {report['torch_device']}")

  def save():
    report["elapsed_s"] = round(time.perf_counter() - clock.start, 1)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")

  targets = args.targets.split(",")
  parts = (
    [("published", targets[0])] + [("protocol", None), ("capacity", None)] + [("published", t) for t in targets[1:]]
  )
  parts = [(kind, arch) for kind, arch in parts if kind in args.parts.split(",")]
  for kind, arch in parts:
    if clock.left() < args.reserve_s:
      report.setdefault("skipped", []).append(kind if arch is None else f"{kind}:{arch}")
      continue
    try:
      if kind == "published":
        report["published"][arch] = published(arch, args, clock, device, say)
      elif kind == "protocol":
        report["protocol"] = protocol(args, clock, say)
      else:
        report["capacity"] = capacity(args, say)
    except Exception as e:  # noqa: BLE001  (one failing part must not lose the others' numbers)
      report.setdefault("errors", {})[kind if arch is None else f"{kind}:{arch}"] = f"{type(e).__name__}: {e}"[:2000]
      say(f"[{kind} {arch}] FAILED: {type(e).__name__}: {e}")
    save()
  save()
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
