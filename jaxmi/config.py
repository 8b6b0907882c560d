"""Experiment configs: frozen dataclasses loaded from Python files, overridable from the CLI.

A config file (a recipe, ``configs/<recipe>.py``) defines ``get_config(arg=None)`` returning a frozen dataclass.
As in big_vision, ``file.py:arg`` passes the text after the ``:`` to ``get_config`` as one string, which the
recipe reads with ``parse_arg`` (``method=mid,data=att``) to pick a row of its tables. Overrides are
``dotted.field=value`` strings, parsed by the field's declared type:

  bin/jaxmi train-classifier --config configs/classifier.py:role=target,data=mnist train.epochs=2 data.private_ids=0:5

Every field a user can name is validated: an unknown argument, field or a value of the wrong type
is a ``ConfigError`` naming the file and the argument or field. Choice fields are declared ``typing.Literal[...]``;
their values (from the file or an override) are checked when the config loads, before any data is prepared.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import inspect
import json
import re
import types
import typing
from pathlib import Path
from typing import Any

from jaxmi.errors import ConfigError, JaxmiError


class _ArgError(ConfigError):
  """A bad recipe argument; ``load_config`` names the file in front of it."""


def split_arg(spec: str | Path) -> tuple[Path, str | None]:
  """``'configs/defense.py:method=mid,data=att'`` -> ``(Path('configs/defense.py'), 'method=mid,data=att')``.

  The split is at the first ``.py:``, so folders may contain ``:`` and arguments ``/``; no ``:`` gives ``None``.
  """
  match = re.fullmatch(r"(.*?\.py):(.*)", str(spec), re.DOTALL)
  return (Path(match[1]), match[2]) if match else (Path(spec), None)


# Overrides users typed before issue 14 split the attack config into what is optimised
# (``inversion``) and how it runs (``execution``), and made the workdir a run's argument: named with their new
# place instead of "unknown".
MOVED_FIELDS = {
  **{
    f"inversion.{k}": f"execution.{k}"
    for k in (
      "max_batch",
      "memory_budget_gb",
      "devices",
      "compute_dtype",
      "remat",
      "unroll",
      "log_every",
      "checkpoint_every",
    )
  },
  "workdir": "the --workdir flag (a run's argument, not a config field)",
  "student.workdir": "the --workdir flag (a run's argument, not a config field)",
  "target.workdir": "the --workdir flag (a run's argument, not a config field)",
  "inversion.clip_z": "inversion.z_clip (GMI: z clipped after each update) or inversion.draw_clamp (KEDMI: "
  "each sampled z clamped)",
}


def load_config(path: str | Path, overrides: typing.Sequence[str] = ()) -> Any:
  """Runs the file's ``get_config(arg)`` and applies ``field=value`` overrides.

  Args:
    path: ``file.py`` (``get_config()`` is called without an argument) or ``file.py:arg``.
    overrides: ``dotted.field=value`` strings, applied in order.

  Returns:
    The config dataclass, its choice fields checked. A bad file, argument or override is a ConfigError.
  """
  path, arg = split_arg(path)
  source = str(path) if arg is None else f"{path}:{arg}"
  if not path.is_file():
    raise ConfigError(f"{path}: config file not found; expected a Python file defining get_config()")
  spec = importlib.util.spec_from_file_location(f"jaxmi_config_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
  except JaxmiError:
    raise
  except Exception as e:  # A broken config is the user's file, not our bug.
    raise ConfigError(f"{path}: could not be executed: {type(e).__name__}: {e}") from e
  if not hasattr(module, "get_config"):
    raise ConfigError(f"{path}: defines no get_config(); expected a function returning a config dataclass")
  if arg is not None and not inspect.signature(module.get_config).parameters:
    raise ConfigError(f"{path}: get_config() takes no argument; got ':{arg}' (use {path} alone)")
  try:
    config = module.get_config() if arg is None else module.get_config(arg)
  except _ArgError as e:
    raise ConfigError(f"{source}: {e}") from None
  except JaxmiError:
    raise
  except Exception as e:
    raise ConfigError(f"{source}: get_config() failed: {type(e).__name__}: {e}") from e
  if not dataclasses.is_dataclass(config):
    raise ConfigError(f"{source}: get_config() returned {type(config).__name__}; expected a dataclass")
  config = apply_overrides(config, overrides, source=source)
  check_choices(config, source=source)
  return config


def parse_arg(arg: str | None, **spec: Any) -> dict[str, Any]:
  """Reads a recipe's argument, ``'key=value,key=value'``, as big_vision's ``configs/common.py::parse_arg`` does.

  Args:
    arg: the text after ``file.py:`` (``None`` when there was none).
    **spec: every argument the recipe takes, with its type: a ``typing.Literal`` of its choices, or int, float,
      str or bool. Each one is required, so a command always says which row of the recipe's tables it runs.

  Returns:
    ``{key: value}`` with each value parsed to its type. An unknown, repeated or missing key, or a value that is
    not one of its choices, raises a ConfigError naming the argument and what was expected.
  """
  usage = ",".join(
    f"{key}={'|'.join(map(str, _literal_choices(kind) or (f'<{kind.__name__}>',)))}" for key, kind in spec.items()
  )
  values = {}
  for item in (arg or "").split(","):
    key, sep, raw = (t.strip() for t in item.partition("="))
    if not item.strip():
      continue
    if not sep:
      raise _ArgError(f"argument '{item.strip()}' is not of the form key=value; expected {usage}")
    if key not in spec or key in values:
      raise _ArgError(f"{'unknown' if key not in spec else 'repeated'} argument '{key}'; expected {usage}")
    try:
      values[key] = parse_value(raw, spec[key], f"argument '{key}'")
    except ConfigError as e:
      raise _ArgError(str(e)) from None
  missing = [key for key in spec if key not in values]
  if missing:
    raise _ArgError(f"missing argument '{missing[0]}'; expected {usage}")
  return values


def check_choices(config: Any, source: str = "config", prefix: str = "") -> None:
  """Raises a ConfigError naming the first ``Literal`` field whose value is not one of its choices.

  Walks nested dataclasses (by their runtime type, so a Defense subclass is checked as itself): a typo
  in ``optim.name`` must fail here, not after minutes of data preparation.
  """
  hints = _type_hints(type(config))
  for f in dataclasses.fields(config):
    value = getattr(config, f.name)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
      check_choices(value, source, prefix + f.name + ".")
      continue
    choices = _literal_choices(hints.get(f.name))
    if choices is not None and value not in choices:
      raise ConfigError(
        f"{source}: field '{prefix}{f.name}': expected one of {', '.join(map(str, choices))}, got {value!r}"
      )


def _type_hints(cls: type) -> dict:
  # ``typing`` is offered to annotations written as strings (``from __future__ import annotations``).
  return typing.get_type_hints(cls, localns={"typing": typing, "Literal": typing.Literal})


def _literal_choices(annotation: Any) -> tuple | None:
  """The allowed values of a Literal (or Optional Literal) annotation, else None."""
  if typing.get_origin(annotation) is typing.Literal:
    return typing.get_args(annotation)
  if typing.get_origin(annotation) in (typing.Union, types.UnionType):
    for arg in typing.get_args(annotation):
      choices = _literal_choices(arg)
      if choices is not None:
        return choices + ((None,) if type(None) in typing.get_args(annotation) else ())
  return None


def apply_overrides(config: Any, overrides: typing.Sequence[str], source: str = "config") -> Any:
  for item in overrides:
    if "=" not in item:
      raise ConfigError(f"{source}: override '{item}' is not of the form field=value")
    key, raw = item.split("=", 1)
    config = _replace_path(config, key.strip().split("."), raw.strip(), source, key.strip())
  return config


def replace(config: Any, **changes: Any) -> Any:
  """Like ``dataclasses.replace`` but accepts dotted keys via ``__`` (``data__dataset='x'``)."""
  for key, value in changes.items():
    config = _set_path(config, key.split("__"), value)
  return config


def _set_path(obj: Any, parts: list[str], value: Any) -> Any:
  if len(parts) == 1:
    return dataclasses.replace(obj, **{parts[0]: value})
  child = getattr(obj, parts[0])
  return dataclasses.replace(obj, **{parts[0]: _set_path(child, parts[1:], value)})


def _replace_path(obj: Any, parts: list[str], raw: str, source: str, full_key: str) -> Any:
  fields = {f.name: f for f in dataclasses.fields(obj)}
  name = parts[0]
  if name not in fields:
    if full_key in MOVED_FIELDS:
      raise ConfigError(f"{source}: field '{full_key}' has moved: use {MOVED_FIELDS[full_key]}")
    known = ", ".join(sorted(field_names(obj)))
    raise ConfigError(f"{source}: unknown field '{full_key}'; expected one of: {known}")
  hints = _type_hints(type(obj))
  current = getattr(obj, name)
  if len(parts) > 1:
    if not dataclasses.is_dataclass(current):
      raise ConfigError(f"{source}: field '{'.'.join(full_key.split('.')[: -len(parts) + 1])}' has no sub-fields")
    new = _replace_path(current, parts[1:], raw, source, full_key)
  else:
    new = parse_value(raw, hints[name], f"{source}: field '{full_key}'")
  return dataclasses.replace(obj, **{name: new})


def field_names(obj: Any, prefix: str = "") -> list[str]:
  names = []
  for f in dataclasses.fields(obj):
    value = getattr(obj, f.name)
    if dataclasses.is_dataclass(value):
      names += field_names(value, prefix + f.name + ".")
    else:
      names.append(prefix + f.name)
  return names


def parse_value(raw: str, annotation: Any, where: str) -> Any:
  """Parses a command-line string into ``annotation``'s type."""
  origin = typing.get_origin(annotation)
  args = typing.get_args(annotation)
  if origin in (typing.Union, types.UnionType):
    if raw.lower() in ("none", "null") and type(None) in args:
      return None
    errors = []
    for arg in args:
      if arg is type(None):
        continue
      try:
        return parse_value(raw, arg, where)
      except ConfigError as e:
        errors.append(str(e))
    raise ConfigError(f"{where}: cannot parse '{raw}' as {annotation}")
  if origin is typing.Literal:
    for choice in args:
      if str(choice) == raw:
        return choice
    raise ConfigError(f"{where}: expected one of {', '.join(map(str, args))}, got '{raw}'")
  if annotation is bool:
    if raw.lower() in ("1", "true", "yes", "on"):
      return True
    if raw.lower() in ("0", "false", "no", "off"):
      return False
    raise ConfigError(f"{where}: expected true/false, got '{raw}'")
  if annotation in (int, float):
    try:
      value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
      value = None
    if (
      isinstance(value, bool)
      or not isinstance(value, (int, float))
      or (annotation is int and not isinstance(value, int))
    ):
      raise ConfigError(f"{where}: expected {annotation.__name__}, got '{raw}'")
    return annotation(value)
  if annotation is str:
    return raw
  if origin is tuple:
    elem = args[0] if args else str
    if elem is int and ":" in raw and "(" not in raw:
      # 'a:b' is Python's range(a, b): the natural way to name identity ranges.
      try:
        lo, hi = (int(v) for v in raw.split(":"))
      except ValueError:
        raise ConfigError(f"{where}: expected 'start:stop' or a comma list of ints, got '{raw}'") from None
      return tuple(range(lo, hi))
    text = raw.strip()
    if text.startswith("(") or text.startswith("["):
      text = text[1:-1]
    items = [t.strip() for t in text.split(",") if t.strip()]
    return tuple(parse_value(t, elem, where) for t in items)
  raise ConfigError(f"{where}: fields of type {annotation} cannot be set from the command line")


def to_dict(config: Any) -> dict:
  """JSON-friendly nested dict (tuples become lists)."""
  return json.loads(json.dumps(dataclasses.asdict(config)))


def diff(a: dict, b: dict, prefix: str = "") -> list[str]:
  """Dotted keys whose values differ between two ``to_dict`` results."""
  keys = sorted(set(a) | set(b))
  out = []
  for k in keys:
    va, vb = a.get(k), b.get(k)
    if isinstance(va, dict) and isinstance(vb, dict):
      out += diff(va, vb, prefix + k + ".")
    elif va != vb:
      out.append(prefix + k)
  return out
