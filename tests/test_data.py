"""jaxmi.data on the real MNIST and AT&T files: builders, splits, iterators, errors."""

import gzip
import hashlib
import logging
import shutil
import threading
import time
import zipfile

import jax
import numpy as np
from PIL import Image
import pytest

from jaxmi import data
from jaxmi.data import builders
from jaxmi.data import formats
from jaxmi.data import sources
from jaxmi.data import splits as splits_lib
from jaxmi.errors import ConfigError
from jaxmi.errors import DataError

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def notes(caplog) -> str:
  """The warnings jaxmi logged (its notes; the command line prints them to stderr)."""
  return "\n".join(
    r.getMessage() for r in caplog.records if r.name.startswith("jaxmi") and r.levelno >= logging.WARNING
  )


def raises_one_line(error_type, fn, *args, **kwargs) -> str:
  """Calls fn, expects error_type with a one-line message; returns it."""
  with pytest.raises(error_type) as info:
    fn(*args, **kwargs)
  message = str(info.value)
  assert "\n" not in message, message
  return message


@pytest.fixture(scope="session")
def mnist_raw(data_root, cache_root):
  return sources.load_raw("mnist", data_dir=data_root / "mnist", cache_dir=cache_root, download=False)


@pytest.fixture(scope="session")
def att_raw(data_root, cache_root):
  return sources.load_raw("att_faces", data_dir=data_root / "att_faces", cache_dir=cache_root, download=False)


@pytest.fixture
def mnist_copy(data_root, tmp_path):
  """A writable copy of the four MNIST files."""
  folder = tmp_path / "mnist"
  shutil.copytree(data_root / "mnist", folder)
  return folder


def assert_nothing_prepared(cache, dataset):
  """No prepared version folder, no incomplete.* folder, no file at all."""
  folder = cache / "tfds" / dataset
  leftovers = [p for p in folder.rglob("*") if p.is_file() or p.name == "1.0.0" or p.name.startswith("incomplete")]
  assert not leftovers, leftovers


def flip_byte_in_gzip(path, offset):
  content = bytearray(gzip.decompress(path.read_bytes()))
  content[offset] ^= 0xFF
  path.write_bytes(gzip.compress(bytes(content)))


# Builders.


def test_mnist_builder(mnist_raw, cache_root):
  train_images, train_labels = mnist_raw.splits["train"]
  test_images, test_labels = mnist_raw.splits["test"]
  assert train_images.shape == (60000, 28, 28, 1) and train_images.dtype == np.uint8
  assert test_images.shape == (10000, 28, 28, 1) and test_images.dtype == np.uint8
  assert np.bincount(train_labels).tolist() == MNIST_TRAIN_COUNTS
  assert np.bincount(test_labels).tolist() == MNIST_TEST_COUNTS
  assert mnist_raw.num_classes == 10
  assert str(cache_root / "tfds" / "mnist" / "1.0.0") in mnist_raw.description


def test_mnist_second_load_reuses_prepared(mnist_raw, data_root, cache_root, monkeypatch):
  def fail(*args, **kwargs):
    raise AssertionError("prepared again")

  monkeypatch.setattr(builders.Mnist, "_split_generators", fail)
  start = time.perf_counter()
  again = sources.load_raw("mnist", data_dir=data_root / "mnist", cache_dir=cache_root, download=False)
  assert time.perf_counter() - start < 30
  np.testing.assert_array_equal(again.splits["test"][1], mnist_raw.splits["test"][1])


def test_att_faces_builder(att_raw, data_root):
  images, labels = att_raw.splits["train"]
  assert list(att_raw.splits) == ["train"]
  assert images.shape == (400, 112, 92, 1) and images.dtype == np.uint8
  assert np.bincount(labels).tolist() == [10] * 40
  # s7/3.pgm is identity 6 (folders count from 1, labels from 0).
  expected = np.asarray(Image.open(data_root / "att_faces" / "s7" / "3.pgm"))
  matches = [i for i in range(400) if np.array_equal(images[i, ..., 0], expected)]
  assert len(matches) == 1 and labels[matches[0]] == 6


def make_image_folder(root):
  """3 identities created out of order; png RGB and jpg grey of many sizes."""
  rng = np.random.default_rng(0)
  for name, count in [("carol", 2), ("alice", 3), ("bob", 4)]:
    (root / name).mkdir(parents=True)
    for i in range(count):
      height, width = rng.integers(30, 90, size=2)
      pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
      if i % 2:
        Image.fromarray(pixels[..., 0]).save(root / name / f"{i}.jpg")
      else:
        Image.fromarray(pixels).save(root / name / f"{i}.png")
  (root / "notes.txt").write_text("not an identity")  # Files at top level are ignored.


def test_image_folder(tmp_path):
  root, cache = tmp_path / "faces", tmp_path / "cache"
  make_image_folder(root)
  raw = sources.load_raw("image_folder", data_dir=root, cache_dir=cache, image_size=16, channels=3)
  images, labels = raw.splits["train"]
  assert raw.class_names == ("alice", "bob", "carol")
  assert np.bincount(labels).tolist() == [3, 4, 2]
  assert images.shape == (9, 16, 16, 3) and images.dtype == np.uint8
  grey = sources.load_raw("image_folder", data_dir=root, cache_dir=cache, image_size=8, channels=1)
  assert grey.splits["train"][0].shape == (9, 8, 8, 1)
  # Each root/format has its own prepared folder.
  assert len(list((cache / "tfds" / "image_folder").iterdir())) == 2

  splits = data.load_splits(
    data.DataConfig(
      dataset="image_folder",
      data_dir=str(root),
      cache_dir=str(cache),
      image_size=16,
      channels=3,
      private_ids=(0, 1),
      public_ids=(2,),
    )
  )
  assert len(splits.private_train) + len(splits.private_test) == 7
  assert len(splits.public) == 2 and set(splits.public.identities) == {2}
  assert splits.private_train.images.shape[1:] == (16, 16, 3)


def test_image_folder_crop(tmp_path):
  root = tmp_path / "faces"
  (root / "a").mkdir(parents=True)
  pixels = np.zeros((100, 80, 3), np.uint8)
  pixels[10:50, 20:60] = 255  # exactly the crop box below
  Image.fromarray(pixels).save(root / "a" / "0.png")
  raw = sources.load_raw(
    "image_folder", data_dir=root, cache_dir=tmp_path / "c", image_size=8, channels=3, crop=(10, 20, 40, 40)
  )
  assert (raw.splits["train"][0] == 255).all()
  message = raises_one_line(
    DataError,
    sources.load_raw,
    "image_folder",
    data_dir=root,
    cache_dir=tmp_path / "c",
    image_size=8,
    channels=3,
    crop=(70, 0, 40, 40),
  )
  assert str(root / "a" / "0.png") in message


def test_image_folder_unreadable_image(tmp_path):
  root = tmp_path / "faces"
  make_image_folder(root)
  (root / "bob" / "broken.jpg").write_bytes(b"not a jpeg")
  message = raises_one_line(
    DataError, sources.load_raw, "image_folder", data_dir=root, cache_dir=tmp_path / "c", image_size=8
  )
  assert str(root / "bob" / "broken.jpg") in message
  assert_nothing_prepared(tmp_path / "c", "image_folder")


def test_sklearn_digits():
  raw = sources.load_raw("sklearn_digits")
  images, labels = raw.splits["train"]
  assert images.shape == (1797, 8, 8, 1) and images.dtype == np.uint8
  assert images.max() == 255 and set(labels.tolist()) == set(range(10))


# Splits.


def test_mnist_splits(mnist_raw, data_root, cache_root):
  start = time.perf_counter()
  splits = data.load_splits(
    data.DataConfig(data_dir=str(data_root / "mnist"), cache_dir=str(cache_root), download=False)
  )
  print(f"warm load_splits(mnist): {time.perf_counter() - start:.2f}s")
  assert splits.num_private_classes == splits.num_public_classes == 5
  for split in (splits.private_train, splits.private_test, splits.public):
    assert split.images.shape[1:] == (32, 32, 1) and split.images.dtype == np.uint8
    assert split.labels.dtype == np.int32 and split.identities.dtype == np.int32
  assert len(splits.private_train) == sum(MNIST_TRAIN_COUNTS[:5])
  assert len(splits.private_test) == sum(MNIST_TEST_COUNTS[:5])
  assert len(splits.public) == sum(MNIST_TRAIN_COUNTS[5:])
  assert set(splits.private_train.identities) == {0, 1, 2, 3, 4}
  assert set(splits.public.identities) == {5, 6, 7, 8, 9}
  np.testing.assert_array_equal(splits.public.labels, splits.public.identities - 5)
  assert "mnist from" in splits.description


def att_config(data_root, cache_root, **overrides):
  fields = dict(
    dataset="att_faces",
    data_dir=str(data_root / "att_faces"),
    cache_dir=str(cache_root),
    download=False,
    private_ids=tuple(range(20)),
    public_ids=tuple(range(20, 40)),
    test_fraction=0.3,
  )
  return data.DataConfig(**{**fields, **overrides})


def image_hashes(split):
  return {hashlib.sha1(image.tobytes()).hexdigest() for image in split.images}


def test_att_faces_splits(att_raw, data_root, cache_root):
  cfg = att_config(data_root, cache_root)
  splits = data.load_splits(cfg)
  assert (len(splits.private_train), len(splits.private_test), len(splits.public)) == (140, 60, 200)
  assert set(splits.private_train.identities) == set(range(20))
  assert set(splits.private_test.identities) == set(range(20))
  assert set(splits.public.identities) == set(range(20, 40))
  np.testing.assert_array_equal(splits.public.labels, splits.public.identities - 20)
  assert set(splits.private_train.labels) == set(range(20))
  assert not image_hashes(splits.private_train) & image_hashes(splits.private_test)

  same = data.load_splits(cfg)
  np.testing.assert_array_equal(same.private_test.images, splits.private_test.images)
  other = data.load_splits(att_config(data_root, cache_root, split_seed=1))
  assert image_hashes(other.private_test) != image_hashes(splits.private_test)

  # test_fraction 0 on a dataset without a test split holds out 20%.
  default = data.load_splits(att_config(data_root, cache_root, test_fraction=0.0))
  assert np.bincount(default.private_test.labels).tolist() == [2] * 20


def test_select_indices_stratified_and_disjoint():
  labels = np.repeat(np.arange(6), [7, 3, 9, 2, 5, 4])
  cfg = data.DataConfig(private_ids=(0, 1, 2, 3), public_ids=(4, 5), test_fraction=0.25, max_per_class=6)
  chosen = splits_lib.select_indices(cfg, {"train": labels}, False)
  train, test, public = (chosen[role][1] for role in ("private_train", "private_test", "public"))
  assert not set(train) & set(test)
  assert not (set(train) | set(test)) & set(public)
  for identity in cfg.private_ids:
    n_test = (labels[test] == identity).sum()
    n_all = min((labels == identity).sum(), 6)
    assert n_test >= 1 and n_test + (labels[train] == identity).sum() == n_all
  assert set(labels[public]) == {4, 5}
  again = splits_lib.select_indices(cfg, {"train": labels}, False)
  assert all(np.array_equal(again[r][1], chosen[r][1]) for r in chosen)


# Iterators.


def toy_split(n=23):
  images = np.arange(n, dtype=np.uint8)[:, None, None, None] * np.ones((1, 4, 4, 1), np.uint8)
  return data.ArraySplit(images=images, labels=np.arange(n, dtype=np.int32), identities=np.arange(n, dtype=np.int32))


def take(iterator, count):
  batches = [jax.tree.map(np.asarray, next(iterator)) for _ in range(count)]
  iterator.close()
  return batches


def test_train_batches_order_and_resume():
  split = toy_split()
  assert data.steps_per_epoch(len(split), 5) == 4
  full = take(data.train_batches(split, 5, seed=3), 12)
  for batch in full:
    assert batch["image"].shape == (5, 4, 4, 1) and batch["image"].dtype == np.uint8
    assert batch["label"].shape == (5,) and batch["label"].dtype == np.int32
  epoch1 = np.random.default_rng([3, 1]).permutation(23)
  np.testing.assert_array_equal(full[5]["label"], epoch1[5:10])
  epoch0 = np.concatenate([b["label"] for b in full[:4]])
  assert len(set(epoch0.tolist())) == 20  # no repeats within an epoch
  resumed = take(data.train_batches(split, 5, seed=3, start_step=5, prefetch=0), 7)
  for a, b in zip(full[5:], resumed):
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])


def test_train_batches_sharding():
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  batches = data.train_batches(toy_split(), 4, seed=0, sharding=sharding)
  batch = next(batches)
  assert batch["image"].sharding == sharding
  batches.close()


def test_eval_batches_pad_and_cover():
  split = toy_split()
  batches = list(data.eval_batches(split, 5))
  assert len(batches) == 5
  assert all(b["image"].shape == (5, 4, 4, 1) and b["mask"].shape == (5,) for b in batches)
  np.testing.assert_array_equal(batches[-1]["mask"], [1, 1, 1, 0, 0])
  assert batches[-1]["mask"].dtype == np.float32
  mask = np.concatenate([b["mask"] for b in batches]) > 0
  labels = np.concatenate([b["label"] for b in batches])[mask]
  np.testing.assert_array_equal(labels, split.labels)


def prefetch_threads():
  return [t for t in threading.enumerate() if t.name == "jaxmi-prefetch"]


def test_prefetch_thread_stops_and_reraises():
  batches = data.train_batches(toy_split(), 5, seed=0, prefetch=2)
  next(batches)
  assert prefetch_threads()
  del batches  # garbage collection closes the generator
  deadline = time.time() + 5
  while prefetch_threads() and time.time() < deadline:
    time.sleep(0.05)
  assert not prefetch_threads()

  class Exploding(np.ndarray):
    def __getitem__(self, key):
      raise RuntimeError("bad read")

  split = toy_split()
  broken = data.ArraySplit(images=split.images.view(Exploding), labels=split.labels, identities=split.identities)
  with pytest.raises(RuntimeError, match="bad read"):
    next(data.train_batches(broken, 5, seed=0))


def test_batch_size_errors():
  message = raises_one_line(ConfigError, data.steps_per_epoch, 3, 5)
  assert "batch_size" in message
  raises_one_line(ConfigError, data.train_batches, toy_split(3), 5, 0)


# Bad input.


def test_missing_mnist_without_download(tmp_path):
  missing = tmp_path / "nowhere" / "mnist"
  message = raises_one_line(
    DataError, data.load_splits, data.DataConfig(data_dir=str(missing), cache_dir=str(tmp_path / "c"), download=False)
  )
  assert str(missing / "train-images-idx3-ubyte.gz") in message
  assert "download=False" in message
  assert not missing.exists()
  assert_nothing_prepared(tmp_path / "c", "mnist")


def test_truncated_mnist_file(mnist_copy, tmp_path):
  path = mnist_copy / "t10k-images-idx3-ubyte.gz"
  path.write_bytes(path.read_bytes()[:100000])
  message = raises_one_line(
    DataError, sources.load_raw, "mnist", data_dir=mnist_copy, cache_dir=tmp_path / "c", download=False
  )
  assert str(path) in message
  assert_nothing_prepared(tmp_path / "c", "mnist")


def test_mnist_checksum_mismatch(mnist_copy, tmp_path):
  path = mnist_copy / "t10k-labels-idx1-ubyte.gz"
  flip_byte_in_gzip(path, 500)
  message = raises_one_line(
    DataError, sources.load_raw, "mnist", data_dir=mnist_copy, cache_dir=tmp_path / "c", download=False
  )
  assert str(path) in message and formats.MNIST_FILES[path.name] in message
  assert_nothing_prepared(tmp_path / "c", "mnist")


def test_mnist_download_wrong_file(mnist_copy, tmp_path):
  mirror = tmp_path / "mirror"
  mirror.mkdir()
  name = "t10k-labels-idx1-ubyte.gz"
  (mnist_copy / name).rename(mirror / name)
  flip_byte_in_gzip(mirror / name, 9)
  message = raises_one_line(
    DataError, sources.load_raw, "mnist", data_dir=mnist_copy, cache_dir=tmp_path / "c", urls=[mirror.as_uri()]
  )
  assert name in message and formats.MNIST_FILES[name] in message
  assert mirror.as_uri() in message
  assert sorted(p.name for p in mnist_copy.iterdir()) == sorted(set(formats.MNIST_FILES) - {name})
  assert not (tmp_path / "c" / "downloads" / "mnist").exists()


def test_mnist_download_from_mirror(data_root, tmp_path, monkeypatch):
  raw, cache = tmp_path / "raw" / "mnist", tmp_path / "c"
  monkeypatch.setattr(builders, "MNIST_MIRRORS", ["file:///nonexistent/mirror/", (data_root / "mnist").as_uri()])
  loaded = sources.load_raw("mnist", data_dir=raw, cache_dir=cache)
  assert np.bincount(loaded.splits["test"][1]).tolist() == MNIST_TEST_COUNTS
  for name in formats.MNIST_FILES:
    assert (raw / name).read_bytes() == (data_root / "mnist" / name).read_bytes()
  assert sorted(p.name for p in raw.iterdir()) == sorted(formats.MNIST_FILES)


def make_att_zip(data_root, path, *, corrupt=False):
  with zipfile.ZipFile(path, "w") as archive:
    for rel in formats.att_faces_names():
      content = (data_root / "att_faces" / rel).read_bytes()
      if corrupt and rel == "s3/4.pgm":
        content = content[:-1] + bytes([content[-1] ^ 1])
      archive.writestr(f"att_faces/{rel}", content)  # under a top folder


def test_att_faces_download(data_root, tmp_path):
  good, bad = tmp_path / "good.zip", tmp_path / "bad.zip"
  make_att_zip(data_root, good)
  make_att_zip(data_root, bad, corrupt=True)
  raw = tmp_path / "raw" / "att_faces"
  message = raises_one_line(
    DataError, sources.load_raw, "att_faces", data_dir=raw, cache_dir=tmp_path / "c", urls=[bad.as_uri()]
  )
  assert formats.ATT_FACES_MANIFEST_SHA256 in message and bad.as_uri() in message
  assert not raw.exists() and not list((tmp_path / "c" / "downloads").rglob("*.*"))
  loaded = sources.load_raw("att_faces", data_dir=raw, cache_dir=tmp_path / "c", urls=[bad.as_uri(), good.as_uri()])
  assert loaded.splits["train"][0].shape == (400, 112, 92, 1)
  assert (raw / "s40" / "10.pgm").is_file()
  assert not (tmp_path / "c" / "downloads" / "att_faces.zip").exists()


def test_download_falls_back_to_cache_when_raw_dir_is_read_only(data_root, tmp_path, monkeypatch):
  archive, raw, cache = tmp_path / "faces.zip", tmp_path / "ro" / "att_faces", tmp_path / "c"
  make_att_zip(data_root, archive)
  # Root can write anywhere, so read-only is simulated.
  monkeypatch.setattr(builders.download_lib, "is_writable_dir", lambda path: False)
  described = data.prepare("att_faces", data_dir=raw, cache_dir=cache, urls=[archive.as_uri()])
  fallback = cache / "downloads" / "att_faces"
  assert (fallback / "s1" / "1.pgm").is_file() and not raw.exists()
  prepared = cache / "tfds" / "att_faces" / "1.0.0"
  assert described == (
    f"att_faces from {fallback} (prepared in {prepared}); identity numbers: {prepared / 'identities.csv'}"
  )


def test_att_faces_checksum_mismatch(data_root, tmp_path):
  raw = tmp_path / "att_faces"
  shutil.copytree(data_root / "att_faces", raw)
  path = raw / "s3" / "4.pgm"
  content = bytearray(path.read_bytes())
  content[-1] ^= 1
  path.write_bytes(bytes(content))
  message = raises_one_line(
    DataError, sources.load_raw, "att_faces", data_dir=raw, cache_dir=tmp_path / "c", download=False
  )
  assert str(raw) in message and formats.ATT_FACES_MANIFEST_SHA256 in message
  assert "s3/4.pgm" in message and "s3/5.pgm" not in message  # names the changed file


def test_att_faces_download_names_the_changed_file(data_root, tmp_path):
  bad = tmp_path / "bad.zip"
  make_att_zip(data_root, bad, corrupt=True)
  message = raises_one_line(
    DataError, sources.load_raw, "att_faces", data_dir=tmp_path / "raw", cache_dir=tmp_path / "c", urls=[bad.as_uri()]
  )
  assert "s3/4.pgm differ" in message


def test_unknown_dataset():
  message = raises_one_line(DataError, data.load_splits, data.DataConfig(dataset="foo"))
  assert message == (
    "data.dataset: unknown dataset 'foo'; expected one of mnist, att_faces, image_folder, idx, sklearn_digits, "
    "celeba, ffhq, facescrub"
  )


@pytest.mark.parametrize(
  "fields, named",
  [
    (dict(private_ids=(0, 1, 2), public_ids=(2, 3)), "data.private_ids"),
    (dict(private_ids=()), "data.private_ids"),
    (dict(public_ids=(5, 5)), "data.public_ids"),
    (dict(channels=2), "data.channels"),
    (dict(test_fraction=1.0), "data.test_fraction"),
    (dict(crop=(1, 2, 3)), "data.crop"),
  ],
)
def test_bad_config(fields, named):
  message = raises_one_line(ConfigError, data.load_splits, data.DataConfig(dataset="sklearn_digits", **fields))
  assert message.startswith(named), message


def test_ids_out_of_range(att_raw, data_root, cache_root):
  message = raises_one_line(ConfigError, data.load_splits, att_config(data_root, cache_root, public_ids=(20, 40)))
  assert "data.public_ids" in message and "[40]" in message and "0..39" in message


# Inputs a new user brings (issue 13, items 18 and 21): each test fails on the code before its fix.


def test_16bit_grey_png_is_scaled_not_white(tmp_path):
  root = tmp_path / "faces"
  (root / "a").mkdir(parents=True)
  ramp = np.linspace(0, 65535, 16 * 16).reshape(16, 16).astype(np.uint16)
  Image.fromarray(ramp).save(root / "a" / "0.png")  # Pillow reads it back as mode I;16
  assert Image.open(root / "a" / "0.png").mode.startswith("I;16")
  raw = sources.load_raw("image_folder", data_dir=root, cache_dir=tmp_path / "c", image_size=16, channels=1)
  image = raw.splits["train"][0][0, ..., 0].astype(np.float64)
  # Convert("L") clipped every value above 255 to white: the mean was ~255.
  np.testing.assert_allclose(image, np.rint(ramp / 257.0), atol=1)
  assert image.min() == 0 and image.max() == 255


def test_image_folder_reads_every_pillow_format_and_skips_other_files(tmp_path, caplog):
  root = tmp_path / "faces"
  rng = np.random.default_rng(1)
  pixels = {}
  for name, fmt in [("gif", "GIF"), ("bmp", "BMP"), ("pgm", "PPM"), ("tif", "TIFF"), ("webp", "WEBP")]:
    (root / name).mkdir(parents=True)
    grey = rng.integers(0, 256, (8, 8), dtype=np.uint8)
    pixels[name] = grey
    options = {"lossless": True} if fmt == "WEBP" else {}
    Image.fromarray(grey).save(root / name / f"0.{name}", format=fmt, **options)
  # The Yale faces: GIF files named without an image extension.
  yale = root / "yale"
  yale.mkdir()
  pixels["yale"] = rng.integers(0, 256, (8, 8), dtype=np.uint8)
  Image.fromarray(pixels["yale"]).save(yale / "subject01.happy", format="GIF")
  Image.fromarray(pixels["yale"]).save(yale / "subject01", format="GIF")
  (yale / "Readme").write_text("not an image")
  (root / "gif" / "README.txt").write_text("not an image either")
  raw = sources.load_raw("image_folder", data_dir=root, cache_dir=tmp_path / "c", image_size=8, channels=1)
  images, labels = raw.splits["train"]
  assert raw.class_names == ("bmp", "gif", "pgm", "tif", "webp", "yale")
  assert np.bincount(labels).tolist() == [1, 1, 1, 1, 1, 2]
  for label, name in enumerate(raw.class_names):
    for image in images[labels == label]:
      np.testing.assert_array_equal(image[..., 0], pixels[name])  # all lossless at this size
  assert "skipped 2 file(s)" in notes(caplog) and "not images" in notes(caplog)


def write_idx(path, array, *, gz):
  magic = {3: 0x803, 1: 0x801}[array.ndim]
  header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
  content = header + array.astype(np.uint8).tobytes()
  path.write_bytes(gzip.compress(content) if gz else content)


def make_idx_folder(folder, rng):
  folder.mkdir(parents=True)
  arrays = {}
  for split, n, gz in (("train", 30, True), ("t10k", 12, False)):
    images = rng.integers(0, 256, (n, 7, 5), dtype=np.uint8)
    labels = np.arange(n) % 3
    suffix = ".gz" if gz else ""
    write_idx(folder / f"{split}-images-idx3-ubyte{suffix}", images, gz=gz)
    write_idx(folder / f"{split}-labels-idx1-ubyte{suffix}", labels, gz=gz)
    arrays[split] = (images, labels)
  return arrays


def test_idx_builder_reads_any_mnist_format_files(tmp_path):
  folder = tmp_path / "fashion"
  arrays = make_idx_folder(folder, np.random.default_rng(0))
  (folder / "class_names.txt").write_text("t-shirt\ntrouser\npullover\n")
  raw = sources.load_raw("idx", data_dir=folder, cache_dir=tmp_path / "c")
  assert raw.class_names == ("t-shirt", "trouser", "pullover")
  for split, source in (("train", "train"), ("test", "t10k")):
    images, labels = raw.splits[split]
    expected_images, expected_labels = arrays[source]
    assert images.shape == (len(expected_labels), 7, 5, 1)
    # TFDS stores examples in its own order: compare as sets of (image, label).
    got = sorted((im.tobytes(), int(l)) for im, l in zip(images, labels))
    want = sorted((im[..., None].tobytes(), int(l)) for im, l in zip(expected_images, expected_labels))
    assert got == want
  mapping = raw.description.split("identity numbers: ")[1]
  assert open(mapping).read().splitlines()[:2] == ["label,name,train_images,test_images", "0,t-shirt,10,4"]
  splits = data.load_splits(
    data.DataConfig(
      dataset="idx",
      data_dir=str(folder),
      cache_dir=str(tmp_path / "c"),
      image_size=8,
      private_ids=(0, 1),
      public_ids=(2,),
    )
  )
  assert (len(splits.private_train), len(splits.private_test), len(splits.public)) == (20, 8, 10)

  other = tmp_path / "other"
  make_idx_folder(other, np.random.default_rng(1))
  labels_file = other / "t10k-labels-idx1-ubyte"
  labels_file.write_bytes((0x803).to_bytes(4, "big") + labels_file.read_bytes()[4:])
  message = raises_one_line(DataError, sources.load_raw, "idx", data_dir=other, cache_dir=tmp_path / "c")
  assert str(labels_file) in message and "0x00000801" in message
  (other / "train-images-idx3-ubyte.gz").unlink()
  message = raises_one_line(DataError, sources.load_raw, "idx", data_dir=other, cache_dir=tmp_path / "c")
  assert str(other / "train-images-idx3-ubyte") in message


def test_truncated_prepared_cache_is_rebuilt(tmp_path, caplog, monkeypatch):
  root, cache = tmp_path / "faces", tmp_path / "c"
  make_image_folder(root)
  first = sources.load_raw("image_folder", data_dir=root, cache_dir=cache, image_size=8, channels=1)
  (record,) = (cache / "tfds" / "image_folder").rglob("*.array_record*")
  record.write_bytes(record.read_bytes()[: len(record.read_bytes()) // 2])
  # Before: RuntimeError: Invalid Riegeli/records file.
  again = sources.load_raw("image_folder", data_dir=root, cache_dir=cache, image_size=8, channels=1)
  np.testing.assert_array_equal(np.sort(again.splits["train"][1]), np.sort(first.splits["train"][1]))
  assert "is damaged" in notes(caplog)
  assert len(list((cache / "tfds" / "image_folder").iterdir())) == 1  # nothing left aside

  # When the raw images cannot be read any more: one line naming the folder to delete, which is kept.
  (record,) = (cache / "tfds" / "image_folder").rglob("*.array_record*")
  record.write_bytes(record.read_bytes()[:100])
  prepared = record.parent

  def gone(path, config):
    raise DataError(f"image_folder: cannot read image {path}")

  monkeypatch.setattr(builders, "load_image", gone)
  message = raises_one_line(
    DataError, sources.load_raw, "image_folder", data_dir=root, cache_dir=cache, image_size=8, channels=1
  )
  assert f"delete {prepared}" in message and "cannot read image" in message
  assert record.is_file() and len(list((cache / "tfds" / "image_folder").iterdir())) == 1


def test_identity_mapping_is_written_and_named(tmp_path):
  root = tmp_path / "faces"
  make_image_folder(root)
  raw = sources.load_raw("image_folder", data_dir=root, cache_dir=tmp_path / "c", image_size=8)
  mapping = raw.description.split("identity numbers: ")[1]
  assert mapping.endswith("identities.csv")
  assert open(mapping).read().splitlines() == ["label,name,train_images", "0,alice,3", "1,bob,4", "2,carol,2"]


def test_empty_public_split_names_public_ids(tmp_path):
  from jaxmi import config as config_lib
  from jaxmi.train.gan import train_gan

  REPO = __import__("pathlib").Path(__file__).resolve().parents[1]
  cfg = config_lib.load_config(REPO / "configs" / "gan.py:kind=gmi,data=mnist")
  splits = data.load_splits(
    data.DataConfig(
      dataset="sklearn_digits",
      private_ids=(0, 1),
      public_ids=(),
      image_size=cfg.gan.image_size,
      channels=cfg.gan.channels,
    )
  )
  # Before: "batch_size: 320 is larger than the 0 examples of the split".
  message = raises_one_line(ConfigError, train_gan, cfg, tmp_path / "w", splits=splits, progress=False)
  assert "data.public_ids" in message and "has 0" in message
  assert not (tmp_path / "w").exists()
  message = raises_one_line(ConfigError, data.steps_per_epoch, 0, 320, split="data.public_ids")
  assert message.startswith("data.public_ids: the split is empty")


def test_saved_data_config_keeps_the_targets_cache(tmp_path):
  from jaxmi import config as config_lib
  from jaxmi.train.classifier import saved_data_config

  saved = config_lib.to_dict(data.DataConfig(cache_dir=str(tmp_path), data_dir=str(tmp_path / "gone")))
  restored = saved_data_config(saved)
  # Before: cache_dir was always reset, so attack/evaluate prepared everything again in ~/.cache/jaxmi.
  assert restored.cache_dir == str(tmp_path)
  assert restored.data_dir is None  # a path missing on this machine falls back to the defaults


def test_saved_data_config_resets_a_missing_public_data_dir(tmp_path):
  from jaxmi import config as config_lib
  from jaxmi.train.classifier import saved_data_config

  def saved(public_dir):
    return config_lib.to_dict(data.DataConfig(dataset="celeba", public_dataset="ffhq", public_data_dir=str(public_dir)))

  # Before: a target trained on another machine kept that machine's public_data_dir, so attack/distill failed
  # on a path that does not exist here instead of falling back to $JAXMI_DATA_DIR/ffhq or --data-dir.
  assert saved_data_config(saved(tmp_path / "elsewhere" / "ffhq")).public_data_dir is None
  assert saved_data_config(saved(tmp_path)).public_data_dir == str(tmp_path)


def test_command_line_dirs_win_over_the_config(tmp_path, data_root, cache_root, monkeypatch, caplog):
  monkeypatch.setenv(sources.FLAG_DATA_DIR_ENV, str(data_root))
  monkeypatch.setenv(sources.FLAG_CACHE_DIR_ENV, str(cache_root))
  splits = data.load_splits(
    data.DataConfig(data_dir=str(tmp_path / "nothing"), cache_dir=str(tmp_path / "c"), download=False, max_per_class=5)
  )
  assert len(splits.public) == 25 and not (tmp_path / "c").exists()
  assert "--data-dir" in notes(caplog) and "overrides data.data_dir" in notes(caplog)
