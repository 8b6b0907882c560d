"""Training-time defenses, each a ``jaxmi.train.step.Defense`` (a loss term, head or optimiser wrapper)."""

from jaxmi.defenses.bido import BiDO, coco, gaussian_gram, linear_gram, normalized_hsic

__all__ = ["BiDO", "coco", "gaussian_gram", "linear_gram", "normalized_hsic"]
