"""``bin/jaxmi sweep``: a defense x setting x attack x seed grid as one resumable command.

  bin/jaxmi sweep configs/sweep.py:data=mnist,size=full runs/sweep_mnist [--dry-run] [--shard i/n]

The sweep recipe (``SweepConfig``, configs/sweep.py) names the dataset, the defenses with a list of settings each,
the attacks and the seeds. The command
  1. plans (nothing written): every network and attack of the grid is a *stage* made from the ordinary recipes
     (configs/classifier.py, defense.py, gan.py, surrogate.py, attack.py) with the sweep's overrides: the evaluation
     model; one target per defense setting (the undefended one, or a defended one); the GAN priors (GMI's WGAN-GP
     once, KEDMI's and PLG-MI's per target, as they learn from the target's labels); LOMMA's surrogate per target;
     one attack per cell (setting x attack x seed). Each stage is keyed by a SHA-256 of the content of its config
     (names, data paths, logging, checkpoint and chunking fields left out) and of its inputs' keys, and lives in
     <workdir>/artifacts/<kind>-<key>/ with stage.json (what made it) beside its outputs: an edited setting is a new
     key and is trained, an unchanged one is found and reused, also by another sweep in the same workdir;
  2. runs the stages in dependency order through the existing entry points (train_classifier, defend, train_gan,
     distill_surrogate, run_attack), each in its locked directory. A stage is done when done.json, written
     atomically after its outputs, is there; a stage with summary.json / results.json but no done.json (killed in
     between) is marked done without rerunning; a half-finished one resumes from its checkpoints or attack_state/;
  3. writes table.md, table.csv, table.json and tradeoff.png, knn.png, reconstructions.png from the finished cells.
Seconds per stage kind (stages run from scratch) are kept in <workdir>/rates.json for --dry-run's estimate.

Several processes (a SLURM job array, several GPUs of one node, several hosts on a shared filesystem) may run one
sweep directory at once: ``--shard i/n`` gives process i the cells with index = i mod n, and every stage is taken
with a claim file (``Claims``): created with O_CREAT | O_EXCL in <workdir>/claims/, holding pid, host and time,
refreshed by a heartbeat while the stage runs, so two processes never run one stage. A claim expires when its
process is dead (same host) or its heartbeat is older than the TTL; the next process then resumes the stage.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import fcntl
import hashlib
import importlib.util
import json
import logging
import math
import os
import re
import shutil
import socket
import threading
import time
import typing
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jaxmi import config as config_lib
from jaxmi.errors import ConfigError, WorkdirBusyError
from jaxmi.records import write_json
from jaxmi.workdir import locked

log = logging.getLogger(__name__)

ARTIFACTS = "artifacts"
CLAIMS = "claims"
RATES = "rates.json"
DONE = "done.json"
STAGE = "stage.json"
KINDS = ("eval", "target", "defense", "gan", "surrogate", "attack")  # the order a plan lists them in
TRAINED = {"eval": "summary.json", "target": "summary.json", "defense": "summary.json", "gan": "summary.json"}
FINISHED = {**TRAINED, "surrogate": "summary.json", "attack": "results.json"}  # written last by each entry point


@dataclasses.dataclass(frozen=True, kw_only=True)
class SweepConfig:
  """A grid: ``defenses`` (each with its settings) x ``attacks`` x ``seeds`` on ``data``.

  A setting is a dict of the defense's fields (``{"beta": 0.01}`` sets ``defense.beta``) or of dotted fields of
  its DefendConfig (``{"target.train.epochs": 5}``); ``{}`` is the recipe's own. ``none`` (no defense) takes
  ``[{}]``. Overrides are ``field=value`` items as on a command line, applied to every network of their kind;
  ``data_overrides`` name DataConfig fields (``max_per_class=300``) and apply to every network's data.
  """

  name: str = "sweep"
  data: typing.Literal["mnist", "att"] = "mnist"  # the recipes' data= argument
  recipes: str = "configs"  # the folder of classifier.py, defense.py, gan.py, surrogate.py and attack.py
  defenses: dict = dataclasses.field(default_factory=lambda: {"none": ({},)})
  attacks: tuple[str, ...] = ("gmi",)  # configs/attack.py's methods: gmi | kedmi | gmi_lomma | kedmi_lomma | plg
  seeds: tuple[int, ...] = (0,)  # inversion.seed of each cell
  data_overrides: tuple[str, ...] = ()
  target_overrides: tuple[str, ...] = ()  # the target, every defended target and its first stage
  eval_overrides: tuple[str, ...] = ()
  gan_overrides: tuple[str, ...] = ()
  surrogate_overrides: tuple[str, ...] = ()  # LOMMA's student (SurrogateConfig.student's fields)
  attack_overrides: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Stage:
  """One network or attack of the grid: its content key, its config (inputs as artifact paths) and inputs."""

  id: str  # <kind>-<key[:16]>, its directory under <workdir>/artifacts
  kind: str  # one of KINDS
  key: str  # SHA-256 of the content of the config and the keys of the inputs
  config: Any
  inputs: tuple[str, ...]  # ids of the stages it reads
  label: str  # what it is, for people
  content: dict  # what the key hashes (written to stage.json)
  directory: Path


@dataclasses.dataclass(frozen=True)
class Cell:
  """One attack of the grid: a defense setting x an attack x a seed."""

  defense: str
  setting: dict
  setting_index: int
  attack: str
  seed: int
  target: str  # stage id of the (defended) target
  stage: str  # stage id of the attack


@dataclasses.dataclass(frozen=True)
class Plan:
  stages: dict  # id -> Stage, inputs before the stages that read them
  cells: tuple  # every Cell of the grid, in grid order

  def needed(self, cells) -> list:
    """The stages ``cells`` need (their attacks and everything those read), in dependency order."""
    want: set[str] = set()
    todo = [c.stage for c in cells]
    while todo:
      sid = todo.pop()
      if sid not in want:
        want.add(sid)
        todo.extend(self.stages[sid].inputs)
    return [s for sid, s in self.stages.items() if sid in want]


# --- the plan ---------------------------------------------------------------------------------------------------

# Config fields that do not change what a stage makes: names (the stage's id names it), where data is read from, and
# how often it logs and checkpoints; an attack's chunking and devices (results do not depend on them, tested in
# jaxmi.attacks). Dropped from the content the key hashes.
NOT_CONTENT_KEYS = ("name", "data_dir", "cache_dir", "download", "public_data_dir", "log_every", "checkpoint_every")
NOT_CONTENT_KEYS += ("keep_checkpoints", "max_batch", "memory_budget_gb", "devices", "unroll")


def _content(config: Any) -> dict:
  def strip(d, parent=""):
    if isinstance(d, dict):
      # A defense's name says which defense it is: content, unlike the names of networks and runs.
      keep = lambda k: k not in NOT_CONTENT_KEYS or (k == "name" and parent == "defense")
      return {k: strip(v, k) for k, v in d.items() if keep(k)}
    return d

  return strip(config_lib.to_dict(config))


def content_key(kind: str, config: Any, input_keys: dict) -> tuple[str, dict]:
  """(SHA-256 hex, the hashed content): the config's content with its inputs named by their stage ids, and the
  inputs' own keys, so a changed input changes every key downstream."""
  content = {"kind": kind, "config": _content(config), "inputs": dict(sorted(input_keys.items()))}
  text = json.dumps(content, sort_keys=True, separators=(",", ":"))
  return hashlib.sha256(text.encode()).hexdigest(), content


def _module(path: Path):
  spec = importlib.util.spec_from_file_location(f"jaxmi_sweep_recipe_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _choices(recipes: Path, recipe: str, arg: str) -> tuple:
  return typing.get_args(_module(recipes / recipe).ARGS[arg])


def _setting_text(setting: dict) -> str:
  return ", ".join(f"{k}={v}" for k, v in setting.items())


def validate(cfg: SweepConfig) -> None:
  """Each field of the recipe checked before anything is loaded or written; one line names the field."""
  recipes = Path(cfg.recipes)
  missing = [
    r for r in ("classifier.py", "defense.py", "gan.py", "surrogate.py", "attack.py") if not (recipes / r).is_file()
  ]
  if missing:
    raise ConfigError(f"recipes: {recipes} holds no {missing[0]}; expected the folder of jaxmi's recipes (configs/)")
  config_lib.check_choices(cfg, source="sweep")
  if not isinstance(cfg.defenses, dict) or not cfg.defenses:
    raise ConfigError(f"defenses: expected a dict of defense -> list of settings, got {cfg.defenses!r}")
  known = ("none", *_choices(recipes, "defense.py", "method"))
  for method, settings in cfg.defenses.items():
    if method not in known:
      raise ConfigError(f"defenses: unknown defense {method!r}; expected one of {', '.join(known)}")
    if not isinstance(settings, (list, tuple)) or not settings:
      raise ConfigError(f"defenses.{method}: expected a non-empty list of settings (dicts), got {settings!r}")
    for i, setting in enumerate(settings):
      if not isinstance(setting, dict) or not all(isinstance(k, str) for k in setting):
        raise ConfigError(f"defenses.{method}[{i}]: expected a dict of field -> value, got {setting!r}")
    if method == "none" and any(settings):
      raise ConfigError(f"defenses.none: no defense has no settings; expected [{{}}], got {list(settings)}")
    texts = [json.dumps(s, sort_keys=True) for s in settings]
    if len(set(texts)) != len(texts):
      raise ConfigError(f"defenses.{method}: {list(settings)} lists one setting twice")
  methods = _choices(recipes, "attack.py", "method")
  if not cfg.attacks or any(a not in methods for a in cfg.attacks) or len(set(cfg.attacks)) != len(cfg.attacks):
    raise ConfigError(f"attacks: expected distinct methods among {', '.join(methods)}, got {cfg.attacks!r}")
  if not cfg.seeds or len(set(cfg.seeds)) != len(cfg.seeds) or any(type(s) is not int or s < 0 for s in cfg.seeds):
    raise ConfigError(f"seeds: expected distinct non-negative integers, got {cfg.seeds!r}")
  for field in ("data_overrides", *(f"{k}_overrides" for k in ("target", "eval", "gan", "surrogate", "attack"))):
    items = getattr(cfg, field)
    if isinstance(items, str) or any(not isinstance(o, str) or "=" not in o for o in items):
      raise ConfigError(f"{field}: expected a tuple of 'field=value' strings, got {items!r}")


class _Builder:
  """Loads the recipes' configs with the sweep's overrides and adds them as content-keyed stages."""

  def __init__(self, cfg: SweepConfig, workdir: Path):
    self.cfg, self.root = cfg, workdir / ARTIFACTS
    self.recipes = Path(cfg.recipes)
    self.stages: dict[str, Stage] = {}

  def load(self, recipe: str, arg: str, overrides: list[tuple[str, typing.Sequence[str]]]) -> Any:
    arg = ",".join(filter(None, (arg, f"data={self.cfg.data}")))
    loaded = config_lib.load_config(f"{self.recipes / recipe}:{arg}")
    for field, items in overrides:
      loaded = config_lib.apply_overrides(loaded, list(items), source=field)
    config_lib.check_choices(loaded, source=f"{recipe}:{arg}")
    return loaded

  def data(self, *prefixes: str) -> list[tuple[str, list[str]]]:
    return [("data_overrides", [f"{p}data.{o}" for o in self.cfg.data_overrides]) for p in prefixes]

  def add(self, kind: str, config: Any, inputs: tuple[str, ...], label: str) -> str:
    """Adds the stage (once: equal content is one stage) and returns its id. ``config`` names its inputs by id."""
    key, content = content_key(kind, config, {i: self.stages[i].key for i in inputs})
    sid = f"{kind}-{key[:16]}"
    if sid not in self.stages:
      directory = self.root / sid
      self.stages[sid] = Stage(
        id=sid,
        kind=kind,
        key=key,
        config=_located(kind, config, self.root, sid),
        inputs=inputs,
        label=label,
        content=content,
        directory=directory,
      )
    return sid


def _located(kind: str, config: Any, root: Path, sid: str) -> Any:
  """``config`` with its inputs' ids as their artifact directories and its name the stage's id."""
  at = lambda v: str(root / v) if v else v
  if kind == "attack":
    return dataclasses.replace(
      config,
      name=sid,
      target=at(config.target),
      evaluator=at(config.evaluator),
      gan=at(config.gan),
      surrogates=tuple(at(s) for s in config.surrogates),
    )
  if kind == "gan":
    return dataclasses.replace(config, name=sid, target=at(config.target))
  if kind == "surrogate":
    return dataclasses.replace(
      config, teacher=at(config.teacher), student=dataclasses.replace(config.student, name=sid)
    )
  if kind == "defense":
    return dataclasses.replace(config, target=dataclasses.replace(config.target, name=sid))
  return dataclasses.replace(config, name=sid)


GAN_OF = {"gmi": "gmi", "gmi_lomma": "gmi", "kedmi": "kedmi", "kedmi_lomma": "kedmi", "plg": "plg"}


def plan(cfg: SweepConfig, workdir: str | Path) -> Plan:
  """Every stage and cell of the grid, each config loaded and keyed; nothing is read from or written to disk
  beyond the recipes."""
  validate(cfg)
  b = _Builder(cfg, Path(workdir).absolute())
  classifier_overrides = lambda field, prefix="": [(field, [prefix + o for o in getattr(cfg, field)])]
  evaluator = b.load("classifier.py", "role=eval", b.data("") + classifier_overrides("eval_overrides"))
  eval_id = b.add("eval", evaluator, (), "evaluation model")
  # The undefended target with the sweep's overrides; each defense is built from it by configs/defense.py's own
  # functions, so a first stage (TL-DMI's public pretraining, CALoR's low-rank model) follows the same overrides.
  target = b.load("classifier.py", "role=target", b.data("") + classifier_overrides("target_overrides"))
  defense_recipe = _module(b.recipes / "defense.py")
  targets = []  # (method, index, setting, stage id)
  for method, settings in cfg.defenses.items():
    for i, setting in enumerate(settings):
      label = method if not setting else f"{method} {_setting_text(setting)}"
      if method == "none":
        targets.append((method, i, setting, b.add("target", target, (), label)))
        continue
      defended = defense_recipe.METHODS[method](
        dataclasses.replace(target, name=f"defense_{method}_{cfg.data}"), cfg.data
      )
      # str(value) is parsed by the field's type, as on a command line: typos and wrong types are refused alike.
      items = [f"{k if '.' in k else 'defense.' + k}={v}" for k, v in setting.items()]
      defended = config_lib.apply_overrides(defended, items, source=f"defenses.{method}[{i}]")
      config_lib.check_choices(defended, source=f"defenses.{method}[{i}]")
      targets.append((method, i, setting, b.add("defense", defended, (), label)))
  cells = []
  gan_overrides = b.data("") + classifier_overrides("gan_overrides")
  for method, i, setting, target_id in targets:
    target_label = b.stages[target_id].label
    for attack in cfg.attacks:
      kind = GAN_OF[attack]
      gan = b.load("gan.py", f"kind={kind}", gan_overrides)
      if kind == "gmi":  # the WGAN-GP prior knows nothing of the target: one for the whole grid
        gan_id = b.add("gan", dataclasses.replace(gan, target=""), (), "GMI's WGAN-GP prior")
      else:  # KEDMI's and PLG-MI's GANs learn from the attacked target's labels of public images
        gan_id = b.add("gan", dataclasses.replace(gan, target=target_id), (target_id,), f"{kind} GAN of {target_label}")
      surrogates = ()
      if attack.endswith("_lomma"):
        surrogate = b.load(
          "surrogate.py", "", b.data("student.") + classifier_overrides("surrogate_overrides", "student.")
        )
        surrogate = dataclasses.replace(surrogate, teacher=target_id)
        surrogates = (b.add("surrogate", surrogate, (target_id,), f"LOMMA surrogate of {target_label}"),)
      for seed in cfg.seeds:
        a = b.load("attack.py", f"method={attack}", [("attack_overrides", cfg.attack_overrides)])
        a = dataclasses.replace(a, target=target_id, evaluator=eval_id, gan=gan_id, surrogates=surrogates)
        a = config_lib.replace(a, inversion__seed=seed)
        inputs = (target_id, eval_id, gan_id, *surrogates)
        attack_id = b.add("attack", a, inputs, f"{attack} on {target_label}, seed {seed}")
        cells.append(Cell(method, dict(setting), i, attack, seed, target_id, attack_id))
  order = sorted(b.stages.values(), key=lambda s: KINDS.index(s.kind))  # inputs' kinds come first in KINDS
  return Plan(stages={s.id: s for s in order}, cells=tuple(cells))


def parse_shard(text: str) -> tuple[int, int]:
  match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
  if not match or not int(match[1]) < int(match[2]):
    raise ConfigError(f"--shard: expected i/n with 0 <= i < n (e.g. 0/4), got {text!r}")
  return int(match[1]), int(match[2])


def shard_cells(cells, shard: tuple[int, int]) -> list:
  """Cell k belongs to shard k mod n: disjoint, together every cell, and each shard a mix of the grid."""
  i, n = shard
  return [c for k, c in enumerate(cells) if k % n == i]


# --- stage state ------------------------------------------------------------------------------------------------


def is_done(stage: Stage) -> bool:
  return (stage.directory / DONE).is_file()


def state(stage: Stage) -> str:
  """done (done.json) | finished (its entry point's last file, no done.json yet) | resume (checkpoints or saved
  attack state) | make."""
  d = stage.directory
  if (d / DONE).is_file():
    return "done"
  if (d / FINISHED[stage.kind]).is_file():
    return "finished"
  for sub in ("checkpoints", "attack_state", "pretrain/checkpoints"):
    if (d / sub).is_dir() and any((d / sub).iterdir()):
      return "resume"
  return "make"


def read_rates(workdir: Path) -> dict:
  try:
    return json.loads((workdir / RATES).read_text())
  except (OSError, ValueError):
    return {}


@contextlib.contextmanager
def _file_lock(path: Path):
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX)
    yield
  finally:
    os.close(fd)


def record_rate(workdir: Path, kind: str, seconds: float) -> None:
  """Adds one stage's seconds to <workdir>/rates.json (under a lock: several processes may finish at once)."""
  with _file_lock(workdir / ".rates.lock"):
    rates = read_rates(workdir)
    entry = rates.setdefault(kind, {"seconds": 0.0, "stages": 0})
    entry["seconds"] = round(entry["seconds"] + seconds, 3)
    entry["stages"] += 1
    write_json(workdir / RATES, rates)


def estimate(stages: list, rates: dict) -> str:
  """One line: the time the stages to make should take at the measured seconds per stage of their kind."""
  todo = [s for s in stages if state(s) not in ("done", "finished")]
  if not todo:
    return "estimate: nothing to run"
  known = [s for s in todo if rates.get(s.kind, {}).get("stages")]
  unknown: dict[str, int] = {}
  for s in todo:
    if s not in known:
      unknown[s.kind] = unknown.get(s.kind, 0) + 1
  if not known:
    return f"estimate: no estimate yet ({len(todo)} stages to run, no stage kind measured in this workdir)"
  per = {k: v["seconds"] / v["stages"] for k, v in rates.items() if v.get("stages")}
  seconds = sum(per[s.kind] for s in known)
  resuming = sum(state(s) == "resume" for s in known)
  line = (
    f"estimate: {_duration(seconds)} for {len(known)} stage{'s' * (len(known) != 1)} at the measured rates ("
    + ", ".join(f"{k} {per[k]:.0f} s" for k in KINDS if k in per)
  )
  line += ")" + (f", less for the {resuming} resumed" if resuming else "")
  if unknown:
    line += "; no estimate yet for " + ", ".join(f"{k} ({n})" for k, n in unknown.items())
  return line


def _duration(seconds: float) -> str:
  return (
    f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"
  )


VERBS = {"done": "reuse", "finished": "reuse", "resume": "resume", "make": None}


def describe(p: Plan, cells, workdir: Path, shard: tuple[int, int]) -> str:
  """The plan as lines: the cells, each stage with what the sweep does with it, and the estimate."""
  stages = p.needed(cells)
  states = {s.id: state(s) for s in stages}
  make = lambda s: "run" if s.kind == "attack" else "train"
  lines = [f"cells ({len(cells)} of {len(p.cells)}" + (f", shard {shard[0]}/{shard[1]}" if shard[1] > 1 else "") + "):"]
  for c in cells:
    verb = {"done": "done", "finished": "done"}.get(states[c.stage], "resume" if states[c.stage] == "resume" else "run")
    lines.append(f"  {verb:<7} {p.stages[c.stage].label}  ({c.stage})")
  reused = sum(VERBS[v] == "reuse" for v in states.values())
  lines.append(f"stages ({len(stages)}: {reused} reused, {len(stages) - reused} to train or run):")
  for s in stages:
    lines.append(f"  {VERBS[states[s.id]] or make(s):<7} {s.id:<26} {s.label}")
  lines.append(estimate(stages, read_rates(workdir)))
  return "\n".join(lines)


# --- claims -----------------------------------------------------------------------------------------------------


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # another user's process
    return True
  return True


# Tells this process's claims from those of an earlier process with the same pid on the same host.
PROCESS_TOKEN = uuid.uuid4().hex


class Claim:
  """A held claim: refreshes its file's mtime (the heartbeat) in a thread until released."""

  def __init__(self, path: Path, heartbeat: float):
    self.path = path
    self.released = False
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._beat, args=(heartbeat,), daemon=True)
    self._thread.start()

  def _beat(self, every: float) -> None:
    while not self._stop.wait(every):
      try:
        os.utime(self.path)
      except FileNotFoundError:  # expired and taken over: the other process runs the stage now
        log.warning(f"jaxmi: warning: the claim {self.path} was taken over (heartbeat stalled past the TTL)")
        return

  def release(self) -> None:
    """Removes the claim (once: a second call must not remove a claim another process made since)."""
    if self.released:
      return
    self.released = True
    self._stop.set()
    self._thread.join()
    stem, gen = self.path.name.rsplit(".", 1)
    for old in range(int(gen), -1, -1):  # this claim and the expired ones it replaced; never a newer one
      with contextlib.suppress(FileNotFoundError):
        os.unlink(self.path.with_name(f"{stem}.{old}"))

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.release()


class Claims:
  """Claim files in one directory: ``<stage>.<generation>``, created with O_CREAT | O_EXCL.

  The live claim of a stage is its highest generation. It expires when its owner is dead (same host: the pid is
  gone) or its mtime, refreshed every ``ttl / 4`` s while the owner runs, is older than ``ttl``; a claimer then
  creates the next generation, also with O_EXCL, so of two processes that both saw the claim expire exactly one
  gets the stage (no claim file is ever removed by anyone but its owner, so no race can remove a live one).
  """

  def __init__(self, directory: str | Path, *, ttl: float = 600.0, pid: int | None = None, host: str | None = None):
    self.directory = Path(directory)
    self.ttl = ttl
    self.pid = os.getpid() if pid is None else pid
    self.host = socket.gethostname() if host is None else host

  def _generations(self, sid: str) -> list[tuple[int, Path]]:
    out = []
    with contextlib.suppress(FileNotFoundError):
      for path in self.directory.iterdir():
        stem, _, gen = path.name.rpartition(".")
        if stem == sid and gen.isdigit():
          out.append((int(gen), path))
    return sorted(out)

  def holder(self, sid: str) -> dict | None:
    """The live claim's contents (pid, host, time), or None when the stage is free."""
    gens = self._generations(sid)
    if not gens or self.expired(gens[-1][1]):
      return None
    try:
      return json.loads(gens[-1][1].read_text() or "{}")
    except (OSError, ValueError):
      return {}

  def expired(self, path: Path) -> bool:
    try:
      age = time.time() - path.stat().st_mtime
      info = json.loads(path.read_text() or "{}")  # empty: being written this instant
    except FileNotFoundError:
      return True
    except (OSError, ValueError):
      info = {}
    if age > self.ttl:
      return True
    pid = info.get("pid")
    if info.get("host") != self.host or not isinstance(pid, int):
      return False  # another host's process: only its heartbeat tells
    if pid == self.pid:  # ours, or an earlier process that had our pid (a restarted container): the token tells
      return info.get("process") != PROCESS_TOKEN
    return not _alive(pid)

  def try_claim(self, sid: str) -> Claim | None:
    """The stage's claim if this process got it, else None (another live process holds it)."""
    self.directory.mkdir(parents=True, exist_ok=True)
    gens = self._generations(sid)
    gen = 0
    if gens:
      last, path = gens[-1]
      if not self.expired(path):
        return None
      gen = last + 1
      log.info(f"[sweep] {sid}: the claim {path.name} expired; taking the stage over")
    path = self.directory / f"{sid}.{gen}"
    try:
      fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      return None
    with os.fdopen(fd, "w") as f:
      json.dump(
        {"pid": self.pid, "host": self.host, "time": round(time.time(), 3), "stage": sid, "process": PROCESS_TOKEN}, f
      )
    return Claim(path, heartbeat=max(self.ttl / 4, 0.05))


# --- running ------------------------------------------------------------------------------------------------------


def execute_stage(stage: Stage, progress: bool = True) -> None:
  """Makes one stage through its ordinary entry point, in its locked directory (each resumes after a kill)."""
  from jaxmi.experiments.make import make

  with locked(stage.directory):
    if not (stage.directory / FINISHED[stage.kind]).is_file():  # else finished before a kill that came before done.json
      make(stage.config, stage.directory, progress=progress)


def _shared_directory(todo: list[Stage], stages: list[Stage], root: Path) -> tuple[list[Stage], Path]:
  """The stages to run as one program and the directory of its shared state.

  A stopped program's directory (``members.json`` naming its stages) is taken up again when its stages are all in
  this batch and include every unfinished one: a kill between two stages' outputs then loses nothing (the
  finished ones ride along unwritten, so the saved state still fits). Otherwise a new program of ``todo``."""
  by_id = {s.id: s for s in stages}
  wanted = {s.id for s in todo}
  for members_file in sorted(root.glob("*/members.json")) if root.is_dir() else ():
    try:
      ids = json.loads(members_file.read_text())["stages"]
    except (OSError, ValueError, KeyError, TypeError):
      continue  # written atomically, so only a damaged disk gets here: that program starts over
    if isinstance(ids, list) and wanted <= set(ids) <= set(by_id):
      return [by_id[i] for i in ids], members_file.parent
  directory = root / hashlib.sha256(" ".join(s.id for s in todo).encode()).hexdigest()[:16]
  directory.mkdir(parents=True, exist_ok=True)
  write_json(directory / "members.json", {"stages": [s.id for s in todo]})  # atomic
  return todo, directory


def _execute_together(stages: list[Stage], root: Path, run: Callable[[list[Stage], list[bool], Path], None]) -> None:
  """Locks every stage, runs the unfinished ones (``run(members, finish flags, shared state directory)``) as one
  program, and removes the shared state once every stage's outputs are written."""
  with contextlib.ExitStack() as stack:
    for s in stages:
      stack.enter_context(locked(s.directory))
    todo = [s for s in stages if not (s.directory / FINISHED[s.kind]).is_file()]
    if todo:
      members, directory = _shared_directory(todo, stages, root)
      run(members, [s in todo for s in members], directory)
      shutil.rmtree(directory, ignore_errors=True)


def execute_attacks(stages: list[Stage], workdir: Path, progress: bool = True) -> None:
  """Attacks of one ``batch_key`` as one program (``run_attacks``: the targets stacked, each architecture a program
  of its own), each in its locked directory; the shared attack state lives in <workdir>/stacks/."""
  from jaxmi.experiments.attack import run_attacks

  def run(members: list[Stage], finish: list[bool], directory: Path) -> None:
    configs, directories = [s.config for s in members], [s.directory for s in members]
    run_attacks(configs, directories, directory / "state", progress=progress, finish=finish)

  _execute_together(stages, workdir / "stacks", run)


def execute_grid(stages: list[Stage], workdir: Path, progress: bool = True) -> None:
  """Settings of one defense that differ only in its numeric hyper-parameters (``batch_key``) as one vmapped
  training program (``jaxmi.train.grid.train_grid``), each setting released into its stage's directory as the
  ``defend`` command would write it; the grid's own checkpoints live in <workdir>/grids/."""
  from jaxmi.train.grid import train_grid

  def run(members: list[Stage], finish: list[bool], directory: Path) -> None:
    release_to = [s.directory if f else None for s, f in zip(members, finish)]
    defenses = [s.config.defense for s in members]
    train_grid(members[0].config.target, defenses, directory / "grid", progress=progress, release_to=release_to)

  _execute_together(stages, workdir / "grids", run)


def execute_stages(stages: list[Stage], workdir: Path, progress: bool = True) -> None:
  """Stages of one ``batch_key`` as one program: attacks (``execute_attacks``) or a defense's settings
  (``execute_grid``)."""
  (execute_attacks if stages[0].kind == "attack" else execute_grid)(stages, workdir, progress)


def batch_key(stage: Stage) -> tuple:
  """Stages with equal keys run as one program when the sweep stacks (``run_sweep``'s ``stack``): attacks that
  differ only in their target and its surrogates (one method, prior, evaluation model, seed and settings: GMI
  against every defended target of one seed), and settings of one defense that differ only in its numeric
  hyper-parameters (MID's betas: ``jaxmi.train.grid``) with no first stage and the last epoch released. Every other
  stage, and one with saved state of its own (it resumes alone), is a batch of one."""
  if state(stage) == "resume":
    return (stage.id,)
  if stage.kind == "attack":
    from jaxmi.experiments.attack import stack_key

    return ("attack", stack_key(stage.config))
  cfg = stage.config
  if stage.kind == "defense" and cfg.pretrain is None and cfg.target.train.release == "last":
    from jaxmi.train.grid import grid_key

    if cfg.defense.hyper_fields:
      return ("defense", grid_key(cfg.target, cfg.defense))
  return (stage.id,)


def _run_batch(batch: list, workdir: Path, execute: Callable[[Stage], None], execute_many: Callable) -> None:
  """Runs claimed stages, several of one ``batch_key`` as one program (``execute_many``), and marks each done (a
  kill mid-batch keeps the finished ones; the caller releases the claims)."""
  todo = [stage for stage, _ in batch if not is_done(stage)]  # made by another process between check and claim
  fresh = {s.id: state(s) == "make" for s in todo}
  for stage in todo:
    stage.directory.mkdir(parents=True, exist_ok=True)
    if not (stage.directory / STAGE).is_file():
      write_json(
        stage.directory / STAGE,
        {"id": stage.id, "kind": stage.kind, "key": stage.key, "label": stage.label, "content": stage.content},
      )
  seconds = {}
  if len(todo) > 1:
    log.info(f"[sweep] {len(todo)} {todo[0].kind} stages in one program: {', '.join(s.label for s in todo)}")
    start = time.time()
    execute_many(todo)
    seconds = dict.fromkeys((s.id for s in todo), (time.time() - start) / len(todo))  # each its share
  for stage in todo:
    now = state(stage)
    if stage.id not in seconds:
      start = time.time()
      if now != "finished":  # "finished": killed after its outputs, before done.json
        log.info(f"[sweep] {'running' if fresh[stage.id] else 'resuming'} {stage.id}: {stage.label}")
        execute(stage)
      seconds[stage.id] = time.time() - start
    if not (stage.directory / FINISHED[stage.kind]).is_file():
      raise ConfigError(f"{stage.directory}: the {stage.kind} stage ended without its {FINISHED[stage.kind]}")
    write_json(
      stage.directory / DONE,
      {"id": stage.id, "seconds": round(seconds[stage.id], 3), "finished": time.time(), "host": socket.gethostname()},
    )
    if fresh[stage.id]:
      record_rate(workdir, stage.kind, seconds[stage.id])


def run_sweep(
  cfg: SweepConfig,
  workdir: str | Path,
  *,
  shard: tuple[int, int] = (0, 1),
  dry_run: bool = False,
  progress: bool = True,
  claim_ttl: float = 600.0,
  poll_seconds: float = 5.0,
  execute: Callable[[Stage], None] | None = None,
  execute_many: Callable[[list], None] | None = None,
  stack: int = 1,
) -> list[dict]:
  """Plans the grid, makes what this process's cells need (skipping what is done, waiting for what another process
  holds) and writes the table and plots of every finished cell; returns the table's rows. ``dry_run``: log the plan
  and return [] (nothing written). ``stack``: at most this many stages of one ``batch_key`` run as one program: one
  method and seed on several targets (``run_attacks``), one defense's settings (``train_grid``); 1: each alone. ``execute`` / ``execute_many`` replace
  the stage runner and the runner of stacked stages (tests)."""
  workdir = Path(workdir).absolute()
  p = plan(cfg, workdir)
  cells = shard_cells(p.cells, shard)
  log.info(
    f"[{cfg.name}] {cfg.data}: {sum(map(len, cfg.defenses.values()))} defense settings x {len(cfg.attacks)} attacks "
    f"x {len(cfg.seeds)} seeds = {len(p.cells)} cells\n" + describe(p, cells, workdir, shard)
  )
  if dry_run:
    return []
  if stack < 1:
    raise ConfigError(f"stack: expected at least 1 stage per program, got {stack}")
  run = execute or (lambda stage: execute_stage(stage, progress))
  run_many = execute_many or (lambda stages: execute_stages(stages, workdir, progress))
  workdir.mkdir(parents=True, exist_ok=True)
  _atomic(workdir / "sweep.json", json.dumps({"name": cfg.name, "config": _sweep_dict(cfg)}, indent=2) + "\n")
  claims = Claims(workdir / CLAIMS, ttl=claim_ttl)
  # A ready attack goes before any training that other cells still need: cells finish one by one and the table
  # fills up from the start (GMI's cells need no GAN per target and finish first), instead of every GAN first.
  pending = sorted((s for s in p.needed(cells) if not is_done(s)), key=lambda s: s.kind != "attack")
  waited = set()
  while pending:
    batch = []
    for s in pending:
      if is_done(s) or not all(is_done(p.stages[i]) for i in s.inputs):
        continue
      if batch and (batch_key(s) != batch_key(batch[0][0]) or len(batch) >= stack):
        continue
      claim = claims.try_claim(s.id)
      if claim is None:
        if s.id not in waited:
          log.info(f"[sweep] {s.id}: held by another process ({claims.holder(s.id)}); doing other stages first")
          waited.add(s.id)
        continue
      batch.append((s, claim))
    if batch:
      try:
        _run_batch(batch, workdir, run, run_many)
      except WorkdirBusyError as e:  # the directory is locked by a process whose claim we judged expired
        log.warning(f"jaxmi: warning: {e}; waiting for it")
        time.sleep(poll_seconds)
      finally:
        for _, claim in batch:
          claim.release()
    else:
      time.sleep(poll_seconds)
    pending = [s for s in pending if not is_done(s)]
  rows = write_results(p, workdir)
  log.info(f"[{cfg.name}] {len(rows)} rows in {workdir}/table.md (table.csv, table.json, tradeoff.png, knn.png)")
  return rows


def _sweep_dict(cfg: SweepConfig) -> dict:
  return json.loads(json.dumps(dataclasses.asdict(cfg)))


# --- results ------------------------------------------------------------------------------------------------------

COLUMNS = (
  "defense",
  "setting",
  "natural_acc",
  "attack",
  "acc1",
  "acc1_std",
  "acc5",
  "acc5_std",
  "knn_dist",
  "knn_dist_std",
  "baseline_acc1",
  "delta_acc1",
  "seeds",
  "seeds_planned",
  "target",
)


# Defense-config fields that are not settings a reader compares (as jaxmi.report: the name has its own column, DP-SGD's
# noise seed and delta are not strengths).
NOT_SETTINGS = ("name", "seed", "delta")


def _number(value) -> float:
  return float(value)  # jaxmi writes non-finite floats as "nan" / "inf", which float() reads back


def _effective_setting(summary: dict, setting: dict) -> str:
  """The defended target's settings as it recorded them (summary.json), else the recipe's setting."""
  cfg = {k: v for k, v in (summary.get("defense_config") or {}).items() if k not in NOT_SETTINGS}
  parts = [f"{k}={v}" for k, v in cfg.items() if not isinstance(v, (list, dict))]
  return ", ".join(parts) or _setting_text(setting)


def table_rows(p: Plan) -> list[dict]:
  """One row per (defense setting, attack) with a finished seed: the mean and sample std (ddof=1, as jaxmi.report)
  over its finished seeds of the attack's acc@1, acc@5 and KNN distance over all reconstructions, and the prior
  baseline's acc@1 with the attack's gain over it."""
  from jaxmi.metrics.attack import over_seeds

  groups: dict[tuple, list[Cell]] = {}
  for c in p.cells:
    groups.setdefault((c.defense, c.setting_index, c.attack), []).append(c)
  rows = []
  for (defense, _, attack), cells in groups.items():
    finished = [p.stages[c.stage].directory for c in cells if is_done(p.stages[c.stage])]
    if not finished:
      continue
    results = [json.loads((d / "results.json").read_text()) for d in finished]
    summary = json.loads((p.stages[cells[0].target].directory / "summary.json").read_text())
    baseline = lambda r: r["prior_baseline"] if isinstance(r.get("prior_baseline"), dict) else None
    n = over_seeds([(r, baseline(r)) for r in results])
    rows.append(
      {
        "defense": defense,
        "setting": _effective_setting(summary, cells[0].setting) if defense != "none" else "",
        "grid_setting": _setting_text(cells[0].setting),  # as the recipe spells it: what the plots label
        "natural_acc": _number(summary["natural_accuracy"]),
        "attack": attack,
        **{k: n[k] for k in ("acc1", "acc1_std", "acc5", "acc5_std", "knn_dist", "knn_dist_std")},
        **{k: n[k] for k in ("baseline_acc1", "delta_acc1")},
        "seeds": len(finished),
        "seeds_planned": len(cells),
        "target": cells[0].target,
        "grid": str(finished[0] / "grid.png"),
      }
    )
  return rows


def _pct(v, s=None) -> str:
  if v is None or (isinstance(v, float) and math.isnan(v)):
    return ""
  return f"{100 * v:.1f}%" + (f" ± {100 * s:.1f}" if s is not None else "")


def markdown(rows: list[dict], total_cells: int) -> str:
  lines = [
    "| defense | setting | natural acc | attack | acc@1 | acc@5 | KNN dist | Δacc@1 vs prior | seeds |",
    "|---|---|---|---|---|---|---|---|---|",
  ]
  for r in rows:
    knn = "" if r["knn_dist"] is None else f"{r['knn_dist']:.2f}"
    delta = "" if r["delta_acc1"] is None else f"{100 * r['delta_acc1']:+.1f}"
    lines.append(
      f"| {r['defense']} | {r['setting']} | {_pct(r['natural_acc'])} | {r['attack']} | "
      f"{_pct(r['acc1'], r['acc1_std'])} | {_pct(r['acc5'], r['acc5_std'])} | {knn} | {delta} | "
      f"{r['seeds']}/{r['seeds_planned']} |"
    )
  done = sum(r["seeds"] for r in rows)
  note = f"\n\n{done} of {total_cells} cells finished; acc@1 / acc@5 over all reconstructions, mean ± std over seeds."
  return "\n".join(lines) + note


def _atomic(path: Path, text: str) -> None:
  tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # several processes may write the table at once
  tmp.write_text(text)
  os.replace(tmp, path)


def write_results(p: Plan, workdir: Path) -> list[dict]:
  """table.md, table.csv, table.json and the plots, from every finished cell (any process's)."""
  import io

  rows = table_rows(p)
  _atomic(workdir / "table.md", markdown(rows, len(p.cells)) + "\n")
  out = io.StringIO()
  writer = csv.DictWriter(out, fieldnames=COLUMNS, extrasaction="ignore")
  writer.writeheader()
  writer.writerows([{k: "" if r[k] is None else r[k] for k in COLUMNS} for r in rows])
  _atomic(workdir / "table.csv", out.getvalue())
  _atomic(workdir / "table.json", json.dumps({"cells": len(p.cells), "rows": rows}, indent=2) + "\n")
  if rows:
    from jaxmi import plots

    labelled = [{**r, "label": _row_label(r), "acc1_text": _pct(r["acc1"])} for r in rows]
    plots.sweep_tradeoff(labelled, workdir / "tradeoff.png", pareto_front)
    plots.sweep_knn(labelled, workdir / "knn.png")
    plots.sweep_reconstructions(labelled, workdir / "reconstructions.png")
  return rows


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
  """Indices of the points no other point beats: higher natural accuracy (x) and lower attack accuracy (y)."""
  front = []
  for i, (x, y) in enumerate(points):
    beaten = any(xo >= x and yo <= y and (xo > x or yo < y) for j, (xo, yo) in enumerate(points) if j != i)
    if not beaten:
      front.append(i)
  return sorted(front, key=lambda i: points[i][0])


def _row_label(r: dict) -> str:
  """The defense and the setting's fields the recipe names (not every field of the defense: labels stay short)."""
  return f"{r['defense']} {r['grid_setting']}" if r.get("grid_setting") else r["defense"]
