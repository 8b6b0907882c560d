"""LOMMA (Nguyen et al., CVPR 2023, "Re-thinking Model Inversion Attacks"): what it adds to GMI/KEDMI.

1. Logit loss: the identity term is the negative target logit (``identity_loss="logit"``).
2. Feature regulariser: mean_d (phi_T(x)_d - p_reg_d)^2 on the target's penultimate features,
   weighted by lambda_iden * lam = 100 * 1 (``feature_reg_weight``).
3. Model augmentation: surrogates distilled from the target on public data
   (``jaxmi.train.distill``), attacked together with the target with equal weights.

p_reg is, as in the official code, ONE mean feature vector of the target over public images
(it overwrote its sampled per-batch version with the mean); that is the default because it
needs nothing the attacker does not have. ``per_class`` instead averages the public images the
target assigns to each class, falling back to the global mean for classes it never predicts.
Measured on MNIST (GMI + LOMMA, seed 0): per_class 84% acc@1 and KNN 1.87, global 88% and 1.51.
"""

from __future__ import annotations

import numpy as np

from jaxmi.errors import ConfigError


def public_feature_reg(target, public_images: np.ndarray, mode: str = "global") -> np.ndarray:
  """p_reg: [D] (global) or [num_classes, D] (per_class) from the target's features on public images."""
  from jaxmi.metrics import classifier_outputs

  if mode not in ("global", "per_class"):
    raise ConfigError(f"inversion.p_reg: unknown '{mode}'; expected global or per_class")
  logits, feats = classifier_outputs(target, public_images)
  mean = feats.mean(0)
  if mode == "global":
    return mean.astype(np.float32)
  predicted = np.argmax(logits, -1)
  per_class = np.tile(mean, (target.num_classes, 1))
  for k in range(target.num_classes):
    if np.any(predicted == k):
      per_class[k] = feats[predicted == k].mean(0)
  return per_class.astype(np.float32)
