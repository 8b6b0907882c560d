"""LOMMA's model augmentation: distil surrogate classifiers from the target on PUBLIC data only.

LOMMA: Nguyen, Chandrasegaran, Abdollahzadeh & Cheung, "Re-thinking Model Inversion Attacks Against
Deep Neural Networks", CVPR 2023 (official code: sutd-visual-computing-group/Re-thinking_MI).

The student minimises KL(softmax(t / T) || softmax(s / T)) * T^2 against the target's logits t
on public images (T = 1 in LOMMA, where the reference's division by T^2 is the same thing).
No private image is touched. Training reuses the classifier trainer: the "training split" is
the public images, and the "test split" is a held-out part of them, both labelled with the
teacher's top-1 class, so the test accuracy it reports is the student's agreement with the
target. The teacher's logits t are computed inside the jitted step on the AUGMENTED batch the
student sees (as the reference's ``train_augmodel`` does), with the teacher's variables passed
to the step as an argument.
"""

from __future__ import annotations

import dataclasses
import logging
import typing
from pathlib import Path
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from jaxmi import config as config_lib
from jaxmi.data import ArraySplit, DataConfig, Splits, load_splits
from jaxmi.errors import ConfigError
from jaxmi.train.classifier import Classifier, ClassifierConfig, evaluate, load_classifier, train_classifier
from jaxmi.train.inference import classifier_outputs
from jaxmi.train.step import Defense, make_eval_step
from jaxmi.workdir import Workdir

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, kw_only=True)
class SurrogateConfig:
  """``bin/jaxmi distill``: which target to imitate and the student to train (role 'surrogate')."""

  teacher: str = "runs/mnist_target"  # workdir of the trained target
  temperature: float = 1.0
  holdout_fraction: float = 0.1  # public images held out to measure agreement
  student: ClassifierConfig = ClassifierConfig(role="surrogate")


@typing.final
@dataclasses.dataclass(frozen=True)
class Distillation(Defense):
  """Task loss = KL to the teacher's tempered softmax; ``labels`` are the teacher's logits [B, K].

  Built with ``Distillation.of(teacher)``, the labels are the teacher's logits on each augmented
  training batch (``targets``); the teacher is kept off the dataclass fields, so the recorded
  config holds only ``name``, ``temperature`` and ``teacher_workdir``.
  """

  name: str = "distillation"
  temperature: float = 1.0
  teacher_workdir: str = ""
  # Declared, not a field (never serialised): set on the instance by ``of``; None: the labels already are logits.
  teacher: ClassVar[Classifier | None] = None

  @classmethod
  def of(cls, teacher: Classifier, temperature: float = 1.0) -> "Distillation":
    defense = cls(temperature=temperature, teacher_workdir=teacher.workdir)
    teacher = dataclasses.replace(teacher, variables=jax.device_put(teacher.variables))  # moved once, not per step
    object.__setattr__(defense, "teacher", teacher)  # frozen dataclass: set once, here
    return defense

  def step_inputs(self):
    return None if self.teacher is None else self.teacher.variables

  def targets(self, images, labels, inputs):
    if self.teacher is None:  # no teacher attached: the labels already are its logits
      return labels
    return jax.lax.stop_gradient(self.teacher.module.apply(inputs, images, train=False).logits.astype(jnp.float32))

  def task_loss(self, logits, labels):
    t = self.temperature
    teacher = jax.nn.softmax(labels / t, axis=-1)
    kl = jnp.sum(teacher * (jax.nn.log_softmax(labels / t, axis=-1) - jax.nn.log_softmax(logits / t, axis=-1)), -1)
    return kl * t**2


def teacher_splits(teacher, splits: Splits, holdout_fraction: float, seed: int) -> Splits:
  """Public images with the teacher's top-1 labels, split into training and held-out parts.

  Training uses the teacher's logits computed in the step on the augmented batch
  (``Distillation.of``); these labels only measure agreement.
  """
  public = splits.public
  logits, _ = classifier_outputs(teacher, public.images)
  top1 = np.argmax(logits, -1).astype(np.int32)
  order = np.random.default_rng(seed).permutation(len(public))
  num_hold = max(1, int(round(holdout_fraction * len(public))))
  hold, train = order[:num_hold], order[num_hold:]
  train_split = ArraySplit(public.images[train], top1[train], public.identities[train])
  hold_split = ArraySplit(public.images[hold], top1[hold], public.identities[hold])
  return Splits(
    train_split,
    hold_split,
    public,
    teacher.num_classes,
    splits.num_public_classes,
    f"public split of {splits.description}, labelled by the target",
  )


def student_data_config(student: DataConfig, teacher: DataConfig) -> DataConfig:
  """The teacher's data config, with the student config's machine-specific paths where it sets them.

  The teacher's saved config has its paths reset to this machine's defaults; a ``data_dir`` or
  ``cache_dir`` in the distill config must win, or the images are prepared again in the default cache.
  """
  default = DataConfig()
  local = {
    k: getattr(student, k) for k in ("data_dir", "cache_dir", "download") if getattr(student, k) != getattr(default, k)
  }
  return dataclasses.replace(teacher, **local)


def distill_surrogate(
  cfg: ClassifierConfig,
  workdir: str | Path | Workdir,
  teacher_workdir: str,
  *,
  temperature: float = 1.0,
  holdout_fraction: float = 0.1,
  splits: Splits | None = None,
  progress: bool = True,
  allow_config_change: bool = False,
) -> dict:
  """Trains ``cfg.model`` in ``workdir`` as a surrogate of the target in ``teacher_workdir``; returns its summary.

  The summary's ``public_agreement`` is top-1 agreement with the target on held-out public
  images; ``natural_accuracy`` is the surrogate's accuracy on the private test split
  (monitoring only, as in the reference: it is never trained on private data).
  """
  if cfg.role != "surrogate":
    raise ConfigError(f"role: a distilled model has role 'surrogate', got '{cfg.role}'")
  teacher = load_classifier(teacher_workdir, expect_role="target")
  # The surrogate sees exactly the attacker's public split of the teacher's dataset; a student
  # data config that names another split would silently train on something else, so refuse it.
  if cfg.data != DataConfig():
    differ = [
      k
      for k in config_lib.diff(config_lib.to_dict(cfg.data), config_lib.to_dict(teacher.config.data))
      if k not in ("data_dir", "cache_dir", "download")
    ]
    if differ:
      raise ConfigError(
        f"student.data: {', '.join('data.' + k for k in differ)} differ from the target's data config "
        f"in {teacher_workdir}; a surrogate trains on the target's public split, so leave them unset "
        "or equal to the target's"
      )
  data = student_data_config(cfg.data, teacher.config.data)
  splits = splits if splits is not None else load_splits(data)
  cfg = dataclasses.replace(cfg, data=data)
  private = {}

  def with_private_accuracy(summary: dict, module, variables: dict) -> dict:
    # Before summary.json is written, so it is written once, complete.
    private.update(evaluate(make_eval_step(module), variables, splits.private_test, cfg.train.eval_batch_size))
    return {
      **summary,
      "public_agreement": summary["natural_accuracy"],
      "natural_accuracy": private["acc"],
      "teacher": str(teacher_workdir),
    }

  summary = train_classifier(
    cfg,
    workdir,
    splits=teacher_splits(teacher, splits, holdout_fraction, cfg.train.seed),
    defense=Distillation.of(teacher, temperature),
    progress=progress,
    allow_config_change=allow_config_change,
    summarize=with_private_accuracy,
  )
  log.info(
    f"[{cfg.name}] agreement with the target on held-out public images {100 * summary['public_agreement']:.2f}%, "
    f"private test accuracy {100 * private['acc']:.2f}%"
  )
  return summary
