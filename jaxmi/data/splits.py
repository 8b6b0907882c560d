"""Identity splits for model inversion: private (target) vs public (prior)."""

import dataclasses

import numpy as np

from jaxmi.data import preprocess as preprocess_lib
from jaxmi.data import sources
from jaxmi.errors import ConfigError

# Used when test_fraction is 0 for a dataset without an official test split.
DEFAULT_TEST_FRACTION = 0.2


@dataclasses.dataclass(frozen=True, kw_only=True)
class DataConfig:
  """Which dataset, where its files are, and how to split and preprocess it.

  test_fraction > 0 holds out that fraction of each private identity's
  (training-split) images as private_test, at least one per identity.
  test_fraction 0 means "the dataset's own test split": mnist's official test
  images of the private identities; datasets without one (att_faces,
  image_folder, sklearn_digits) then hold out DEFAULT_TEST_FRACTION (0.2),
  because a target model without a test set cannot be evaluated and an error
  would only make every such config repeat 0.2.
  """

  dataset: sources.DatasetName = "mnist"
  # Raw files; None -> $JAXMI_DATA_DIR/<dataset> else ~/jaxmi_data/<dataset>.
  # For image_folder it is the root holding one folder per identity; for idx the folder
  # holding the four MNIST-format files. The command line's --data-dir D wins (D/<dataset>).
  data_dir: str | None = None
  # Prepared TFDS files; None -> $JAXMI_CACHE_DIR else ~/.cache/jaxmi; --cache-dir wins.
  cache_dir: str | None = None
  download: bool = True
  image_size: int = 32  # output height = width
  channels: int = 1  # 1 or 3
  # (top, left, height, width) applied before resizing; () = centre square.
  crop: tuple[int, ...] = ()
  private_ids: tuple[int, ...] = (0, 1, 2, 3, 4)  # original labels, target's
  public_ids: tuple[int, ...] = (5, 6, 7, 8, 9)  # disjoint, attacker's prior
  test_fraction: float = 0.0  # see the class docstring
  split_seed: int = 0
  max_per_class: int = 0  # 0 = all, else at most this many per identity/split


@dataclasses.dataclass(frozen=True)
class ArraySplit:
  """Preprocessed images of some identities, all in memory."""

  images: np.ndarray  # uint8 [N, image_size, image_size, channels]
  labels: np.ndarray  # int32 [N], index of the identity in the config's tuple
  identities: np.ndarray  # int32 [N], the dataset's original label

  def __len__(self) -> int:
    return len(self.labels)


@dataclasses.dataclass(frozen=True)
class Splits:
  """What a model-inversion experiment trains, evaluates and attacks with.

  public holds training-split images only (for mnist: the official train
  images of public_ids); the official test images of public identities are
  not used, so the attacker's prior is never larger than the protocol says.
  """

  private_train: ArraySplit
  private_test: ArraySplit
  public: ArraySplit
  num_private_classes: int
  num_public_classes: int
  description: str


def validate(cfg: DataConfig) -> None:
  """Raises on config values that no dataset could satisfy."""
  sources.check_dataset_name(cfg.dataset)
  if cfg.image_size < 1:
    raise ConfigError(f"data.image_size: {cfg.image_size} must be >= 1")
  if cfg.channels not in (1, 3):
    raise ConfigError(f"data.channels: {cfg.channels} must be 1 or 3")
  if cfg.crop:
    preprocess_lib.check_crop_form(tuple(cfg.crop))
  if not 0.0 <= cfg.test_fraction < 1.0:
    raise ConfigError(f"data.test_fraction: {cfg.test_fraction} must be in [0, 1)")
  if cfg.max_per_class < 0:
    raise ConfigError(f"data.max_per_class: {cfg.max_per_class} must be >= 0 (0 = no cap)")
  if cfg.split_seed < 0:
    raise ConfigError(f"data.split_seed: {cfg.split_seed} must be >= 0")
  for field in ("private_ids", "public_ids"):
    ids = tuple(getattr(cfg, field))
    # No public identities is valid for a model trained on one set only (TL-DMI's public pretraining).
    if not ids and field == "private_ids":
      raise ConfigError(f"data.{field}: empty; list at least one identity (an original label of the dataset)")
    if ids and min(ids) < 0:
      raise ConfigError(f"data.{field}: {ids} has a negative identity")
    if len(set(ids)) != len(ids):
      raise ConfigError(f"data.{field}: {ids} lists an identity twice")
  overlap = sorted(set(cfg.private_ids) & set(cfg.public_ids))
  if overlap:
    raise ConfigError(
      f"data.private_ids and data.public_ids overlap in {overlap}; private and public identities must be disjoint"
    )


def _check_ids_in_range(cfg: DataConfig, num_classes: int) -> None:
  for field in ("private_ids", "public_ids"):
    bad = [i for i in getattr(cfg, field) if not 0 <= i < num_classes]
    if bad:
      hint = " (AT&T folder sN is identity N-1)" if cfg.dataset == "att_faces" else ""
      raise ConfigError(f"data.{field}: {bad} out of range; {cfg.dataset} has identities 0..{num_classes - 1}{hint}")


def _shuffled_per_identity(labels: np.ndarray, identity: int, seed: int, stream: int, cap: int) -> np.ndarray:
  """Indices of `identity` in a seeded order, at most `cap` (0 = all).

  Each identity gets its own generator, so its selection does not change when
  other identities are added to or removed from the config.
  """
  rng = np.random.default_rng([seed, identity, stream])
  indices = rng.permutation(np.flatnonzero(labels == identity))
  return indices[:cap] if cap else indices


def select_indices(
  cfg: DataConfig, labels: dict[str, np.ndarray], has_test_split: bool
) -> dict[str, tuple[str, np.ndarray]]:
  """Chooses examples: role -> (source split, sorted indices into it).

  Roles are private_train, private_test and public. Deterministic given
  cfg.split_seed; a held-out test set is stratified per identity with at
  least one image of each.
  """
  train = labels["train"]
  use_official_test = has_test_split and cfg.test_fraction == 0.0
  fraction = cfg.test_fraction or DEFAULT_TEST_FRACTION
  private_train, private_test, public = [], [], []
  for identity in cfg.private_ids:
    pool = _shuffled_per_identity(train, identity, cfg.split_seed, 0, cfg.max_per_class)
    if use_official_test:
      private_train.append(pool)
      private_test.append(_shuffled_per_identity(labels["test"], identity, cfg.split_seed, 1, cfg.max_per_class))
      continue
    if len(pool) < 2:
      raise ConfigError(
        f"data.private_ids: identity {identity} has {len(pool)} image(s) in "
        f"{cfg.dataset}; holding out a test image needs at least 2 "
        "(check data.max_per_class)"
      )
    num_test = min(max(1, round(fraction * len(pool))), len(pool) - 1)
    private_test.append(pool[:num_test])
    private_train.append(pool[num_test:])
  for identity in cfg.public_ids:
    public.append(_shuffled_per_identity(train, identity, cfg.split_seed, 2, cfg.max_per_class))
  test_source = "test" if use_official_test else "train"
  return {
    "private_train": ("train", np.sort(np.concatenate(private_train))),
    "private_test": (test_source, np.sort(np.concatenate(private_test))),
    "public": ("train", np.sort(np.concatenate(public)) if public else np.zeros(0, np.int64)),
  }


def load_splits(cfg: DataConfig) -> Splits:
  """Loads cfg.dataset, splits it by identity and preprocesses the images.

  Args:
    cfg: the dataset, where its files are, the identities of each side and
      the preprocessing; validated first (ConfigError / DataError).

  Returns:
    Splits: private_train / private_test of cfg.private_ids (labels 0..P-1 in
    the order of the tuple) and public of cfg.public_ids, as uint8 images.
  """
  validate(cfg)
  data_dir, cache_dir = sources.command_line_dirs(cfg.dataset, cfg.data_dir, cfg.cache_dir)
  raw = sources.load_raw(
    cfg.dataset,
    data_dir=data_dir,
    cache_dir=cache_dir,
    download=cfg.download,
    image_size=cfg.image_size,
    channels=cfg.channels,
    crop=tuple(cfg.crop),
  )
  _check_ids_in_range(cfg, raw.num_classes)
  labels = {name: split[1] for name, split in raw.splits.items()}
  chosen = select_indices(cfg, labels, sources.HAS_TEST_SPLIT[cfg.dataset])
  # image_folder images were already cropped and resized when prepared.
  crop = () if cfg.dataset == "image_folder" else tuple(cfg.crop)

  def build(role: str, ids: tuple[int, ...]) -> ArraySplit:
    source, indices = chosen[role]
    images, identities = raw.splits[source]
    identities = identities[indices].astype(np.int32)
    remap = np.full(raw.num_classes, -1, np.int32)
    remap[list(ids)] = np.arange(len(ids), dtype=np.int32)
    return ArraySplit(
      images=preprocess_lib.preprocess(
        images[indices], image_size=cfg.image_size, channels=cfg.channels, crop=crop, dataset=cfg.dataset
      ),
      labels=remap[identities],
      identities=identities,
    )

  return Splits(
    private_train=build("private_train", cfg.private_ids),
    private_test=build("private_test", cfg.private_ids),
    public=build("public", cfg.public_ids),
    num_private_classes=len(cfg.private_ids),
    num_public_classes=len(cfg.public_ids),
    description=raw.description,
  )
