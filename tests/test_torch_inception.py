"""jaxmi.nets.inception reproduces pytorch-fid's Inception-v3 pool3 features from its weights file layout.

The oracle is pytorch-fid's network written here in torch: torchvision's Inception3 blocks (BasicConv2d with
BatchNorm eps 0.001, InceptionA-E) with pytorch-fid's patches (FIDInceptionA/C/E_1 average pools without the
padding in the count, FIDInceptionE_2's max pool) and its ``InceptionV3`` forward (bilinear resize with
align_corners=False, [0, 1] -> [-1, 1], blocks up to the global average pool). torchvision itself is not
imported: its wheels here are CUDA builds whose operators do not load next to the CPU torch. The oracle keeps
Inception3's module names and its 1008-class ``fc``, so its bare state dict has the published file's keys.
"""

import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from jaxmi.errors import CheckpointError
from jaxmi.nets.inception import FIDInceptionV3, from_torch, resize_bilinear, variable_shapes
from jaxmi.nets.torch_import import read_checkpoint


class BasicConv2d(nn.Module):
  def __init__(self, cin, cout, **kwargs):
    super().__init__()
    self.conv = nn.Conv2d(cin, cout, bias=False, **kwargs)
    self.bn = nn.BatchNorm2d(cout, eps=0.001)

  def forward(self, x):
    return F.relu(self.bn(self.conv(x)))


def avg_pool_3x3(x):  # pytorch-fid's patch: TF's average pool ignores the zero padding
  return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class FIDInceptionA(nn.Module):
  def __init__(self, cin, pool_features):
    super().__init__()
    self.branch1x1 = BasicConv2d(cin, 64, kernel_size=1)
    self.branch5x5_1 = BasicConv2d(cin, 48, kernel_size=1)
    self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
    self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
    self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
    self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
    self.branch_pool = BasicConv2d(cin, pool_features, kernel_size=1)

  def forward(self, x):
    b5 = self.branch5x5_2(self.branch5x5_1(x))
    b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
    return torch.cat([self.branch1x1(x), b5, b3, self.branch_pool(avg_pool_3x3(x))], 1)


class InceptionB(nn.Module):
  def __init__(self, cin):
    super().__init__()
    self.branch3x3 = BasicConv2d(cin, 384, kernel_size=3, stride=2)
    self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
    self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
    self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

  def forward(self, x):
    b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
    return torch.cat([self.branch3x3(x), b3, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class FIDInceptionC(nn.Module):
  def __init__(self, cin, c7):
    super().__init__()
    self.branch1x1 = BasicConv2d(cin, 192, kernel_size=1)
    self.branch7x7_1 = BasicConv2d(cin, c7, kernel_size=1)
    self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
    self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
    self.branch7x7dbl_1 = BasicConv2d(cin, c7, kernel_size=1)
    self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
    self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
    self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
    self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
    self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

  def forward(self, x):
    b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
    bd = self.branch7x7dbl_1(x)
    for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
      bd = layer(bd)
    return torch.cat([self.branch1x1(x), b7, bd, self.branch_pool(avg_pool_3x3(x))], 1)


class InceptionD(nn.Module):
  def __init__(self, cin):
    super().__init__()
    self.branch3x3_1 = BasicConv2d(cin, 192, kernel_size=1)
    self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
    self.branch7x7x3_1 = BasicConv2d(cin, 192, kernel_size=1)
    self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
    self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
    self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

  def forward(self, x):
    b3 = self.branch3x3_2(self.branch3x3_1(x))
    b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
    return torch.cat([b3, b7, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class FIDInceptionE(nn.Module):
  """FIDInceptionE_1 (pool="avg", unpadded count) and FIDInceptionE_2 (pool="max")."""

  def __init__(self, cin, pool):
    super().__init__()
    self.pool = pool
    self.branch1x1 = BasicConv2d(cin, 320, kernel_size=1)
    self.branch3x3_1 = BasicConv2d(cin, 384, kernel_size=1)
    self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
    self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
    self.branch3x3dbl_1 = BasicConv2d(cin, 448, kernel_size=1)
    self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
    self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
    self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
    self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

  def forward(self, x):
    b3 = self.branch3x3_1(x)
    b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
    bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
    bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
    pooled = avg_pool_3x3(x) if self.pool == "avg" else F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
    return torch.cat([self.branch1x1(x), b3, bd, self.branch_pool(pooled)], 1)


class FIDInception(nn.Module):
  """fid_inception_v3() (Inception3(num_classes=1008, aux_logits=False) patched) with InceptionV3's forward."""

  def __init__(self, image_size=299):
    super().__init__()
    self.image_size = image_size
    self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
    self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
    self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
    self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
    self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
    self.Mixed_5b = FIDInceptionA(192, pool_features=32)
    self.Mixed_5c = FIDInceptionA(256, pool_features=64)
    self.Mixed_5d = FIDInceptionA(288, pool_features=64)
    self.Mixed_6a = InceptionB(288)
    self.Mixed_6b = FIDInceptionC(768, 128)
    self.Mixed_6c = FIDInceptionC(768, 160)
    self.Mixed_6d = FIDInceptionC(768, 160)
    self.Mixed_6e = FIDInceptionC(768, 192)
    self.Mixed_7a = InceptionD(768)
    self.Mixed_7b = FIDInceptionE(1280, "avg")
    self.Mixed_7c = FIDInceptionE(2048, "max")
    self.fc = nn.Linear(2048, 1008)  # in the file, unused by pool3

  def forward(self, images):
    x = F.interpolate(images, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
    x = 2 * x - 1
    x = F.max_pool2d(self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x))), kernel_size=3, stride=2)
    x = F.max_pool2d(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)), kernel_size=3, stride=2)
    for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
      x = getattr(self, f"Mixed_{name}")(x)
    return F.adaptive_avg_pool2d(x, (1, 1)).flatten(1)


def randomised(image_size=299, seed=0):
  """The oracle with He-scaled conv weights and random BatchNorm affine and running statistics (var > 0)."""
  torch.manual_seed(seed)
  model = FIDInception(image_size)
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, nn.Conv2d):
        fan_in = m.weight[0].numel()
        m.weight.normal_(0.0, (2.0 / fan_in) ** 0.5)
      elif isinstance(m, nn.BatchNorm2d):
        m.weight.uniform_(0.8, 1.2)
        m.bias.uniform_(-0.2, 0.2)
        m.running_mean.uniform_(-0.2, 0.2)
        m.running_var.uniform_(0.5, 1.5)
  return model.eval()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
  """A bare state dict, as pytorch-fid publishes ``pt_inception-2015-12-05-6726825d.pth``."""
  model = randomised()
  path = tmp_path_factory.mktemp("fid") / "pt_inception.pth"
  torch.save(model.state_dict(), path)
  return model, path


def relative_error(ours, reference):
  ours, reference = np.asarray(ours, np.float64), np.asarray(reference, np.float64)
  return np.linalg.norm(ours - reference) / np.linalg.norm(reference)


def test_mapping_fills_exactly_the_init_tree(checkpoint):
  _, path = checkpoint
  tensors = read_checkpoint(path).tensors
  assert {"fc.weight", "fc.bias"} <= set(tensors)  # the published layout: fc is in the file
  variables = from_torch(tensors, str(path))
  shapes = variable_shapes()
  assert jax.tree.structure(variables) == jax.tree.structure(shapes)
  assert jax.tree.map(np.shape, variables) == jax.tree.map(lambda s: s.shape, shapes)
  # A spot check of the layout: torch's [O, I, kh, kw] became Flax's [kh, kw, I, O].
  kernel = variables["params"]["Mixed_6b"]["branch7x7_2"]["conv"]["kernel"]
  np.testing.assert_array_equal(kernel, tensors["Mixed_6b.branch7x7_2.conv.weight"].transpose(2, 3, 1, 0))
  # fc is optional (pool3 never reaches it), and so is num_batches_tracked (files from torch < 0.4.1 lack it).
  from_torch({k: v for k, v in tensors.items() if not k.startswith("fc.")}, "nofc.pth")
  from_torch({k: v for k, v in tensors.items() if not k.endswith("num_batches_tracked")}, "old.pth")


def test_missing_key_is_refused(checkpoint):
  tensors = dict(read_checkpoint(checkpoint[1]).tensors)
  del tensors["Mixed_7c.branch_pool.bn.running_var"]
  with pytest.raises(CheckpointError, match=r"^f\.pth: missing key 'Mixed_7c\.branch_pool\.bn\.running_var'") as e:
    from_torch(tensors, "f.pth")
  assert "\n" not in str(e.value)


def test_wrong_shape_is_refused(checkpoint):
  tensors = dict(read_checkpoint(checkpoint[1]).tensors)
  tensors["Mixed_5b.branch_pool.conv.weight"] = np.zeros((64, 192, 1, 1), np.float32)  # Mixed_5c's pool width
  with pytest.raises(
    CheckpointError,
    match=r"'Mixed_5b\.branch_pool\.conv\.weight' has shape \(64, 192, 1, 1\); "
    r"this architecture expects \(32, 192, 1, 1\)",
  ) as e:
    from_torch(tensors, "f.pth")
  assert "\n" not in str(e.value)


def test_torchvision_imagenet_layout_is_refused(checkpoint):
  """torchvision's own Inception weights (1000 classes, AuxLogits) compute different features: refused."""
  tensors = dict(read_checkpoint(checkpoint[1]).tensors)
  tensors["fc.weight"], tensors["fc.bias"] = np.zeros((1000, 2048), np.float32), np.zeros(1000, np.float32)
  with pytest.raises(CheckpointError, match=r"'fc\.weight' has shape \(1000, 2048\)"):
    from_torch(tensors, "f.pth")
  tensors = dict(read_checkpoint(checkpoint[1]).tensors)
  tensors["AuxLogits.fc.weight"] = np.zeros((1008, 768), np.float32)
  with pytest.raises(CheckpointError, match=r"unexpected key\(s\) AuxLogits\.fc\.weight"):
    from_torch(tensors, "f.pth")


@pytest.mark.parametrize("side", [64, 320, 299])
def test_resize_matches_torch_bilinear(side):
  """Up- (64) and down-sampling (320, antialias off in both) and the identity, against F.interpolate in float64."""
  x = np.random.default_rng(side).random((2, side, side + 3, 3))
  expected = (
    F.interpolate(torch.from_numpy(x).permute(0, 3, 1, 2), size=(299, 299), mode="bilinear", align_corners=False)
    .permute(0, 2, 3, 1)
    .numpy()
  )
  with jax.enable_x64(True):
    ours = np.asarray(resize_bilinear(jnp.asarray(x), 299))
  np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-12)


def test_features_match_torch_small_input():
  """The whole network at 139 px (maps of 7, 3 and 3 px after Mixed_5d, 6e, 7c): every pool's border decides.

  A count_include_pad=True average pool or an average pool in Mixed_7c each move the features by > 0.1 here;
  at 75 px (the smallest size) Mixed_7b/7c see 1x1 maps, where neither difference shows.
  """
  model = randomised(image_size=139, seed=1)
  tensors = {k: v.numpy() for k, v in model.state_dict().items()}
  images = np.random.default_rng(1).random((2, 64, 64, 3), dtype=np.float32)
  with torch.no_grad():
    expected = model.double()(torch.from_numpy(images).double().permute(0, 3, 1, 2)).numpy()
  ours = jax.jit(FIDInceptionV3(image_size=139).apply)(from_torch(tensors), jnp.asarray(images))
  assert ours.shape == (2, 2048) and ours.dtype == jnp.float32
  assert relative_error(ours, expected) <= 1e-4


@pytest.mark.slow
def test_pool3_features_match_pytorch_fid(checkpoint):
  """64x64 inputs resized to 299 inside, batch 2: pool3 features within 1e-4 of torch's (float64 oracle)."""
  model, path = checkpoint
  variables = from_torch(read_checkpoint(path).tensors, str(path))
  images = np.random.default_rng(0).random((2, 64, 64, 3), dtype=np.float32)
  with torch.no_grad():
    expected = copy.deepcopy(model).double()(torch.from_numpy(images).double().permute(0, 3, 1, 2)).numpy()
  ours = jax.jit(FIDInceptionV3().apply)(variables, jnp.asarray(images))
  assert ours.shape == (2, 2048)
  assert relative_error(ours, expected) <= 1e-4
