"""``bin/jaxmi import-torch`` and ``bin/jaxmi predict``: a published-layout PyTorch VGG16 becomes a jaxmi workdir
whose predictions are PyTorch's, and bad input leaves nothing behind."""

import json

import numpy as np
import pytest
import torch
from test_torch_vgg import NUM_CLASSES, VGG16, hwc, randomized, rel_err, save

from jaxmi import cli
from jaxmi.train import load_classifier


@pytest.fixture(scope="module")
def published(tmp_path_factory):
  """A randomised VGG16 target saved as the reference repositories save it, with its outputs on fixed images."""
  root = tmp_path_factory.mktemp("published")
  model = randomized(VGG16(NUM_CLASSES), seed=11)
  images = np.random.default_rng(0).uniform(size=(3, 64, 64, 3)).astype(np.float32)
  with torch.no_grad():
    feature, logits = model(torch.from_numpy(images.transpose(0, 3, 1, 2)))
  np.save(root / "images.npy", images)
  return save(model, root / "VGG16_88.26.tar", "legacy"), root / "images.npy", hwc(feature), logits.numpy()


def test_an_imported_target_predicts_what_pytorch_computes(published, tmp_path, capsys):
  checkpoint, images, features, logits = published
  assert cli.main(["import-torch", "--arch", "vgg16", str(checkpoint), str(tmp_path / "target")]) == 0
  summary = json.loads((tmp_path / "target" / "summary.json").read_text())
  assert summary["num_classes"] == NUM_CLASSES and summary["imported_from"]["format"] == "legacy"
  assert load_classifier(tmp_path / "target", expect_role="target").num_classes == NUM_CLASSES

  assert cli.main(["predict", str(tmp_path / "target"), "--images", str(images), "--out", str(tmp_path / "o.npz")]) == 0
  out = np.load(tmp_path / "o.npz")
  assert rel_err(out["logits"], logits) <= 1e-4 and rel_err(out["features"], features) <= 1e-4


def test_a_second_import_into_the_same_workdir_is_refused_and_changes_nothing(published, tmp_path, capsys):
  checkpoint = published[0]
  assert cli.main(["import-torch", "--arch", "vgg16", str(checkpoint), str(tmp_path / "t")]) == 0
  before = {p: p.stat().st_mtime_ns for p in (tmp_path / "t").rglob("*") if p.is_file()}
  capsys.readouterr()
  assert cli.main(["import-torch", "--arch", "vgg16", str(checkpoint), str(tmp_path / "t")]) == 2
  assert "already holds a model" in capsys.readouterr().err
  assert {p: p.stat().st_mtime_ns for p in (tmp_path / "t").rglob("*") if p.is_file()} == before


@pytest.mark.parametrize(
  "args, message",
  [
    (["--arch", "vgg16", "--num-classes", "7"], "has shape (10, 2048); this architecture expects (7, 2048)"),
    (["--arch", "facenet64"], "missing key"),
    (["--arch", "resnet50"], "--arch: unknown architecture 'resnet50'"),
  ],
)
def test_a_checkpoint_that_does_not_fit_is_one_line_and_writes_nothing(published, tmp_path, capsys, args, message):
  checkpoint = published[0]
  assert cli.main(["import-torch", *args, str(checkpoint), str(tmp_path / "w")]) == 2
  err = capsys.readouterr().err.strip()
  assert message in err and len(err.splitlines()) == 1, err
  assert not (tmp_path / "w").exists()


def test_predict_refuses_images_of_the_wrong_shape(published, tmp_path, capsys):
  checkpoint = published[0]
  assert cli.main(["import-torch", "--arch", "vgg16", str(checkpoint), str(tmp_path / "t")]) == 0
  np.save(tmp_path / "small.npy", np.zeros((2, 32, 32, 3), np.float32))
  capsys.readouterr()
  assert cli.main(["predict", str(tmp_path / "t"), "--images", str(tmp_path / "small.npy"), "--out", "x.npz"]) == 2
  assert "expected float32 images [N, 64, 64, 3], got float32 [2, 32, 32, 3]" in capsys.readouterr().err


def test_an_imported_gmi_gan_loads_as_the_attack_prior_and_generates_what_pytorch_does(tmp_path, capsys):
  from test_torch_gan import DGWGAN, Generator, randomised

  from jaxmi.train.gan import load_gan

  torch_g, torch_d = randomised(Generator(100, 64), seed=5), randomised(DGWGAN(3, 64), seed=6)
  for model, name in ((torch_g, "celeba_G.tar"), (torch_d, "celeba_D.tar")):
    torch.save({"state_dict": torch.nn.DataParallel(model).state_dict()}, tmp_path / name)
  args = ["import-torch", "--arch", "gmi_gan", str(tmp_path / "celeba_G.tar"), str(tmp_path / "gan")]
  assert cli.main([*args, "--critic", str(tmp_path / "celeba_D.tar")]) == 0
  gan = load_gan(tmp_path / "gan")
  z = np.random.default_rng(1).normal(size=(2, 100)).astype(np.float32)
  with torch.no_grad():
    images = torch_g(torch.from_numpy(z))
    scores = torch_d(images).numpy().reshape(-1)
  got = np.asarray(gan.generator.apply(gan.g_variables, z))
  assert rel_err(got, images.numpy().transpose(0, 2, 3, 1)) <= 1e-4
  assert rel_err(np.asarray(gan.critic.apply(gan.d_variables, got)).reshape(-1), scores) <= 1e-4

  capsys.readouterr()
  assert cli.main(["import-torch", "--arch", "gmi_gan", str(tmp_path / "celeba_G.tar"), str(tmp_path / "g2")]) == 2
  assert "--critic: gmi_gan needs the critic's file" in capsys.readouterr().err
  assert not (tmp_path / "g2").exists()
  # A classifier-only flag with a GAN arch is refused, not silently ignored.
  g, d = str(tmp_path / "celeba_G.tar"), str(tmp_path / "celeba_D.tar")
  assert (
    cli.main(["import-torch", "--arch", "gmi_gan", "--num-classes", "5", g, "--critic", d, str(tmp_path / "g3")]) == 2
  )
  assert "--num-classes: only for classifiers, not the GAN arch gmi_gan" in capsys.readouterr().err
  assert not (tmp_path / "g3").exists()
