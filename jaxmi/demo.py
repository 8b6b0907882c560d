"""``bin/jaxmi demo``: the whole MI pipeline, small, in a few minutes on a 2-core CPU.

MNIST digits 0-4 are private (the target's and the evaluation model's training data), digits
5-9 public (the attacker's GAN prior). It trains a CNN target and a ResNet evaluation model,
a WGAN-GP prior on the public digits, runs GMI on every private digit x 5 restarts in one
compiled program, prints the metrics and writes the image grid.

MNIST comes from the data directory (downloaded if allowed and possible); if neither works it
says so and falls back to scikit-learn's bundled 8x8 digits, so the demo always runs. Every
stage resumes: running the demo again reuses what is already trained.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

from jaxmi.attacks import ExecutionConfig, InversionConfig
from jaxmi.experiments.attack import AttackConfig, run_attack
from jaxmi.data import DataConfig, load_splits
from jaxmi.errors import DataError
from jaxmi.nets import ModelConfig
from jaxmi.nets.gan import GANConfig
from jaxmi.train import ClassifierConfig, OptimConfig, TrainConfig, train_classifier
from jaxmi.train.gan import GANExperimentConfig, GANTrainConfig, train_gan

log = logging.getLogger(__name__)

# 2000 images per digit keep every stage short; the full configs under configs/ use all of MNIST.
DEMO_DATA = DataConfig(
  dataset="mnist",
  image_size=32,
  channels=1,
  private_ids=(0, 1, 2, 3, 4),
  public_ids=(5, 6, 7, 8, 9),
  max_per_class=2000,
)


def demo_data():
  try:
    return DEMO_DATA, load_splits(DEMO_DATA)
  except DataError as e:
    log.warning(
      f"[demo] MNIST unavailable ({e}); falling back to scikit-learn's bundled 8x8 digits, upsampled to 32x32"
    )
    data = dataclasses.replace(DEMO_DATA, dataset="sklearn_digits", test_fraction=0.2, max_per_class=0)
    return data, load_splits(data)


def run_demo(workdir: str | Path = "runs/demo", epochs: int = 1, progress: bool = True) -> dict:
  """Trains the demo's target, evaluation model and GAN in ``<workdir>/{target,eval,gan}``, attacks in
  ``<workdir>/attack`` and logs a summary; returns the accuracies and the attack's results."""
  workdir = Path(workdir)
  t0 = time.time()
  data, splits = demo_data()
  optim = OptimConfig(learning_rate=0.02, schedule="cosine")
  target = ClassifierConfig(
    name="demo_target",
    role="target",
    data=data,
    model=ModelConfig(arch="cnn", width=32, feature_dim=128),
    optim=optim,
    train=TrainConfig(epochs=epochs, batch_size=64, checkpoint_every=200),
  )
  evaluator = ClassifierConfig(
    name="demo_eval",
    role="evaluation",
    data=data,
    model=ModelConfig(arch="resnet", width=16, blocks=(1, 1, 1)),
    optim=optim,
    train=TrainConfig(epochs=epochs, batch_size=64, seed=1, checkpoint_every=200),
  )
  gan = GANExperimentConfig(
    name="demo_gan",
    data=data,
    gan=GANConfig(z_dim=100, base_width=16, stages=3, channels=1),
    train=GANTrainConfig(epochs=15, batch_size=64, checkpoint_every=100),
  )
  attack = AttackConfig(
    name="demo_gmi",
    attack="gmi",
    target=str(workdir / "target"),
    evaluator=str(workdir / "eval"),
    gan=str(workdir / "gan"),
    inversion=InversionConfig(steps=1000, restarts=5, learning_rate=0.01),
    execution=ExecutionConfig(log_every=100),
  )
  accuracy = {}
  for cfg, where in ((target, "target"), (evaluator, "eval")):
    accuracy[cfg.role] = train_classifier(cfg, workdir / where, splits=splits, progress=progress)["natural_accuracy"]
  train_gan(gan, workdir / "gan", splits=splits, progress=progress)
  result = run_attack(attack, workdir / "attack", splits=splits, progress=progress, overwrite=True)

  log.info("")
  log.info(f"jaxmi demo: GMI on {data.dataset} (private digits 0-4, GAN prior trained on public digits 5-9)")
  log.info(f"  target     CNN     private test accuracy {100 * accuracy['target']:6.2f}%")
  log.info(f"  evaluator  ResNet  private test accuracy {100 * accuracy['evaluation']:6.2f}%")
  log.info(
    f"  attack     acc@1 {100 * result['acc1']:.0f}% of identities (selected restart), "
    f"{100 * result['acc1_all_restarts_mean']:.0f} +/- {100 * result['acc1_all_restarts_std']:.0f}% over restarts, "
    f"chance {100 * result['chance_acc1']:.0f}%; acc@5 {100 * result['acc5']:.0f}%"
  )
  baseline = result.get("prior_baseline") or {}
  if "acc1" in baseline:  # the same metrics for the un-optimised prior samples: what the GAN alone gives
    log.info(
      f"             prior baseline (un-optimised samples): acc@1 {100 * baseline['acc1']:.0f}%, "
      f"{100 * baseline['acc1_all_restarts_mean']:.0f}% over restarts"
    )
  log.info(
    f"             KNN distance {result['knn_dist']:.2f}, feature-FID {result['feature_fid']:.2f}, "
    f"{result['attack_seconds']:.0f}s for {result['identities']} identities x {result['restarts']} restarts "
    f"x {attack.inversion.steps} steps ({result['compilations']} compilation)"
  )
  log.info(f"  total {time.time() - t0:.0f}s; outputs in {workdir.absolute()}:")
  log.info(
    "    attack/grid.png (reconstructions), attack/results.json, gan/samples.png, */metrics.jsonl, */summary.json"
  )
  return {"accuracy": accuracy, "attack": result}
