"""Batch iterators with fixed shapes, exact resume and background prefetch."""

import queue
import threading
from typing import Any, Iterator

import jax
import numpy as np

from jaxmi.data.splits import ArraySplit
from jaxmi.errors import ConfigError

Batch = dict[str, Any]


def steps_per_epoch(n: int, batch_size: int, *, split: str = "") -> int:
  """Full batches per epoch; the remainder is dropped so shapes never change.

  Args:
    n: examples in the split.
    batch_size: examples per batch.
    split: the split's config field (e.g. "data.public_ids"), named by the
      error when the split is empty.

  Returns:
    n // batch_size; a ConfigError when that is 0 or batch_size < 1.
  """
  if batch_size < 1:
    raise ConfigError(f"batch_size: {batch_size} must be >= 1")
  if n == 0:
    raise ConfigError(
      f"{split or 'split'}: the split is empty (0 examples), so there is nothing to train on; "
      "list identities that have images"
    )
  if n < batch_size:
    raise ConfigError(
      f"batch_size: {batch_size} is larger than the {n} examples of the split, so no full batch fits; lower it"
    )
  return n // batch_size


def train_batch_indices(n: int, batch_size: int, seed: int, start_step: int = 0) -> Iterator[np.ndarray]:
  """Indices of each training batch from global step `start_step` on.

  Epoch e is np.random.default_rng([seed, e]).permutation(n) cut into full
  batches; a step's batch depends only on (seed, step), which makes a resumed
  run see exactly the batches an uninterrupted run would have.
  """
  if start_step < 0:
    raise ConfigError(f"start_step: {start_step} must be >= 0")
  spe = steps_per_epoch(n, batch_size)
  epoch, position = divmod(start_step, spe)
  while True:
    order = np.random.default_rng([seed, epoch]).permutation(n)
    for k in range(position, spe):
      yield order[k * batch_size : (k + 1) * batch_size]
    epoch, position = epoch + 1, 0


def train_batches(
  split: ArraySplit, batch_size: int, seed: int, start_step: int = 0, *, sharding=None, prefetch: int = 2
) -> Iterator[Batch]:
  """Endless {"image": uint8 [B,H,W,C], "label": int32 [B]} on device.

  Args:
    split: the images and labels to batch.
    batch_size: examples per batch; the remainder of each epoch is dropped.
    seed: with the step, the only input of a batch's choice (see
      train_batch_indices), so a resumed run sees the same batches.
    start_step: the global step of the first batch (resume).
    sharding: goes to jax.device_put (None = default device).
    prefetch: batches prepared ahead in a background thread (0 = none).

  Returns:
    An endless iterator of batch dicts.
  """
  # Checked here because the generators below only start at the first next().
  steps_per_epoch(len(split), batch_size)
  if start_step < 0:
    raise ConfigError(f"start_step: {start_step} must be >= 0")

  def produce():
    for indices in train_batch_indices(len(split), batch_size, seed, start_step):
      batch = {"image": split.images[indices], "label": split.labels[indices]}
      yield jax.device_put(batch, sharding)

  return _prefetched(produce(), prefetch)


def eval_batches(split: ArraySplit, batch_size: int, *, sharding=None, prefetch: int = 2) -> Iterator[Batch]:
  """One in-order pass: {"image", "label", "mask"}, all of batch_size rows.

  The last batch is padded with zero rows whose float32 mask is 0, so every
  batch has the same shape and a jitted eval step compiles once.

  Args:
    split: the images and labels to go through, in order.
    batch_size: rows per batch, padding included.
    sharding: goes to jax.device_put (None = default device).
    prefetch: batches prepared ahead in a background thread (0 = none).

  Returns:
    An iterator over ceil(len(split) / batch_size) batch dicts.
  """
  if batch_size < 1:
    raise ConfigError(f"batch_size: {batch_size} must be >= 1")

  def produce():
    n = len(split)
    for start in range(0, n, batch_size):
      real = min(batch_size, n - start)
      pad = batch_size - real
      rows = slice(start, start + real)
      batch = {
        "image": _pad(split.images[rows], pad),
        "label": _pad(split.labels[rows], pad),
        "mask": _pad(np.ones(real, np.float32), pad),
      }
      yield jax.device_put(batch, sharding)

  return _prefetched(produce(), prefetch)


def _pad(array: np.ndarray, rows: int) -> np.ndarray:
  if not rows:
    return array
  return np.concatenate([array, np.zeros((rows, *array.shape[1:]), array.dtype)])


class _Failure:
  """Carries an exception from the producer thread to the consumer."""

  def __init__(self, error: BaseException):
    self.error = error


_DONE = object()


def _prefetched(items: Iterator[Batch], depth: int) -> Iterator[Batch]:
  """Runs `items` up to `depth` ahead in a daemon thread.

  The thread stops soon after the returned generator is closed or garbage
  collected; an exception in it is re-raised by the consumer.
  """
  if depth <= 0:
    yield from items
    return
  slots = queue.Queue(maxsize=depth)
  stop = threading.Event()

  def put(item) -> bool:
    # Wake up now and then so a closed consumer never strands this thread.
    while not stop.is_set():
      try:
        slots.put(item, timeout=0.1)
        return True
      except queue.Full:
        pass
    return False

  def work():
    try:
      for item in items:
        if not put(item):
          return
      put(_DONE)
    except BaseException as e:  # pylint: disable=broad-except
      put(_Failure(e))

  thread = threading.Thread(target=work, name="jaxmi-prefetch", daemon=True)
  thread.start()
  try:
    while True:
      item = slots.get()
      if item is _DONE:
        return
      if isinstance(item, _Failure):
        raise item.error
      yield item
  finally:
    stop.set()
    thread.join(timeout=5.0)
