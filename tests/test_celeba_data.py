"""The standard protocol's data (issue 16 item 1): CelebA from the official split files, FFHQ and FaceScrub as
public sets, with the reference crop and resize, on tiny fixtures in their exact layouts (tests/celeba_fixture.py)."""

from pathlib import Path

import numpy as np
from PIL import Image
import pytest

from celeba_fixture import celeba_split_file
from celeba_fixture import make_celeba
from celeba_fixture import make_facescrub
from celeba_fixture import make_ffhq
from jaxmi import data
from jaxmi.data import protocol
from jaxmi.data import sources
from jaxmi.errors import ConfigError
from jaxmi.errors import DataError


def celeba_config(root: Path, cache: Path, **overrides) -> data.DataConfig:
  fields = dict(
    dataset="celeba",
    data_dir=str(root) if root else None,
    cache_dir=str(cache),
    download=False,
    image_size=64,
    channels=3,
    private_ids=(),
    public_ids=(),
  )
  return data.DataConfig(**{**fields, **overrides})


def reference(path: Path, crop: tuple[int, int, int, int], size: int) -> np.ndarray:
  """The reference preprocessing computed directly with PIL: RGB, crop (top, left, height, width), bilinear resize."""
  top, left, height, width = crop
  with Image.open(path) as image:
    cropped = image.convert("RGB").crop((left, top, left + width, top + height))
  return np.asarray(cropped.resize((size, size), Image.Resampling.BILINEAR))


def rows(path: Path) -> list[list[str]]:
  return [line.split() for line in path.read_text().splitlines() if line.strip()]


def by_label(split: data.ArraySplit) -> dict[int, list[bytes]]:
  """Label -> the sorted bytes of its images (prepared splits are stored in TFDS's key-hash order)."""
  out = {}
  for image, label in zip(split.images, split.labels):
    out.setdefault(int(label), []).append(image.tobytes())
  return {label: sorted(images) for label, images in out.items()}


def expected_by_label(folder: Path, listed: Path, crop, size: int, labels=None) -> dict[int, list[bytes]]:
  out = {}
  for row in rows(listed):
    label = int(row[1]) if len(row) > 1 and labels is None else -1
    out.setdefault(label, []).append(reference(folder / row[0], crop, size).tobytes())
  return {label: sorted(images) for label, images in out.items()}


@pytest.fixture
def celeba(tmp_path, data_root) -> Path:
  return make_celeba(tmp_path / "raw", att_dir=data_root / "att_faces", identities=10, train=3, test=1, public=6)


def test_celeba_splits_come_from_the_files_with_the_reference_crop(celeba, tmp_path):
  splits = data.load_splits(celeba_config(celeba, tmp_path / "cache"))
  images = celeba / "img_align_celeba"
  crop = (55, 35, 108, 108)
  assert (len(splits.private_train), len(splits.private_test), len(splits.public)) == (30, 10, 6)
  assert (splits.num_private_classes, splits.num_public_classes) == (10, 0)
  assert splits.private_train.images.shape == (30, 64, 64, 3) and splits.private_train.images.dtype == np.uint8
  assert np.bincount(splits.private_train.labels).tolist() == [3] * 10
  np.testing.assert_array_equal(splits.private_train.identities, splits.private_train.labels)
  assert (splits.public.labels == -1).all() and (splits.public.identities == -1).all()
  # Every image, per label, is exactly PIL's crop (top 55, left 35, 108x108) then bilinear resize to 64.
  assert by_label(splits.private_train) == expected_by_label(images, celeba / "trainset.txt", crop, 64)
  assert by_label(splits.private_test) == expected_by_label(images, celeba / "testset.txt", crop, 64)
  assert by_label(splits.public) == expected_by_label(images, celeba / "ganset.txt", crop, 64, labels=False)
  # The reference's own path on one image, emulated in float32: ToTensor (/255), crop, ToPILImage (*255, to uint8),
  # Resize((64, 64)) (PIL bilinear), so cropping the uint8 image directly loses nothing.
  name, label = rows(celeba / "testset.txt")[5]
  with Image.open(images / name) as image:
    tensor = np.asarray(image.convert("RGB"), np.float32) / np.float32(255)
  pil = Image.fromarray((tensor[55:163, 35:143] * np.float32(255)).astype(np.uint8), "RGB")
  resized = np.asarray(pil.resize((64, 64), Image.Resampling.BILINEAR))
  assert resized.tobytes() in by_label(splits.private_test)[int(label)]
  # private_ids picks labels of the files, numbered in the tuple's order.
  some = data.load_splits(celeba_config(celeba, tmp_path / "cache", private_ids=(7, 2)))
  assert sorted(set(some.private_train.identities.tolist())) == [2, 7]
  assert (some.private_train.labels == np.where(some.private_train.identities == 7, 0, 1)).all()
  assert by_label(some.private_test)[0] == by_label(splits.private_test)[7]


def test_celeba_at_112_for_the_evaluation_model(celeba, tmp_path):
  splits = data.load_splits(celeba_config(celeba, tmp_path / "cache", image_size=112))
  assert splits.private_test.images.shape == (10, 112, 112, 3)
  expected = expected_by_label(celeba / "img_align_celeba", celeba / "testset.txt", (55, 35, 108, 108), 112)
  assert by_label(splits.private_test) == expected


@pytest.mark.parametrize("names", ["plgmi", "mibench"])
def test_celeba_split_file_names_of_plgmi_and_mibench(tmp_path, data_root, names):
  folder = make_celeba(tmp_path, att_dir=data_root / "att_faces", identities=2, train=2, test=1, public=2, names=names)
  lists, _ = protocol.scan_celeba(folder, ())
  assert {split: len(listed.rows) for split, listed in lists.items()} == {"train": 4, "test": 2, "public": 2}
  assert lists["train"].path == celeba_split_file(folder, "train")
  assert [label for _, label, _ in lists["train"].rows] == [0, 0, 1, 1]
  # MIBench's public.txt carries a label column; it is ignored (the reference's ganset.txt has none).
  (folder / "meta").mkdir()
  (folder / "meta" / "ganset.txt").write_text("".join(f"{row[0]} 5\n" for row in rows(lists["public"].path)))
  assert [label for _, label, _ in protocol.scan_celeba(folder, ())[0]["public"].rows] == [-1, -1]
  # Two different lists for one split are refused rather than one picked by the search order.
  (folder / "meta" / "ganset.txt").write_text(rows(lists["public"].path)[0][0] + "\n")
  with pytest.raises(DataError, match="are both public split files and differ"):
    protocol.scan_celeba(folder, ())


def assert_refused(cfg: data.DataConfig, cache: Path, *fragments: str, load=data.load_splits) -> None:
  """load(cfg) raises one line naming the fragments, and nothing was prepared in cache."""
  with pytest.raises(DataError) as info:
    load(cfg)
  message = str(info.value)
  assert "\n" not in message
  for fragment in fragments:
    assert fragment in message, message
  assert not cache.exists() or not any(cache.rglob("*.array_record*")), "something was prepared"


def test_public_image_that_is_private_is_refused(celeba, tmp_path):
  private = rows(celeba / "testset.txt")[3][0]
  with open(celeba / "ganset.txt", "a") as f:
    f.write(f"{private}\n")
  cache = tmp_path / "cache"
  assert_refused(celeba_config(celeba, cache), cache, str(celeba / "ganset.txt"), private, "must not be private")


def test_missing_split_file_is_refused(celeba, tmp_path):
  (celeba / "testset.txt").unlink()
  cache = tmp_path / "cache"
  assert_refused(celeba_config(celeba, cache), cache, str(celeba / "testset.txt"), "is missing")


def test_missing_image_is_refused(celeba, tmp_path):
  name = rows(celeba / "trainset.txt")[4][0]
  (celeba / "img_align_celeba" / name).unlink()
  cache = tmp_path / "cache"
  assert_refused(
    celeba_config(celeba, cache),
    cache,
    f"{celeba / 'trainset.txt'} line 5 names {name}",
    str(celeba / "img_align_celeba" / name),
    "is not there",
  )


def test_missing_public_split_file_is_refused_when_needed(celeba, tmp_path):
  (celeba / "ganset.txt").unlink()
  with pytest.raises(DataError, match="ganset.txt is missing"):
    data.load_splits(celeba_config(celeba, tmp_path / "cache"))


def test_prepare_data_cli_exits_2_with_one_line_and_writes_nothing(celeba, tmp_path, monkeypatch, capsys):
  from jaxmi import cli

  name = rows(celeba / "testset.txt")[0][0]
  (celeba / "img_align_celeba" / name).unlink()
  cache = tmp_path / "cache"
  for var in ("JAXMI_CACHE_DIR", sources.FLAG_CACHE_DIR_ENV):  # main() sets them; restored after the test
    monkeypatch.setenv(var, str(cache))
  code = cli.main(["prepare-data", "celeba", "--root", str(celeba), "--cache-dir", str(cache), "--image-size", "64"])
  err = capsys.readouterr().err.strip().splitlines()
  assert code == 2
  assert len(err) == 1 and err[0].startswith("jaxmi: error: celeba:") and name in err[0], err
  assert not cache.exists()


def test_config_errors_of_the_file_splits(celeba, tmp_path):
  with pytest.raises(ConfigError, match="ganset.txt. is unlabelled"):
    data.load_splits(celeba_config(celeba, tmp_path / "c", public_ids=(1,)))
  with pytest.raises(ConfigError, match="data.public_data_dir"):
    data.load_splits(celeba_config(celeba, tmp_path / "c", public_data_dir=str(tmp_path)))
  with pytest.raises(ConfigError, match="ffhq has no identities"):
    data.load_splits(celeba_config(celeba, tmp_path / "c", dataset="ffhq"))
  with pytest.raises(ConfigError, match="out of range; celeba has identities 0..9"):
    data.load_splits(celeba_config(celeba, tmp_path / "c", private_ids=(3, 10)))


def test_ffhq_public_split_for_celeba_private(celeba, tmp_path, data_root, monkeypatch):
  ffhq = make_ffhq(celeba.parent, att_dir=data_root / "att_faces", count=5)
  (celeba / "ganset.txt").unlink()  # not needed when the public split is FFHQ
  # --data-dir D reads D/celeba and D/ffhq.
  monkeypatch.setenv(sources.FLAG_DATA_DIR_ENV, str(celeba.parent))
  splits = data.load_splits(celeba_config(None, tmp_path / "cache", public_dataset="ffhq"))
  assert (len(splits.private_train), len(splits.public), splits.num_public_classes) == (30, 5, 0)
  assert (splits.public.labels == -1).all()
  # FFHQ's reference: the centre 88x88 of the 128x128 thumbnail, bilinear to 64.
  expected = expected_by_label(ffhq / "thumbnails128x128", ffhq / "ffhq_ganset.txt", (20, 20, 88, 88), 64)
  assert by_label(splits.public) == expected
  assert "public split: ffhq from" in splits.description
  # A listed thumbnail that is not there is refused; without a list every thumbnail is used.
  (ffhq / "thumbnails128x128" / "00000" / "00003.png").unlink()
  cache = tmp_path / "cache2"
  load_ffhq = lambda root: sources.load_raw("ffhq", data_dir=root, cache_dir=cache, image_size=64, channels=3)
  assert_refused(ffhq, cache, f"{ffhq / 'ffhq_ganset.txt'} line 4 names 00000/00003.png", load=load_ffhq)
  (ffhq / "ffhq_ganset.txt").unlink()
  assert (
    len(sources.load_raw("ffhq", data_dir=ffhq, cache_dir=cache, image_size=64, channels=3).splits["train"][0]) == 4
  )


def test_a_bad_public_dataset_is_refused_before_the_private_one_is_prepared(celeba, tmp_path, data_root, monkeypatch):
  ffhq = make_ffhq(celeba.parent, att_dir=data_root / "att_faces", count=5)
  (ffhq / "thumbnails128x128" / "00000" / "00003.png").unlink()
  monkeypatch.setenv(sources.FLAG_DATA_DIR_ENV, str(celeba.parent))
  cache = tmp_path / "cache"
  with pytest.raises(DataError, match="line 4 names 00000/00003.png"):
    data.load_splits(celeba_config(None, cache, public_dataset="ffhq"))
  # Before: CelebA's private splits were prepared (written to the cache) and only then was FFHQ's list read.
  assert not cache.exists() or not any(cache.rglob("*.array_record*"))


def test_facescrub_through_image_folder_with_the_reference_resize(celeba, tmp_path, data_root):
  scrub = make_facescrub(celeba.parent, att_dir=data_root / "att_faces", identities=3, per_identity=2)
  cfg = celeba_config(celeba, tmp_path / "cache", public_dataset="facescrub", public_data_dir=str(scrub))
  splits = data.load_splits(cfg)
  assert (len(splits.public), splits.num_public_classes) == (6, 3)
  # PLG-MI's FaceScrub: Lanczos to 64x64 first; its crop of 64 at (0, 0) then leaves it as it is.
  expected = {}
  for label, actor in enumerate(sorted(p.name for p in (scrub / "faceScrub").iterdir())):
    for path in sorted((scrub / "faceScrub" / actor / "face").iterdir()):
      with Image.open(path) as image:
        resized = image.convert("RGB").resize((64, 64), Image.Resampling.LANCZOS)
      expected.setdefault(label, []).append(np.asarray(resized).tobytes())
  assert by_label(splits.public) == {label: sorted(images) for label, images in expected.items()}
  # public_ids pick FaceScrub identities (its own numbering).
  some = data.load_splits(
    celeba_config(celeba, tmp_path / "cache", public_dataset="facescrub", public_data_dir=str(scrub), public_ids=(2,))
  )
  assert by_label(some.public) == {0: by_label(splits.public)[2]}


def test_prepare_data_cli_prepares_what_a_run_reads(celeba, tmp_path, monkeypatch, capsys):
  from jaxmi import cli

  cache = tmp_path / "cache"
  for var in ("JAXMI_CACHE_DIR", sources.FLAG_CACHE_DIR_ENV):
    monkeypatch.setenv(var, str(cache))
  argv = ["prepare-data", "celeba", "--root", str(celeba), "--cache-dir", str(cache), "--image-size", "64"]
  assert cli.main([*argv, "--channels", "3"]) == 0
  mapping = Path(capsys.readouterr().out.split("identity numbers: ")[1].strip())
  assert mapping.read_text().splitlines()[:2] == ["label,name,train_images,test_images,public_images", "0,0,3,1,0"]

  def fail(*args, **kwargs):
    raise AssertionError("prepared again")

  monkeypatch.setattr(protocol.Celeba, "_split_generators", fail)
  assert len(data.load_splits(celeba_config(celeba, cache)).public) == 6
