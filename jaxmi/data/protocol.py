"""The standard model-inversion protocol's face datasets: CelebA from the official split files, FFHQ and FaceScrub.

Where the raw files go (data_dir = prepare-data's --root, else --data-dir D as D/celeba, D/ffhq, D/facescrub):

  celeba/img_align_celeba/000001.jpg ...   CelebA's official aligned 178x218 JPEGs
  celeba/trainset.txt testset.txt ganset.txt
      the KEDMI split as the reference code reads it: '<image> <label>' lines (ganset: '<image>', a label is
      ignored). Also found in celeba/meta/ (LOMMA), splits/, split_files/ (MIBench) and data_files/ (PLG-MI), and
      under PLG-MI's names celeba_trainset.txt ... or MIBench's private_train.txt, private_test.txt, public.txt.
  ffhq/thumbnails128x128/00000/00000.png ...   FFHQ's thumbnails; an optional ffhq_ganset.txt (PLG-MI) or
      ganset_ffhq.txt (LOMMA) beside them (same folders as CelebA's) lists the images to use, else all of them.
  facescrub/faceScrub/<name>/face/<image>   the FaceScrub download script's layout (or facescrub/<name>/<image>);
      one identity per name, in sorted order, through the image_folder builder.

The private split (identities = the files' labels) and the public split come from the files, never from jaxmi's
seeded identity split; a public image that is also private, a missing split file or a listed image that is not
there is refused with one line before anything is written.

Preprocessing is the reference's, on uint8 PIL images (PLG-MI baselines/dataloader.py get_processor and
train_cgan.py; Re-thinking_MI dataloader.py): ToTensor -> crop -> ToPILImage -> Resize((S, S)) -> ToTensor. The
ToTensor/ToPILImage round trip is exact for uint8 (k / 255 * 255 == k in float32), and torchvision's Resize on a
PIL image is PIL's bilinear resize (antialiased when shrinking), so each image is exactly
PIL crop -> resize((S, S), BILINEAR):
  CelebA: crop 108x108 at (top 55, left 35) = ((218 - 108) // 2, (178 - 108) // 2), then S = 64 (112 for the
    evaluation model: data.image_size).
  FFHQ: an image that is not 128x128 is first resized to it with Lanczos (utils.load_image_list, ANTIALIAS), then
    the centre 88x88 at (20, 20), then S.
  FaceScrub: an image that is not 64x64 is first resized to it with Lanczos (load_image_list), then the reference's
    crop of 64 at (0, 0) is the whole image (PLG-MI; LOMMA's commented-out 54 is data.crop=(5, 5, 54, 54)).
A data.crop set in the config replaces the reference crop of data.dataset (a public_dataset keeps its own).
"""

import concurrent.futures
import dataclasses
import hashlib
import os
from pathlib import Path
from stat import S_ISREG

import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from jaxmi.data import builders
from jaxmi.data.download import one_line
from jaxmi.errors import DataError

CELEBA_IMAGES = "img_align_celeba"
CELEBA_CROP = (55, 35, 108, 108)  # (top, left, height, width) of the 218x178 aligned images
# Split file names by role: the reference's (KEDMI, LOMMA), PLG-MI's data_files/, MIBench's split_files/.
CELEBA_SPLIT_FILES = {
  "train": ("trainset.txt", "celeba_trainset.txt", "private_train.txt"),
  "test": ("testset.txt", "celeba_testset.txt", "private_test.txt"),
  "public": ("ganset.txt", "celeba_ganset.txt", "public.txt"),
}
# Where split files are looked for, inside the dataset's folder ("" = the folder itself).
SPLIT_FOLDERS = ("", "meta", "splits", "split_files", "data_files")

FFHQ_IMAGES = "thumbnails128x128"
FFHQ_SIZE = (128, 128)
FFHQ_CROP = (20, 20, 88, 88)  # the centre 88 of 128
FFHQ_LIST_FILES = ("ffhq_ganset.txt", "ganset_ffhq.txt")

FACESCRUB_FOLDER = "faceScrub"
FACESCRUB_SIZE = 64


@dataclasses.dataclass(frozen=True)
class Listed:
  """One split file, read: its path and (image, label, line number) rows; label -1 = none."""

  path: Path | None  # None: every image of the folder (FFHQ without a list)
  rows: tuple[tuple[str, int, int], ...]


def _where(root: Path) -> str:
  return f"{root} or its {', '.join(f + '/' for f in SPLIT_FOLDERS if f)} folders"


def find_split_file(
  root: Path, names: tuple[str, ...], dataset: str, what: str, required: bool, labelled: bool = False
) -> Path | None:
  """The split file named one of `names` in root or one of its SPLIT_FOLDERS; None if absent and not required."""
  found = [root / folder / name for folder in SPLIT_FOLDERS for name in names if (root / folder / name).is_file()]
  if not found:
    if required:
      raise DataError(
        f"{dataset}: {root / names[0]} is missing; expected the {what} ({' or '.join(names)}) in {_where(root)}"
      )
    return None
  # Two different lists for one split would make the split depend on the search order; the same list under two
  # names (MIBench's public.txt has a label column that ganset.txt lacks) is fine.
  first = _entries(read_split_file(found[0], dataset, labelled=labelled)) if len(found) > 1 else ()
  for other in found[1:]:
    if _entries(read_split_file(other, dataset, labelled=labelled)) != first:
      raise DataError(f"{dataset}: {found[0]} and {other} are both {what}s and differ; keep one of them")
  return found[0]


def _entries(listed: Listed) -> tuple:
  return tuple((name, label) for name, label, _ in listed.rows)


def read_split_file(path: Path, dataset: str, *, labelled: bool) -> Listed:
  """Parses '<image> <label>' lines (labelled) or '<image>' lines (a second column is then ignored)."""
  try:
    text = path.read_text()
  except (OSError, UnicodeDecodeError) as e:
    raise DataError(f"{dataset}: cannot read {path} ({one_line(e)})") from None
  expected = "'<image> <label>' (a file name and an identity number >= 0)" if labelled else "'<image>'"
  rows, seen = [], {}
  for number, line in enumerate(text.splitlines(), 1):
    parts = line.split()
    if not parts:
      continue
    label = -1
    if labelled and len(parts) == 2 and parts[1].isascii() and parts[1].isdigit():
      label = int(parts[1])
    elif labelled or len(parts) > 2:
      raise DataError(f"{dataset}: {path} line {number}: expected {expected}, got {line.strip()!r}")
    name = parts[0]
    if Path(name).is_absolute() or ".." in Path(name).parts:
      raise DataError(f"{dataset}: {path} line {number}: {name} must be a path inside the images folder")
    if name in seen:
      raise DataError(f"{dataset}: {path} lists {name} twice (lines {seen[name]} and {number})")
    seen[name] = number
    rows.append((name, label, number))
  if not rows:
    raise DataError(f"{dataset}: {path} lists no images; expected {expected} lines")
  return Listed(path, tuple(rows))


def _check_images(listed: Listed, images_dir: Path, dataset: str, digest) -> None:
  """Every listed image exists; each one's name, size and mtime go into `digest` (the prepared folder's key)."""
  for name, _, number in listed.rows:
    try:
      stat = os.stat(images_dir / name)
    except OSError:
      stat = None
    if stat is None or not S_ISREG(stat.st_mode):
      raise DataError(f"{dataset}: {listed.path} line {number} names {name}, but {images_dir / name} is not there")
    digest.update(f"{name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())


def _digest(root: Path, fields: tuple, lists: dict[str, Listed]):
  digest = hashlib.sha256(repr((str(root.resolve()), fields)).encode())
  for split, listed in lists.items():
    digest.update(f"{split}\0{listed.rows}\n".encode())
  return digest


def scan_celeba(root: Path, fields: tuple) -> tuple[dict[str, Listed], str]:
  """The split files of `root` (train, test and, when present, public), checked; and the prepared folder's key.

  Raises DataError (one line) on a missing folder or train/test file, a malformed line, an image listed twice or
  in two splits (a public image that is private, or a test image that is trained on) and a listed image that is
  not there; nothing is written before.
  """
  images_dir = root / CELEBA_IMAGES
  if not images_dir.is_dir():
    raise DataError(
      f"celeba: {images_dir} is not a folder; expected CelebA's aligned JPEGs ({CELEBA_IMAGES}/000001.jpg ...) in {root}"
    )
  lists = {}
  for split, names in CELEBA_SPLIT_FILES.items():
    what = "public split file" if split == "public" else f"private {split} split file"
    path = find_split_file(root, names, "celeba", what, required=split != "public", labelled=split != "public")
    if path is not None:
      lists[split] = read_split_file(path, "celeba", labelled=split != "public")
  first = {}
  for split, listed in lists.items():
    for name, _, _ in listed.rows:
      if name in first:
        rule = "a public image must not be private" if split == "public" else "a test image must not be trained on"
        raise DataError(f"celeba: {listed.path} lists {name}, which {lists[first[name]].path} lists too; {rule}")
      first[name] = split
  digest = _digest(root, fields, lists)
  for listed in lists.values():
    _check_images(listed, images_dir, "celeba", digest)
  return lists, digest.hexdigest()[:16]


def scan_ffhq(root: Path, fields: tuple) -> tuple[dict[str, Listed], str]:
  """FFHQ's images: those of its list file if there is one, else every image under thumbnails128x128/."""
  images_dir = root / FFHQ_IMAGES
  if not images_dir.is_dir():
    raise DataError(f"ffhq: {images_dir} is not a folder; expected FFHQ's {FFHQ_IMAGES}/00000/00000.png ... in {root}")
  path = find_split_file(root, FFHQ_LIST_FILES, "ffhq", "image list", required=False)
  if path is not None:
    listed = read_split_file(path, "ffhq", labelled=False)
  else:
    names = sorted(
      p.relative_to(images_dir).as_posix()
      for p in images_dir.rglob("*")
      if p.suffix.lower() in builders.image_suffixes() and p.is_file() and not p.name.startswith(".")
    )
    if not names:
      raise DataError(f"ffhq: {images_dir} holds no images; expected FFHQ's {FFHQ_IMAGES}/00000/00000.png ...")
    listed = Listed(None, tuple((name, -1, 0) for name in names))
  digest = _digest(root, fields, {"train": listed})
  _check_images(listed, images_dir, "ffhq", digest)
  return {"train": listed}, digest.hexdigest()[:16]


def scan_facescrub(root: Path) -> tuple[Path, list[tuple[str, list[Path]]]]:
  """(base, identities): FaceScrub's <name>/face/<image> (or <name>/<image>) folders under root[/faceScrub]."""
  base = root / FACESCRUB_FOLDER if (root / FACESCRUB_FOLDER).is_dir() else root
  if not base.is_dir():
    raise DataError(f"facescrub: {root} is not a folder; expected {FACESCRUB_FOLDER}/<name>/face/<image> in it")
  identities = []
  for folder in sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")):
    images = folder / "face" if (folder / "face").is_dir() else folder
    files = sorted(
      p for p in images.iterdir() if p.is_file() and not p.name.startswith(".") and builders.is_image_file(p)
    )
    if not files:
      # Skipping it would silently shift every later identity's label, as in image_folder.
      raise DataError(f"facescrub: {images} has no images; remove {folder} or add its images")
    identities.append((folder.name, files))
  if not identities:
    raise DataError(f"facescrub: {base} has no identity folders; expected {FACESCRUB_FOLDER}/<name>/face/<image>")
  return base, identities


@dataclasses.dataclass(eq=False)
class ListedImagesConfig(tfds.core.BuilderConfig):
  """How listed images are stored: the reference crop and resize, at the run's size."""

  height: int = 64
  width: int = 64
  channels: int = 3
  crop: tuple[int, ...] = ()  # (top, left, height, width)
  pre_resize: tuple[int, ...] = ()  # (width, height) an image of another size is first resized to (Lanczos)


def load_listed_image(path: Path, config: ListedImagesConfig, dataset: str) -> np.ndarray:
  """One image as the reference reads it: [Lanczos to pre_resize,] RGB, crop, bilinear resize; uint8 HWC."""
  try:
    with Image.open(path) as image:
      # The reference's order: load_image_list resizes before convert('RGB').
      if config.pre_resize and image.size != tuple(config.pre_resize):
        image = image.resize(tuple(config.pre_resize), Image.Resampling.LANCZOS)
      image = image.convert("RGB")
      if config.channels == 1:
        image = image.convert("L")
  except (OSError, ValueError, Image.DecompressionBombError) as e:
    raise DataError(f"{dataset}: cannot read image {path} ({one_line(e)})") from None
  width, height = image.size
  top, left, crop_h, crop_w = config.crop
  if top + crop_h > height or left + crop_w > width:
    raise DataError(
      f"{dataset}: crop (top, left, height, width)={tuple(config.crop)} does not fit {path}, which is "
      f"{width}x{height} (w x h)"
    )
  image = image.crop((left, top, left + crop_w, top + crop_h))
  if image.size != (config.width, config.height):
    image = image.resize((config.width, config.height), Image.Resampling.BILINEAR)
  array = np.asarray(image, np.uint8)
  return array[..., None] if array.ndim == 2 else array


class _ListedImages(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Images named by split files, one config (a hash of the files and the format) per prepared folder."""

  VERSION = tfds.core.Version("1.0.0")
  DESCRIPTION = ""

  def __init__(self, *, root: Path, images_dir: Path, lists: dict[str, Listed], num_classes: int, config, **kwargs):
    self.root = Path(root)
    self.images_dir = Path(images_dir)
    self.lists = lists
    self.num_classes = num_classes
    builders._init_with_custom_config(self, config, kwargs)  # pylint: disable=protected-access

  def _info(self) -> tfds.core.DatasetInfo:
    config = self.builder_config
    return tfds.core.DatasetInfo(
      builder=self,
      description=self.DESCRIPTION,
      features=builders._image_features(  # pylint: disable=protected-access
        (config.height, config.width, config.channels), file=tfds.features.Text()
      ),
      metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    self.info.metadata["source"] = str(self.root.resolve())
    self.info.metadata["class_names"] = [str(k) for k in range(self.num_classes)]
    return {split: self._generate_examples(listed) for split, listed in self.lists.items()}

  def _generate_examples(self, listed: Listed):
    config = self.builder_config
    chunk = 512  # as ImageFolder: PIL decodes without the GIL; chunks bound the decoded images in memory
    with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1) as pool:
      for start in range(0, len(listed.rows), chunk):
        part = listed.rows[start : start + chunk]
        images = pool.map(lambda row: load_listed_image(self.images_dir / row[0], config, self.name), part)
        for (name, label, _), image in zip(part, images):
          yield name, {"image": image, "label": label, "file": name}


class Celeba(_ListedImages):
  """CelebA's aligned images in the official splits: train/test labelled 0..999, public (ganset) label -1."""

  name = "celeba"
  DESCRIPTION = "CelebA aligned faces in the KEDMI split files (trainset/testset/ganset), reference crop and resize."


class Ffhq(_ListedImages):
  """FFHQ's 128x128 thumbnails (unlabelled: label -1) in one split, train."""

  name = "ffhq"
  DESCRIPTION = "FFHQ thumbnails128x128, reference centre crop 88 and resize."


def _fields(image_size: int, channels: int, crop: tuple[int, ...], pre_resize: tuple[int, ...]) -> tuple:
  return (image_size, image_size, channels, tuple(crop), tuple(pre_resize))


def celeba_builder(root: Path, prepared: Path, image_size: int, channels: int, crop: tuple[int, ...]) -> Celeba:
  crop = tuple(crop) or CELEBA_CROP
  fields = _fields(image_size, channels, crop, ())
  lists, key = scan_celeba(root, fields)
  labels = [label for split in ("train", "test") for _, label, _ in lists[split].rows]
  config = ListedImagesConfig(
    name=key, height=image_size, width=image_size, channels=channels, crop=crop, description=f"{root} at {fields}"
  )
  return Celeba(
    root=root,
    images_dir=root / CELEBA_IMAGES,
    lists=lists,
    num_classes=max(labels) + 1,
    config=config,
    data_dir=prepared,
  )


def ffhq_builder(root: Path, prepared: Path, image_size: int, channels: int, crop: tuple[int, ...]) -> Ffhq:
  crop = tuple(crop) or FFHQ_CROP
  fields = _fields(image_size, channels, crop, FFHQ_SIZE)
  lists, key = scan_ffhq(root, fields)
  config = ListedImagesConfig(
    name=key,
    height=image_size,
    width=image_size,
    channels=channels,
    crop=crop,
    pre_resize=FFHQ_SIZE,
    description=f"{root} at {fields}",
  )
  return Ffhq(root=root, images_dir=root / FFHQ_IMAGES, lists=lists, num_classes=0, config=config, data_dir=prepared)


def facescrub_builder(root: Path, prepared: Path, image_size: int, channels: int, crop: tuple[int, ...]):
  """FaceScrub through the image_folder builder, with the reference's Lanczos resize to 64x64 first."""
  base, identities = scan_facescrub(root)
  fields = (image_size, image_size, channels, tuple(crop), FACESCRUB_SIZE)
  config = builders.ImageFolderConfig(
    name=builders.image_folder_key(base, identities, fields),
    height=image_size,
    width=image_size,
    channels=channels,
    crop=tuple(crop),
    pre_resize=FACESCRUB_SIZE,
    description=f"{base.resolve()} at {fields}",
  )
  return builders.ImageFolder(root=base, identities=identities, config=config, data_dir=prepared)
