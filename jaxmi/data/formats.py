"""Readers and checksums for the raw dataset files (no TensorFlow needed)."""

import gzip
import hashlib
from pathlib import Path
import re
import zlib

import numpy as np

from jaxmi.data.download import one_line
from jaxmi.errors import DataError

# The official MNIST files and the MD5 of their *uncompressed* bytes, which is
# what LeCun's page publishes (the .gz bytes differ between mirrors).
MNIST_FILES = {
  "train-images-idx3-ubyte.gz": "6bbc9ace898e44ae57da46a324031adb",
  "train-labels-idx1-ubyte.gz": "a25bea736e30d166cdddb491f175f624",
  "t10k-images-idx3-ubyte.gz": "2646ac647ad5339dbf082846283269ea",
  "t10k-labels-idx1-ubyte.gz": "27ae3e4e09519cfbb04c329615203637",
}
MNIST_SPLIT_FILES = {
  "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
  "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
_IDX_IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions
_IDX_LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension

# sha256 over the sorted "sN/M.pgm\0<sha256 of the file>\n" lines of the 400
# AT&T images (see att_faces_manifest), computed from the original files.
ATT_FACES_MANIFEST_SHA256 = "9972801133ec8ba8b06221a0f2c7c087c2e2a8d99a5fdd0ddfbf90beb82d5ac3"
ATT_FACES_IDENTITIES = 40
ATT_FACES_SHOTS = 10
ATT_FACES_SHAPE = (112, 92)
ATT_FACES_FILE = re.compile(r"(?:^|/)(s([1-9]\d*)/([1-9]\d*)\.pgm)$")


def gunzip(path: Path, dataset: str = "mnist") -> bytes:
  """Returns the decompressed bytes of IDX file `path`; DataError if bad."""
  try:
    with gzip.open(path, "rb") as f:
      return f.read()
  except FileNotFoundError:
    raise DataError(f"{dataset}: {path} is missing") from None
  except (EOFError, gzip.BadGzipFile, zlib.error) as e:
    raise DataError(
      f"{dataset}: {path} is truncated or not a gzip file ({one_line(e)}); delete it and download it again"
    ) from None
  except OSError as e:  # After BadGzipFile, which is an OSError too.
    raise DataError(f"{dataset}: cannot read {path} ({one_line(e)})") from None


def read_idx_bytes(path: Path, dataset: str) -> bytes:
  """The uncompressed bytes of an IDX file, gzipped (by content, whatever its name) or not."""
  try:
    with open(path, "rb") as f:
      gzipped = f.read(2) == b"\x1f\x8b"
  except OSError as e:
    raise DataError(f"{dataset}: cannot read {path} ({one_line(e)})") from None
  if gzipped:
    return gunzip(path, dataset)
  return path.read_bytes()


def mnist_md5_problem(name: str, data: bytes) -> str | None:
  """Why the uncompressed bytes of MNIST file `name` are wrong, or None."""
  expected = MNIST_FILES[name]
  actual = hashlib.md5(data).hexdigest()
  if actual == expected:
    return None
  return f"uncompressed md5 is {actual}, expected {expected}"


def parse_idx(data: bytes, path: Path, *, images: bool, dataset: str = "mnist") -> np.ndarray:
  """Parses an uncompressed IDX file: images -> [N, H, W, 1], labels -> [N]."""
  magic = _IDX_IMAGES_MAGIC if images else _IDX_LABELS_MAGIC
  ndim = 3 if images else 1
  header_size = 4 + 4 * ndim
  if len(data) < header_size:
    raise DataError(f"{dataset}: {path} is truncated: {len(data)} bytes is shorter than the IDX header")
  found = int.from_bytes(data[:4], "big")
  if found != magic:
    raise DataError(
      f"{dataset}: {path}: IDX magic number is {found:#010x}, expected "
      f"{magic:#010x} (unsigned bytes, {ndim} dimensions); is it the right "
      f"{'images' if images else 'labels'} file?"
    )
  dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
  expected_size = header_size + int(np.prod(dims))
  if len(data) != expected_size:
    raise DataError(
      f"{dataset}: {path} holds {len(data)} bytes, expected {expected_size} for an IDX file of shape {tuple(dims)}"
    )
  array = np.frombuffer(data, np.uint8, offset=header_size).reshape(dims)
  return array[..., None] if images else array


def read_mnist_split(paths: dict[str, Path], split: str) -> tuple[np.ndarray, np.ndarray]:
  """Reads and verifies one MNIST split: (uint8 [N,28,28,1], int64 [N]).

  `paths` maps each official file name to where it is.
  """
  image_name, label_name = MNIST_SPLIT_FILES[split]
  arrays = []
  for name, is_images in ((image_name, True), (label_name, False)):
    data = gunzip(paths[name])
    problem = mnist_md5_problem(name, data)
    if problem:
      raise DataError(
        f"mnist: {paths[name]}: {problem}; delete it so it is downloaded again, or replace it with the official file"
      )
    arrays.append(parse_idx(data, paths[name], images=is_images))
  images, labels = arrays
  if len(images) != len(labels):
    raise DataError(
      f"mnist: {paths[image_name]} has {len(images)} images but {paths[label_name]} has {len(labels)} labels"
    )
  return images, labels.astype(np.int64)


def idx_file_names(split: str) -> tuple[str, str]:
  """The standard (images, labels) IDX file names of a split, without .gz."""
  images, labels = MNIST_SPLIT_FILES[split]
  return images.removesuffix(".gz"), labels.removesuffix(".gz")


def read_idx_split(paths: tuple[Path, Path], dataset: str) -> tuple[np.ndarray, np.ndarray]:
  """Reads any MNIST-format (images, labels) IDX pair: format checks only, no checksum."""
  images = parse_idx(read_idx_bytes(paths[0], dataset), paths[0], images=True, dataset=dataset)
  labels = parse_idx(read_idx_bytes(paths[1], dataset), paths[1], images=False, dataset=dataset)
  if len(images) != len(labels):
    raise DataError(f"{dataset}: {paths[0]} has {len(images)} images but {paths[1]} has {len(labels)} labels")
  return images, labels.astype(np.int64)


def parse_pgm(data: bytes, path: Path) -> np.ndarray:
  """Parses a binary (P5) 8-bit PGM image into uint8 [H, W]."""
  # Header: "P5", width, height, maxval separated by whitespace, '#' comments
  # to end of line, then exactly one whitespace byte before the pixels.
  tokens, pos = [], 0
  while len(tokens) < 4:
    while pos < len(data) and (data[pos : pos + 1].isspace() or data[pos] == 35):
      if data[pos] == 35:  # '#'
        end = data.find(b"\n", pos)
        pos = len(data) if end < 0 else end
      pos += 1
    start = pos
    while pos < len(data) and not data[pos : pos + 1].isspace():
      pos += 1
    if start == pos:
      raise DataError(f"att_faces: {path} is truncated inside its PGM header")
    tokens.append(data[start:pos])
  if tokens[0] != b"P5":
    raise DataError(f"att_faces: {path} is not a binary PGM (P5) image")
  try:
    width, height, maxval = (int(t) for t in tokens[1:])
  except ValueError:
    raise DataError(f"att_faces: {path} has a malformed PGM header") from None
  if not 0 < maxval < 256:
    raise DataError(f"att_faces: {path} has PGM maxval {maxval}, expected 8-bit (<= 255)")
  pixels = data[pos + 1 : pos + 1 + width * height]
  if len(pixels) != width * height:
    raise DataError(f"att_faces: {path} is truncated: {len(pixels)} of {width * height} pixel bytes")
  return np.frombuffer(pixels, np.uint8).reshape(height, width)


def att_faces_manifest(files: dict[str, bytes]) -> str:
  """One sha256 over the sorted (relative path, content sha256) pairs."""
  digest = hashlib.sha256()
  for rel in sorted(files):
    digest.update(f"{rel}\0{hashlib.sha256(files[rel]).hexdigest()}\n".encode())
  return digest.hexdigest()


def att_faces_changed(files: dict[str, bytes], show: int = 5) -> str:
  """Names the files whose content differs from the original's, e.g. 's3/4.pgm' or '2 files: s1/1.pgm, s3/4.pgm'."""
  from jaxmi.data.att_faces_hashes import ATT_FACES_SHA256_PREFIXES  # pylint: disable=g-import-not-at-top

  expected = "".join(ATT_FACES_SHA256_PREFIXES)
  changed = [
    rel
    for k, rel in enumerate(att_faces_names())
    if hashlib.sha256(files.get(rel, b"")).hexdigest()[:16] != expected[16 * k : 16 * (k + 1)]
  ]
  if not changed:
    return "the files"  # Only a name outside sN/M.pgm could do this; the manifest still differs.
  listed = ", ".join(changed[:show]) + (", ..." if len(changed) > show else "")
  return listed if len(changed) == 1 else f"{len(changed)} files ({listed})"


def att_faces_names() -> list[str]:
  """The 400 relative paths sN/M.pgm of the AT&T database."""
  return [f"s{n}/{m}.pgm" for n in range(1, ATT_FACES_IDENTITIES + 1) for m in range(1, ATT_FACES_SHOTS + 1)]


def read_att_faces(raw_dir: Path) -> tuple[np.ndarray, np.ndarray]:
  """Reads and verifies the AT&T faces: (uint8 [400,112,92,1], int64 [400])."""
  files = {}
  for rel in att_faces_names():
    try:
      files[rel] = (raw_dir / rel).read_bytes()
    except FileNotFoundError:
      raise DataError(
        f"att_faces: {raw_dir / rel} is missing; expected the 400 files sN/M.pgm (N=1..40, M=1..10) in {raw_dir}"
      ) from None
    except OSError as e:
      raise DataError(f"att_faces: cannot read {raw_dir / rel} ({one_line(e)})") from None
  actual = att_faces_manifest(files)
  if actual != ATT_FACES_MANIFEST_SHA256:
    raise DataError(
      f"att_faces: {att_faces_changed(files)} in {raw_dir} differ from the original AT&T "
      f"files (manifest sha256 {actual}, expected {ATT_FACES_MANIFEST_SHA256}); "
      "replace them with the original files"
    )
  images, labels = [], []
  for rel, data in files.items():
    image = parse_pgm(data, raw_dir / rel)
    if image.shape != ATT_FACES_SHAPE:
      raise DataError(f"att_faces: {raw_dir / rel} is {image.shape[1]}x{image.shape[0]}, expected 92x112")
    images.append(image)
    labels.append(int(ATT_FACES_FILE.search(rel).group(2)) - 1)
  return np.stack(images)[..., None], np.asarray(labels, np.int64)
