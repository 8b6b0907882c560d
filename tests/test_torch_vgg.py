"""The published VGG16 targets imported from PyTorch compute what PyTorch computes (jaxmi.nets.vgg_torch).

The oracle is Re-thinking_MI's ``models/classify.py`` ``VGG16`` and ``VGG16_vib`` rebuilt here with the same
module names (``feature`` = torchvision's ``vgg16_bn().features``, ``bn``, ``st_layer``, ``fc_layer``), random
weights and BatchNorm statistics, saved as the official repositories do: ``torch.save({'state_dict':
DataParallel(model).state_dict()})`` in the zip and the legacy format. torch is a test-only dependency.
"""

import copy
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from jaxmi.errors import CheckpointError
from jaxmi.nets import ModelConfig, build_classifier, init_variables, shape_signature
from jaxmi.nets.torch_import import read_checkpoint
from jaxmi.nets.vgg_torch import from_torch

NUM_CLASSES = 10
IMAGE_SHAPE = (64, 64, 3)
# torchvision's cfgs["D"] (vgg16); make_layers(batch_norm=True) appends Conv2d, BatchNorm2d, ReLU per number.
VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


def vgg16_bn_features() -> nn.Sequential:
  layers, channels = [], 3
  for v in VGG16_CFG:
    if v == "M":
      layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
    else:
      layers += [nn.Conv2d(channels, v, kernel_size=3, padding=1), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
      channels = v
  return nn.Sequential(*layers)


class VGG16(nn.Module):
  """Re-thinking_MI's target: features -> flatten (2048) -> BN1d, bias frozen -> Linear; returns (feature, res)."""

  def __init__(self, n_classes):
    super().__init__()
    self.feature = vgg16_bn_features()
    self.feat_dim = 512 * 2 * 2
    self.bn = nn.BatchNorm1d(self.feat_dim)
    self.bn.bias.requires_grad_(False)
    self.fc_layer = nn.Linear(self.feat_dim, n_classes)

  def forward(self, x):
    feature = self.bn(self.feature(x).flatten(1))
    return feature, self.fc_layer(feature)


class VGG16_vib(nn.Module):  # the reference's name
  """MID's target: features -> flatten -> st_layer (2k) -> mu, softplus(std - 5) -> fc_layer(mu + std * eps)."""

  def __init__(self, n_classes):
    super().__init__()
    self.feature = vgg16_bn_features()
    self.feat_dim = 512 * 2 * 2
    self.k = self.feat_dim // 2
    self.st_layer = nn.Linear(self.feat_dim, self.k * 2)
    self.fc_layer = nn.Linear(self.k, n_classes)

  def forward(self, x):
    feature = self.feature(x).flatten(1)
    statis = self.st_layer(feature)
    mu, std = statis[:, : self.k], F.softplus(statis[:, self.k :] - 5, beta=1)
    out = self.fc_layer(mu + std * torch.randn_like(std))
    return [feature, out, mu, std]


def randomized(model: nn.Module, seed: int) -> nn.Module:
  """Random weights, and BatchNorm statistics that keep activations O(1) but differ from any batch's."""
  torch.manual_seed(seed)
  bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d)]
  with torch.no_grad():
    for m in bns:
      m.weight.uniform_(0.5, 1.5)
      m.bias.normal_(0.0, 0.2)
      m.momentum = None  # cumulative average: the statistics of the batch below
    model.train()
    model(torch.rand(8, 3, 64, 64))
    for m in bns:
      m.running_mean.add_(0.1 * m.running_var.sqrt() * torch.randn_like(m.running_mean))
      m.running_var.mul_(torch.empty_like(m.running_var).uniform_(0.5, 2.0))
      m.num_batches_tracked.fill_(1234)
      m.momentum = 0.1
  return model.eval()


def save(model: nn.Module, path, fmt: str):
  torch.save({"state_dict": nn.DataParallel(model).state_dict()}, path, _use_new_zipfile_serialization=fmt == "zip")
  return path


def config(head: str) -> ModelConfig:
  return ModelConfig(arch="vgg16", head=head)


def hwc(feature: torch.Tensor) -> np.ndarray:
  """torch's (C, H, W)-ordered flattening of the 512x2x2 map in jaxmi's (H, W, C) order."""
  return feature.detach().numpy().reshape(-1, 512, 2, 2).transpose(0, 2, 3, 1).reshape(feature.shape[0], -1)


def rel_err(got, want) -> float:
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  return float(np.linalg.norm(got - want) / np.linalg.norm(want))


@functools.cache
def reference(head: str):
  """(torch model, images NCHW, expected outputs in jaxmi's order) for one head; built once per session."""
  model = randomized(VGG16(NUM_CLASSES), seed=1) if head == "linear" else randomized(VGG16_vib(NUM_CLASSES), seed=2)
  torch.manual_seed(3)
  images = torch.rand(2, 3, 64, 64)
  with torch.no_grad():
    if head == "linear":
      feature, logits = model(images)
      expected = {"features": hwc(feature), "logits": logits.numpy()}
    else:
      feature, _, mu, std = model(images)
      # The reference samples eps at test time too; its noise-free logits (eps = 0) are jaxmi's evaluation logits.
      expected = {"features": hwc(feature), "logits": model.fc_layer(mu).numpy()}
      expected |= {"mu": mu.numpy(), "sigma": std.numpy()}
  return model, images, expected


@functools.cache
def jaxmi_apply(head: str):
  model = build_classifier(config(head), NUM_CLASSES)
  return model, jax.jit(lambda v, x: model.apply(v, x, train=False))


def imported(head: str, path):
  return from_torch(read_checkpoint(path).tensors, config(head), NUM_CLASSES, IMAGE_SHAPE, str(path))


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
@pytest.mark.parametrize("head", ["linear", "vib"])
def test_imported_vgg16_matches_pytorch(tmp_path, head, fmt):
  torch_model, images, expected = reference(head)
  variables = imported(head, save(torch_model, tmp_path / "VGG16.tar", fmt))
  model, apply = jaxmi_apply(head)
  init = jax.eval_shape(lambda: init_variables(model, jax.random.key(0), IMAGE_SHAPE))
  assert jax.tree.structure(variables) == jax.tree.structure(init)
  assert shape_signature(variables) == shape_signature(init)
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(variables))
  assert ("bn_feat" in variables["params"]) == (head == "linear")  # VGG16_vib has no BN1d
  out = apply(variables, jnp.asarray(images.numpy().transpose(0, 2, 3, 1)))
  got = {"features": out.features, "logits": out.logits}
  if head == "vib":
    got |= {"mu": out.posterior.mu, "sigma": out.posterior.sigma}
  errors = {name: rel_err(got[name], want) for name, want in expected.items()}
  print(f"vgg16 {head} {fmt}: relative errors {errors}")
  assert max(errors.values()) <= 1e-4, errors
  if head == "linear":  # the frozen BN1d shift is imported as stored, in jaxmi's feature order
    bias = torch_model.bn.bias.detach().numpy().reshape(512, 2, 2).transpose(1, 2, 0).reshape(-1)
    np.testing.assert_array_equal(np.asarray(variables["params"]["bn_feat"]["bias"]), bias)


def test_input_gradient_under_jit_matches_pytorch(tmp_path):
  """The attacks' gradient: d logit[:, 3] / d image through the imported network, jitted, against torch's.

  In float64 on both sides: the gradient routes through 5 max-pools, and in float32 two nearly equal values in a
  pooling window can be ordered differently by the two frameworks' rounding, which moves that window's gradient
  to another pixel (measured 1e-6 to 4e-3 relative error from run to run). In float64 the order agrees.
  """
  torch_model, images, _ = reference("linear")
  variables = imported("linear", save(torch_model, tmp_path / "VGG16.tar", "zip"))
  model = build_classifier(config("linear"), NUM_CLASSES)
  with jax.enable_x64(True):
    variables64 = jax.tree.map(lambda a: jnp.asarray(np.asarray(a, np.float64)), variables)
    grad = jax.jit(jax.grad(lambda v, x: jnp.sum(model.apply(v, x, train=False).logits[:, 3]), argnums=1))
    got = np.asarray(grad(variables64, jnp.asarray(images.double().numpy().transpose(0, 2, 3, 1))))
  torch64 = copy.deepcopy(torch_model).double()
  x = images.double().clone().requires_grad_(True)
  torch64(x)[1][:, 3].sum().backward()
  want = x.grad.numpy().transpose(0, 2, 3, 1)
  assert got.shape == want.shape and got.dtype == np.float64 and np.all(np.isfinite(got))
  error = rel_err(got, want)
  print(f"vgg16 input gradient (float64): relative error {error}")
  assert error <= 1e-9


@pytest.fixture(scope="module")
def state_dict():
  return nn.DataParallel(randomized(VGG16(NUM_CLASSES), seed=4)).state_dict()


def one_line(excinfo) -> str:
  message = str(excinfo.value)
  assert "\n" not in message
  return message


@pytest.mark.parametrize("dropped", ["module.feature.41.running_var", "module.bn.bias"])
def test_a_missing_key_is_refused_naming_it(tmp_path, state_dict, dropped):
  path = tmp_path / "VGG16.tar"
  torch.save({"state_dict": {k: v for k, v in state_dict.items() if k != dropped}}, path)
  with pytest.raises(CheckpointError) as excinfo:
    imported("linear", path)
  message = one_line(excinfo)
  assert message.startswith(str(path)) and f"missing key '{dropped.removeprefix('module.')}'" in message, message


def test_a_wrong_shape_is_refused_naming_key_and_shapes(tmp_path, state_dict):
  """A 1000-identity checkpoint read as 10 classes."""
  path = tmp_path / "VGG16.tar"
  wrong = dict(state_dict)
  wrong["module.fc_layer.weight"], wrong["module.fc_layer.bias"] = torch.zeros(1000, 2048), torch.zeros(1000)
  torch.save({"state_dict": wrong}, path)
  with pytest.raises(CheckpointError) as excinfo:
    imported("linear", path)
  message = one_line(excinfo)
  assert "'fc_layer.weight'" in message and "(1000, 2048)" in message and "(10, 2048)" in message, message


def test_the_other_variant_is_refused(tmp_path, state_dict):
  """A VGG16 checkpoint is not a VGG16_vib: st_layer is missing (and bn unexpected the other way round)."""
  path = save(randomized(VGG16_vib(NUM_CLASSES), seed=5), tmp_path / "VGG16_vib.tar", "zip")
  with pytest.raises(CheckpointError) as excinfo:
    imported("linear", path)
  assert "missing key 'bn.weight'" in one_line(excinfo)
  path = tmp_path / "VGG16.tar"
  torch.save({"state_dict": state_dict}, path)
  with pytest.raises(CheckpointError) as excinfo:
    imported("vib", path)
  assert "missing key 'st_layer.weight'" in one_line(excinfo)


# vgg16_bn's ``features`` Sequential written out: (index, input channels, output channels) of each Conv2d (its
# BatchNorm2d at index + 1, ReLU at + 2); MaxPool2d at 6, 13, 23, 33 and 43, 44 modules in all.
VGG16_BN_CONVS = (
  (0, 3, 64),
  (3, 64, 64),
  (7, 64, 128),
  (10, 128, 128),
  (14, 128, 256),
  (17, 256, 256),
  (20, 256, 256),
  (24, 256, 512),
  (27, 512, 512),
  (30, 512, 512),
  (34, 512, 512),
  (37, 512, 512),
  (40, 512, 512),
)


def test_hand_built_features_are_torchvisions_vgg16_bn():
  """The oracle's keys and shapes are the published files': vgg16_bn's ``features`` (config "D"), then bn, fc_layer."""
  want = {}
  for i, cin, cout in VGG16_BN_CONVS:
    want |= {f"feature.{i}.weight": (cout, cin, 3, 3), f"feature.{i}.bias": (cout,)}
    want |= {f"feature.{i + 1}.{name}": (cout,) for name in ("weight", "bias", "running_mean", "running_var")}
    want[f"feature.{i + 1}.num_batches_tracked"] = ()
  want |= {f"bn.{name}": (2048,) for name in ("weight", "bias", "running_mean", "running_var")}
  want |= {"bn.num_batches_tracked": (), "fc_layer.weight": (NUM_CLASSES, 2048), "fc_layer.bias": (NUM_CLASSES,)}
  model = VGG16(NUM_CLASSES)
  assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == want
  assert len(model.feature) == 44
  assert [i for i, m in enumerate(model.feature) if isinstance(m, nn.MaxPool2d)] == [6, 13, 23, 33, 43]
