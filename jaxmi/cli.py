"""``bin/jaxmi``: the command-line entry point.

Every user error (bad config field, missing data, wrong checkpoint) prints one line
``jaxmi: error: ...`` to stderr and exits with status 2; nothing already written is touched.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from jaxmi.errors import JaxmiError

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def _add_common(p: argparse.ArgumentParser, *, config: bool = True, workdir: bool | str = True) -> None:
  # Commands that write nothing of their own (evaluate, prepare-data) or write next to their input
  # (fisher: --out) take no --workdir: a flag that is silently ignored misleads.
  if config:
    p.add_argument(
      "--config",
      required=True,
      help="experiment config, a recipe and its arguments: configs/<recipe>.py:key=value,... "
      "(e.g. configs/defense.py:method=mid,data=mnist)",
    )
    p.add_argument(
      "overrides",
      nargs="*",
      metavar="field=value",
      help="config overrides, e.g. train.epochs=2 data.private_ids=0:20 (anywhere on the line)",
    )
  if workdir is True:  # a run's outputs: where is the run's argument, never a config field (flax's workdir)
    p.add_argument(
      "--workdir", required=True, help="output directory: checkpoints, metrics, results, plots (locked while running)"
    )
  elif workdir:
    p.add_argument("--workdir", default=workdir, help=f"output directory (default: {workdir})")
  p.add_argument(
    "--data-dir",
    help="directory holding the raw datasets: reads DIR/<dataset>, winning over the config's "
    "data.data_dir (default: data.data_dir, else $JAXMI_DATA_DIR, else ~/jaxmi_data)",
  )
  p.add_argument(
    "--cache-dir",
    help="where prepared datasets are kept, winning over the config's data.cache_dir "
    "(default: data.cache_dir, else $JAXMI_CACHE_DIR, else ~/.cache/jaxmi)",
  )
  p.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")


def _add_allow_config_change(p: argparse.ArgumentParser) -> None:
  p.add_argument(
    "--allow-config-change",
    action="store_true",
    help="resume a checkpoint even though the config differs in fields that change what is trained",
  )


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
    prog="jaxmi",
    description="Model-inversion attacks and defenses in JAX.",
    epilog="A config is a recipe under configs/ (classifier, gan, surrogate, attack, defense, gnime) and its "
    "arguments, e.g. --config configs/attack.py:method=gmi,data=mnist; each recipe's docstring lists them.",
  )
  sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

  p = sub.add_parser("train-classifier", help="train a target or evaluation classifier on the private split")
  _add_common(p)
  _add_allow_config_change(p)

  p = sub.add_parser("train-gan", help="train a GAN prior on the PUBLIC split (GMI's WGAN-GP or KEDMI's)")
  _add_common(p)
  _add_allow_config_change(p)
  p.add_argument(
    "--kind",
    choices=("gmi", "kedmi", "plg"),
    help="gmi: WGAN-GP; kedmi: inversion-specific GAN that learns the target's soft labels "
    "(default: the config's kind)",
  )

  p = sub.add_parser("distill", help="distil a surrogate of the target on PUBLIC data (LOMMA)")
  _add_common(p)
  _add_allow_config_change(p)

  p = sub.add_parser("attack", help="invert a target: every identity x restart in one compiled program")
  _add_common(p)
  p.add_argument("--overwrite", action="store_true", help="replace results already in the workdir")
  p.add_argument(
    "--fid-weights",
    help="pytorch-fid's pt_inception-2015-12-05-6726825d.pth: the papers' FID and PRDC in Inception-v3 features "
    "(sets evaluation.fid_weights)",
  )
  p.add_argument(
    "--targets",
    help="W1,W2,...: attack these target workdirs (instead of the config's target) in one compiled program per "
    "architecture; each one's results go to WORKDIR/<its directory name>/",
  )

  p = sub.add_parser(
    "protocol",
    help="one table of the standard protocol (configs/protocol.py:what=table,...): trains or uses the networks, "
    "runs (or resumes) every attack, writes table.md, table.csv and Eval_results.csv",
  )
  _add_common(p)
  p.add_argument(
    "--fid-weights", help="pytorch-fid's pt_inception-2015-12-05-6726825d.pth: the papers' FID (sets fid_weights)"
  )
  p.add_argument("--plan", action="store_true", help="print what would be trained, used and run; write nothing")

  p = sub.add_parser(
    "sweep",
    help="a defense x setting x attack x seed grid (configs/sweep.py:data=...,size=...): trains what is missing, "
    "reuses what exists (keyed by config content), runs every attack, writes table.md/.csv/.json and plots",
  )
  p.add_argument("recipe", help="the sweep recipe and its arguments, e.g. configs/sweep.py:data=mnist,size=full")
  p.add_argument("workdir", help="the sweep directory: artifacts/, claims/, rates.json, the table and plots")
  p.add_argument("overrides", nargs="*", metavar="field=value", help="overrides of the recipe's fields, e.g. seeds=0,1")
  p.add_argument("--dry-run", action="store_true", help="print the cells, what is reused or made, and a time estimate")
  p.add_argument("--shard", default="0/1", help="i/n: this process takes the cells k with k mod n = i (default 0/1)")
  p.add_argument(
    "--claim-ttl",
    type=float,
    default=600.0,
    help="seconds without a heartbeat after which another process's claim on a stage expires (default 600)",
  )
  p.add_argument(
    "--stack",
    default="auto",
    help="at most this many attacks of one method and seed on several targets run as one program (default auto: "
    "8 on a GPU/TPU, 1 on a CPU, where stacked targets measured 0.86-0.95x the speed of separate runs)",
  )
  _add_common(p, config=False, workdir=False)

  p = sub.add_parser(
    "defend", help="train a defended target (configs/defense.py:method=...,data=...); reports natural accuracy"
  )
  _add_common(p)
  _add_allow_config_change(p)

  p = sub.add_parser("fisher", help="per-layer diagonal Fisher information of a classifier (TL-DMI's analysis)")
  p.add_argument("checkpoint_workdir", help="workdir of a trained classifier")
  p.add_argument("--split", choices=("private_train", "private_test"), default="private_train")
  p.add_argument("--examples", type=int, default=512, help="examples to average over (0 = the whole split)")
  p.add_argument(
    "--labels",
    choices=("true", "sampled"),
    default="true",
    help="true: empirical Fisher; sampled: labels drawn from the model's prediction",
  )
  p.add_argument("--out", help="output prefix (default: <workdir>/fisher_<split>); writes .json and .png")
  _add_common(p, config=False, workdir=False)

  p = sub.add_parser("gnime", help="train GNIME for a target and evaluate it against adaptive explanation inversion")
  _add_common(p)
  _add_allow_config_change(p)
  p.add_argument("--overwrite", action="store_true", help="replace results already in the workdir")

  p = sub.add_parser("report", help="one table + plot of natural accuracy vs attack results over attack workdirs")
  p.add_argument("attack_workdirs", nargs="+", help="attack workdirs; runs on the same target are seeds")
  p.add_argument("--out", required=True, help="output prefix: writes <out>.md, <out>.csv and <out>.png")
  p.add_argument("--title", default="defenses vs attacks")

  p = sub.add_parser("evaluate", help="natural accuracy of a trained classifier on its private test split")
  p.add_argument("checkpoint_workdir", help="workdir of a trained classifier")
  _add_common(p, config=False, workdir=False)

  p = sub.add_parser("prepare-data", help="download (if needed), verify and prepare a dataset")
  p.add_argument("dataset", choices=("mnist", "att_faces", "image_folder", "idx", "celeba", "ffhq", "facescrub"))
  p.add_argument(
    "--root",
    help="image_folder: the root directory <root>/<identity>/<image>; idx: the folder of "
    "the four IDX files (default: <--data-dir or $JAXMI_DATA_DIR>/<dataset>)",
  )
  # image_folder stores its images at the run's size: these must equal the config's data fields
  # (the DataConfig defaults below) for a run to reuse what this prepares.
  p.add_argument("--image-size", type=int, default=32, help="image_folder: data.image_size of the runs (default 32)")
  p.add_argument(
    "--channels", type=int, choices=(1, 3), default=1, help="image_folder: data.channels of the runs (default 1)"
  )
  p.add_argument(
    "--crop",
    default="",
    help="image_folder: data.crop of the runs, 'top,left,height,width' (default: the centre square)",
  )
  _add_common(p, config=False, workdir=False)

  p = sub.add_parser(
    "import-torch", help="a published PyTorch classifier (.tar/.pth/.safetensors) as a jaxmi workdir, without torch"
  )
  p.add_argument("checkpoint", help="the PyTorch file (zip or legacy format, or safetensors)")
  p.add_argument("workdir", help="the jaxmi workdir to write (must not hold a model yet)")
  p.add_argument(
    "--arch",
    required=True,
    help="classifiers: vgg16, ir152_64, facenet64, facenet112, efficientnet_b0/b1/b2; "
    "GAN priors: gmi_gan, kedmi_gan (CHECKPOINT = the generator, --critic = the critic / discriminator)",
  )
  p.add_argument("--critic", help="gmi_gan / kedmi_gan: the critic's or discriminator's file (celeba_D.tar, ...)")
  p.add_argument("--num-classes", type=int, help="classes of the head (default: read from the head's weight)")
  # Classifier-only flags default to None so that one given with a GAN arch is refused, not silently ignored.
  p.add_argument("--head", choices=("linear", "vib"), help="vib: MID's *_vib models (default: linear)")
  p.add_argument("--role", choices=("target", "evaluation", "surrogate"), help="(default: target)")
  p.add_argument("--name", help="the model's name (default: the file's stem)")

  p = sub.add_parser("predict", help="logits and features of a classifier workdir for images in a .npy file")
  p.add_argument("checkpoint_workdir", help="workdir of a trained or imported classifier")
  p.add_argument("--images", required=True, help=".npy of float32 images [N, H, W, C] in [0, 1]")
  p.add_argument("--out", required=True, help="the .npz to write (arrays logits and features)")
  p.add_argument("--batch-size", type=int, default=256)

  p = sub.add_parser("demo", help="a few-minute end-to-end run on MNIST (or scikit-learn digits)")
  _add_common(p, config=False, workdir="runs/demo")
  p.add_argument("--epochs", type=int, default=1, help="classifier epochs (default 1)")
  return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  """Parses the command line; ``field=value`` overrides may come anywhere, also after options.

  argparse fills the ``overrides`` positional only from the first run of positionals, so later ones
  come back unrecognised; those of the form field=value are appended, in order, to the overrides.
  """
  parser = build_parser()
  args, extra = parser.parse_known_args(argv)
  unknown = [a for a in extra if a.startswith("-") or "=" not in a or not hasattr(args, "overrides")]
  if unknown:
    parser.error(f"unrecognized arguments: {' '.join(unknown)}")
  if extra:
    args.overrides = [*args.overrides, *extra]
  return args


class _StdHandler(logging.StreamHandler):
  """Writes to ``sys.stdout`` or ``sys.stderr`` as they are when a line is logged (tests swap them)."""

  def __init__(self, which: str, level: int, below: int | None = None):
    super().__init__()
    self.which = which
    self.setLevel(level)
    self.setFormatter(logging.Formatter("%(message)s"))
    if below is not None:
      self.addFilter(lambda record: record.levelno < below)

  def emit(self, record):
    self.stream = getattr(sys, self.which)
    super().emit(record)


def _log_to_stdout():
  """jaxmi's log lines (loggers under "jaxmi") as plain lines: progress to stdout, warnings to stderr.

  Other libraries' loggers are left alone. Returns a function that puts the "jaxmi" logger back as it was:
  ``main`` run in-process (tests) must not leave it unpropagated, nor print every line twice when run again.
  """
  logger = logging.getLogger("jaxmi")
  before = (list(logger.handlers), logger.level, logger.propagate)
  ours = [_StdHandler("stdout", logging.INFO, below=logging.WARNING), _StdHandler("stderr", logging.WARNING)]
  logger.handlers[:] = [h for h in logger.handlers if not isinstance(h, _StdHandler)] + ours
  logger.setLevel(logging.INFO)
  logger.propagate = False

  def restore() -> None:
    logger.handlers[:], logger.level, logger.propagate = before

  return restore


def main(argv: list[str] | None = None) -> int:
  args = parse_args(argv)
  restore_logging = _log_to_stdout()
  # Flags win over the config's data.data_dir/data.cache_dir (resolved where data loads, in jaxmi.data).
  if getattr(args, "data_dir", None):
    from jaxmi.data.sources import FLAG_DATA_DIR_ENV

    os.environ["JAXMI_DATA_DIR"] = os.environ[FLAG_DATA_DIR_ENV] = str(Path(args.data_dir).absolute())
  if getattr(args, "cache_dir", None):
    from jaxmi.data.sources import FLAG_CACHE_DIR_ENV

    os.environ["JAXMI_CACHE_DIR"] = os.environ[FLAG_CACHE_DIR_ENV] = str(Path(args.cache_dir).absolute())
  if getattr(args, "no_progress", False):
    from jaxmi.data.download import PROGRESS_ENV

    os.environ[PROGRESS_ENV] = "0"  # TFDS's data-preparation bars too
  try:
    return COMMANDS[args.command](args)
  except JaxmiError as e:
    print(f"jaxmi: error: {e}", file=sys.stderr)
    return EXIT_USER_ERROR
  except KeyboardInterrupt as e:
    print(f"jaxmi: {e or 'interrupted'}", file=sys.stderr)
    return EXIT_INTERRUPTED
  finally:
    restore_logging()


def _train_classifier(args) -> int:
  from jaxmi.train import train_classifier

  from jaxmi.workdir import locked

  cfg = _load(args)
  with locked(args.workdir):
    train_classifier(cfg, args.workdir, progress=not args.no_progress, allow_config_change=args.allow_config_change)
  return 0


def _load(args):
  from jaxmi import config as config_lib

  return config_lib.load_config(args.config, args.overrides)


def _train_gan(args) -> int:
  from jaxmi.train.gan import train_gan

  from jaxmi import config as config_lib

  cfg = _load(args)
  if args.kind:
    cfg = config_lib.replace(cfg, kind=args.kind)
  from jaxmi.workdir import locked

  with locked(args.workdir):
    train_gan(cfg, args.workdir, progress=not args.no_progress, allow_config_change=args.allow_config_change)
  return 0


def _distill(args) -> int:
  from jaxmi.train.distill import distill_surrogate

  from jaxmi.workdir import locked

  cfg = _load(args)
  with locked(args.workdir):
    distill_surrogate(
      cfg.student,
      args.workdir,
      cfg.teacher,
      temperature=cfg.temperature,
      holdout_fraction=cfg.holdout_fraction,
      progress=not args.no_progress,
      allow_config_change=args.allow_config_change,
    )
  return 0


def _attack(args) -> int:
  from jaxmi import parallel

  parallel.cpu_device_per_core()  # on a CPU host, latents shard over its cores (before any JAX op)
  parallel.initialize_distributed()  # one process per host/GPU: latents shard over all of them
  from jaxmi.experiments.attack import run_attack

  import jax
  from jaxmi.workdir import locked

  cfg = _load(args)
  if args.fid_weights:
    import dataclasses

    cfg = dataclasses.replace(cfg, evaluation=dataclasses.replace(cfg.evaluation, fid_weights=args.fid_weights))
  if args.targets:
    return _attack_targets(cfg, args)
  with locked(args.workdir if jax.process_index() == 0 else None):  # only process 0 writes the workdir
    run_attack(cfg, args.workdir, progress=not args.no_progress, overwrite=args.overwrite)
  return 0


def _attack_targets(cfg, args) -> int:
  """``attack --targets W1,W2,...``: the config's attack on several targets, stacked per architecture."""
  import dataclasses
  from pathlib import Path

  from jaxmi.errors import ConfigError
  from jaxmi.experiments.attack import run_attacks
  from jaxmi.workdir import locked

  targets = [t for t in args.targets.split(",") if t]
  names = [Path(t.rstrip("/")).name for t in targets]
  if len(set(names)) < len(names):
    raise ConfigError(f"--targets: directory names must differ (each names its results directory), got {names}")
  if cfg.surrogates:
    raise ConfigError(
      "surrogates: LOMMA's surrogates are distilled from one target; with --targets attack each target with its "
      "own surrogates through bin/jaxmi sweep, or run them one at a time"
    )
  if args.overwrite:
    raise ConfigError("--overwrite: not with --targets; remove the result directories to attack those targets again")
  cfgs = [dataclasses.replace(cfg, name=f"{cfg.name}_{n}", target=t) for n, t in zip(names, targets)]
  root = Path(args.workdir)
  with locked(root):
    dirs = [root / n for n in names]
    # a rerun after a kill between two targets' outputs: those written stay, the others resume from the shared state
    finish = [not (d / "results.json").exists() for d in dirs]
    if not any(finish):
      raise ConfigError(f"{root}: every target already has its results.json; choose another --workdir")
    run_attacks(cfgs, dirs, root / "stack_state", progress=not args.no_progress, finish=finish)
  return 0


def _protocol(args) -> int:
  from jaxmi import parallel

  parallel.cpu_device_per_core()  # on a CPU host, the attacks' latents shard over its cores (before any JAX op)
  from jaxmi.experiments.protocol import ProtocolConfig, run_protocol

  from jaxmi import config as config_lib
  from jaxmi.errors import ConfigError
  from jaxmi.workdir import locked

  cfg = _load(args)
  if not isinstance(cfg, ProtocolConfig):
    raise ConfigError(f"{args.config}: get_config() returned {type(cfg).__name__}; expected a table (what=table,...)")
  if args.fid_weights:
    cfg = config_lib.replace(cfg, fid_weights=args.fid_weights)
  if args.plan:
    run_protocol(cfg, args.workdir, dry_run=True)
    return 0
  with locked(args.workdir):  # the networks' workdirs are locked one by one while they train
    run_protocol(cfg, args.workdir, progress=not args.no_progress)
  return 0


def _sweep(args) -> int:
  from jaxmi import parallel
  from jaxmi.experiments.sweep import SweepConfig, parse_shard, run_sweep

  from jaxmi import config as config_lib
  from jaxmi.errors import ConfigError

  shard = parse_shard(args.shard)
  if not args.claim_ttl > 0:
    raise ConfigError(f"--claim-ttl: expected a positive number of seconds, got {args.claim_ttl}")
  cfg = config_lib.load_config(args.recipe, args.overrides)
  if not isinstance(cfg, SweepConfig):
    raise ConfigError(f"{args.recipe}: get_config() returned {type(cfg).__name__}; expected a SweepConfig")
  if args.stack != "auto" and not (args.stack.isdigit() and int(args.stack) >= 1):
    raise ConfigError(f"--stack: expected 'auto' or a number of attacks per program >= 1, got {args.stack!r}")
  if not args.dry_run:
    parallel.cpu_device_per_core()  # on a CPU host, the attacks' latents shard over its cores (before any JAX op)
  import jax

  stack = int(args.stack) if args.stack != "auto" else (1 if jax.default_backend() == "cpu" else 8)
  run_sweep(
    cfg,
    args.workdir,
    shard=shard,
    dry_run=args.dry_run,
    progress=not args.no_progress,
    claim_ttl=args.claim_ttl,
    stack=stack,
  )
  return 0


def _defend(args) -> int:
  from jaxmi.experiments.defend import DefendConfig, defend

  from jaxmi import config as config_lib
  from jaxmi.errors import ConfigError

  cfg = config_lib.load_config(args.config, args.overrides)
  if not isinstance(cfg, DefendConfig):
    raise ConfigError(f"{args.config}: get_config() returned {type(cfg).__name__}; expected a DefendConfig")
  from jaxmi.workdir import locked

  with locked(args.workdir):  # also covers the first stage's <workdir>/pretrain
    defend(cfg, args.workdir, progress=not args.no_progress, allow_config_change=args.allow_config_change)
  return 0


def _fisher(args) -> int:
  from jaxmi.data import load_splits
  from jaxmi import plots
  from jaxmi.metrics.fisher import format_table, layer_fisher
  from jaxmi.records import write_json
  from jaxmi.train import load_classifier

  clf = load_classifier(args.checkpoint_workdir)
  split = getattr(load_splits(clf.config.data), args.split)
  rows = layer_fisher(clf, split, max_examples=args.examples, labels=args.labels)
  out = args.out or str(Path(args.checkpoint_workdir) / f"fisher_{args.split}")
  title = f"{clf.config.name}: diagonal Fisher ({args.labels} labels) on {args.split}"
  write_json(
    out + ".json",
    {
      "classifier": str(args.checkpoint_workdir),
      "split": args.split,
      "labels": args.labels,
      "examples": min(args.examples or len(split), len(split)),
      "layers": rows,
    },
  )
  plots.fisher_layers(rows, out + ".png", title)
  print(title)
  print(format_table(rows))
  print(f"written: {out}.json, {out}.png")
  return 0


def _gnime(args) -> int:
  from jaxmi.experiments.gnime import run_gnime

  from jaxmi.workdir import locked

  cfg = _load(args)
  with locked(args.workdir):
    run_gnime(
      cfg,
      args.workdir,
      progress=not args.no_progress,
      overwrite=args.overwrite,
      allow_config_change=args.allow_config_change,
    )
  return 0


def _report(args) -> int:
  from jaxmi.report import markdown, write_report

  rows = write_report(args.attack_workdirs, args.out, args.title)
  print(markdown(rows))
  print(f"written: {args.out}.md, {args.out}.csv, {args.out}.png")
  return 0


def _evaluate(args) -> int:
  from jaxmi.data import load_splits
  from jaxmi.train import evaluate, load_classifier, make_eval_step

  clf = load_classifier(args.checkpoint_workdir)
  splits = load_splits(clf.config.data)
  result = evaluate(make_eval_step(clf.module), clf.variables, splits.private_test, 500)
  print(
    f"{clf.config.name}: private test top-1 {100 * result['acc']:.2f}%  top-5 {100 * result['acc5']:.2f}%  "
    f"({result['count']} images)"
  )
  return 0


def _prepare_data(args) -> int:
  from jaxmi.data import prepare
  from jaxmi.data import preprocess
  from jaxmi.errors import ConfigError

  if args.image_size < 1:
    raise ConfigError(f"--image-size: {args.image_size} must be >= 1")
  try:
    crop = tuple(int(v) for v in args.crop.split(",")) if args.crop.strip() else ()
  except ValueError:
    raise ConfigError(f"--crop: expected 'top,left,height,width', got '{args.crop}'") from None
  if crop:
    preprocess.check_crop_form(crop)
  # The same size, channels and crop as a run's data config give the same prepared folder (cache key).
  print(prepare(args.dataset, data_dir=args.root, image_size=args.image_size, channels=args.channels, crop=crop))
  return 0


def _demo(args) -> int:
  from jaxmi.demo import run_demo

  from jaxmi.workdir import locked

  with locked(args.workdir):
    run_demo(workdir=args.workdir, epochs=args.epochs, progress=not args.no_progress)
  return 0


def _import_torch(args) -> int:
  from jaxmi.errors import ConfigError
  from jaxmi.experiments.import_torch import GANS, import_classifier, import_gan
  from jaxmi.workdir import locked

  if args.arch in GANS:
    classifier_flags = {"--num-classes": args.num_classes, "--head": args.head, "--role": args.role}
    given = [flag for flag, value in classifier_flags.items() if value is not None]
    if given:
      raise ConfigError(f"{', '.join(given)}: only for classifiers, not the GAN arch {args.arch}")
    if not args.critic:
      raise ConfigError(f"--critic: {args.arch} needs the critic's file too (e.g. celeba_D.tar)")
    with locked(args.workdir):
      import_gan(args.arch, args.checkpoint, args.critic, args.workdir, name=args.name)
    return 0
  if args.critic:
    raise ConfigError(f"--critic: only for the GAN archs ({', '.join(GANS)}), not {args.arch}")
  with locked(args.workdir):
    import_classifier(
      args.arch,
      args.checkpoint,
      args.workdir,
      num_classes=args.num_classes,
      head=args.head or "linear",
      role=args.role or "target",
      name=args.name,
    )
  return 0


def _predict(args) -> int:
  from jaxmi.experiments.import_torch import predict

  predict(args.checkpoint_workdir, args.images, args.out, args.batch_size)
  return 0


COMMANDS = {
  "train-classifier": _train_classifier,
  "train-gan": _train_gan,
  "distill": _distill,
  "attack": _attack,
  "protocol": _protocol,
  "defend": _defend,
  "sweep": _sweep,
  "fisher": _fisher,
  "gnime": _gnime,
  "report": _report,
  "evaluate": _evaluate,
  "prepare-data": _prepare_data,
  "import-torch": _import_torch,
  "predict": _predict,
  "demo": _demo,
}
