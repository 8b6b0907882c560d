"""Float32 tolerances derived from the computation's own conditioning, measured on the machine that runs the test.

Two float32 runs that should agree (chunked vs whole, unrolled vs stepwise, remat vs not) differ only by rounding,
whose size depends on the CPU's vector paths (AVX-512 on Intel, AVX2 on AMD) and on how far the optimisation
amplifies it. A fixed atol picked from one machine's output can fail on another. Instead: perturb every weight by
one float32 ulp (a rounding-sized change), rerun, and allow ``factor`` times the change that caused.
"""

import jax
import numpy as np


def one_ulp_perturbed(variables, seed: int = 0):
  """``variables`` with every float32 weight moved one ulp up or down (at random)."""
  rng = np.random.default_rng(seed)

  def nudge(w):
    w = np.asarray(w)
    if w.dtype != np.float32:
      return w
    up = rng.random(w.shape) < 0.5
    return np.where(up, np.nextafter(w, np.float32(np.inf)), np.nextafter(w, np.float32(-np.inf))).astype(np.float32)

  return jax.tree.map(nudge, variables)


def rounding_tolerance(run, variables, *, factor: float = 10.0, floor: float = 1e-6, ceiling: float = 1e-2) -> float:
  """An atol for comparing ``run(variables)`` computed two ways: ``factor`` x its response to one-ulp weights.

  ``run`` maps variables to an array. Fails when the response exceeds ``ceiling``: a computation that ill
  conditioned cannot tell a bug from rounding, and the test must be set up differently.
  """
  response = float(np.max(np.abs(np.asarray(run(variables)) - np.asarray(run(one_ulp_perturbed(variables))))))
  assert response < ceiling, f"the computation amplifies rounding to {response}; the comparison would be meaningless"
  return max(factor * response, floor)
