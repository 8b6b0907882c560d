"""User-facing errors.

Anything a user can cause (a missing file, a bad config field, a checkpoint of the
wrong model) raises `JaxmiError` with one line that names the file/field and what
was expected. The CLI prints that line and exits non-zero; tracebacks are kept for
bugs.
"""


class JaxmiError(Exception):
  """An error caused by the user's input; its message is one self-contained line."""


class DataError(JaxmiError):
  """Dataset files are missing, corrupt or do not match their checksums."""


class ConfigError(JaxmiError):
  """A config file or override names an unknown field or a bad value."""


class CheckpointError(JaxmiError):
  """A checkpoint is missing or belongs to a different model."""


class NonFiniteError(JaxmiError):
  """Training produced NaN/inf; the message names the step and the quantity. Nothing is saved from that state."""


class Interrupted(KeyboardInterrupt):
  """A run stopped at a step boundary (Ctrl-C, or ``stop_at_step`` in tests) after saving its state.

  Rerunning the same command resumes from ``step``. A subclass of KeyboardInterrupt, so code that
  lets Ctrl-C through lets this through too; the CLI prints the message and exits 130.
  """

  def __init__(self, message: str, step: int):
    super().__init__(message)
    self.step = step


class WorkdirBusyError(JaxmiError):
  """Another jaxmi process holds the workdir's lock."""
