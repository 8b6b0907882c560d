"""PLG-MI: Yuan, Chen, Zhang, Xie & Dong, "Pseudo Label-Guided Model Inversion Attack via Conditional Generative
Adversarial Network", AAAI 2023 (official code LetheSec/PLG-MI-Attack, ``reconstruct.py``). Its reconstruction
stage, as the official code computes it:

  min_z  L_mm(T(A_1(G(z, y))), y) + L_mm(T(A_2(G(z, y))), y),   L_mm(l, y) = -l_y + max_{k != y} l_k   (Eq. 6-7)

G is the conditional generator trained on pseudo-labelled public data (``jaxmi.train.gan``, kind ``plg``), the
class y of each latent is the attacked identity and stays fixed, only z (128-d, N(0, I), never clipped) is
optimised, by Adam (lr 0.1, 600 steps), and there is no prior term: the conditional GAN already keeps G(z, y) on
its class's manifold. A_1, A_2 are two independent draws of kornia's RandomResizedCrop(0.8-1, ratio 1),
ColorJitter(0.2, 0.2), horizontal flip and a 5-degree rotation (``jaxmi.augment.PLG_AUGMENT``), fresh every step
and every latent. The final images are G(z, y) un-augmented. The official code evaluates each of its 5 seeds on
its own (acc mean and variance over seeds); here the 5 restarts are the seeds, evaluated the same way, and the
selected restart (highest target logit) is reported next to them as for GMI.

All of it is the shared engine: a conditional generator (``AttackModels.conditional``), the max-margin identity loss
(``inversion.identity_loss="max_margin"``, usable by GMI/KEDMI/LOMMA too) and augmented views of the image
(``inversion.augment_views`` / ``inversion.augment``, usable by any attack).
"""

from __future__ import annotations

from jaxmi.attacks.engine import AttackModels, ExecutionConfig, InversionConfig, Inverter
from jaxmi.attacks.gmi import build_gmi
from jaxmi.errors import ConfigError


def build_plg(
  models: AttackModels,
  z_dim: int,
  cfg: InversionConfig,
  run: ExecutionConfig = ExecutionConfig(),
  extra_terms: tuple = (),
) -> Inverter:
  """PLG-MI's inverter: GMI's (a point latent, clipped only if ``z_clip``; the identity term, + the prior if
  ``prior_weight``, + ``extra_terms``; ``cfg.optimizer``) into a conditional generator."""
  if not models.conditional:
    raise ConfigError("gan: PLG-MI needs a class-conditional generator; train one with bin/jaxmi train-gan --kind plg")
  return build_gmi(models, z_dim, cfg, run, extra_terms)
