"""Where datasets live, and loading each one as whole numpy arrays."""

import dataclasses
import os
from pathlib import Path

import numpy as np

from jaxmi.errors import DataError

DATASETS = ("mnist", "att_faces", "image_folder", "sklearn_digits")
# Datasets with an official held-out split named "test".
HAS_TEST_SPLIT = {"mnist": True, "att_faces": False, "image_folder": False,
                  "sklearn_digits": False}


def resolve_raw_dir(dataset: str, data_dir: str | os.PathLike | None = None) -> Path:
  """data_dir, else $JAXMI_DATA_DIR/<dataset>, else ~/jaxmi_data/<dataset>."""
  if data_dir:
    return Path(data_dir).expanduser().absolute()
  base = os.environ.get("JAXMI_DATA_DIR") or "~/jaxmi_data"
  return Path(base).expanduser().absolute() / dataset


def resolve_cache_dir(cache: str | os.PathLike | None = None) -> Path:
  """cache, else $JAXMI_CACHE_DIR, else ~/.cache/jaxmi."""
  return Path(cache or os.environ.get("JAXMI_CACHE_DIR")
              or "~/.cache/jaxmi").expanduser().absolute()


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
    raise DataError(f"data.dataset: unknown dataset {dataset!r}; expected one "
                    f"of {', '.join(DATASETS)}")


def prepare(dataset: str, *, data_dir=None, cache_dir=None,
            download: bool = True, image_size: int = 64, channels: int = 3,
            crop: tuple[int, ...] = (), urls=None) -> str:
  """Downloads (if missing and allowed), verifies and prepares `dataset`.

  Returns a one-line description of where it came from and where the prepared
  files are. Already prepared data is reused as it is. image_size, channels
  and crop only matter for image_folder, whose images are stored at that
  format (each format is prepared separately). `urls` overrides the download
  mirrors (builders.MNIST_MIRRORS / ATT_FACES_URLS).
  """
  if dataset == "sklearn_digits":
    return _load_sklearn_digits().description
  return _describe(_prepared_builder(dataset, data_dir, cache_dir, download,
                                     image_size, channels, crop, urls))


def load_raw(dataset: str, *, data_dir=None, cache_dir=None,
             download: bool = True, image_size: int = 64, channels: int = 3,
             crop: tuple[int, ...] = (), urls=None) -> RawDataset:
  """Loads all of `dataset` into memory, preparing it first if needed.

  Arguments are those of `prepare`.
  """
  if dataset == "sklearn_digits":
    return _load_sklearn_digits()
  from jaxmi.data import builders  # pylint: disable=g-import-not-at-top

  builder = _prepared_builder(dataset, data_dir, cache_dir, download,
                              image_size, channels, crop, urls)
  if dataset == "mnist":
    class_names = tuple(str(d) for d in range(10))
  elif dataset == "att_faces":
    class_names = tuple(f"s{n}" for n in range(1, 41))
  else:
    class_names = tuple(builder.info.metadata["class_names"])
  splits = {split: builders.read_split(builder, split)
            for split in builder.info.splits}
  return RawDataset(name=dataset, splits=splits, class_names=class_names,
                    description=_describe(builder))


def _prepared_builder(dataset, data_dir, cache, download, image_size, channels,
                      crop, urls):
  check_dataset_name(dataset)
  # Imported here so that sklearn_digits works without TFDS installed.
  from jaxmi.data import builders  # pylint: disable=g-import-not-at-top

  raw = resolve_raw_dir(dataset, data_dir)
  prepared = resolve_cache_dir(cache) / "tfds"
  downloads = resolve_cache_dir(cache) / "downloads"
  if dataset == "image_folder":
    builder = _image_folder_builder(raw, prepared, image_size, channels, crop)
  else:
    cls = builders.Mnist if dataset == "mnist" else builders.AttFaces
    builder = cls(raw_dir=raw, fallback_dir=downloads / dataset,
                  download=download, urls=urls, data_dir=prepared)
  builders.download_and_prepare(builder, downloads)
  return builder


def _describe(builder) -> str:
  source = (builder.info.metadata or {}).get("source", "?")
  return f"{builder.name} from {source} (prepared in {builder.data_dir})"


def _image_folder_builder(root: Path, prepared: Path, image_size: int,
                          channels: int, crop: tuple[int, ...]):
  from jaxmi.data import builders  # pylint: disable=g-import-not-at-top

  identities = builders.scan_image_folder(root)
  fields = (image_size, image_size, channels, tuple(crop))
  key = builders.image_folder_key(root, identities, fields)
  config = builders.ImageFolderConfig(
      name=key, height=image_size, width=image_size, channels=channels,
      crop=tuple(crop), description=f"{root.resolve()} at {fields}")
  return builders.ImageFolder(root=root, identities=identities, config=config,
                              data_dir=prepared)


def _load_sklearn_digits() -> RawDataset:
  """UCI 8x8 digits bundled with scikit-learn: no files, no download."""
  from sklearn import datasets  # pylint: disable=g-import-not-at-top

  digits = datasets.load_digits()
  # Pixel values are counts 0..16; scale them to the usual 0..255 range.
  images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
  labels = digits.target.astype(np.int64)
  return RawDataset(
      name="sklearn_digits", splits={"train": (images, labels)},
      class_names=tuple(str(d) for d in range(10)),
      description="sklearn_digits from scikit-learn's bundled copy (in memory)")
