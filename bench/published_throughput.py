"""Latent-steps per second of one GMI step at the published sizes: jaxmi against PyTorch, same imported weights.

For each target in vgg16, ir152_64 and facenet64 (64 px, 1000 classes) with GMI's full-width generator
(``Generator(100, 64)``) and WGAN critic (``DGWGAN(3, 64)``): the PyTorch modules are the official structure
as the tests write it (tests/test_torch_vgg.py, tests/test_torch_irse.py, tests/test_torch_gan.py), with
random weights and BatchNorm statistics, saved the way the official repositories save them
(``torch.save({'state_dict': DataParallel(m).state_dict()})``) and imported into jaxmi through
``read_checkpoint`` and each family's ``from_torch``. Both frameworks therefore compute with the same
weights; G, D and the target's logits are checked to agree (relative error <= 1e-4) before timing.

One step = generator + critic + target, forward and backward to z, GMI's Nesterov update and clip.
jaxmi runs its attack engine's compiled step (``Inverter.segment``, one step per call, latents sharded
over one XLA:CPU device per core as ``bin/jaxmi attack`` does); PyTorch runs
``bench/torch_reference.py``'s ``gmi_torch_step`` on one batch with eval-mode networks, frozen
parameters and ``torch.set_num_threads(--threads)``.

  python bench/published_throughput.py                       # all three targets, batch 64
  python bench/published_throughput.py --targets vgg16 --repeats 5 --json
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))  # the official PyTorch structures live in the tests (their oracles)

import attack_throughput as at  # noqa: E402  (sets up one XLA:CPU device per core before JAX starts)
import jax  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch_reference as ref  # noqa: E402
from torch import nn  # noqa: E402

import test_torch_gan as tgan  # noqa: E402
import test_torch_irse as tirse  # noqa: E402
import test_torch_vgg as tvgg  # noqa: E402
from jaxmi.nets import ModelConfig, build_classifier  # noqa: E402
from jaxmi.nets import irse, vgg_torch  # noqa: E402
from jaxmi.nets.gan import GANConfig, build_gan  # noqa: E402
from jaxmi.nets.gan_torch import critic_from_torch, generator_from_torch  # noqa: E402
from jaxmi.nets.torch_import import read_checkpoint  # noqa: E402

NUM_CLASSES = 1000
IMAGE_SHAPE = (64, 64, 3)
GAN = GANConfig(z_dim=100, base_width=64, stages=4, channels=3)  # the published GMI GAN
TARGETS = {  # arch -> (official torch module builder, its randomiser, jaxmi's importer)
  "vgg16": (lambda: tvgg.VGG16(NUM_CLASSES), tvgg.randomized, vgg_torch.from_torch),
  "ir152_64": (lambda: tirse.Target64(152, NUM_CLASSES), tirse.randomised, irse.from_torch),
  "facenet64": (lambda: tirse.Target64(50, NUM_CLASSES), tirse.randomised, irse.from_torch),
}


def _save_read(model: nn.Module, path: Path) -> dict:
  torch.save({"state_dict": nn.DataParallel(model).state_dict()}, path)
  return read_checkpoint(path).tensors


def _rel_err(got, want) -> float:
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  return float(np.linalg.norm(got - want) / np.linalg.norm(want))


def build(arch: str, tmp: Path, seed: int = 0):
  """(jaxmi nets dict for ``attack_throughput.JaxmiStep``, (G, D, T) torch modules with the same weights)."""
  make, randomise, importer = TARGETS[arch]
  torch.manual_seed(seed)
  G = tgan.randomised(tgan.Generator(100, 64), seed + 1)
  D = tgan.randomised(tgan.DGWGAN(3, 64), seed + 2)
  T = randomise(make(), seed + 3)
  gvars = generator_from_torch(_save_read(G, tmp / "celeba_G.tar"), GAN, "celeba_G.tar")
  cvars = critic_from_torch(_save_read(D, tmp / "celeba_D.tar"), GAN, "celeba_D.tar")
  cfg = ModelConfig(arch=arch)
  tvars = importer(_save_read(T, tmp / f"{arch}.tar"), cfg, NUM_CLASSES, IMAGE_SHAPE, f"{arch}.tar")
  generator, critic = build_gan(GAN)
  target = build_classifier(cfg, NUM_CLASSES)
  for m in (G, D, T):
    m.cpu().eval().requires_grad_(False)  # only z needs a gradient; DataParallel moved it to a GPU if one exists
  nets = {
    "config": {"num_classes": NUM_CLASSES},
    "image_shape": IMAGE_SHAPE,
    "generator": (generator, gvars),
    "critic": (critic, cvars),
    "target": (target, tvars),
  }
  return nets, (G, D, T)


def check_forward(nets: dict, torch_nets, batch: int = 2) -> dict:
  """Relative errors of G(z), D(G(z)) and T(G(z)) logits, jaxmi against PyTorch, on the same z."""
  (gen, gvars), (critic, cvars), (target, tvars) = nets["generator"], nets["critic"], nets["target"]
  G, D, T = torch_nets
  z = np.random.default_rng(1).normal(size=(batch, GAN.z_dim)).clip(-1, 1).astype(np.float32)

  @jax.jit
  def forward(z):
    image = gen.apply(gvars, z, train=False)
    return image, critic.apply(cvars, image, method="realism"), target.apply(tvars, image, train=False).logits

  image, score, logits = forward(z)
  with torch.no_grad():
    t_image = G(torch.from_numpy(z))
    t_score, t_logits = D(t_image), T(t_image)[-1]
  return {
    "image": _rel_err(image, t_image.numpy().transpose(0, 2, 3, 1)),
    "critic": _rel_err(np.ravel(score), t_score.numpy()),
    "logits": _rel_err(logits, t_logits.numpy()),
  }


def torch_seconds(torch_nets, batch: int, warmup: int, repeats: int, seed: int = 0) -> float:
  """Median seconds of one PyTorch GMI step on one batch."""
  G, D, T = torch_nets
  gen = torch.Generator().manual_seed(seed)
  state = {"z": torch.randn(batch, GAN.z_dim, generator=gen).clamp(-1, 1), "v": torch.zeros(batch, GAN.z_dim)}
  labels = torch.randint(0, NUM_CLASSES, (batch,), generator=gen)

  def step():
    state["z"], state["v"] = ref.gmi_torch_step(
      G, D, T, state["z"], labels, state["v"], at.LR, at.MOMENTUM, at.LAMBDA, at.OFFICIAL_BATCH
    )

  for _ in range(warmup):
    step()
  return at._median_time(step, repeats)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(
    description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument("--targets", default=",".join(TARGETS))
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--devices", type=int, default=0, help="XLA:CPU devices for jaxmi (default: all, one per core)")
  p.add_argument("--warmup", type=int, default=1)
  p.add_argument("--repeats", type=int, default=3, help="timed steps per framework; the median is reported")
  p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
  p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
  args = p.parse_args(argv)

  torch.set_num_threads(args.threads)
  devices = args.devices or jax.device_count()
  say = (lambda *a: print(*a, file=sys.stderr, flush=True)) if args.json else (lambda *a: print(*a, flush=True))
  report = {
    "date": datetime.date.today().isoformat(),
    "device": at.device_text(),
    "jax": jax.__version__,
    "torch": torch.__version__,
    "torch_threads": torch.get_num_threads(),
    "batch": args.batch,
    "jaxmi_devices": devices,
    "rows": [],
  }
  say(f"# {report['device']}, jax {jax.__version__}, torch {torch.__version__} ({torch.get_num_threads()} threads)")
  for arch in args.targets.split(","):
    with tempfile.TemporaryDirectory() as tmp:
      nets, torch_nets = build(arch, Path(tmp))
    errs = check_forward(nets, torch_nets)
    say(f"[{arch}] forward, jaxmi vs PyTorch relative error: " + ", ".join(f"{k} {v:.1e}" for k, v in errs.items()))
    if max(errs.values()) > 1e-4:
      raise SystemExit(f"[{arch}] jaxmi and PyTorch disagree on the forward pass ({errs}); not timing")
    t_torch = torch_seconds(torch_nets, args.batch, args.warmup, args.repeats)
    step = at.JaxmiStep(nets, args.batch, devices, "float32", remat=False, unroll=1)  # one step per call
    t_jax = step.seconds_per_step(args.warmup, args.repeats)
    row = {
      "target": arch,
      "jaxmi": round(args.batch / t_jax, 2),
      "torch": round(args.batch / t_torch, 2),
      "ratio": round(t_torch / t_jax, 2),
      "jaxmi_compile_s": round(step.compile_seconds, 1),
      "jaxmi_memory_mb": round(step.memory_bytes() / 2**20, 1),
      "max_forward_rel_err": float(f"{max(errs.values()):.1e}"),
    }
    del step
    report["rows"].append(row)
    say(
      f"[{arch}] batch {args.batch}: jaxmi {row['jaxmi']} latent-steps/s, torch {row['torch']}, ratio {row['ratio']}"
      f"; compile {row['jaxmi_compile_s']} s, {row['jaxmi_memory_mb']} MB"
    )
  print(json.dumps(report) if args.json else markdown_table(report))
  return 0


def markdown_table(report: dict) -> str:
  lines = [
    f"{report['date']}, {report['device']}, jax {report['jax']}, torch {report['torch']} "
    f"({report['torch_threads']} threads), batch {report['batch']}, jaxmi on {report['jaxmi_devices']} device(s)",
    "",
    "| target | jaxmi latent-steps/s | PyTorch latent-steps/s | ratio | jaxmi compile (s) | jaxmi memory (MB) "
    "| max forward rel. error |",
    "|---" * 7 + "|",
  ]
  for r in report["rows"]:
    lines.append(
      f"| {r['target']} | {r['jaxmi']} | {r['torch']} | {r['ratio']} | {r['jaxmi_compile_s']} | "
      f"{r['jaxmi_memory_mb']} | {r['max_forward_rel_err']} |"
    )
  return "\n".join(lines)


if __name__ == "__main__":
  raise SystemExit(main())
