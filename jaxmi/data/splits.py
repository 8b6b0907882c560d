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

  celeba (the standard protocol, see jaxmi.data.protocol) splits by its
  files: private_ids are labels of trainset.txt/testset.txt (() = all of
  them, the protocol's 1000), private_test is testset.txt, and the public
  split is ganset.txt, unlabelled (label -1), so public_ids must be ().
  public_dataset="ffhq" or "facescrub" takes the public split from that
  dataset instead, e.g. CelebA private with FFHQ public.
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
  # The public split from another dataset, stored at image_size/channels with that dataset's reference crop
  # (data.crop is data.dataset's): e.g. "ffhq" or "facescrub" for a celeba private split. public_ids then name
  # identities of that dataset, () = all of its images. "" = data.dataset's own public split.
  public_dataset: sources.PublicDatasetName = ""
  # Its raw files; None -> $JAXMI_DATA_DIR/<public_dataset> else ~/jaxmi_data/<public_dataset>; the command line's
  # --data-dir D wins (D/<public_dataset>).
  public_data_dir: str | None = None


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
  if cfg.dataset == "ffhq":
    raise ConfigError(
      "data.dataset: ffhq has no identities, so it cannot be the private split; use it as data.public_dataset"
    )
  if cfg.public_dataset and cfg.public_dataset not in sources.DATASETS:
    raise ConfigError(
      f"data.public_dataset: unknown dataset {cfg.public_dataset!r}; expected '' or one of {', '.join(sources.DATASETS)}"
    )
  own_public = _own_public(cfg)
  if own_public and cfg.public_data_dir:
    raise ConfigError("data.public_data_dir: set, but data.public_dataset is not; name the dataset it holds")
  if cfg.public_ids and (cfg.dataset if own_public else cfg.public_dataset) == "celeba":
    raise ConfigError(
      f"data.public_ids: {tuple(cfg.public_ids)}, but celeba's public split (ganset.txt) is unlabelled; "
      "set data.public_ids=() to use all of it"
    )
  for field in ("private_ids", "public_ids"):
    ids = tuple(getattr(cfg, field))
    # No public identities is valid for a model trained on one set only (TL-DMI's public pretraining);
    # no private ones means all of celeba's split files.
    if not ids and field == "private_ids" and cfg.dataset != "celeba":
      raise ConfigError(f"data.{field}: empty; list at least one identity (an original label of the dataset)")
    if ids and min(ids) < 0:
      raise ConfigError(f"data.{field}: {ids} has a negative identity")
    if len(set(ids)) != len(ids):
      raise ConfigError(f"data.{field}: {ids} lists an identity twice")
  # Another public dataset numbers its own identities.
  overlap = sorted(set(cfg.private_ids) & set(cfg.public_ids)) if own_public else []
  if overlap:
    raise ConfigError(
      f"data.private_ids and data.public_ids overlap in {overlap}; private and public identities must be disjoint"
    )


def _own_public(cfg: DataConfig) -> bool:
  """Whether the public split comes from data.dataset itself (not from data.public_dataset)."""
  return cfg.public_dataset in ("", cfg.dataset)


def _check_ids_in_range(cfg: DataConfig, num_classes: int, fields=("private_ids", "public_ids"), dataset="") -> None:
  dataset = dataset or cfg.dataset
  for field in fields:
    bad = [i for i in getattr(cfg, field) if not 0 <= i < num_classes]
    if bad and not num_classes:
      raise ConfigError(f"data.{field}: {bad}, but {dataset} is unlabelled; set data.{field}=() to use all of it")
    if bad:
      hint = " (AT&T folder sN is identity N-1)" if dataset == "att_faces" else ""
      raise ConfigError(f"data.{field}: {bad} out of range; {dataset} has identities 0..{num_classes - 1}{hint}")


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
  own_public = _own_public(cfg)
  if not own_public:
    # The public dataset's lists are checked before the private one is prepared: bad input writes nothing.
    public_dir, public_cache = sources.command_line_dirs(cfg.public_dataset, cfg.public_data_dir, cfg.cache_dir)
    sources.check_raw(
      cfg.public_dataset, data_dir=public_dir, cache_dir=public_cache, image_size=cfg.image_size, channels=cfg.channels
    )
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
  # () passes validate only for celeba: every identity of its split files.
  private_ids = tuple(cfg.private_ids) or tuple(range(raw.num_classes))
  _check_ids_in_range(cfg, raw.num_classes, ("private_ids", "public_ids") if own_public else ("private_ids",))
  labels = {name: split[1] for name, split in raw.splits.items()}
  # celeba's public split is its ganset.txt, and another public_dataset's is read below: neither by identity here.
  by_identity = own_public and cfg.dataset != "celeba"
  chosen = select_indices(
    dataclasses.replace(cfg, private_ids=private_ids, public_ids=tuple(cfg.public_ids) if by_identity else ()),
    labels,
    sources.HAS_TEST_SPLIT[cfg.dataset],
  )
  # These datasets' images were already cropped and resized when prepared.
  crop = () if cfg.dataset in sources.PREPARED_AT_SIZE else tuple(cfg.crop)

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

  description = raw.description
  if by_identity:
    public, num_public = build("public", tuple(cfg.public_ids)), len(cfg.public_ids)
  elif own_public:
    public, num_public = _unlabelled_public(cfg, raw, sources.resolve_raw_dir(cfg.dataset, data_dir)), 0
  else:
    public, num_public, where = _other_public(cfg)
    description += f"; public split: {where}"
  return Splits(
    private_train=build("private_train", private_ids),
    private_test=build("private_test", private_ids),
    public=public,
    num_private_classes=len(private_ids),
    num_public_classes=num_public,
    description=description,
  )


def _unlabelled_public(cfg: DataConfig, raw: sources.RawDataset, root) -> ArraySplit:
  """celeba's public split, all of it: label and identity -1 (ganset.txt has no labels)."""
  if "public" not in raw.splits:
    from jaxmi.data import protocol  # pylint: disable=g-import-not-at-top

    # Raises the missing-file error: prepared without a public split file.
    protocol.find_split_file(root, protocol.CELEBA_SPLIT_FILES["public"], "celeba", "public split file", True)
  images, labels = raw.splits["public"]
  return ArraySplit(
    images=preprocess_lib.preprocess(images, image_size=cfg.image_size, channels=cfg.channels, dataset=cfg.dataset),
    labels=labels.astype(np.int32),
    identities=labels.astype(np.int32),
  )


def _other_public(cfg: DataConfig) -> tuple[ArraySplit, int, str]:
  """(split, classes, description): the public split read from data.public_dataset.

  public_ids () takes all of its images with their own labels (-1 where it has none), else those identities
  (labels 0..len-1 in the tuple's order, at most max_per_class each, chosen as select_indices does).
  """
  name = cfg.public_dataset
  data_dir, cache_dir = sources.command_line_dirs(name, cfg.public_data_dir, cfg.cache_dir)
  raw = sources.load_raw(
    name,
    data_dir=data_dir,
    cache_dir=cache_dir,
    download=cfg.download,
    image_size=cfg.image_size,
    channels=cfg.channels,
  )
  if name == "celeba":
    split = _unlabelled_public(cfg, raw, sources.resolve_raw_dir(name, data_dir))
    return split, 0, raw.description
  _check_ids_in_range(cfg, raw.num_classes, ("public_ids",), name)
  images, identities = raw.splits["train"]
  num_classes = raw.num_classes
  indices = np.arange(len(identities))
  labels = identities.astype(np.int32)
  if cfg.public_ids:
    picks = [_shuffled_per_identity(identities, i, cfg.split_seed, 2, cfg.max_per_class) for i in cfg.public_ids]
    indices = np.sort(np.concatenate(picks))
    remap = np.full(raw.num_classes, -1, np.int32)
    remap[list(cfg.public_ids)] = np.arange(len(cfg.public_ids), dtype=np.int32)
    labels, num_classes = remap[identities[indices]], len(cfg.public_ids)
  # Prepared datasets are stored at this size already; the others get their default (centre square) crop.
  split = ArraySplit(
    images=preprocess_lib.preprocess(images[indices], image_size=cfg.image_size, channels=cfg.channels, dataset=name),
    labels=labels,
    identities=identities[indices].astype(np.int32),
  )
  return split, num_classes, raw.description
