"""Experiment configs: frozen dataclasses loaded from Python files, overridable from the CLI.

A config file (``configs/*.py``) defines ``get_config()`` returning a frozen dataclass.
Overrides are ``dotted.field=value`` strings, parsed by the field's declared type:

  bin/jaxmi train-classifier --config configs/mnist_target.py train.epochs=2 data.private_ids=0:5

Every field a user can name is validated: an unknown field or a value of the wrong type
is a ``ConfigError`` naming the file and the field. Choice fields are declared ``typing.Literal[...]``;
their values (from the file or an override) are checked when the config loads, before any data is prepared.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import json
import sys
import types
import typing
from pathlib import Path
from typing import Any

from jaxmi.errors import ConfigError, JaxmiError


def load_config(path: str | Path, overrides: typing.Sequence[str] = ()) -> Any:
  """Runs ``path``'s ``get_config()`` and applies ``field=value`` overrides."""
  path = Path(path)
  if not path.is_file():
    raise ConfigError(f"{path}: config file not found; expected a Python file defining get_config()")
  spec = importlib.util.spec_from_file_location(f"jaxmi_config_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  # Configs may import shared pieces from sibling config files.
  sys.path.insert(0, str(path.parent.absolute()))
  try:
    spec.loader.exec_module(module)
  except JaxmiError:
    raise
  except Exception as e:  # A broken config is the user's file, not our bug.
    raise ConfigError(f"{path}: could not be executed: {type(e).__name__}: {e}") from e
  finally:
    sys.path.remove(str(path.parent.absolute()))
  if not hasattr(module, "get_config"):
    raise ConfigError(f"{path}: defines no get_config(); expected a function returning a config dataclass")
  try:
    config = module.get_config()
  except JaxmiError:
    raise
  except Exception as e:
    raise ConfigError(f"{path}: get_config() failed: {type(e).__name__}: {e}") from e
  if not dataclasses.is_dataclass(config):
    raise ConfigError(f"{path}: get_config() returned {type(config).__name__}; expected a dataclass")
  config = apply_overrides(config, overrides, source=str(path))
  check_choices(config, source=str(path))
  return config


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
      raise ConfigError(f"{source}: field '{prefix}{f.name}': expected one of "
                        f"{', '.join(map(str, choices))}, got {value!r}")


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
    known = ", ".join(sorted(field_names(obj)))
    raise ConfigError(f"{source}: unknown field '{full_key}'; expected one of: {known}")
  hints = _type_hints(type(obj))
  current = getattr(obj, name)
  if len(parts) > 1:
    if not dataclasses.is_dataclass(current):
      raise ConfigError(f"{source}: field '{'.'.join(full_key.split('.')[:-len(parts) + 1])}' has no sub-fields")
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
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (annotation is int and not isinstance(value, int)):
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
