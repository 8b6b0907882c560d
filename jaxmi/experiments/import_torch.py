"""``bin/jaxmi import-torch`` and ``bin/jaxmi predict``: published PyTorch classifiers as jaxmi workdirs.

``import_classifier`` reads a checkpoint without torch (``jaxmi.nets.torch_import``), maps it strictly onto
the named architecture (every parameter and BatchNorm statistic, nothing left over) and writes a workdir that
``load_classifier`` -- hence ``evaluate``, ``fisher``, ``predict``, and ``attack`` as target, evaluator or
surrogate -- reads like a trained one: an orbax checkpoint with the architecture's metadata, and
``summary.json``. Everything is read, mapped and checked before anything is written.

``predict`` writes a classifier's logits and penultimate features for images given as a ``.npy`` file: how
a user checks an import against numbers they already have from PyTorch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from pathlib import Path

import jax
import numpy as np
import optax

from jaxmi import config as config_lib
from jaxmi.data import DataConfig
from jaxmi.errors import ConfigError, DataError
from jaxmi.nets import ModelConfig, build_classifier, init_variables, shape_signature
from jaxmi.nets import efficientnet, irse, vgg_torch
from jaxmi.nets.gan import GANConfig, build_gan
from jaxmi.nets.gan_torch import critic_from_torch, generator_from_torch
from jaxmi.nets.torch_import import read_checkpoint
from jaxmi.train.checkpoint import Checkpointer
from jaxmi.train.classifier import ROLES, ClassifierConfig, arch_meta, check_restored_finite, load_classifier
from jaxmi.train.gan import GANExperimentConfig, gan_meta, init_gan_state
from jaxmi.train.inference import classifier_outputs
from jaxmi.workdir import Workdir

log = logging.getLogger(__name__)

# arch -> (its from_torch, input shape of the published models, the files it is meant for)
CLASSIFIERS = {
  "vgg16": (vgg_torch.from_torch, (64, 64, 3), "VGG16_88.26.tar (target); MID's VGG16_vib with --head vib"),
  "ir152_64": (irse.from_torch, (64, 64, 3), "IR152_91.16.tar (target); celeba64_ir152_93.71.pth (MIBench)"),
  "facenet64": (irse.from_torch, (64, 64, 3), "FaceNet64_88.50.tar (target)"),
  "facenet112": (
    irse.from_torch,
    (112, 112, 3),
    "FaceNet_95.88.tar (evaluation model); celeba112_facenet112_97.72.pth (MIBench)",
  ),
  **{
    arch: (efficientnet.from_torch, (64, 64, 3), f"LOMMA's distilled {arch} surrogates")
    for arch in efficientnet.EFFICIENTNET_ARCHS
  },
}
# arch -> (GAN kind, the published files): the generator is CHECKPOINT, the critic / discriminator --critic.
GANS = {
  "gmi_gan": ("gmi", "GMI's general GAN: celeba_G.tar with --critic celeba_D.tar"),
  "kedmi_gan": ("kedmi", "KEDMI's inversion-specific GAN: improved_celeba_G.tar with --critic improved_celeba_D.tar"),
}
# The published GANs: 64x64 RGB, z of 100, width 64 (Re-thinking_MI's Generator(100, 64) and critics).
PUBLISHED_GAN = GANConfig(z_dim=100, base_width=64, stages=4, channels=3)

# Where the published files keep the class count: the first of these keys present gives it.
HEAD_KEYS = ("fc_layer.weight", "fc_layer.0.weight", "fc.weight")


def _num_classes(tensors: dict, given: int | None, source: str) -> int:
  if given is not None:
    if given < 1:
      raise ConfigError(f"--num-classes: {given} must be >= 1")
    return given
  for key in HEAD_KEYS:
    if key in tensors and np.ndim(tensors[key]) == 2:
      return int(tensors[key].shape[0])
  raise ConfigError(f"{source}: no {' / '.join(HEAD_KEYS)} key to read the class count from; pass --num-classes")


def _empty_workdir(workdir) -> Workdir:
  workdir = Workdir.of(workdir)
  if workdir.checkpoints.exists():
    raise ConfigError(f"{workdir}: already holds a model (checkpoints/); choose another workdir")
  return workdir


def _provenance(path: Path, read) -> dict:
  """What a workdir records about the file it was imported from."""
  return {"file": str(path.absolute()), "sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "format": read.format}


def _write(workdir: Workdir, state: dict, meta: dict, summary: dict) -> None:
  """The imported model as step 0 of an orbax checkpoint, then ``summary.json`` (last, as a trained run's)."""
  ckpt = Checkpointer(workdir.checkpoints, every_steps=1, keep=1)
  ckpt.save(0, state, meta, force=True)
  ckpt.close()
  workdir.write_json("summary.json", summary)


def import_classifier(
  arch: str,
  checkpoint: str | Path,
  workdir: str | Path | Workdir,
  *,
  num_classes: int | None = None,
  head: str = "linear",
  role: str = "target",
  name: str | None = None,
) -> dict:
  """Imports a published PyTorch classifier into ``workdir`` (which must not hold a model yet); returns its summary.

  Args:
    arch: a key of ``CLASSIFIERS``.
    checkpoint: the ``.tar`` / ``.pth`` / ``.safetensors`` file (zip or legacy PyTorch format).
    workdir: where the jaxmi checkpoint and ``summary.json`` go; the caller holds its lock.
    num_classes: the head's classes; None reads them from the head's weight.
    head: "linear", or "vib" for MID's variants (VGG16_vib, IR152_vib, IR50_vib).
    role: "target", "evaluation" or "surrogate": what later commands may use it as.
    name: the model's name (default: the file's stem).
  """
  if arch not in CLASSIFIERS:
    raise ConfigError(f"--arch: unknown architecture '{arch}'; expected one of {', '.join(CLASSIFIERS)}")
  if role not in ROLES:
    raise ConfigError(f"--role: unknown role '{role}'; expected one of {', '.join(ROLES)}")
  workdir = _empty_workdir(workdir)
  checkpoint = Path(checkpoint)
  source = checkpoint.name
  read = read_checkpoint(checkpoint)
  num_classes = _num_classes(read.tensors, num_classes, source)
  from_torch, image_shape, _ = CLASSIFIERS[arch]
  model = config_lib.replace(ModelConfig(), arch=arch, head=head)  # validates the choices
  variables = from_torch(read.tensors, model, num_classes, image_shape, source)
  check_restored_finite(variables, str(checkpoint))
  # The init tree is what load_classifier rebuilds: the mapped tree must be exactly it.
  module = build_classifier(model, num_classes)
  abstract = jax.eval_shape(lambda: init_variables(module, jax.random.PRNGKey(0), image_shape))
  if shape_signature(abstract) != shape_signature(variables):
    raise ConfigError(f"{source}: the mapped variables do not match the {arch} network's (a mapping bug)")

  h, w, c = image_shape
  cfg = ClassifierConfig(
    name=name or checkpoint.stem,
    role=role,
    model=model,
    data=DataConfig(dataset="image_folder", image_size=h, channels=c),
  )
  meta = {
    "kind": "classifier",
    "defense": "none",
    "defense_config": {},
    "arch": arch_meta(model, num_classes, image_shape),
    "signature": shape_signature(variables),
    "config": config_lib.to_dict(cfg),
    "imported_from": _provenance(checkpoint, read),
  }
  summary = {
    "name": cfg.name,
    "role": role,
    "arch": arch,
    "head": head,
    "num_classes": num_classes,
    "image_shape": list(image_shape),
    "imported_from": meta["imported_from"],
    "extras": {k: v for k, v in read.extras.items() if isinstance(v, (str, int, float, bool))},
    "config": config_lib.to_dict(cfg),
  }
  _write(workdir, {"params": variables["params"], "batch_stats": variables["batch_stats"]}, meta, summary)
  log.info(f"[{cfg.name}] {arch} ({num_classes} classes, {h}x{w}x{c}) imported from {checkpoint} into {workdir}")
  return summary


def predict(workdir: str | Path, images_path: str | Path, out: str | Path, batch_size: int = 256) -> dict:
  """Writes ``logits`` [N, K] and ``features`` [N, D] of the classifier in ``workdir`` to ``out`` (.npz).

  ``images_path``: a ``.npy`` of float32 images [N, H, W, C] in [0, 1] at the classifier's input size.
  """
  images_path, out = Path(images_path), Path(out)
  try:
    images = np.load(images_path, allow_pickle=False)
  except (OSError, ValueError) as e:
    raise DataError(f"{images_path}: not a readable .npy array ({type(e).__name__})") from None
  clf = load_classifier(workdir)
  if images.dtype != np.float32 or images.ndim != 4 or tuple(images.shape[1:]) != tuple(clf.image_shape):
    raise DataError(
      f"{images_path}: expected float32 images [N, {', '.join(map(str, clf.image_shape))}], "
      f"got {images.dtype} {list(images.shape)}"
    )
  if images.size and (not np.all(np.isfinite(images)) or images.min() < 0 or images.max() > 1):
    raise DataError(f"{images_path}: values must be finite and in [0, 1]")
  logits, features = classifier_outputs(clf, images, batch_size)
  out.parent.mkdir(parents=True, exist_ok=True)
  tmp = out.with_name(f".{out.name}.tmp")
  with open(tmp, "wb") as f:
    np.savez(f, logits=logits, features=features)
  tmp.replace(out)
  log.info(f"[{clf.config.name}] logits {list(logits.shape)} and features {list(features.shape)} written to {out}")
  return {"logits": logits, "features": features}


def import_gan(
  arch: str, generator: str | Path, critic: str | Path, workdir: str | Path | Workdir, *, name=None
) -> dict:
  """Imports a published GAN prior (generator + critic files) into ``workdir``, readable by ``load_gan``.

  The checkpoint is a full GAN training state (fresh Adam states, step 0), so ``train-gan`` could also
  fine-tune it. Everything is read, mapped and checked before anything is written; returns the summary.
  """
  if arch not in GANS:
    raise ConfigError(f"--arch: unknown GAN '{arch}'; expected one of {', '.join(GANS)}")
  workdir = _empty_workdir(workdir)
  kind = GANS[arch][0]
  generator, critic = Path(generator), Path(critic)
  g_read, d_read = read_checkpoint(generator), read_checkpoint(critic)
  num_classes = _num_classes(d_read.tensors, None, critic.name) if kind == "kedmi" else 0
  g_vars = generator_from_torch(g_read.tensors, PUBLISHED_GAN, generator.name)
  d_vars = critic_from_torch(d_read.tensors, PUBLISHED_GAN, critic.name, kind=kind, num_classes=num_classes)
  check_restored_finite({"g": g_vars, "d": d_vars}, f"{generator} / {critic}")
  g_module, d_module = build_gan(PUBLISHED_GAN, kind=kind, num_classes=num_classes)
  state = init_gan_state(g_module, d_module, optax.adam(2e-4), optax.adam(2e-4), PUBLISHED_GAN, 0)
  fresh = shape_signature({"g": state.g_params, "s": state.g_stats, "d": state.d_params})
  if fresh != shape_signature({"g": g_vars["params"], "s": g_vars["batch_stats"], "d": d_vars["params"]}):
    raise ConfigError(f"{generator.name}: the mapped variables do not match the {arch} networks' (a mapping bug)")
  state = dataclasses.replace(
    state, g_params=g_vars["params"], g_stats=g_vars["batch_stats"], d_params=d_vars["params"]
  )
  cfg = GANExperimentConfig(
    name=name or generator.stem,
    kind=kind,
    data=DataConfig(dataset="image_folder", image_size=PUBLISHED_GAN.image_size, channels=PUBLISHED_GAN.channels),
    gan=PUBLISHED_GAN,
  )
  files = {"generator": _provenance(generator, g_read), "critic": _provenance(critic, d_read)}
  meta = {**gan_meta(cfg, state, num_classes), "imported_from": files}
  summary = {
    "name": cfg.name,
    "kind": kind,
    "num_classes": num_classes,
    "imported_from": files,
    "config": config_lib.to_dict(cfg),
  }
  _write(workdir, state.as_dict(), meta, summary)
  log.info(f"[{cfg.name}] {arch} (64x64x3, width 64) imported from {generator} and {critic} into {workdir}")
  return summary
