"""Where datasets live, and loading each one as whole numpy arrays."""

import csv
import dataclasses
import os
from pathlib import Path
import shutil
import tempfile
import typing

import numpy as np

from jaxmi.data.download import note
from jaxmi.data.download import one_line
from jaxmi.errors import DataError
from jaxmi.errors import JaxmiError

DatasetName = typing.Literal[
  "mnist", "att_faces", "image_folder", "idx", "sklearn_digits", "celeba", "ffhq", "facescrub"
]
DATASETS = typing.get_args(DatasetName)
# data.public_dataset: "" = the public split of data.dataset itself.
PublicDatasetName = typing.Literal[("",) + DATASETS]
# Datasets with an official held-out split named "test".
HAS_TEST_SPLIT = {
  "mnist": True,
  "att_faces": False,
  "image_folder": False,
  "idx": True,
  "sklearn_digits": False,
  "celeba": True,
  "ffhq": False,
  "facescrub": False,
}
# Datasets whose images are stored cropped and resized at the run's data.image_size/channels/crop (the rest are
# stored raw and preprocessed when split).
PREPARED_AT_SIZE = ("image_folder", "celeba", "ffhq", "facescrub")
# Set by the command line's --data-dir / --cache-dir: flags win over a config's data.data_dir /
# data.cache_dir (they are the more specific, local choice), which win over $JAXMI_DATA_DIR /
# $JAXMI_CACHE_DIR. --data-dir D means D/<dataset>, as $JAXMI_DATA_DIR does.
FLAG_DATA_DIR_ENV = "JAXMI_DATA_DIR_FLAG"
FLAG_CACHE_DIR_ENV = "JAXMI_CACHE_DIR_FLAG"
IDENTITIES_FILE = "identities.csv"


def resolve_raw_dir(dataset: str, data_dir: str | os.PathLike | None = None) -> Path:
  """data_dir, else $JAXMI_DATA_DIR/<dataset>, else ~/jaxmi_data/<dataset>."""
  if data_dir:
    return Path(data_dir).expanduser().absolute()
  base = os.environ.get("JAXMI_DATA_DIR") or "~/jaxmi_data"
  return Path(base).expanduser().absolute() / dataset


def resolve_cache_dir(cache: str | os.PathLike | None = None) -> Path:
  """cache, else $JAXMI_CACHE_DIR, else ~/.cache/jaxmi."""
  return Path(cache or os.environ.get("JAXMI_CACHE_DIR") or "~/.cache/jaxmi").expanduser().absolute()


def command_line_dirs(dataset: str, data_dir, cache_dir) -> tuple:
  """(data_dir, cache_dir) of a data config after the command line's --data-dir/--cache-dir.

  A flag wins over the config's field; a note says so when it replaces a value the config set.
  """
  flag_data, flag_cache = os.environ.get(FLAG_DATA_DIR_ENV), os.environ.get(FLAG_CACHE_DIR_ENV)
  if flag_data:
    flagged = str(Path(flag_data) / dataset)
    if data_dir and Path(data_dir).expanduser().absolute() != Path(flagged).absolute():
      note(f"--data-dir {flag_data} overrides data.data_dir={data_dir}: reading {flagged}")
    data_dir = flagged
  if flag_cache:
    if cache_dir and Path(cache_dir).expanduser().absolute() != Path(flag_cache).absolute():
      note(f"--cache-dir {flag_cache} overrides data.cache_dir={cache_dir}")
    cache_dir = flag_cache
  return data_dir, cache_dir


@dataclasses.dataclass(frozen=True)
class RawDataset:
  """A whole dataset in memory, before identity splits and preprocessing."""

  name: str
  splits: dict[str, tuple[np.ndarray, np.ndarray]]  # -> (uint8 NHWC, int64 N)
  class_names: tuple[str, ...]
  description: str

  @property
  def num_classes(self) -> int:
    return len(self.class_names)


def check_dataset_name(dataset: str) -> None:
  if dataset not in DATASETS:
    raise DataError(f"data.dataset: unknown dataset {dataset!r}; expected one of {', '.join(DATASETS)}")


def prepare(
  dataset: str,
  *,
  data_dir=None,
  cache_dir=None,
  download: bool = True,
  image_size: int = 32,
  channels: int = 1,
  crop: tuple[int, ...] = (),
  urls=None,
) -> str:
  """Downloads (if missing and allowed), verifies and prepares `dataset`.

  Already prepared data is reused as it is; a damaged prepared folder is
  prepared again.

  Args:
    dataset: one of DATASETS.
    data_dir: the raw files; None -> resolve_raw_dir's default.
    cache_dir: where prepared files go; None -> resolve_cache_dir's default.
    download: whether missing raw files may be downloaded.
    image_size, channels, crop: only matter for PREPARED_AT_SIZE datasets,
      whose images are stored at that format (each format is prepared
      separately; the defaults are DataConfig's, so a default run reuses what
      a default prepare made). For celeba, ffhq and facescrub, crop () is the
      reference crop (see jaxmi.data.protocol).
    urls: overrides the download mirrors (builders.MNIST_MIRRORS /
      ATT_FACES_URLS).

  Returns:
    A one-line description of where the data came from, where the prepared
    files are and the identity mapping (identities.csv).
  """
  # Loading checks that the prepared files read back (rebuilding them if damaged) and writes
  # the identity mapping.
  return load_raw(
    dataset,
    data_dir=data_dir,
    cache_dir=cache_dir,
    download=download,
    image_size=image_size,
    channels=channels,
    crop=crop,
    urls=urls,
  ).description


def load_raw(
  dataset: str,
  *,
  data_dir=None,
  cache_dir=None,
  download: bool = True,
  image_size: int = 32,
  channels: int = 1,
  crop: tuple[int, ...] = (),
  urls=None,
) -> RawDataset:
  """Loads all of `dataset` into memory, preparing it first if needed.

  Args:
    dataset, data_dir, cache_dir, download, image_size, channels, crop, urls:
      those of `prepare`.

  Returns:
    RawDataset: every split of the dataset, as uint8 NHWC images and labels.
  """
  if dataset == "sklearn_digits":
    return _load_sklearn_digits()
  from jaxmi.data import builders  # pylint: disable=g-import-not-at-top

  def build():
    return _prepared_builder(dataset, data_dir, cache_dir, download, image_size, channels, crop, urls)

  builder = build()
  try:
    splits = _read_all(builder)
  except JaxmiError:
    raise
  except Exception as e:  # ArrayRecord says "Invalid Riegeli/records file" (RuntimeError), or OSError, ...
    builder, splits = _rebuild(builder, e, build)
  if dataset == "mnist":
    class_names = tuple(str(d) for d in range(10))
  elif dataset == "att_faces":
    class_names = tuple(f"s{n}" for n in range(1, 41))
  else:
    class_names = tuple(builder.info.metadata["class_names"])
  mapping = _write_identities(Path(builder.data_dir), class_names, splits)
  where = f"; identity numbers: {mapping}" if mapping else ""
  return RawDataset(name=dataset, splits=splits, class_names=class_names, description=_describe(builder) + where)


def _read_all(builder) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  from jaxmi.data import builders  # pylint: disable=g-import-not-at-top

  return {split: builders.read_split(builder, split) for split in builder.info.splits}


def _rebuild(builder, error: Exception, build):
  """Prepares a damaged prepared folder again; restores it and raises if that fails.

  A truncated or corrupted prepared file cannot be read but the raw files usually still exist,
  so preparing again is the fix; the damaged folder is moved aside first, and deleted only once
  the new one reads back.
  """
  path = Path(builder.data_dir)
  aside = Path(tempfile.mkdtemp(prefix=f".{path.name}.damaged-", dir=path.parent))
  os.replace(path, aside / path.name)
  note(f"prepared dataset {path} is damaged ({one_line(error)}); preparing it again from the raw files")
  try:
    builder = build()
    splits = _read_all(builder)
  except Exception as e:  # pylint: disable=broad-except
    if not path.exists():
      os.replace(aside / path.name, path)
    shutil.rmtree(aside, ignore_errors=True)
    raise DataError(
      f"{path}: prepared dataset is damaged ({one_line(error)}) and could not be prepared again "
      f"({one_line(e)}); delete {path} and make the raw files available"
    ) from None
  shutil.rmtree(aside, ignore_errors=True)
  return builder, splits


def _write_identities(folder: Path, class_names, splits) -> Path | None:
  """Writes label,name,<images per split> to folder/identities.csv once; returns its path.

  It is how a user finds which folder (or class) became which identity number. A read-only
  cache only loses the file, not the run.
  """
  path = folder / IDENTITIES_FILE
  if path.is_file():
    return path
  # Label -1 = an unlabelled image (CelebA's public split, FFHQ): counted in no identity.
  counts = {
    split: np.bincount(labels[labels >= 0], minlength=len(class_names)) for split, (_, labels) in splits.items()
  }
  try:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=folder)
    try:
      with os.fdopen(fd, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["label", "name", *(f"{split}_images" for split in counts)])
        for label, name in enumerate(class_names):
          writer.writerow([label, name, *(int(c[label]) for c in counts.values())])
      os.replace(tmp, path)
    finally:
      Path(tmp).unlink(missing_ok=True)
  except OSError:
    return None
  return path


def check_raw(dataset: str, *, data_dir=None, cache_dir=None, image_size: int = 32, channels: int = 1, crop=()) -> None:
  """Reads `dataset`'s raw file lists and checks them (missing split files, missing listed images), preparing
  nothing: raises the error `load_raw` would. For a second dataset read after a first one is prepared (a run's
  public_dataset), so that its bad input is reported before anything is written for the first. Datasets that
  are downloaded or read from fixed archives have no lists to check here."""
  if dataset in ("celeba", "ffhq", "facescrub", "image_folder"):
    _builder(dataset, data_dir, cache_dir, True, image_size, channels, crop, None)


def _prepared_builder(dataset, data_dir, cache, download, image_size, channels, crop, urls):
  from jaxmi.data import builders  # pylint: disable=g-import-not-at-top

  builder = _builder(dataset, data_dir, cache, download, image_size, channels, crop, urls)
  builders.download_and_prepare(builder, resolve_cache_dir(cache) / "downloads")
  return builder


def _builder(dataset, data_dir, cache, download, image_size, channels, crop, urls):
  """The dataset's builder (its raw files scanned and checked), not yet prepared."""
  check_dataset_name(dataset)
  # Imported here so that sklearn_digits works without TFDS installed.
  from jaxmi.data import builders  # pylint: disable=g-import-not-at-top

  raw = resolve_raw_dir(dataset, data_dir)
  prepared = resolve_cache_dir(cache) / "tfds"
  downloads = resolve_cache_dir(cache) / "downloads"
  if dataset == "image_folder":
    builder = _image_folder_builder(raw, prepared, image_size, channels, crop)
  elif dataset == "idx":
    builder = _idx_builder(raw, prepared)
  elif dataset in ("celeba", "ffhq", "facescrub"):
    from jaxmi.data import protocol  # pylint: disable=g-import-not-at-top

    make = {"celeba": protocol.celeba_builder, "ffhq": protocol.ffhq_builder, "facescrub": protocol.facescrub_builder}
    builder = make[dataset](raw, prepared, image_size, channels, tuple(crop))
  else:
    cls = builders.Mnist if dataset == "mnist" else builders.AttFaces
    builder = cls(raw_dir=raw, fallback_dir=downloads / dataset, download=download, urls=urls, data_dir=prepared)
  return builder


def _describe(builder) -> str:
  source = (builder.info.metadata or {}).get("source", "?")
  return f"{builder.name} from {source} (prepared in {builder.data_dir})"


def _image_folder_builder(root: Path, prepared: Path, image_size: int, channels: int, crop: tuple[int, ...]):
  from jaxmi.data import builders  # pylint: disable=g-import-not-at-top

  identities = builders.scan_image_folder(root)
  fields = (image_size, image_size, channels, tuple(crop))
  key = builders.image_folder_key(root, identities, fields)
  config = builders.ImageFolderConfig(
    name=key,
    height=image_size,
    width=image_size,
    channels=channels,
    crop=tuple(crop),
    description=f"{root.resolve()} at {fields}",
  )
  return builders.ImageFolder(root=root, identities=identities, config=config, data_dir=prepared)


def _idx_builder(root: Path, prepared: Path):
  from jaxmi.data import builders  # pylint: disable=g-import-not-at-top

  files = builders.find_idx_files(root)
  height, width = builders.idx_image_size(files["train"][0])
  listed = [path for pair in files.values() for path in pair]
  names = root / builders.IDX_CLASS_NAMES
  key = builders.image_folder_key(root, [("", listed + ([names] if names.is_file() else []))], (height, width))
  config = builders.IdxConfig(name=key, height=height, width=width, description=f"{root.resolve()}")
  return builders.Idx(root=root, files=files, config=config, data_dir=prepared)


def _load_sklearn_digits() -> RawDataset:
  """UCI 8x8 digits bundled with scikit-learn: no files, no download."""
  from sklearn import datasets  # pylint: disable=g-import-not-at-top

  digits = datasets.load_digits()
  # Pixel values are counts 0..16; scale them to the usual 0..255 range.
  images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
  labels = digits.target.astype(np.int64)
  return RawDataset(
    name="sklearn_digits",
    splits={"train": (images, labels)},
    class_names=tuple(str(d) for d in range(10)),
    description="sklearn_digits from scikit-learn's bundled copy (in memory)",
  )
