"""TFDS builders for the raw datasets that run without TensorFlow.

Only `tfds.features.Tensor`/`Text` features and the `array_record` file format
are used, read back with `builder.as_data_source()`: those are the parts of
TFDS that do not import TensorFlow. The classes skip TFDS's global registry
because `mnist` is also a name of TFDS's own catalogue.

Preparing writes into an `incomplete.*` folder that TFDS renames only when it
succeeded (and deletes when it failed), so a prepared folder is always whole.
"""

import concurrent.futures
import dataclasses
import functools
import gzip
import hashlib
import logging
import os
from pathlib import Path
import tempfile
from typing import Sequence
import zipfile
import zlib

import numpy as np
from PIL import Image
from PIL import ImageOps
import tensorflow_datasets as tfds

from jaxmi.data import download as download_lib
from jaxmi.data import formats
from jaxmi.errors import DataError

# Tried in order; tests and offline mirrors may replace these (file:// works).
MNIST_MIRRORS = [
  "https://storage.googleapis.com/cvdf-datasets/mnist/",
  "https://ossci-datasets.s3.amazonaws.com/mnist/",
]
ATT_FACES_URLS = [
  "https://www.cl.cam.ac.uk/research/dtg/attarchive/pub/data/att_faces.zip",
]


@functools.lru_cache(maxsize=None)
def image_suffixes() -> frozenset[str]:
  """Extensions of every format Pillow can read (jpg, png, gif, bmp, pgm, tif, webp, ...)."""
  Image.init()
  return frozenset(ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN)


def is_image_file(path: Path) -> bool:
  """Whether `path` is an image Pillow reads: by its extension, else by its content.

  Content decides where the extension is missing or foreign (the Yale faces are GIFs named
  'subject01.happy'); a file with an image extension counts as one, so a broken one is an error.
  """
  if path.suffix.lower() in image_suffixes():
    return True
  try:
    with Image.open(path):
      return True
  except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
    return False


def _image_features(shape: tuple[int, int, int], **extra):
  return tfds.features.FeaturesDict(
    {
      # Raw bytes: the default encoding widens every pixel to an int64 list,
      # 8x larger on disk and several times slower to read back.
      "image": tfds.features.Tensor(shape=shape, dtype=np.uint8, encoding=tfds.features.Encoding.BYTES),
      "label": tfds.features.Tensor(shape=(), dtype=np.int64),
      **extra,
    }
  )


class _RawFilesBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A builder that prepares from raw files in `raw_dir`, downloading if told.

  Downloads go into `raw_dir` when it is writable, else into `fallback_dir`
  (a folder of the cache), which is also searched for earlier downloads.
  """

  VERSION = tfds.core.Version("1.0.0")

  def __init__(self, *, raw_dir: Path, fallback_dir: Path, download: bool, urls: Sequence[str] | None = None, **kwargs):
    self.raw_dir = Path(raw_dir)
    self.fallback_dir = Path(fallback_dir)
    self.download = download
    self.urls = urls
    kwargs.setdefault("file_format", "array_record")
    super().__init__(**kwargs)

  def _download_target(self) -> Path:
    if download_lib.is_writable_dir(self.raw_dir):
      return self.raw_dir
    return self.fallback_dir

  def _generate_examples(self, examples):
    yield from examples


class Mnist(_RawFilesBuilder):
  """MNIST from the four official IDX .gz files; splits train and test."""

  name = "mnist"

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
      builder=self,
      description="MNIST handwritten digits, 28x28 grey, labels 0-9.",
      features=_image_features((28, 28, 1)),
      homepage="http://yann.lecun.com/exdb/mnist/",
      metadata=tfds.core.MetadataDict(),
    )

  def _locate(self, name: str) -> Path:
    """Finds file `name`, downloading it if it is missing and allowed."""
    for folder in (self.raw_dir, self.fallback_dir):
      if (folder / name).is_file():
        return folder / name
    missing = self.raw_dir / name
    hint = f"mnist: {missing} is missing; put the four MNIST IDX .gz files in {self.raw_dir} or set JAXMI_DATA_DIR"
    if not self.download:
      raise DataError(f"{hint} (downloads are off: download=False)")
    dest = self._download_target() / name
    mirrors = MNIST_MIRRORS if self.urls is None else self.urls

    def check(path: Path) -> str | None:
      try:
        data = formats.gunzip(path)
      except DataError:
        return "not a complete gzip file"
      return formats.mnist_md5_problem(name, data)

    try:
      download_lib.fetch([m.rstrip("/") + "/" + name for m in mirrors], dest, check)
    except DataError as e:
      raise DataError(f"{hint} (tried download: {e})") from None
    return dest

  def _split_generators(self, dl_manager):
    del dl_manager  # Downloads are ours: TFDS's manager has no checksum hook.
    paths = {name: self._locate(name) for name in formats.MNIST_FILES}
    self.info.metadata["source"] = " and ".join(sorted({str(p.parent) for p in paths.values()}))
    splits = {}
    for split in formats.MNIST_SPLIT_FILES:
      images, labels = formats.read_mnist_split(paths, split)
      splits[split] = self._generate_examples(
        (i, {"image": image, "label": label}) for i, (image, label) in enumerate(zip(images, labels))
      )
    return splits


class AttFaces(_RawFilesBuilder):
  """AT&T (ORL) faces: sN/M.pgm, 400 images 112x92 grey, label N-1."""

  name = "att_faces"

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
      builder=self,
      description="AT&T (ORL) Database of Faces: 40 people x 10 images.",
      features=_image_features((112, 92, 1)),
      homepage="https://cam-orl.co.uk/facedatabase.html",
      metadata=tfds.core.MetadataDict(),
    )

  def _find_raw(self) -> Path:
    first = formats.att_faces_names()[0]
    for folder in (self.raw_dir, self.fallback_dir):
      if (folder / first).is_file():
        return folder
    hint = (
      f"att_faces: {self.raw_dir / first} is missing; put the AT&T files "
      f"sN/M.pgm in {self.raw_dir} or set JAXMI_DATA_DIR"
    )
    if not self.download:
      raise DataError(f"{hint} (downloads are off: download=False)")
    target = self._download_target()
    try:
      self._download_zip(target)
    except DataError as e:
      raise DataError(f"{hint} (tried download: {e})") from None
    return target

  def _download_zip(self, target: Path) -> None:
    """Downloads the zip, checks its manifest, then extracts it into target."""
    zip_path = self.fallback_dir / "att_faces.zip"

    def check(path: Path) -> str | None:
      try:
        actual = formats.att_faces_manifest(_att_zip_members(path))
      except (zipfile.BadZipFile, OSError) as e:
        return f"not a readable zip file ({download_lib.one_line(e)})"
      if actual != formats.ATT_FACES_MANIFEST_SHA256:
        return (
          f"{formats.att_faces_changed(_att_zip_members(path))} differ from the original AT&T files "
          f"(manifest sha256 {actual}, expected {formats.ATT_FACES_MANIFEST_SHA256})"
        )
      return None

    urls = ATT_FACES_URLS if self.urls is None else self.urls
    download_lib.fetch(urls, zip_path, check)
    try:
      for rel, data in _att_zip_members(zip_path).items():
        dest = target / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        # Each image is renamed into place whole, so a crash mid-way leaves
        # only complete files and the manifest check catches the rest.
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
        try:
          with os.fdopen(fd, "wb") as f:
            f.write(data)
          os.replace(tmp, dest)
        finally:
          Path(tmp).unlink(missing_ok=True)
    finally:
      zip_path.unlink(missing_ok=True)

  def _split_generators(self, dl_manager):
    del dl_manager  # Downloads are ours: TFDS's manager has no checksum hook.
    raw_dir = self._find_raw()
    images, labels = formats.read_att_faces(raw_dir)
    self.info.metadata["source"] = str(raw_dir)
    return {
      "train": self._generate_examples(
        (i, {"image": image, "label": label}) for i, (image, label) in enumerate(zip(images, labels))
      )
    }


def _att_zip_members(zip_path: Path) -> dict[str, bytes]:
  """The sN/M.pgm members of the zip, keyed by that relative path."""
  members = {}
  with zipfile.ZipFile(zip_path) as archive:
    for info in archive.infolist():
      match = formats.ATT_FACES_FILE.search(info.filename)
      if match and not info.is_dir():
        members[match.group(1)] = archive.read(info)
  return members


@dataclasses.dataclass(eq=False)
class ImageFolderConfig(tfds.core.BuilderConfig):
  """How image_folder images are stored: fixed size, optional crop first."""

  height: int = 64
  width: int = 64
  channels: int = 3
  crop: tuple[int, ...] = ()  # (top, left, height, width); () = centre square
  # > 0: first resize the whole image to pre_resize x pre_resize with Lanczos when it is not that size already
  # (FaceScrub as PLG-MI reads it: baselines/utils.py load_image_list, Image.ANTIALIAS = LANCZOS); 0 = none.
  pre_resize: int = 0


def scan_image_folder(root: Path) -> list[tuple[str, list[Path]]]:
  """Sorted identity folders of `root` with their sorted image files.

  Every format Pillow reads counts (see is_image_file); other files (a README) are skipped
  with one note giving their count.
  """
  if not root.is_dir():
    raise DataError(f"image_folder: {root} is not a folder; expected root/<identity>/<image> (any format Pillow reads)")
  identities, skipped = [], []
  for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
    files = []
    for path in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
      (files if is_image_file(path) else skipped).append(path)
    if not files:
      # Skipping it would silently shift every later identity's label.
      raise DataError(f"image_folder: {folder} has no images (of any format Pillow reads); remove it or add images")
    identities.append((folder.name, files))
  if not identities:
    raise DataError(
      f"image_folder: {root} has no identity folders; expected root/<identity>/<image> (any format Pillow reads)"
    )
  if skipped:
    download_lib.note(
      f"image_folder: skipped {len(skipped)} file(s) in {root} that are not images "
      f"Pillow reads, e.g. {skipped[0].relative_to(root)}"
    )
  return identities


def image_folder_key(root: Path, identities, config_fields: tuple) -> str:
  """A short hash naming one root at one storage format.

  File sizes and mtimes are part of it so that adding, removing or replacing
  images prepares afresh instead of reusing stale data.
  """
  digest = hashlib.sha256(repr((str(root.resolve()), config_fields)).encode())
  for _, files in identities:
    for path in files:
      stat = path.stat()
      digest.update(f"{path.relative_to(root)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
  return digest.hexdigest()[:16]


def load_image(path: Path, config: ImageFolderConfig) -> np.ndarray:
  """Decodes, orients, converts, crops and resizes one image to uint8 HWC."""
  try:
    with Image.open(path) as image:
      image = ImageOps.exif_transpose(image)
      image = to_8bit(image).convert("L" if config.channels == 1 else "RGB")
      if config.pre_resize and image.size != (config.pre_resize, config.pre_resize):
        image = image.resize((config.pre_resize, config.pre_resize), Image.Resampling.LANCZOS)
  except (OSError, ValueError, Image.DecompressionBombError) as e:
    raise DataError(f"image_folder: cannot read image {path} ({download_lib.one_line(e)})") from None
  width, height = image.size
  if config.crop:
    top, left, crop_h, crop_w = config.crop
    if top + crop_h > height or left + crop_w > width:
      raise DataError(
        f"image_folder: crop (top, left, height, width)={tuple(config.crop)} "
        f"does not fit {path}, which is {width}x{height} (w x h)"
      )
  else:
    side = min(width, height)
    top, left, crop_h, crop_w = (height - side) // 2, (width - side) // 2, side, side
  # Crop first: resize(box=...) would blend in pixels from outside the box.
  image = image.crop((left, top, left + crop_w, top + crop_h))
  image = image.resize((config.width, config.height), Image.Resampling.BILINEAR)
  array = np.asarray(image, np.uint8)
  return array[..., None] if array.ndim == 2 else array


def to_8bit(image: Image.Image) -> Image.Image:
  """16/32-bit greyscale scaled to 8 bits: Pillow's convert("L") clips them, making most images white."""
  if image.mode.startswith("I;16"):
    top = 65535.0
  elif image.mode == "I":  # 16-bit PGM/PNG in some Pillow versions, or 32-bit TIFF
    top = float(np.asarray(image).max())
    top = 255.0 if top <= 255 else 65535.0 if top <= 65535 else 4294967295.0
  else:
    return image
  pixels = np.asarray(image).astype(np.float64) * (255.0 / top)
  return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), "L")


def _drop_custom_config_warning(record: logging.LogRecord) -> bool:
  return not record.getMessage().startswith("Using custom data configuration")


def _init_with_custom_config(builder: tfds.core.GeneratorBasedBuilder, config, kwargs: dict) -> None:
  """GeneratorBasedBuilder.__init__ with ArrayRecord files and a config of our own, without TFDS's
  warning about configs missing from BUILDER_CONFIGS (ours always are, by design)."""
  kwargs.setdefault("file_format", "array_record")
  absl_logger = logging.getLogger("absl")
  absl_logger.addFilter(_drop_custom_config_warning)
  try:
    tfds.core.GeneratorBasedBuilder.__init__(builder, config=config, **kwargs)
  finally:
    absl_logger.removeFilter(_drop_custom_config_warning)


class ImageFolder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """root/<identity>/<image>: labels are the sorted identity names' indices.

  Each root and storage format is its own config, named by `image_folder_key`,
  so different roots never share prepared files. The identity names are kept
  in `info.metadata["class_names"]`.
  """

  name = "image_folder"
  VERSION = tfds.core.Version("1.0.0")

  def __init__(self, *, root: Path, identities, config: ImageFolderConfig, **kwargs):
    self.root = Path(root)
    self.identities = identities
    _init_with_custom_config(self, config, kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    config = self.builder_config
    return tfds.core.DatasetInfo(
      builder=self,
      description="Images in root/<identity>/<image>, one class per folder.",
      features=_image_features((config.height, config.width, config.channels), file=tfds.features.Text()),
      metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    self.info.metadata["source"] = str(self.root.resolve())
    self.info.metadata["class_names"] = [name for name, _ in self.identities]
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    labelled = [(label, path) for label, (_, files) in enumerate(self.identities) for path in files]
    config = self.builder_config
    # PIL releases the GIL while decoding and resizing, so threads help; the
    # chunks bound how many decoded images wait for the writer.
    chunk = 512
    with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1) as pool:
      for start in range(0, len(labelled), chunk):
        part = labelled[start : start + chunk]
        images = pool.map(lambda item: load_image(item[1], config), part)
        for (label, path), image in zip(part, images):
          rel = path.relative_to(self.root).as_posix()
          yield rel, {"image": image, "label": label, "file": rel}


@dataclasses.dataclass(eq=False)
class IdxConfig(tfds.core.BuilderConfig):
  """The image size of one folder of IDX files (read from its header)."""

  height: int = 28
  width: int = 28


IDX_CLASS_NAMES = "class_names.txt"


def find_idx_files(root: Path) -> dict[str, tuple[Path, Path]]:
  """split -> (images, labels): the standard MNIST file names in `root`, each plain or .gz."""
  wanted = " ".join(n for split in ("train", "test") for n in formats.idx_file_names(split))
  if not root.is_dir():
    raise DataError(
      f"idx: {root} is not a folder; expected the MNIST-format files {wanted} (each may end in .gz) in it"
    )
  found = {}
  for split in ("train", "test"):
    pair = []
    for name in formats.idx_file_names(split):
      path = next((p for p in (root / name, root / f"{name}.gz") if p.is_file()), None)
      if path is None:
        raise DataError(f"idx: {root / name} (or .gz) is missing; expected the MNIST-format files {wanted} in {root}")
      pair.append(path)
    found[split] = tuple(pair)
  return found


def idx_image_size(path: Path) -> tuple[int, int]:
  """(height, width) from an IDX images file's header, gzipped or not."""
  try:
    with open(path, "rb") as f:
      gzipped = f.read(2) == b"\x1f\x8b"
    with (gzip.open if gzipped else open)(path, "rb") as f:
      header = f.read(16)
  except (OSError, EOFError, zlib.error) as e:
    raise DataError(f"idx: cannot read {path} ({download_lib.one_line(e)})") from None
  if len(header) < 16 or int.from_bytes(header[:4], "big") != 0x00000803:
    raise DataError(f"idx: {path} is not an IDX images file (unsigned bytes, 3 dimensions: magic 0x00000803)")
  return int.from_bytes(header[8:12], "big"), int.from_bytes(header[12:16], "big")


class Idx(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Any MNIST-format IDX files (Fashion-MNIST, KMNIST, ...): format checks, no checksum.

  Each folder (and its files' sizes and mtimes) is its own config, named by a hash, so two
  folders never share prepared files. Class names come from an optional class_names.txt in the
  folder (one per line, label order), else the label numbers.
  """

  name = "idx"
  VERSION = tfds.core.Version("1.0.0")

  def __init__(self, *, root: Path, files: dict[str, tuple[Path, Path]], config: IdxConfig, **kwargs):
    self.root = Path(root)
    self.files = files
    _init_with_custom_config(self, config, kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    config = self.builder_config
    return tfds.core.DatasetInfo(
      builder=self,
      description="MNIST-format IDX images and labels (train and t10k files).",
      features=_image_features((config.height, config.width, 1)),
      metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    config = self.builder_config
    arrays = {split: formats.read_idx_split(paths, "idx") for split, paths in self.files.items()}
    for split, (images, _) in arrays.items():
      if images.shape[1:3] != (config.height, config.width):
        raise DataError(
          f"idx: {self.files[split][0]} holds {images.shape[1]}x{images.shape[2]} images, but the "
          f"train images are {config.height}x{config.width}"
        )
    num_classes = int(max(labels.max(initial=-1) for _, labels in arrays.values())) + 1
    names = [str(k) for k in range(num_classes)]
    names_file = self.root / IDX_CLASS_NAMES
    if names_file.is_file():
      names = [line.strip() for line in names_file.read_text().splitlines() if line.strip()]
      if len(names) < num_classes:
        raise DataError(
          f"idx: {names_file} names {len(names)} classes but the labels go up to {num_classes - 1}; "
          "expected one name per line for every label"
        )
    self.info.metadata["source"] = str(self.root.resolve())
    self.info.metadata["class_names"] = names
    return {
      split: self._generate_examples(
        (i, {"image": image, "label": label}) for i, (image, label) in enumerate(zip(images, labels))
      )
      for split, (images, labels) in arrays.items()
    }

  def _generate_examples(self, examples):
    yield from examples


def read_split(builder: tfds.core.DatasetBuilder, split: str) -> tuple[np.ndarray, np.ndarray]:
  """All (images, labels) of a prepared split as numpy arrays."""
  source = builder.as_data_source(split=split)
  # One batched read is far faster than indexing example by example.
  items = source.__getitems__(list(range(len(source))))
  images = np.stack([item["image"] for item in items])
  labels = np.fromiter((item["label"] for item in items), np.int64, len(items))
  return images, labels


def download_and_prepare(builder: tfds.core.DatasetBuilder, download_dir: Path) -> None:
  """Prepares `builder` once; a prepared folder is reused as it is."""
  if os.environ.get(download_lib.PROGRESS_ENV, "1") not in ("", "1"):
    tfds.disable_progress_bar()
  try:
    builder.download_and_prepare(
      download_dir=download_dir,
      # TFDS would otherwise look up its own hosted copy on the network.
      download_config=tfds.download.DownloadConfig(try_download_gcs=False),
    )
  except OSError:
    # Another process may have finished the same prepare first, making our
    # final rename fail; its result is as good as ours.
    if not builder.data_path.exists():
      raise
