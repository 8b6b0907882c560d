"""Tiny datasets in the exact layouts of the standard protocol's CelebA, FFHQ and FaceScrub, made from AT&T faces.

  root = make_celeba(tmp_path, att_dir=data_root / "att_faces", identities=10, train=3, test=1, public=6)
  DataConfig(dataset="celeba", data_dir=str(root), image_size=64, channels=3, private_ids=(), public_ids=())

CelebA: <root>/celeba/img_align_celeba/000001.jpg ... (178x218 RGB JPEGs: an AT&T face, tinted per identity, placed
over the reference crop (top 55, left 35, 108x108) on a textured background) with trainset.txt / testset.txt
('<image> <label>') and ganset.txt ('<image>') in the official line format. Private identity k is AT&T subject
s<k+1>; public images come from the last AT&T subjects (s40, s39, ...), never a private one.
FFHQ: <root>/ffhq/thumbnails128x128/00000/00000.png ... (128x128 RGB) with PLG-MI's ffhq_ganset.txt.
FaceScrub: <root>/facescrub/faceScrub/<name>/face/<image>.jpg (the download script's layout), not 64x64.
"""

from pathlib import Path

import numpy as np
from PIL import Image

CELEBA_SIZE = (178, 218)  # (width, height) of the aligned images
ATT_SUBJECTS, ATT_SHOTS = 40, 10
# Split file names and folders by flavour: the reference's (KEDMI / LOMMA), PLG-MI's data_files/, MIBench's.
SPLIT_NAMES = {
  "reference": ("", "trainset.txt", "testset.txt", "ganset.txt"),
  "plgmi": ("data_files", "celeba_trainset.txt", "celeba_testset.txt", "celeba_ganset.txt"),
  "mibench": ("split_files", "private_train.txt", "private_test.txt", "public.txt"),
}


def att_face(att_dir: Path, subject: int, shot: int) -> np.ndarray:
  """AT&T face s<subject>/<shot>.pgm as uint8 [112, 92]."""
  with Image.open(Path(att_dir) / f"s{subject}" / f"{shot}.pgm") as image:
    return np.asarray(image.convert("L"), np.uint8)


def _tinted(face: np.ndarray, key: int) -> np.ndarray:
  """Grey face -> RGB, with a tint that depends on `key` (so the channels differ)."""
  tint = 0.6 + 0.4 * np.random.default_rng(key).random(3)
  return np.clip(face[..., None] * tint, 0, 255).astype(np.uint8)


def _frame(width: int, height: int, key: int) -> np.ndarray:
  """A textured background: a gradient plus seeded noise, so a wrong crop or resize shows."""
  rng = np.random.default_rng(1000 + key)
  y, x = np.mgrid[0:height, 0:width]
  base = np.stack([x * 255 / width, y * 255 / height, (x + y) * 127 / (width + height)], axis=-1)
  return np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)


def celeba_image(face: np.ndarray, key: int) -> Image.Image:
  """A 178x218 frame with the 112x92 face placed over the reference crop (rows 55..163, columns 35..143)."""
  frame = _frame(*CELEBA_SIZE, key)
  top, left = 53, 43  # the 112x92 face covers rows 53..165, columns 43..135
  frame[top : top + face.shape[0], left : left + face.shape[1]] = _tinted(face, key % 97)
  return Image.fromarray(frame, "RGB")


def make_celeba(
  root: Path,
  *,
  att_dir: Path,
  identities: int = 10,
  train: int = 3,
  test: int = 1,
  public: int = 6,
  names: str = "reference",
) -> Path:
  """Writes <root>/celeba in CelebA's layout; returns that folder (the dataset's data_dir).

  identities x (train + test) private images (AT&T subjects s1.. with shots 1..train+test), labels 0..identities-1,
  and `public` unlabelled public images from the last AT&T subjects. `names` picks the split files' names and
  folder (SPLIT_NAMES). The image files are numbered 000001.jpg on in that order.
  """
  if train + test > ATT_SHOTS:
    raise ValueError(f"train + test = {train + test} > {ATT_SHOTS} AT&T shots per subject")
  public_subjects = -(-public // ATT_SHOTS)
  if identities + public_subjects > ATT_SUBJECTS:
    raise ValueError(f"{identities} private + {public_subjects} public subjects > {ATT_SUBJECTS} AT&T subjects")
  folder = Path(root) / "celeba"
  images = folder / "img_align_celeba"
  images.mkdir(parents=True, exist_ok=True)
  rows = {"train": [], "test": [], "public": []}
  number = 0

  def write(face: np.ndarray) -> str:
    nonlocal number
    number += 1
    name = f"{number:06d}.jpg"
    celeba_image(face, number).save(images / name, quality=95)
    return name

  for label in range(identities):
    for shot in range(1, train + test + 1):
      split = "train" if shot <= train else "test"
      rows[split].append(f"{write(att_face(att_dir, label + 1, shot))} {label}")
  for k in range(public):
    rows["public"].append(write(att_face(att_dir, ATT_SUBJECTS - k // ATT_SHOTS, k % ATT_SHOTS + 1)))
  where, *files = SPLIT_NAMES[names]
  (folder / where).mkdir(parents=True, exist_ok=True)
  for split, name in zip(("train", "test", "public"), files):
    (folder / where / name).write_text("".join(f"{row}\n" for row in rows[split]))
  return folder


def celeba_split_file(folder: Path, split: str) -> Path:
  """The split file ('train', 'test' or 'public') that make_celeba wrote in `folder`."""
  index = ("train", "test", "public").index(split)
  for where, *files in SPLIT_NAMES.values():
    if (Path(folder) / where / files[index]).is_file():
      return Path(folder) / where / files[index]
  raise FileNotFoundError(f"no {split} split file in {folder}")


def make_ffhq(root: Path, *, att_dir: Path, count: int = 5, listed: bool = True) -> Path:
  """Writes <root>/ffhq/thumbnails128x128/00000/<k>.png (128x128 RGB faces) and, if listed, ffhq_ganset.txt."""
  folder = Path(root) / "ffhq"
  images = folder / "thumbnails128x128" / "00000"
  images.mkdir(parents=True, exist_ok=True)
  names = []
  for k in range(count):
    frame = _frame(128, 128, 500 + k)
    face = att_face(att_dir, 30 - k // ATT_SHOTS, k % ATT_SHOTS + 1)
    frame[8:120, 18:110] = _tinted(face, 500 + k)
    Image.fromarray(frame, "RGB").save(images / f"{k:05d}.png")
    names.append(f"00000/{k:05d}.png")
  if listed:
    (folder / "ffhq_ganset.txt").write_text("".join(f"{name}\n" for name in names))
  return folder


def make_facescrub(root: Path, *, att_dir: Path, identities: int = 3, per_identity: int = 2) -> Path:
  """Writes <root>/facescrub/faceScrub/<name>/face/<k>.jpg: RGB faces of 92x112 (not 64x64, as downloaded)."""
  folder = Path(root) / "facescrub"
  for i in range(identities):
    face_dir = folder / "faceScrub" / f"Actor_{chr(ord('A') + i)}" / "face"
    face_dir.mkdir(parents=True, exist_ok=True)
    for k in range(per_identity):
      face = _tinted(att_face(att_dir, 20 + i, k + 1), 700 + 10 * i + k)
      Image.fromarray(face, "RGB").save(face_dir / f"{k:040x}.jpg", quality=95)
  return folder
