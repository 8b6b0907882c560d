"""``bin/jaxmi demo``: the whole pipeline, small, on MNIST (private digits 0-4, public 5-9).

Uses MNIST from the data directory (downloading it if allowed and possible); if neither
works it says so and falls back to scikit-learn's bundled 8x8 digits, so the demo always runs.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from jaxmi.data import DataConfig, load_splits
from jaxmi.errors import DataError
from jaxmi.nets import ModelConfig
from jaxmi.train import ClassifierConfig, OptimConfig, TrainConfig, train_classifier

DEMO_DATA = DataConfig(dataset="mnist", image_size=32, channels=1, private_ids=(0, 1, 2, 3, 4),
                       public_ids=(5, 6, 7, 8, 9))


def demo_splits(log=print):
  try:
    return load_splits(DEMO_DATA)
  except DataError as e:
    log(f"[demo] MNIST unavailable ({e}); falling back to scikit-learn's bundled 8x8 digits, upsampled to 32x32")
    return load_splits(dataclasses.replace(DEMO_DATA, dataset="sklearn_digits", test_fraction=0.2))


def run_demo(workdir: str = "runs/demo", epochs: int = 1, progress: bool = True, log=print) -> dict:
  workdir = Path(workdir)
  splits = demo_splits(log)
  common = dict(data=DEMO_DATA, optim=OptimConfig(learning_rate=0.02, schedule="cosine"))
  target = ClassifierConfig(name="demo_target", role="target", workdir=str(workdir / "target"),
                            model=ModelConfig(arch="cnn", width=32, feature_dim=128),
                            train=TrainConfig(epochs=epochs, batch_size=64, checkpoint_every=200), **common)
  evaluator = ClassifierConfig(name="demo_eval", role="evaluation", workdir=str(workdir / "eval"),
                               model=ModelConfig(arch="resnet", width=16, blocks=(1, 1, 1)),
                               train=TrainConfig(epochs=epochs, batch_size=64, seed=1, checkpoint_every=200), **common)
  results = {}
  for cfg in (target, evaluator):
    results[cfg.role] = train_classifier(cfg, splits=splits, progress=progress, log=log)
  log("")
  log(f"{'model':<12} {'arch':<8} {'private test top-1':>18}")
  for role, cfg in (("target", target), ("evaluation", evaluator)):
    log(f"{role:<12} {cfg.model.arch:<8} {100 * results[role]['natural_accuracy']:>17.2f}%")
  log(f"\noutputs (checkpoints, metrics.jsonl, summary.json, curves.png) are in {workdir.absolute()}")
  return results
