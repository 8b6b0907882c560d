"""Results on disk: JSON-lines metrics, JSON summaries and training-curve plots."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any, Iterable

import numpy as np


def _jsonable(value: Any) -> Any:
  if isinstance(value, dict):
    return {k: _jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_jsonable(v) for v in value]
  if isinstance(value, (np.generic, np.ndarray)) or hasattr(value, "__array__"):
    value = np.asarray(value)
    return value.item() if value.ndim == 0 else value.tolist()
  if isinstance(value, float) and not math.isfinite(value):
    return str(value)
  return value


class JsonlWriter:
  """Appends one JSON object per line; earlier lines (e.g. before a resume) are never rewritten."""

  def __init__(self, path: str | Path):
    self.path = Path(path)
    self.path.parent.mkdir(parents=True, exist_ok=True)

  def write(self, record: dict) -> None:
    with open(self.path, "a") as f:
      f.write(json.dumps(_jsonable({"time": round(time.time(), 3), **record})) + "\n")


def read_jsonl(path: str | Path) -> list[dict]:
  path = Path(path)
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_json(path: str | Path, data: dict) -> None:
  """Writes atomically so an interrupted write never leaves a truncated file."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_suffix(path.suffix + ".tmp")
  tmp.write_text(json.dumps(_jsonable(data), indent=2) + "\n")
  os.replace(tmp, path)


def mean_metrics(records: Iterable[dict]) -> dict:
  records = list(records)
  return {k: float(np.mean([r[k] for r in records])) for k in records[0]} if records else {}


def plot_curves(records: list[dict], path: str | Path, title: str) -> None:
  """Training loss and test accuracy against steps, one PNG."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  train = [r for r in records if "train/loss" in r]
  test = [r for r in records if "test/acc" in r]
  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.4))
  if train:
    ax1.plot([r["step"] for r in train], [r["train/loss"] for r in train], label="train loss")
    if min(r["train/loss"] for r in train) > 0:  # some defenses' losses are negative (CALoR, NLS)
      ax1.set_yscale("log")
  ax1.set_xlabel("step")
  ax1.set_title("training loss")
  if test:
    ax2.plot([r["step"] for r in test], [100 * r["test/acc"] for r in test], "o-", label="test top-1")
    ax2.plot([r["step"] for r in train], [100 * r["train/acc"] for r in train], alpha=0.5, label="train top-1")
    ax2.legend()
  ax2.set_xlabel("step")
  ax2.set_ylabel("accuracy (%)")
  ax2.set_title("accuracy")
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def save_grid(images, path: str | Path, *, ncol: int | None = None, pad: int = 2, scale: int = 1) -> None:
  """Writes images ([N, H, W, C] in [0, 1]) as one PNG grid, row-major."""
  from PIL import Image

  images = np.clip(np.asarray(images, np.float32), 0.0, 1.0)
  n, h, w, c = images.shape
  ncol = ncol or int(np.ceil(np.sqrt(n)))
  nrow = int(np.ceil(n / ncol))
  canvas = np.ones((nrow * (h + pad) + pad, ncol * (w + pad) + pad, c), np.float32)
  for i in range(n):
    r, col = divmod(i, ncol)
    canvas[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + col * (w + pad) : pad + col * (w + pad) + w] = images[i]
  pixels = (canvas * 255 + 0.5).astype(np.uint8)
  img = Image.fromarray(pixels[..., 0] if c == 1 else pixels)
  if scale > 1:
    img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
  Path(path).parent.mkdir(parents=True, exist_ok=True)
  img.save(path)


def plot_loss_parts(parts: dict, path: str | Path, title: str) -> None:
  """Each weighted loss term against optimisation step, one PNG."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(6, 3.4))
  for name, curve in parts.items():
    ax.plot(np.arange(1, len(curve) + 1), curve, label=name)
  ax.set_xlabel("step")
  ax.set_ylabel("weighted term")
  ax.set_title(title)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
