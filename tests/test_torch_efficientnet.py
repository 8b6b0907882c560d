"""LOMMA's EfficientNet-B0/B1/B2 surrogates: PyTorch checkpoints import into jaxmi.nets.efficientnet exactly.

The oracle is Re-thinking_MI's ``EfficientNet_b*`` (models/classify.py) around torchvision's ``efficientnet_b*``
network, written here in torch from its structure (torchvision itself is not importable next to the CPU build of
torch: its C ops fail to register), with torchvision's module names, so its state-dict keys are the published
files' keys. Random weights and BatchNorm statistics, saved as the official code saves it. torch is a test-only
dependency (requirements-test.txt).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torch import nn

from jaxmi.errors import CheckpointError
from jaxmi.nets import ModelConfig, build_classifier, init_variables, shape_signature
from jaxmi.nets.efficientnet import block_specs, from_torch
from jaxmi.nets.torch_import import read_checkpoint

N_CLASSES = 10
IMAGE = (64, 64, 3)

# torchvision's efficientnet_b0 stages (the paper's Table 1): expand ratio, kernel, first stride, input channels,
# output channels, layers.
STAGES = (
  (1, 3, 1, 32, 16, 1),
  (6, 3, 2, 16, 24, 2),
  (6, 5, 2, 24, 40, 2),
  (6, 3, 2, 40, 80, 3),
  (6, 5, 1, 80, 112, 3),
  (6, 5, 2, 112, 192, 4),
  (6, 3, 1, 192, 320, 1),
)
# (width, depth) multipliers of torchvision's builders.
MULTIPLIERS = {"efficientnet_b0": (1.0, 1.0), "efficientnet_b1": (1.0, 1.1), "efficientnet_b2": (1.1, 1.2)}
DROP_RATE = 0.2  # torchvision's stochastic_depth_prob for B0-B2


def round8(v: float) -> int:
  """torchvision's channel rounding (_make_divisible(v, 8)): nearest multiple of 8, at least 8, not 10% below v."""
  rounded = max(8, int(v + 4) // 8 * 8)
  return rounded + 8 if rounded < 0.9 * v else rounded


def conv_norm_act(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True):
  """torchvision's Conv2dNormActivation: Conv2d (padding (k-1)//2, no bias) -> BatchNorm2d (torch's eps) [-> SiLU]."""
  layers = [nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
  return nn.Sequential(*layers, nn.SiLU()) if act else nn.Sequential(*layers)


class SqueezeExcitation(nn.Module):
  """torchvision's SqueezeExcitation: x * sigmoid(fc2(silu(fc1(mean over H, W of x)))), 1x1 convs with bias."""

  def __init__(self, channels: int, squeeze: int):
    super().__init__()
    self.avgpool = nn.AdaptiveAvgPool2d(1)
    self.fc1 = nn.Conv2d(channels, squeeze, 1)
    self.fc2 = nn.Conv2d(squeeze, channels, 1)
    self.activation = nn.SiLU()
    self.scale_activation = nn.Sigmoid()

  def forward(self, x):
    return x * self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x)))))


class StochasticDepth(nn.Module):
  """Drops the residual branch per example ("row" mode) with probability p in training; identity in evaluation."""

  def __init__(self, p: float):
    super().__init__()
    self.p = p

  def forward(self, x):
    if not self.training or self.p == 0.0:
      return x
    keep = torch.empty((x.shape[0], 1, 1, 1), dtype=x.dtype).bernoulli_(1.0 - self.p)
    return x * keep / (1.0 - self.p)


class MBConv(nn.Module):
  """torchvision's MBConv: ``block`` = [expand 1x1] -> depthwise kxk -> squeeze-excitation -> project 1x1 (no act)."""

  def __init__(self, ratio: int, kernel: int, stride: int, cin: int, cout: int, drop: float):
    super().__init__()
    expanded = round8(cin * ratio)
    layers = [] if expanded == cin else [conv_norm_act(cin, expanded, 1)]
    layers += [
      conv_norm_act(expanded, expanded, kernel, stride, groups=expanded),
      SqueezeExcitation(expanded, max(1, cin // 4)),  # of the block's input width
      conv_norm_act(expanded, cout, 1, act=False),
    ]
    self.block = nn.Sequential(*layers)
    self.stochastic_depth = StochasticDepth(drop)
    self.residual = stride == 1 and cin == cout
    self.spec = (cin, cout, expanded, kernel, stride, max(1, cin // 4), drop)  # what block_specs must say

  def forward(self, x):
    out = self.block(x)
    return x + self.stochastic_depth(out) if self.residual else out


class Reference(nn.Module):
  """Re-thinking_MI's ``EfficientNet_b0/b1/b2``: ``feature`` = (torchvision's features, avgpool), ``fc_layer``."""

  def __init__(self, arch: str, n_classes: int):
    super().__init__()
    width, depth = MULTIPLIERS[arch]
    stages = [(e, k, s, round8(i * width), round8(o * width), math.ceil(n * depth)) for e, k, s, i, o, n in STAGES]
    total, position = sum(n for *_, n in stages), 0
    features = [conv_norm_act(3, stages[0][3], 3, stride=2)]  # features.0: the stem
    for ratio, kernel, stride, cin, cout, n in stages:  # features.1 .. features.7
      blocks = []
      for i in range(n):  # only the first block of a stage strides and changes the width
        drop = DROP_RATE * position / total
        blocks.append(MBConv(ratio, kernel, stride if i == 0 else 1, cin if i == 0 else cout, cout, drop))
        position += 1
      features.append(nn.Sequential(*blocks))
    last = 4 * stages[-1][4]
    features.append(conv_norm_act(stages[-1][4], last, 1))  # features.8
    # torchvision's classifier (Dropout, Linear) is left out by the reference: children()[:-1].
    self.feature = nn.Sequential(nn.Sequential(*features), nn.AdaptiveAvgPool2d(1))
    self.fc_layer = nn.Linear(last, n_classes)
    for m in self.modules():  # torchvision's initialisation
      if isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, mode="fan_out")
        if m.bias is not None:
          nn.init.zeros_(m.bias)
      elif isinstance(m, nn.Linear):
        nn.init.uniform_(m.weight, -1.0 / math.sqrt(m.out_features), 1.0 / math.sqrt(m.out_features))
        nn.init.zeros_(m.bias)

  def forward(self, x):
    feature = self.feature(x).view(x.shape[0], -1)
    return feature, self.fc_layer(feature)


def reference(arch: str, seed: int = 0) -> Reference:
  torch.manual_seed(seed)
  model = Reference(arch, N_CLASSES)
  with torch.no_grad():  # non-default BN affine and running statistics and biases, so any mix-up shows
    for m in model.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.weight.uniform_(0.5, 1.5)
        m.bias.normal_(0.0, 0.1)
        m.running_mean.normal_(0.0, 0.1)
        m.running_var.uniform_(0.5, 2.0)
        m.num_batches_tracked.fill_(100)
      elif isinstance(m, torch.nn.Conv2d) and m.bias is not None:  # squeeze-excitation
        m.bias.normal_(0.0, 0.1)
  return model.eval()


def save_and_import(model: torch.nn.Module, tmp_path, cfg: ModelConfig, fmt: str = "zip", edit=None):
  """Saved as the official code saves it, read without torch, mapped with ``from_torch``."""
  state = torch.nn.DataParallel(model).state_dict()
  if edit:
    edit(state)
  path = tmp_path / "surrogate.tar"
  torch.save({"state_dict": state}, path, _use_new_zipfile_serialization=fmt == "zip")
  return from_torch(read_checkpoint(path).tensors, cfg, N_CLASSES, IMAGE, source=str(path)), path


def torch_hidden(model: Reference, x: torch.Tensor) -> list:
  """The stage outputs (``features.1`` .. ``features.7``) and the last conv's map, NHWC."""
  out = []
  for i, layer in enumerate(model.feature[0]):
    x = layer(x)
    if i > 0:
      out.append(x.permute(0, 2, 3, 1).numpy())
  return out


def relative_error(got, want) -> float:
  want = np.asarray(want, np.float64)
  return float(np.linalg.norm(np.asarray(got, np.float64) - want) / np.linalg.norm(want))


def init_shapes(net):
  """``init_variables``' tree as shapes: compiling the initialisers' random draws (~280 of them) takes ~40 s."""
  return jax.eval_shape(lambda: init_variables(net, jax.random.PRNGKey(0), IMAGE))


def inputs(seed: int = 1) -> np.ndarray:
  return np.random.default_rng(seed).random((2, *IMAGE), dtype=np.float32)  # images in [0, 1], NHWC


@pytest.mark.parametrize(
  "arch, fmt",
  [
    ("efficientnet_b0", "zip"),
    ("efficientnet_b1", "legacy"),
    ("efficientnet_b2", "zip"),
  ],
)
def test_imported_surrogate_matches_pytorch(tmp_path, arch, fmt):
  model = reference(arch)
  cfg = ModelConfig(arch=arch)
  variables, _ = save_and_import(model, tmp_path, cfg, fmt)
  net = build_classifier(cfg, N_CLASSES)
  # Every leaf of the initialised network is filled, with its shape, and nothing else.
  assert shape_signature(variables) == shape_signature(init_shapes(net))

  x = inputs()
  out = jax.jit(lambda v, x: net.apply(v, x, train=False))(variables, jnp.asarray(x))
  with torch.no_grad():
    xt = torch.from_numpy(x).permute(0, 3, 1, 2)
    want_features, want_logits = model(xt)
    want_hidden = torch_hidden(model, xt)
  errors = {"logits": relative_error(out.logits, want_logits), "features": relative_error(out.features, want_features)}
  errors.update({f"hidden{i}": relative_error(h, w) for i, (h, w) in enumerate(zip(out.hidden, want_hidden))})
  print(arch, {k: f"{e:.2e}" for k, e in errors.items()})
  assert len(out.hidden) == len(want_hidden) == 8
  assert out.features.shape == (2, 1408 if arch == "efficientnet_b2" else 1280)
  assert max(errors.values()) <= 1e-4, errors


@pytest.mark.parametrize("arch", sorted(MULTIPLIERS))
def test_block_specs_are_torchvisions(arch):
  """jaxmi's table of blocks (widths, kernels, strides, squeeze widths, drop rates) is the reference's."""
  model = Reference(arch, N_CLASSES)
  blocks, stem, last = block_specs(arch)
  want = [(s, i, *b.spec) for s, stage in enumerate(model.feature[0][1:8], start=1) for i, b in enumerate(stage)]
  got = [(b.stage, b.index, b.in_ch, b.out_ch, b.expanded, b.kernel, b.stride, b.squeeze, b.drop) for b in blocks]
  assert got == want
  assert (stem, last) == (model.feature[0][0][0].out_channels, model.fc_layer.in_features)
  assert len(blocks) == {"efficientnet_b0": 16, "efficientnet_b1": 23, "efficientnet_b2": 23}[arch]


@pytest.mark.slow  # issue 14: the fast tier stays under 5 minutes; CI runs this in the slow tier
def test_input_gradient_matches_pytorch(tmp_path):
  """What every attack step needs: d logit / d image under jit, as torch's autograd computes it."""
  model = reference("efficientnet_b0", seed=2)
  cfg = ModelConfig(arch="efficientnet_b0")
  variables, _ = save_and_import(model, tmp_path, cfg)
  net = build_classifier(cfg, N_CLASSES)
  x = inputs(seed=3)
  grad = jax.jit(jax.grad(lambda x: net.apply(variables, x, train=False).logits[:, 3].sum()))(jnp.asarray(x))
  xt = torch.from_numpy(x).permute(0, 3, 1, 2).requires_grad_(True)
  model(xt)[1][:, 3].sum().backward()
  want = xt.grad.permute(0, 2, 3, 1).numpy()
  err = relative_error(grad, want)
  print("input gradient relative error", f"{err:.2e}")
  assert np.all(np.isfinite(grad)) and err <= 1e-4, err


def _delete(key):
  return lambda state: state.pop(key)


def _reshape(key, shape):
  return lambda state: state.__setitem__(key, torch.zeros(shape))


@pytest.mark.parametrize(
  "edit, fragments",
  [
    # The squeeze-excitation of stage 4's second block (expand conv present: SE at block index 2).
    (_delete("module.feature.0.4.1.block.2.fc2.bias"), ["missing key 'feature.0.4.1.block.2.fc2.bias'"]),
    # A depthwise 5x5 kernel saved as 3x3.
    (
      _reshape("module.feature.0.3.0.block.1.0.weight", (144, 1, 3, 3)),
      ["feature.0.3.0.block.1.0.weight", "(144, 1, 3, 3)", "(144, 1, 5, 5)"],
    ),
    (_reshape("module.fc_layer.weight", (7, 1280)), ["fc_layer.weight", "(7, 1280)", "(10, 1280)"]),
    # torchvision's own classifier (``classifier.1``) left in: not part of the reference's network.
    (lambda state: state.__setitem__("module.classifier.1.bias", torch.zeros(10)), ["classifier.1.bias", "unexpected"]),
  ],
)
def test_malformed_checkpoints_are_one_line_errors(tmp_path, edit, fragments):
  model = reference("efficientnet_b0")
  with pytest.raises(CheckpointError) as excinfo:
    save_and_import(model, tmp_path, ModelConfig(arch="efficientnet_b0"), edit=edit)
  message = str(excinfo.value)
  assert "\n" not in message and message.startswith(str(tmp_path / "surrogate.tar")), message
  for fragment in fragments:
    assert fragment in message, message


def test_tl_dmi_layer_groups_follow_the_blocks():
  from jaxmi.defenses.tl_dmi import layer_groups

  groups = layer_groups(build_classifier(ModelConfig(arch="efficientnet_b0"), N_CLASSES), IMAGE)
  blocks = [(f"stage{s}_block{i}",) for s, n in enumerate((1, 2, 2, 3, 3, 4, 1), start=1) for i in range(n)]
  assert groups == (("stem",), *blocks, ("top",), ("head",))


@pytest.mark.slow  # issue 14: the fast tier stays under 5 minutes; CI runs this in the slow tier
def test_training_mode_drops_residual_branches_per_example():
  """Stochastic depth (torchvision's "row" mode) in training: different sample keys, different outputs."""
  net = build_classifier(ModelConfig(arch="efficientnet_b0"), N_CLASSES)
  rng = np.random.default_rng(0)  # He-scaled random kernels without compiling the initialisers (``init_shapes``)

  def draw(path, s):
    if path[-1].key == "kernel":
      return jnp.asarray(rng.normal(0.0, np.sqrt(2 / np.prod(s.shape[:-1])), s.shape), jnp.float32)
    return jnp.ones(s.shape) if path[-1].key in ("scale", "var") else jnp.zeros(s.shape)

  variables = jax.tree_util.tree_map_with_path(draw, init_shapes(net))
  x = jnp.asarray(inputs())

  @jax.jit
  def train_logits(key):
    out, updates = net.apply(variables, x, train=True, mutable=["batch_stats"], rngs={"sample": key})
    return out.logits, updates["batch_stats"]

  a, stats = train_logits(jax.random.PRNGKey(1))
  b, _ = train_logits(jax.random.PRNGKey(2))
  assert not np.allclose(a, b)
  assert not np.allclose(stats["stem"]["bn"]["mean"], variables["batch_stats"]["stem"]["bn"]["mean"])
