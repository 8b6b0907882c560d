"""Training-time defenses, each a final ``jaxmi.train.step.Defense`` (a loss term, gradient or optimiser transform,
or a state of its own: Trap-MID)."""

from jaxmi.defenses.bido import BiDO, coco, gaussian_gram, linear_gram, normalized_hsic
from jaxmi.defenses.dpsgd import DPSGD, clip_and_sum, dp_epsilon, noisy_mean
from jaxmi.defenses.tl_dmi import TransferLearning, layer_groups
from jaxmi.defenses.calor import ConfidenceAdaptation, inverse_focal_loss
from jaxmi.defenses.mid import MID, vib_kl
from jaxmi.defenses.nls import NegativeLabelSmoothing, nls_alpha
from jaxmi.defenses.trap_mid import TrapMID, balanced_labels, blend

__all__ = [
  "BiDO",
  "ConfidenceAdaptation",
  "DPSGD",
  "MID",
  "NegativeLabelSmoothing",
  "TransferLearning",
  "TrapMID",
  "balanced_labels",
  "blend",
  "clip_and_sum",
  "dp_epsilon",
  "layer_groups",
  "noisy_mean",
  "coco",
  "gaussian_gram",
  "inverse_focal_loss",
  "linear_gram",
  "nls_alpha",
  "normalized_hsic",
  "vib_kl",
]
