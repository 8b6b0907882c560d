"""Ctrl-C that stops training at a step boundary, so the state saved is always a whole step.

Steps donate their input state: a KeyboardInterrupt raised between dispatching a step and
rebinding its result would leave only deleted buffers to save. Instead, the first SIGINT sets
a flag that the loop checks after each step; a second one interrupts at once.
"""

from __future__ import annotations

import signal
import threading


class StopOnInterrupt:
  def __init__(self):
    self.requested = False
    self._previous = None

  def _handle(self, signum, frame):
    if self.requested:
      raise KeyboardInterrupt("interrupted twice; stopping without a final checkpoint")
    self.requested = True

  def __enter__(self) -> "StopOnInterrupt":
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGINT, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGINT, self._previous)
