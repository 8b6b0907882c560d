"""Training-time defenses, each a ``jaxmi.train.step.Defense`` (a loss term, head or optimiser wrapper)."""

from jaxmi.defenses.bido import BiDO, coco, gaussian_gram, linear_gram, normalized_hsic
from jaxmi.defenses.dpsgd import DPSGD, dp_epsilon, private_aggregate
from jaxmi.defenses.tl_dmi import TransferLearning, layer_groups
from jaxmi.defenses.calor import ConfidenceAdaptation, inverse_focal_loss
from jaxmi.defenses.mid import MID, vib_kl
from jaxmi.defenses.nls import NegativeLabelSmoothing, nls_alpha

__all__ = ["BiDO", "ConfidenceAdaptation", "DPSGD", "MID", "NegativeLabelSmoothing", "TransferLearning",
           "dp_epsilon", "layer_groups", "private_aggregate", "coco", "gaussian_gram", "inverse_focal_loss", "linear_gram",
           "nls_alpha", "normalized_hsic", "vib_kl"]
