"""FID's feature extractor as the papers' pytorch-fid runs it: Inception-v3 pool3 features (2048-d) from
``pt_inception-2015-12-05-6726825d.pth``, read with jaxmi's own importer (no torch).

pytorch-fid's ``InceptionV3`` (block 3) resizes its [0, 1] input to 299x299 with bilinear interpolation
(``align_corners=False``) and maps it to [-1, 1]; ``jaxmi.nets.inception.FIDInceptionV3`` does both in-graph.
The Frechet distance itself is ``jaxmi.metrics.attack.frechet_distance`` (scipy ``sqrtm`` in float64).
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxmi.errors import ConfigError
from jaxmi.nets.inception import FIDInceptionV3, from_torch
from jaxmi.nets.torch_import import read_checkpoint
from jaxmi.records import Kept, fingerprint
from jaxmi.train.inference import batched_apply

FEATURE_SPACE = "inception-v3"


def load_fid_weights(path: str | Path, field: str = "evaluation.fid_weights") -> dict:
  """``FIDInceptionV3``'s variables from pytorch-fid's weights file; a missing or wrong file is one line."""
  path = Path(path)
  if not path.is_file():
    raise ConfigError(
      f"{field}: {path}: no such file; expected pytorch-fid's Inception weights pt_inception-2015-12-05-6726825d.pth"
    )
  return from_torch(read_checkpoint(path).tensors, str(path))


class InceptionFeatures:
  """``images [N, H, W, C]`` (floats in [0, 1] or uint8) -> pool3 features [N, 2048] (float32 numpy).

  The attack and its prior baseline are judged against the same private images: the last few inputs' features are
  kept, keyed by the bytes of the input, so those are run through Inception once.
  """

  space = FEATURE_SPACE

  def __init__(self, variables: dict, *, image_size: int = 299, batch_size: int = 50, keep: int = 2):
    self.variables = variables
    self.batch_size = batch_size
    self._kept = Kept(keep)
    module = FIDInceptionV3(image_size=image_size)

    @jax.jit
    def apply(variables, x):
      x = x.astype(jnp.float32) / 255.0 if x.dtype == jnp.uint8 else x.astype(jnp.float32)
      return module.apply(variables, x)

    self._apply = apply

  def __call__(self, images) -> np.ndarray:
    images = np.ascontiguousarray(images)
    return self._kept.get(
      fingerprint(images), lambda: batched_apply(self._apply, self.variables, images, self.batch_size)
    )
