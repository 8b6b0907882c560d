"""Spreading independent work (inversion latents) over devices and hosts.

One mesh axis, ``latents``: arrays whose leading axis enumerates independent problems are
split along it, network variables are replicated. Everything is written for jit + a
``NamedSharding`` in Auto mode, so the same program runs on 1 CPU, 8 GPUs or a TPU pod slice;
the compiler partitions the vmapped per-latent computation without communication (only
the scalar loss means cross devices).

Multi-host: launch one process per host (or per GPU) and call ``initialize_distributed()``
first (``bin/jaxmi`` does when ``JAX_COORDINATOR_ADDRESS`` or a cluster environment is set);
``jax.devices()`` is then global, host arrays are placed with ``make_array_from_callback``
(every process builds the same host array deterministically and contributes its own
shards) and results come back to every process with ``process_allgather``.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from jaxmi.errors import ConfigError

AXIS = "latents"


def initialize_distributed() -> None:
  """``jax.distributed.initialize()`` when this process is one of several (no-op otherwise).

  Triggers: ``JAX_COORDINATOR_ADDRESS`` (+ ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``) set by the
  launcher, or a cluster JAX auto-detects (SLURM, Cloud TPU pod slices, Open MPI) announced with
  ``JAXMI_DISTRIBUTED=1``.
  """
  if os.environ.get("JAX_COORDINATOR_ADDRESS"):
    jax.distributed.initialize(
      coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
      num_processes=int(os.environ["JAX_NUM_PROCESSES"]) if "JAX_NUM_PROCESSES" in os.environ else None,
      process_id=int(os.environ["JAX_PROCESS_ID"]) if "JAX_PROCESS_ID" in os.environ else None,
    )
  elif os.environ.get("JAXMI_DISTRIBUTED") == "1":
    jax.distributed.initialize()


def cpu_device_per_core() -> bool:
  """Expose one XLA:CPU device per core (call before any JAX operation); True if it took effect.

  XLA:CPU runs one program's small convolutions on a shared thread pool with poor scaling; a
  mesh of one device per core runs the latent shards side by side instead, each on a cache-sized
  slice (measured in bench/: 1.1-1.7x on 2 cores). Only the CPU backend is affected, and only
  code that shards (the attack engine) uses the extra devices. Skipped if XLA_FLAGS already sets
  a device count, or JAX has started.
  """
  if "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", ""):
    return False
  try:
    jax.config.update("jax_num_cpu_devices", os.cpu_count() or 1)
  except RuntimeError:  # backends already initialised: keep what there is
    return False
  return True


def latent_mesh(num_devices: int = 0) -> Mesh:
  """A 1-D mesh over all devices (``num_devices`` = 0) or the first ``num_devices``."""
  devices = jax.devices()
  if num_devices < 0 or num_devices > len(devices):
    raise ConfigError(f"execution.devices: expected 0 (all) or 1..{len(devices)}, got {num_devices}")
  if num_devices:
    devices = devices[:num_devices]
  return Mesh(np.array(devices), (AXIS,), axis_types=(AxisType.Auto,))


def rows(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def put(x, sharding: NamedSharding) -> jax.Array:
  """A host array (identical on every process) placed with ``sharding``; works across hosts."""
  x = np.asarray(x)
  return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def put_tree(tree, sharding: NamedSharding):
  return jax.tree.map(lambda x: put(x, sharding), tree)


def to_host(tree):
  """Device arrays -> numpy on this process; gathers shards that live on other hosts."""

  def fetch(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))

  return jax.tree.map(fetch, tree)


def program_bytes(compiled) -> float:
  """Memory one device holds for a compiled program, by XLA's analysis: arguments + outputs +
  temporaries, less the outputs written into donated arguments."""
  m = compiled.memory_analysis()
  return float(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes)


def memory_budget_bytes(mesh: Mesh, gigabytes: float = 0.0) -> float:
  """Bytes one device may use for a chunk: ``gigabytes`` if given, else 90% of the free device
  memory, or on CPU (no device memory statistics) half of the host's RAM split over its devices."""
  if gigabytes:
    return gigabytes * 1e9
  device = mesh.devices.flat[0]
  stats = device.memory_stats() if hasattr(device, "memory_stats") else None
  if stats and stats.get("bytes_limit"):
    return 0.9 * (stats["bytes_limit"] - stats.get("bytes_in_use", 0))
  host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  local = sum(1 for d in mesh.devices.flat if d.process_index == jax.process_index())
  return 0.5 * host / max(local, 1)
