"""Optimiser configs -> optax transformations with epoch-based schedules."""

from __future__ import annotations

import dataclasses
import typing

import optax

from jaxmi.errors import ConfigError


@dataclasses.dataclass(frozen=True, kw_only=True)
class OptimConfig:
  """The optimiser and its learning-rate schedule (schedules in epochs; ``make_optimizer`` turns them into steps)."""

  name: typing.Literal["sgd", "adam", "adamw"] = "sgd"
  learning_rate: float = 0.01
  momentum: float = 0.9  # sgd momentum; adam b1
  nesterov: bool = False
  weight_decay: float = 1e-4  # sgd/adam: L2 added to the gradient (PyTorch semantics); adamw: decoupled
  schedule: typing.Literal["constant", "cosine", "step"] = "cosine"
  decay_epochs: tuple[int, ...] = ()  # step schedule: multiply by decay_factor at these epochs
  decay_factor: float = 0.1
  warmup_epochs: float = 0.0
  grad_clip_norm: float = 0.0  # 0 = off


def make_schedule(cfg: OptimConfig, steps_per_epoch: int, total_steps: int) -> optax.Schedule:
  """The learning rate as a function of the step: ``cfg.schedule`` after ``cfg.warmup_epochs`` of linear warm-up."""
  warmup = int(cfg.warmup_epochs * steps_per_epoch)
  if cfg.schedule == "constant":
    main = optax.constant_schedule(cfg.learning_rate)
  elif cfg.schedule == "cosine":
    main = optax.cosine_decay_schedule(cfg.learning_rate, max(total_steps - warmup, 1))
  elif cfg.schedule == "step":
    boundaries = {int(e * steps_per_epoch) - warmup: cfg.decay_factor for e in cfg.decay_epochs}
    main = optax.piecewise_constant_schedule(cfg.learning_rate, boundaries)
  else:
    raise ConfigError(f"optim.schedule: unknown schedule '{cfg.schedule}'; expected constant, cosine or step")
  if warmup:
    return optax.join_schedules([optax.linear_schedule(0.0, cfg.learning_rate, warmup), main], [warmup])
  return main


def make_optimizer(cfg: OptimConfig, steps_per_epoch: int, total_steps: int) -> optax.GradientTransformation:
  """The optax transformation ``cfg`` describes.

  Args:
    cfg: optimiser, learning rate, schedule, weight decay and clipping; an unknown choice is a ConfigError.
    steps_per_epoch: converts the schedule's epochs (warm-up, decay epochs) to steps.
    total_steps: the length of a cosine schedule.

  Returns:
    ``optax.chain`` of [global-norm clipping], [L2 weight decay (sgd, adam)] and the optimiser.
  """
  lr = make_schedule(cfg, steps_per_epoch, total_steps)
  parts = []
  if cfg.grad_clip_norm > 0:
    parts.append(optax.clip_by_global_norm(cfg.grad_clip_norm))
  if cfg.name == "sgd":
    if cfg.weight_decay:
      parts.append(optax.add_decayed_weights(cfg.weight_decay))
    parts.append(optax.sgd(lr, momentum=cfg.momentum or None, nesterov=cfg.nesterov))
  elif cfg.name == "adam":
    if cfg.weight_decay:
      parts.append(optax.add_decayed_weights(cfg.weight_decay))
    parts.append(optax.adam(lr, b1=cfg.momentum))
  elif cfg.name == "adamw":
    parts.append(optax.adamw(lr, b1=cfg.momentum, weight_decay=cfg.weight_decay))
  else:
    raise ConfigError(f"optim.name: unknown optimiser '{cfg.name}'; expected sgd, adam or adamw")
  return optax.chain(*parts)
