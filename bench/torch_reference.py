"""PyTorch reference of one GMI attack step, on exactly the weights of jaxmi's Flax networks (benchmark only).

The speed claims in ``bench/`` compare jaxmi against the official PyTorch MI code. For the ratio to mean
anything both sides must run the same networks on the same weights, so this module:
  * re-implements GMI's generator and WGAN-GP critic (``generator.py`` / ``discri.py``) and the
    targets (a small CNN, ``VGG16`` = torchvision ``vgg16_bn`` features + BatchNorm1d + Linear) the
    straightforward way the official code writes them: NCHW, ``nn.ConvTranspose2d``, eval mode;
  * copies jaxmi's variable dicts into them (``load_from_jax``), BatchNorm running statistics included;
  * runs one attack step as GMI's ``inversion()`` loop does (``gmi_torch_step``);
  * checks that both sides compute the same images, scores, logits, gradients and steps
    (``check_equal``; ``python bench/torch_reference.py`` runs it for both benchmark configs).

jaxmi never imports torch; this file is not part of the package. Scripts importing it put the repository
root on ``sys.path`` themselves; run directly (``python bench/torch_reference.py``) it does so for itself.

Layout notes (the pitfalls of the weight copy):
  * Flax Conv kernels are HWIO, torch Conv2d weights OIHW.
  * jaxmi's transposed-conv kernels are already in torch's ConvTranspose2d layout (Cin, Cout, 5, 5).
  * Flax Dense kernels are (in, out), torch Linear weights (out, in).
  * The generator reshapes its first Dense output to NCHW as torch does, so l1 copies as is.
  * The classifiers flatten NHWC feature maps in Flax but NCHW in torch; rather than change the
    torch forward pass, the rows of the first layer after the flatten (SmallCNN's ``fc_feat``,
    VGG's ``bn_feat`` + head) are permuted to NCHW order on load. At 64 px the VGG map is 2x2x512,
    so a missing permutation is not caught by shapes, only by values.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from pathlib import Path

if __name__ == "__main__":  # run as a script only: make jaxmi importable; importers set their own path
  sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
import torch.nn.functional as F
from torch import nn

from jaxmi.nets import ModelConfig, build_classifier, init_variables
from jaxmi.nets.classifiers import VGG16_LAYOUT
from jaxmi.nets.gan import Critic, GANConfig, Generator

# The two benchmark configurations: MNIST scale and the CelebA 64 px reference (VGG16-BN target).
CONFIGS = {
  "small": dict(
    gan=GANConfig(z_dim=100, base_width=16, stages=3, channels=1),
    critic_width=16,
    target=ModelConfig(arch="cnn", width=32, feature_dim=128),
    num_classes=10,
  ),
  "vgg64": dict(
    gan=GANConfig(z_dim=100, base_width=64, stages=4, channels=3),
    critic_width=64,
    target=ModelConfig(arch="vgg", vgg_layout="vgg16"),
    num_classes=1000,
  ),
}

# check_equal passes when every max abs diff <= TOLERANCES[kind] * max |jax value| (kind = the key's first part).
# Forward values agree to ~1e-6 relative in float32 (the frameworks only sum in different orders). Gradients
# through ReLU nets do not: a pre-activation within rounding of 0 (VGG16 at 64 px has ~1.1M ReLU inputs per image)
# can land on the other side of the kink in one framework and route an O(1) local gradient differently (measured:
# one flip, -6.8e-8 vs +5.3e-8, among the 0.5M conv1 outputs of 2 images). The VGG z-gradient then differs by ~1e-3
# relative, and jaxmi differs from itself by as much when only the generator's upsample form changes (reported as
# ``grad/jax_floor``: float32 noise of the function itself). A wrong weight mapping gives errors of order 1.
TOLERANCES = {"image": 1e-4, "critic": 1e-4, "logits": 1e-4, "z": 1e-4, "grad": 1e-2, "velocity": 1e-2}


# -- torch networks, as the official PyTorch MI code writes them -------------------------------------


class TorchGenerator(nn.Module):
  """GMI's ``Generator``: Linear + BN1d + ReLU to (8d, 4, 4), stride-2 transposed convs, sigmoid."""

  def __init__(self, z_dim: int = 100, base_width: int = 64, stages: int = 4, channels: int = 3):
    super().__init__()
    top = base_width * 2 ** (stages - 1)

    def dconv_bn_relu(cin, cout):
      return nn.Sequential(
        nn.ConvTranspose2d(cin, cout, 5, 2, padding=2, output_padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()
      )

    self.top = top
    self.l1 = nn.Sequential(nn.Linear(z_dim, top * 4 * 4, bias=False), nn.BatchNorm1d(top * 4 * 4), nn.ReLU())
    widths = [top // 2**i for i in range(stages)]
    self.l2_5 = nn.Sequential(
      *[dconv_bn_relu(a, b) for a, b in zip(widths[:-1], widths[1:])],
      nn.ConvTranspose2d(widths[-1], channels, 5, 2, padding=2, output_padding=1),
      nn.Sigmoid(),
    )

  def forward(self, z):
    y = self.l1(z).view(z.size(0), self.top, 4, 4)
    return self.l2_5(y)  # NCHW images in [0, 1]


class TorchCritic(nn.Module):
  """GMI's ``DGWGAN``: 5x5 stride-2 convs, InstanceNorm2d(affine) after all but the first, LeakyReLU 0.2, 4x4 score."""

  def __init__(self, channels: int = 3, base_width: int = 64, stages: int = 4):
    super().__init__()

    def conv_ln_lrelu(cin, cout):
      return nn.Sequential(nn.Conv2d(cin, cout, 5, 2, 2), nn.InstanceNorm2d(cout, affine=True), nn.LeakyReLU(0.2))

    widths = [base_width * 2**i for i in range(stages)]
    self.ls = nn.Sequential(
      nn.Conv2d(channels, base_width, 5, 2, 2),
      nn.LeakyReLU(0.2),
      *[conv_ln_lrelu(a, b) for a, b in zip(widths[:-1], widths[1:])],
      nn.Conv2d(widths[-1], 1, 4),
    )

  def forward(self, x):
    return self.ls(x).view(-1)


class TorchSmallCNN(nn.Module):
  """jaxmi's ``SmallCNN``: two conv-BN-ReLU-pool blocks, Linear(no bias) + BN1d + ReLU features, linear head.

  Returns ``(features, logits)`` like the official targets' ``[feature, res]``.
  """

  def __init__(self, channels: int, num_classes: int, width: int = 32, feature_dim: int = 128, image_size: int = 32):
    super().__init__()
    self.features = nn.Sequential(
      nn.Conv2d(channels, width, 3, padding=1, bias=False),
      nn.BatchNorm2d(width),
      nn.ReLU(),
      nn.MaxPool2d(2, 2),
      nn.Conv2d(width, 2 * width, 3, padding=1, bias=False),
      nn.BatchNorm2d(2 * width),
      nn.ReLU(),
      nn.MaxPool2d(2, 2),
    )
    self.fc_feat = nn.Linear(2 * width * (image_size // 4) ** 2, feature_dim, bias=False)
    self.bn_feat = nn.BatchNorm1d(feature_dim)
    self.fc = nn.Linear(feature_dim, num_classes)

  def forward(self, x):
    x = self.features(x).view(x.size(0), -1)  # NCHW flatten; load_from_jax permutes fc_feat to match
    feature = F.relu(self.bn_feat(self.fc_feat(x)))
    return feature, self.fc(feature)


class TorchVGG(nn.Module):
  """GMI's ``VGG16`` target: ``vgg16_bn().features`` -> flatten -> BatchNorm1d -> Linear; returns (features, logits)."""

  def __init__(self, num_classes: int, layout=VGG16_LAYOUT, channels: int = 3, image_size: int = 64):
    super().__init__()
    layers, cin, pools = [], channels, 0
    for item in layout:  # torchvision's make_layers(cfg, batch_norm=True)
      if item == "M":
        layers.append(nn.MaxPool2d(2, 2))
        pools += 1
      else:
        layers += [nn.Conv2d(cin, int(item), 3, padding=1), nn.BatchNorm2d(int(item)), nn.ReLU(inplace=True)]
        cin = int(item)
    self.feature = nn.Sequential(*layers)
    self.feat_dim = cin * (image_size // 2**pools) ** 2  # 512 * 2 * 2 at 64 px
    self.bn = nn.BatchNorm1d(self.feat_dim)
    self.fc_layer = nn.Linear(self.feat_dim, num_classes)

  def forward(self, x):
    feature = self.feature(x).view(x.size(0), -1)  # NCHW flatten; load_from_jax permutes bn/fc_layer to match
    feature = self.bn(feature)
    return feature, self.fc_layer(feature)


# -- weight copy ---------------------------------------------------------------------------------------


def _np(x) -> np.ndarray:
  return np.array(x, dtype=np.float32)  # a writable copy: torch.from_numpy refuses read-only jax buffers


def _set(tensor: torch.Tensor, value) -> None:
  value = torch.from_numpy(np.ascontiguousarray(_np(value)))
  if tuple(tensor.shape) != tuple(value.shape):  # copy_ would silently broadcast
    raise ValueError(f"shape mismatch: torch {tuple(tensor.shape)} vs jax {tuple(value.shape)}")
  with torch.no_grad():
    tensor.copy_(value)


def _hwio_to_oihw(kernel) -> np.ndarray:
  return _np(kernel).transpose(3, 2, 0, 1)


def _set_bn(bn: nn.Module, params: dict, stats: dict, perm=None) -> None:
  take = (lambda a: _np(a)[perm]) if perm is not None else _np
  _set(bn.weight, take(params["scale"]))
  _set(bn.bias, take(params["bias"]))
  _set(bn.running_mean, take(stats["mean"]))
  _set(bn.running_var, take(stats["var"]))
  bn.eps = 1e-5  # jaxmi's BatchNorm epsilon (torch's default too)


def _nhwc_to_nchw_rows(channels: int, size: int) -> np.ndarray:
  """perm with perm[i_nchw] = i_nhwc for a flattened (size, size, channels) map: torch_vec = jax_vec[perm]."""
  return np.arange(size * size * channels).reshape(size, size, channels).transpose(2, 0, 1).reshape(-1)


def _finish(module: nn.Module) -> nn.Module:
  module.eval()  # BN on running statistics, as jaxmi's attacks run every net with train=False
  module.requires_grad_(False)  # only z is optimised
  return module


def load_generator(variables: dict) -> TorchGenerator:
  """TorchGenerator from a jaxmi ``Generator``'s ``{"params", "batch_stats"}``; sizes read off the shapes."""
  p, s = variables["params"], variables["batch_stats"]
  stages = sum(1 for k in p if k.startswith("up") and not k.endswith("_bn"))
  z_dim, _ = p["l1"]["kernel"].shape
  top, channels = p["up0"]["kernel"].shape[0], p[f"up{stages - 1}"]["kernel"].shape[1]
  g = TorchGenerator(z_dim, top // 2 ** (stages - 1), stages, channels)
  _set(g.l1[0].weight, _np(p["l1"]["kernel"]).T)
  _set_bn(g.l1[1], p["l1_bn"], s["l1_bn"])  # features already in torch's (C, 4, 4) order
  for i in range(stages - 1):
    _set(g.l2_5[i][0].weight, p[f"up{i}"]["kernel"])  # already ConvTranspose2d (Cin, Cout, 5, 5)
    _set_bn(g.l2_5[i][1], p[f"up{i}_bn"], s[f"up{i}_bn"])
  _set(g.l2_5[stages - 1].weight, p[f"up{stages - 1}"]["kernel"])
  _set(g.l2_5[stages - 1].bias, p[f"up{stages - 1}"]["bias"])
  return _finish(g)


def load_critic(variables: dict) -> TorchCritic:
  """TorchCritic from a jaxmi ``Critic``'s ``{"params"}``."""
  p = variables["params"]
  stages = sum(1 for k in p if k.startswith("conv"))
  _, _, channels, base_width = p["conv0"]["kernel"].shape
  d = TorchCritic(channels, base_width, stages)
  convs = [m for m in d.ls.modules() if isinstance(m, nn.Conv2d)]  # conv0..conv{stages-1}, score
  norms = [m for m in d.ls.modules() if isinstance(m, nn.InstanceNorm2d)]  # in1..in{stages-1}
  for i in range(stages):
    _set(convs[i].weight, _hwio_to_oihw(p[f"conv{i}"]["kernel"]))
    _set(convs[i].bias, p[f"conv{i}"]["bias"])
  for i, norm in enumerate(norms, start=1):
    _set(norm.weight, p[f"in{i}"]["scale"])
    _set(norm.bias, p[f"in{i}"]["bias"])
    norm.eps = 1e-5
  _set(convs[-1].weight, _hwio_to_oihw(p["score"]["kernel"]))
  _set(convs[-1].bias, p["score"]["bias"])
  return _finish(d)


def load_small_cnn(variables: dict) -> TorchSmallCNN:
  """TorchSmallCNN from a jaxmi ``SmallCNN`` (linear head) ``{"params", "batch_stats"}``."""
  p, s = variables["params"], variables["batch_stats"]
  _, _, channels, width = p["conv0"]["kernel"].shape
  flat, feature_dim = p["fc_feat"]["kernel"].shape
  size = math.isqrt(flat // (2 * width))
  t = TorchSmallCNN(channels, p["head"]["fc"]["kernel"].shape[1], width, feature_dim, 4 * size)
  convs = [m for m in t.features if isinstance(m, nn.Conv2d)]
  bns = [m for m in t.features if isinstance(m, nn.BatchNorm2d)]
  for i in range(2):
    _set(convs[i].weight, _hwio_to_oihw(p[f"conv{i}"]["kernel"]))
    _set_bn(bns[i], p[f"bn{i}"], s[f"bn{i}"])
  _set(t.fc_feat.weight, _np(p["fc_feat"]["kernel"])[_nhwc_to_nchw_rows(2 * width, size)].T)
  _set_bn(t.bn_feat, p["bn_feat"], s["bn_feat"])
  _set(t.fc.weight, _np(p["head"]["fc"]["kernel"]).T)
  _set(t.fc.bias, p["head"]["fc"]["bias"])
  return _finish(t)


def load_vgg(variables: dict, layout=VGG16_LAYOUT) -> TorchVGG:
  """TorchVGG from a jaxmi ``VGG`` (linear head, width_divisor 1); ``layout`` gives the pooling positions."""
  p, s = variables["params"], variables["batch_stats"]
  convs_n = sum(1 for item in layout if item != "M")
  channels, last = p["conv0"]["kernel"].shape[2], p[f"conv{convs_n - 1}"]["kernel"].shape[3]
  size = math.isqrt(p["bn_feat"]["scale"].shape[0] // last)
  pools = sum(1 for item in layout if item == "M")
  t = TorchVGG(p["head"]["fc"]["kernel"].shape[1], layout, channels, size * 2**pools)
  convs = [m for m in t.feature if isinstance(m, nn.Conv2d)]
  bns = [m for m in t.feature if isinstance(m, nn.BatchNorm2d)]
  for i in range(convs_n):
    _set(convs[i].weight, _hwio_to_oihw(p[f"conv{i}"]["kernel"]))
    _set(convs[i].bias, p[f"conv{i}"]["bias"])
    _set_bn(bns[i], p[f"bn{i}"], s[f"bn{i}"])
  perm = _nhwc_to_nchw_rows(last, size)
  _set_bn(t.bn, p["bn_feat"], s["bn_feat"], perm)
  _set(t.fc_layer.weight, _np(p["head"]["fc"]["kernel"])[perm].T)
  _set(t.fc_layer.bias, p["head"]["fc"]["bias"])
  return _finish(t)


LOADERS = {"generator": load_generator, "critic": load_critic, "cnn": load_small_cnn, "vgg": load_vgg}


def load_from_jax(kind: str, variables: dict, **kwargs) -> nn.Module:
  """Torch module (eval mode, frozen) holding jaxmi's weights. kind: generator | critic | cnn | vgg."""
  if kind not in LOADERS:
    raise ValueError(f"unknown kind '{kind}'; expected one of {', '.join(LOADERS)}")
  return LOADERS[kind](variables, **kwargs)


# -- building both sides -------------------------------------------------------------------------------


def randomize_variables(variables: dict, seed: int = 0) -> dict:
  """Non-trivial BN/IN/bias values so every mapping is exercised (fresh inits have mean 0, var 1, scale 1, bias 0).

  mean ~ N(0, 0.1), var ~ U(0.5, 1.5), scale ~ U(0.8, 1.2), bias += N(0, 0.05).
  """
  rng = np.random.default_rng(seed)

  def visit(path, leaf):
    name, leaf = path[-1].key, _np(leaf)
    if name == "mean":
      return jnp.asarray(rng.normal(0.0, 0.1, leaf.shape), jnp.float32)
    if name == "var":
      return jnp.asarray(rng.uniform(0.5, 1.5, leaf.shape), jnp.float32)
    if name == "scale":
      return jnp.asarray(rng.uniform(0.8, 1.2, leaf.shape), jnp.float32)
    if name == "bias":
      return jnp.asarray(leaf + rng.normal(0.0, 0.05, leaf.shape), jnp.float32)
    return jnp.asarray(leaf)

  return jax.tree_util.tree_map_with_path(visit, variables)


def jax_nets(config_name: str, seed: int = 0, upsample: str = "subpixel") -> dict:
  """jaxmi generator, critic and target of a benchmark config, randomly initialised (BN statistics too).

  Returns ``{"config", "generator": (module, variables), "critic": ..., "target": ..., "image_shape"}``.
  """
  cfg = CONFIGS[config_name]
  gan = dataclasses.replace(cfg["gan"], upsample=upsample)
  keys = jax.random.split(jax.random.PRNGKey(seed), 3)
  image_shape = (gan.image_size, gan.image_size, gan.channels)
  generator, critic = Generator(gan), Critic(base_width=cfg["critic_width"], stages=gan.stages)
  target = build_classifier(cfg["target"], cfg["num_classes"])
  gvars = jax.jit(lambda k: generator.init(k, jnp.zeros((2, gan.z_dim)), train=False))(keys[0])
  cvars = jax.jit(lambda k: critic.init(k, jnp.zeros((2, *image_shape))))(keys[1])
  tvars = init_variables(target, keys[2], image_shape)
  return {
    "config": cfg,
    "image_shape": image_shape,
    "generator": (generator, randomize_variables(dict(gvars), seed + 1)),
    "critic": (critic, randomize_variables(dict(cvars), seed + 2)),
    "target": (target, randomize_variables(tvars, seed + 3)),
  }


def torch_nets(nets: dict) -> tuple[nn.Module, nn.Module, nn.Module]:
  """(G, D, T) torch modules with the weights of ``jax_nets(...)``'s networks."""
  arch = nets["config"]["target"].arch
  return (
    load_from_jax("generator", nets["generator"][1]),
    load_from_jax("critic", nets["critic"][1]),
    load_from_jax(arch, nets["target"][1]),
  )


# -- one GMI attack step ---------------------------------------------------------------------------------


def gmi_torch_loss_grad(G, D, T, z, labels, lam: float = 100.0, reference_batch: int = 60):
  """GMI's loss and its gradient w.r.t. z.

  GMI takes ``-D(fake).mean() + lam * CE.mean()`` over its batch of identities; jaxmi gives each latent
  its own loss ``(-D(G(z)) + lam * CE) / reference_batch``. Summing those over the batch gives the same
  per-latent gradients as GMI's batch mean at batch = reference_batch (= 60 in the CelebA protocol),
  whatever batch the benchmark runs.
  """
  z = z.detach().requires_grad_(True)
  fake = G(z)
  prior = -D(fake)
  iden = F.cross_entropy(T(fake)[-1], labels, reduction="none")
  loss = (prior + lam * iden).sum() / reference_batch
  (grad,) = torch.autograd.grad(loss, z)
  return loss.detach(), grad


def gmi_torch_step(
  G, D, T, z, labels, velocity, lr: float = 0.02, momentum: float = 0.9, lam: float = 100.0, reference_batch: int = 60
):
  """One step of GMI's ``inversion()``: backward to z, its hand-written Nesterov update, clamp to [-1, 1].

  Equal to jaxmi's ``optax.sgd(lr, momentum, nesterov=True)`` + clip (velocity = -lr * optax's trace).
  Returns ``(z, velocity)``.
  """
  _, grad = gmi_torch_loss_grad(G, D, T, z, labels, lam, reference_batch)
  with torch.no_grad():
    v_prev = velocity
    velocity = momentum * velocity - lr * grad
    z = z.detach() + (-momentum * v_prev + (1 + momentum) * velocity)
    z = z.clamp(-1.0, 1.0)
  return z, velocity


# -- the check -------------------------------------------------------------------------------------------


def _jax_per_latent_loss(nets: dict, lam: float, reference_batch: int):
  """The engine's per-latent GMI loss (``Inverter._loss`` with PriorTerm + IdentityTerm(ce)), networks at batch 1."""
  (gen, gvars), (critic, cvars), (target, tvars) = nets["generator"], nets["critic"], nets["target"]

  def loss(z, label):
    image = gen.apply(gvars, z[None], train=False)
    score = critic.apply(cvars, image, method="realism")[0]
    logits = target.apply(tvars, image, train=False).logits[0]
    return (-score + lam * optax.softmax_cross_entropy_with_integer_labels(logits, label)) / reference_batch

  return loss


def check_equal(
  config_name: str,
  batch: int = 4,
  seed: int = 0,
  steps: int = 2,
  lam: float = 100.0,
  reference_batch: int = 60,
  lr: float = 0.02,
  momentum: float = 0.9,
  return_scales: bool = False,
):
  """Max abs diffs between jaxmi and the torch reference on the same random weights, z and labels.

  Keys (``<up>`` = the jaxmi generator's upsample form, subpixel | transpose; torch always uses ConvTranspose2d):
    image/<up>           generator output
    critic, logits       critic scores and target logits on the same input images
    grad/<up>            d(step loss)/dz, jaxmi's per-latent vmap(grad) vs torch's batched backward
    grad/jax_floor       jaxmi subpixel vs jaxmi transpose: the float32 noise floor of that gradient
    z/<up>, velocity/<up>  after ``steps`` GMI steps: torch's hand-written Nesterov vs optax + clip
                         (velocity = -lr * optax's trace)
  With ``return_scales`` also returns ``{key: max |jax value|}`` for relative tolerances.
  """
  rng = np.random.default_rng(seed)
  cfg = CONFIGS[config_name]
  diffs, scales = {}, {}

  def record(key, jax_value, other):
    ref, other = _np(jax_value), other.detach().numpy() if isinstance(other, torch.Tensor) else _np(other)
    diffs[key] = float(np.max(np.abs(ref - other)))
    scales[key] = float(np.max(np.abs(ref)))

  z_np = np.clip(rng.normal(size=(batch, cfg["gan"].z_dim)), -1, 1).astype(np.float32)
  labels_np = rng.integers(0, cfg["num_classes"], size=batch)
  z_t, labels_t = torch.from_numpy(z_np), torch.from_numpy(labels_np).long()
  z_j, labels_j = jnp.asarray(z_np), jnp.asarray(labels_np)
  G = D = T = None
  jax_grads = {}
  for upsample in ("subpixel", "transpose"):
    nets = jax_nets(config_name, seed, upsample)  # same seed: same weights, only the upsample path differs
    (gen, gvars), (critic, cvars), (target, tvars) = nets["generator"], nets["critic"], nets["target"]
    if G is None:
      G, D, T = torch_nets(nets)
    images = jax.jit(lambda v, z: gen.apply(v, z, train=False))(gvars, z_j)
    with torch.no_grad():
      record(f"image/{upsample}", images, G(z_t).permute(0, 2, 3, 1))  # torch NCHW -> NHWC
      if upsample == "subpixel":
        x_t = torch.from_numpy(_np(images).transpose(0, 3, 1, 2).copy())
        record("critic", jax.jit(critic.apply)(cvars, images), D(x_t))
        logits = jax.jit(lambda v, x: target.apply(v, x, train=False).logits)(tvars, images)
        record("logits", logits, T(x_t)[-1])

    grad_fn = jax.jit(jax.vmap(jax.grad(_jax_per_latent_loss(nets, lam, reference_batch))))
    jax_grads[upsample] = grad_fn(z_j, labels_j)
    _, torch_grad = gmi_torch_loss_grad(G, D, T, z_t, labels_t, lam, reference_batch)
    record(f"grad/{upsample}", jax_grads[upsample], torch_grad)

    tx = optax.sgd(lr, momentum=momentum, nesterov=True)  # the engine's GMI optimiser
    zs_j, state = z_j, tx.init(z_j)
    zs_t, v_t = z_t.clone(), torch.zeros_like(z_t)
    for _ in range(steps):
      updates, state = tx.update(grad_fn(zs_j, labels_j), state, zs_j)
      zs_j = jnp.clip(optax.apply_updates(zs_j, updates), -1.0, 1.0)
      zs_t, v_t = gmi_torch_step(G, D, T, zs_t, labels_t, v_t, lr, momentum, lam, reference_batch)
    record(f"z/{upsample}", zs_j, zs_t)
    record(f"velocity/{upsample}", -lr * optax.tree_utils.tree_get(state, "trace"), v_t)
  record("grad/jax_floor", jax_grads["subpixel"], jax_grads["transpose"])
  return (diffs, scales) if return_scales else diffs


def main() -> int:
  failed = False
  print("pass: max abs diff <= tol * max |jax|, tol = " + ", ".join(f"{k} {v:g}" for k, v in TOLERANCES.items()))
  for name in CONFIGS:
    diffs, scales = check_equal(name, return_scales=True)
    print(name)
    for key, diff in diffs.items():
      rel = diff / max(scales[key], 1e-30)
      ok = rel <= TOLERANCES[key.split("/")[0]]
      failed |= not ok
      verdict = "ok" if ok else "FAIL"
      print(f"  {key:20s} max abs diff {diff:.2e}  max |jax| {scales[key]:.2e}  rel {rel:.1e}  {verdict}")
  return 1 if failed else 0


if __name__ == "__main__":
  raise SystemExit(main())
