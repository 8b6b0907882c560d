"""Many targets of one architecture attacked with one prior in one compiled program (``Inverter.run_many``).

A sweep attacks several targets of one architecture with the same GAN prior and attack: defended variants, seeds,
a defense's settings. Their variables are stacked along a new leading axis K (``stack_variables``) and the engine's
per-target step program is ``vmap``-ed over it: the target variables (and the loss terms' arrays, LOMMA's p_reg)
mapped, the generator's and critic's shared (``in_axes`` None). The latents of a chunk are [K, rows, ...]: the same
rows as a single-target run's chunk (identity x restart, the same keys), once per target. So target k of the
stacked run solves exactly the problem ``Inverter.run`` solves for target k alone, with the same initial latents and
per-step keys; only float rounding may differ (a convolution with weights batched over K lowers to a grouped
convolution, which may sum in another order).

Sharding: the rows are split over the device mesh as in a single-target run (``PartitionSpec(None, "latents")``),
K is replicated: every device holds its rows for all K targets and all K targets' variables. Folding K into the
rows instead would make a row's target data, and choosing weights per latent turns every target layer into a
gather of weights per latent; a separate K axis keeps batched matmuls / grouped convolutions, and the chunking,
the keys, the per-chunk state files and the layout of the rows are the single-target ones.

Targets of different architectures (other variable trees or shapes) cannot share one program: ``stack_variables``
refuses them with a ``ConfigError`` naming the first mismatch, and the caller attacks them one at a time.

A target convolution whose weights differ per target is, vmapped, a grouped convolution (``convs="grouped"``).
XLA:CPU runs those ~8x slower than the plain ones (measured on the MNIST-scale target: 1.7 s per step at K = 2 vs
0.1 s for one target), so ``convs="matmul"`` computes each stride-1 target convolution as its patches (K x rows
shifted slices) times the kernel: a batched matrix product over K, the form every backend runs well. "auto" (the
default) takes matmul on CPU and grouped elsewhere. Both compute the same convolution up to float rounding.

Measured (``bench/many_targets.py``, MNIST-scale GMI cells of 10 identities x 5 restarts x 300 steps): on an H200,
where a small cell leaves the GPU latency-bound, K = 8 targets in one program (grouped) ran 3.7x the separate runs'
cells per hour (K = 16: 4.5x at 1500 steps); one step of 8 stacked targets took 1.07 ms against 0.78 ms for one
target with 8x the latents, the rest being the target's grouped convolutions.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxmi import parallel
from jaxmi.errors import ConfigError


def _leaves(tree) -> dict:
  return {jax.tree_util.keystr(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def stack_variables(trees: Sequence, what: str = "targets") -> Any:
  """One pytree whose leaves are ``trees``' leaves stacked along a new leading axis (numpy, on the host).

  Raises ConfigError naming the first leaf that is missing, extra or of another shape or dtype in ``trees[k]``
  than in ``trees[0]`` (another architecture: attack those one at a time).
  """
  if not len(trees):
    raise ConfigError(f"{what}: nothing to stack; expected at least one variable tree")
  first, first_def = _leaves(trees[0]), jax.tree.structure(trees[0])
  for k, tree in enumerate(trees[1:], 1):
    leaves = _leaves(tree)
    problem = ""
    if set(leaves) != set(first):
      missing, extra = sorted(set(first) - set(leaves)), sorted(set(leaves) - set(first))
      problem = f"lacks {missing[0]}" if missing else f"has an extra {extra[0]}"
    else:
      for name, leaf in first.items():
        a, b = (np.shape(leaf), np.result_type(leaf)), (np.shape(leaves[name]), np.result_type(leaves[name]))
        if a != b:
          problem = f"{name} is {b[1]}{list(b[0])}, not {a[1]}{list(a[0])}"
          break
      else:
        if jax.tree.structure(tree) != first_def:  # same leaves in other containers (or other static fields)
          problem = f"has another tree structure ({jax.tree.structure(tree)})"
    if problem:
      raise ConfigError(
        f"{what}[{k}]: {problem} as in {what}[0]; only targets of one architecture share a program, "
        "attack the others one at a time"
      )
  return jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *trees)


def stacked_size(tree, what: str = "targets") -> int:
  """K, the common leading axis of every leaf of ``tree``; ConfigError when there is none or they differ."""
  sizes = {name: np.shape(x)[0] if np.ndim(x) else None for name, x in _leaves(tree).items()}
  if not sizes:
    raise ConfigError(f"{what}: no arrays; expected variables stacked along a leading target axis")
  first_name, k = next(iter(sizes.items()))
  for name, size in sizes.items():
    if size is None or size != k:
      raise ConfigError(
        f"{what}: {name} has leading axis {size} but {first_name} has {k}; stack the targets' variables with "
        "jaxmi.attacks.stacked.stack_variables"
      )
  return int(k)


def target_rows(mesh) -> NamedSharding:
  """[K, rows, ...] arrays: rows split over the mesh as a single-target chunk's, the target axis replicated."""
  return NamedSharding(mesh, P(None, parallel.AXIS))


CONVS = ("auto", "grouped", "matmul")


def conv_as_matmul(x: jax.Array, kernel: jax.Array, pads: tuple, precision=None) -> jax.Array:
  """A stride-1 NHWC x HWIO convolution as its patches times the kernel: ``kh * kw`` shifted slices of the padded
  input concatenated along the channels ([N, H', W', kh * kw * C], (i, j, c) order as the kernel's reshape), then one
  matrix product. Vmapped over targets with their kernels, a batched matrix product instead of a grouped
  convolution. ``pads``: ((top, bottom), (left, right)), as ``conv_pads`` gives them."""
  kh, kw, c, o = kernel.shape
  x = jnp.pad(x, ((0, 0), *pads, (0, 0)))
  h, w = x.shape[1] - kh + 1, x.shape[2] - kw + 1
  patches = jnp.concatenate([x[:, i : i + h, j : j + w, :] for i in range(kh) for j in range(kw)], axis=-1)
  return jnp.einsum("nhwp,po->nhwo", patches, kernel.reshape(kh * kw * c, o), precision=precision)


def conv_pads(padding, kernel_hw: tuple) -> tuple | None:
  """``nn.Conv``'s ``padding`` of a stride-1 2-D convolution as ((top, bottom), (left, right)); None for the forms
  not handled here ("CIRCULAR", "CAUSAL", ...). "SAME" splits as lax does: the smaller half before."""
  if isinstance(padding, str):
    if padding == "SAME":
      return tuple(((k - 1) // 2, k - 1 - (k - 1) // 2) for k in kernel_hw)
    return ((0, 0), (0, 0)) if padding == "VALID" else None
  if isinstance(padding, int):
    return ((padding, padding),) * 2
  pads = tuple((p, p) if isinstance(p, int) else tuple(p) for p in padding)
  return pads if len(pads) == 2 and all(len(p) == 2 and all(isinstance(q, int) for q in p) for p in pads) else None


def _ones(v) -> bool:
  return v is None or all(d == 1 for d in ((v,) if isinstance(v, int) else v))


def matmul_convs(target_types: tuple):
  """A Flax method interceptor: every plain stride-1 ``nn.Conv`` inside a module of ``target_types`` (the attacked
  models, whose kernels are batched over targets) through ``conv_as_matmul``; others (the shared generator's and
  critic's, strided, dilated, grouped, masked or explicitly padded ones) unchanged."""

  def intercept(next_fun, args, kwargs, context):
    m = context.module
    if type(m) is not nn.Conv or context.method_name != "__call__" or kwargs or len(args) != 1:
      return next_fun(*args, **kwargs)
    root = m
    while isinstance(root.parent, nn.Module):
      root = root.parent
    kernel_hw = (m.kernel_size,) * 2 if isinstance(m.kernel_size, int) else tuple(m.kernel_size)
    pads = conv_pads(m.padding, kernel_hw) if len(kernel_hw) == 2 else None
    plain = pads is not None and m.feature_group_count == 1 and m.mask is None
    plain = plain and all(_ones(v) for v in (m.strides, m.input_dilation, m.kernel_dilation))
    if not isinstance(root, target_types) or not plain or args[0].ndim != 4:
      return next_fun(*args, **kwargs)
    kernel = m.get_variable("params", "kernel")
    bias = m.get_variable("params", "bias") if m.use_bias else None
    x, kernel, bias = m.promote_dtype(args[0], kernel, bias, dtype=m.dtype)  # as nn.Conv does
    y = conv_as_matmul(x, kernel, pads, m.precision)
    return y if bias is None else y + bias

  return intercept


class StackedProgram:
  """An ``Inverter``'s compiled programs vmapped over K stacked targets, with the interface the engine's host driver
  uses (``segment``, ``start``, ``finish``, ``_abstract_carry``; ``cfg``, ``execution``, ``latent``, ``dtype``).

  ``variables["targets"]`` holds every attacked model's variables with a leading K axis (the target and, for
  LOMMA, its surrogates: one set per target) and so do the loss terms' arrays; the generator's and critic's
  variables are shared. The carry's leaves gain a leading K axis (Adam's count and the step too); the per-step
  losses come back [steps, K].
  """

  def __init__(self, inv, targets: int, convs: str = "auto"):
    if convs not in CONVS:
      raise ConfigError(f"convs: unknown '{convs}'; expected one of {', '.join(CONVS)}")
    self.inv, self.targets, self.convs = inv, targets, convs
    self.cfg, self.execution, self.latent, self.dtype = inv.cfg, inv.execution, inv.latent, inv.dtype
    self.segment = jax.jit(self._segment, static_argnames=("num_steps", "rolled"), donate_argnums=(0,))
    self.finish = jax.jit(self._finish)
    self._starts = {}

  @staticmethod
  def _split(variables: dict) -> tuple[dict, Any]:
    return {k: v for k, v in variables.items() if k != "targets"}, variables["targets"]

  def _convs(self):
    """The context the programs are traced in: the target convolutions as matrix products, or as they are."""
    convs = self.convs
    if convs == "auto":
      convs = "matmul" if jax.devices()[0].platform == "cpu" else "grouped"
    if convs == "grouped":
      return contextlib.nullcontext()
    return nn.intercept_methods(matmul_convs(tuple({type(t) for t in self.inv.models.targets})))

  def _segment(self, carry, variables, terms, labels, keys, mask, *, num_steps: int, rolled: bool = False):
    with self._convs():
      return self._segment_body(carry, variables, terms, labels, keys, mask, num_steps=num_steps, rolled=rolled)

  def _segment_body(self, carry, variables, terms, labels, keys, mask, *, num_steps: int, rolled: bool = False):
    shared, targets = self._split(variables)

    def one(c, target_vars, target_terms):
      v = {**shared, "targets": target_vars}
      return self.inv._segment(c, v, target_terms, labels, keys, mask, num_steps=num_steps, rolled=rolled)

    # losses out [steps, K]: the host driver takes the step axis first, as from a single-target segment
    return jax.vmap(one, out_axes=(0, 1))(carry, targets, terms)

  def _finish(self, params, keys, labels, variables):
    shared, targets = self._split(variables)
    with self._convs():
      return jax.vmap(lambda p, t: self.inv._finish(p, keys, labels, {**shared, "targets": t}))(params, targets)

  def _start(self, keys):
    # Every target starts from the single-target run's latents: the keys are per row, not per target.
    return jax.tree.map(lambda a: jnp.broadcast_to(a, (self.targets, *a.shape)), self.inv._start(keys))

  def _abstract_carry(self, n: int, mesh):
    """The carry of an ``n``-row chunk as shapes with shardings: [K, n, ...] leaves split over the mesh along the
    rows; [K] leaves (step, Adam's count) replicated."""
    lat, rep = target_rows(mesh), parallel.replicated(mesh)
    shapes = jax.eval_shape(self._start, jax.ShapeDtypeStruct((n, 2), jnp.uint32))
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=lat if a.ndim > 1 else rep), shapes)

  def start(self, keys, mesh):
    key = (keys.shape[0], mesh)
    if key not in self._starts:
      shardings = jax.tree.map(lambda a: a.sharding, self._abstract_carry(keys.shape[0], mesh))
      self._starts[key] = jax.jit(self._start, out_shardings=shardings)
    return self._starts[key](keys)
