"""Where a published-size GMI step spends its time: each network's forward + backward to its input, jaxmi
against PyTorch with the same imported weights (``published_throughput.build``), batch 64 on this CPU.

The GMI step is G(z) -> D(G(z)) and T(G(z)), back to z. This times, per framework:
  generator  z -> G(z), the vector-Jacobian product back to z;
  critic     x -> D(x), its gradient to x;
  target     x -> T(x) logits, the gradient of the picked logits' sum to x;
and each network's forward alone. jaxmi jits each piece with the batch sharded over one XLA:CPU device per core,
as the attack engine runs; PyTorch uses ``--threads`` threads. Unit: milliseconds per call (median).

  python bench/published_components.py --targets vgg16,ir152_64,facenet64 --repeats 5
"""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import published_throughput as pt  # noqa: E402  (one XLA:CPU device per core, set before JAX starts)
import attack_throughput as at  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec  # noqa: E402

from jaxmi import parallel  # noqa: E402


def jax_pieces(nets: dict) -> dict:
  """name -> (function of (variables, x), the variables, x's shape); variables enter as arguments, as in the
  engine (closed over, XLA would fold them into the program as constants)."""
  (gen, gvars), (critic, cvars), (target, tvars) = nets["generator"], nets["critic"], nets["target"]
  image = (64, *nets["image_shape"])
  g = lambda v, z: gen.apply(v, z, train=False)
  d = lambda v, x: jnp.sum(critic.apply(v, x, method="realism"))
  t = lambda v, x: jnp.sum(target.apply(v, x, train=False).logits[:, 0])

  def g_vjp(v, z):
    y, back = jax.vjp(lambda z: g(v, z), z)
    return back(jnp.ones_like(y))[0]

  return {
    "generator fwd": (g, gvars, (64, pt.GAN.z_dim)),
    "generator fwd+bwd": (g_vjp, gvars, (64, pt.GAN.z_dim)),
    "critic fwd": (d, cvars, image),
    "critic fwd+bwd": (jax.grad(d, argnums=1), cvars, image),
    "target fwd": (t, tvars, image),
    "target fwd+bwd": (jax.grad(t, argnums=1), tvars, image),
  }


def torch_pieces(torch_nets) -> dict:
  G, D, T = torch_nets

  def run(f, needs_grad):
    def call(x):
      if not needs_grad:
        with torch.no_grad():
          return f(x)
      x = x.detach().requires_grad_(True)
      out = f(x)
      (out if out.ndim == 0 else out.sum()).backward()
      return x.grad

    return call

  d = lambda x: D(x).sum()
  t = lambda x: T(x)[-1][:, 0].sum()
  return {
    "generator fwd": run(G, False),
    "generator fwd+bwd": run(G, True),
    "critic fwd": run(d, False),
    "critic fwd+bwd": run(d, True),
    "target fwd": run(t, False),
    "target fwd+bwd": run(t, True),
  }


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--targets", default="vgg16,ir152_64,facenet64")
  ap.add_argument("--repeats", type=int, default=5)
  ap.add_argument("--threads", type=int, default=2)
  args = ap.parse_args(argv)
  torch.set_num_threads(args.threads)
  mesh = parallel.latent_mesh()
  rows = NamedSharding(mesh, PartitionSpec(parallel.AXIS))
  print("| target | piece | jaxmi ms | PyTorch ms | ratio (PyTorch / jaxmi) |\n|---|---|---|---|---|", flush=True)
  with tempfile.TemporaryDirectory() as tmp:
    for arch in args.targets.split(","):
      nets, torch_nets = pt.build(arch, Path(tmp))
      tp = torch_pieces(torch_nets)
      for name, (f, variables, shape) in jax_pieces(nets).items():
        if name.startswith("generator") and arch != args.targets.split(",")[0]:
          continue  # the generator is the same for every target
        x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
        if len(shape) == 2:
          x = x.clip(-1, 1)
        xs = jax.device_put(x, rows)
        vs = jax.device_put(variables, NamedSharding(mesh, PartitionSpec()))
        fj = jax.jit(f)
        jax.block_until_ready(fj(vs, xs))
        js = at._median_time(lambda: jax.block_until_ready(fj(vs, xs)), args.repeats)
        xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy() if len(shape) == 4 else x)
        tp[name](xt)
        ts = at._median_time(lambda: tp[name](xt), args.repeats)
        print(f"| {arch} | {name} | {1e3 * js:.1f} | {1e3 * ts:.1f} | {ts / js:.2f} |", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
