"""The published GAN priors' PyTorch state dicts as variables of jaxmi's GAN networks (``jaxmi.nets.gan``).

The files (key layouts from the official ``models/generator.py`` / ``models/discri.py`` of
sutd-visual-computing-group/Re-thinking_MI, which SCccc21/Knowledge-Enriched-DMI shares):
  * GMI's general GAN ``celeba_G.tar`` / ``celeba_D.tar``: ``Generator(in_dim=100, dim=64)`` and the WGAN-GP critic
    ``DGWGAN(in_dim=3, dim=64)`` -- ``GANConfig()`` (base width 64, 4 stages, 3 channels), ``kind="gmi"``;
  * KEDMI's inversion-specific GAN ``improved_celeba_G.tar`` / ``improved_celeba_D.tar``: the same ``Generator``
    and ``MinibatchDiscriminator(in_dim=3, dim=64, n_classes=1000)`` -- ``kind="kedmi"``, ``num_classes=1000``.
At 32 px (``stages=3``) the generator is ``GeneratorMNIST`` and the GMI critic ``DGWGAN32``; KEDMI's
``MinibatchDiscriminator_MNIST`` keeps a fourth stride-2 stage (to 2x2) that jaxmi's 32-px discriminator lacks, so
it has no counterpart here.

Layout notes (each checked against PyTorch in tests/test_torch_gan.py):
  * Both generators end in a sigmoid: images in [0, 1], jaxmi's convention too; only NCHW becomes NHWC.
  * ``l1`` is Linear(z, 8d * 4 * 4) + BatchNorm1d; jaxmi reshapes its output as torch's ``view(N, -1, 4, 4)`` does
    (channel-major) before going NHWC, so the Linear and its BatchNorm1d map without reordering.
  * ConvTranspose2d weights [Cin, Cout, 5, 5] are stored as they are: ``gan.UpConv`` keeps PyTorch's layout and
    derives its sub-pixel (or dilated) kernel from it at run time.
  * Conv2d weights [O, I, k, k] become HWIO; InstanceNorm2d(affine=True) keeps no running statistics (a pre-0.4
    file that has them is refused, as torch's own ``load_state_dict`` does); BatchNorm momentum 0.1 is Flax's 0.9.
  * KEDMI's ``feat`` is ``view(bs, -1)`` of an NCHW map and jaxmi flattens it in the same (C, H, W) order, so the
    minibatch-discrimination tensor ``mbd1.T`` [A, B, C] and ``fc_layer`` map without reordering.
"""

from __future__ import annotations

import jax
import numpy as np

from jaxmi.errors import ConfigError
from jaxmi.nets.gan import GANConfig, KEDMIDiscriminator, build_gan
from jaxmi.nets.torch_import import StrictStateDict, batch_norm, conv_kernel, dense_kernel


def _float32(tree):
  # The published files are float32; a float16/float64 file loads into jaxmi's float32 variables.
  return jax.tree.map(lambda a: np.asarray(a, np.float32), tree)


def generator_from_torch(tensors: dict, gan_cfg: GANConfig, source: str = "checkpoint") -> dict:
  """``{"params", "batch_stats"}`` of ``build_gan(gan_cfg)[0]`` from a ``Generator`` / ``GeneratorMNIST`` state dict."""
  build_gan(gan_cfg)  # the same argument checks as the network's
  c = gan_cfg
  sd = StrictStateDict(tensors, source)
  top = c.base_width * 2 ** (c.stages - 1)
  params, stats = {}, {}
  params["l1"] = {"kernel": dense_kernel(sd, "l1.0.weight", (c.z_dim, top * 16))}
  params["l1_bn"], stats["l1_bn"] = batch_norm(sd, "l1.1", top * 16)
  cin = top
  for i in range(c.stages - 1):  # l2_5.<i> = Sequential(ConvTranspose2d (no bias), BatchNorm2d, ReLU)
    cout = top // 2 ** (i + 1)
    params[f"up{i}"] = {"kernel": sd.take(f"l2_5.{i}.0.weight", (cin, cout, 5, 5))}
    params[f"up{i}_bn"], stats[f"up{i}_bn"] = batch_norm(sd, f"l2_5.{i}.1", cout)
    cin = cout
  last = c.stages - 1  # the last ConvTranspose2d has a bias; the Sigmoid after it has no parameters
  params[f"up{last}"] = {
    "kernel": sd.take(f"l2_5.{last}.weight", (cin, c.channels, 5, 5)),
    "bias": sd.take(f"l2_5.{last}.bias", (c.channels,)),
  }
  sd.finish()
  return _float32({"params": params, "batch_stats": stats})


def _conv(sd: StrictStateDict, prefix: str, k: int, cin: int, cout: int) -> dict:
  return {"kernel": conv_kernel(sd, f"{prefix}.weight", (k, k, cin, cout)), "bias": sd.take(f"{prefix}.bias", (cout,))}


def _instance_norm(sd: StrictStateDict, prefix: str, n: int) -> dict:
  return {"scale": sd.take(f"{prefix}.weight", (n,)), "bias": sd.take(f"{prefix}.bias", (n,))}


def _gmi_critic(sd: StrictStateDict, width: int, stages: int, channels: int) -> dict:
  # DGWGAN (64 px): ls = [Conv, LeakyReLU, (Conv, IN, LeakyReLU) x 3, Conv(8d, 1, 4)];
  # DGWGAN32 (32 px): layer1 = (Conv, LeakyReLU), layer2-3 = (Conv, IN, LeakyReLU), layer4 = Conv(4d, 1, 4).
  conv = [f"ls.{i}.0" if i else "ls.0" for i in (0, 2, 3, 4)] if stages == 4 else ["layer1.0", "layer2.0", "layer3.0"]
  norm = [f"ls.{i}.1" for i in (2, 3, 4)] if stages == 4 else ["layer2.1", "layer3.1"]
  params, cin = {}, channels
  for i in range(stages):
    cout = width * 2**i
    params[f"conv{i}"] = _conv(sd, conv[i], 5, cin, cout)
    if i > 0:
      params[f"in{i}"] = _instance_norm(sd, norm[i - 1], cout)
    cin = cout
  params["score"] = _conv(sd, "ls.5" if stages == 4 else "layer4", 4, cin, 1)
  return params


def _kedmi_discriminator(sd: StrictStateDict, width: int, channels: int, num_classes: int, mbd: tuple) -> dict:
  # MinibatchDiscriminator: layer1-4 = (Conv, IN, LeakyReLU) with k = 5, 5, 5, 3; mbd1.T [16 * 4d, B, C]; fc_layer.
  params, cin = {}, channels
  for i, (cout, k) in enumerate(((width, 5), (2 * width, 5), (4 * width, 5), (4 * width, 3))):
    params[f"conv{i}"] = _conv(sd, f"layer{i + 1}.0", k, cin, cout)
    params[f"in{i}"] = _instance_norm(sd, f"layer{i + 1}.1", cout)
    cin = cout
  feat = 16 * cin
  params["mbd"] = {"T": sd.take("mbd1.T", (feat, *mbd))}
  params["fc"] = {
    "kernel": dense_kernel(sd, "fc_layer.weight", (feat + mbd[0], num_classes)),
    "bias": sd.take("fc_layer.bias", (num_classes,)),
  }
  return params


def critic_from_torch(
  tensors: dict,
  gan_cfg: GANConfig,
  source: str = "checkpoint",
  *,
  kind: str = "gmi",
  num_classes: int = 0,
  critic_width: int | None = None,
) -> dict:
  """``{"params"}`` of ``build_gan(gan_cfg, critic_width, kind=kind, num_classes=num_classes)[1]`` from the
  published critic: GMI's ``DGWGAN`` / ``DGWGAN32`` (``kind="gmi"``) or KEDMI's ``MinibatchDiscriminator``
  (``kind="kedmi"``, 64 px only, ``num_classes`` = its ``n_classes``: 1000 for ``improved_celeba_D.tar``)."""
  _, critic = build_gan(gan_cfg, critic_width, kind=kind, num_classes=num_classes)  # same argument checks
  width = critic_width or gan_cfg.base_width
  sd = StrictStateDict(tensors, source)
  if kind == "gmi":
    params = _gmi_critic(sd, width, gan_cfg.stages, gan_cfg.channels)
  else:
    if gan_cfg.stages != 4:
      raise ConfigError(
        "gan.stages: a KEDMI discriminator imports at 64 px only (stages 4); the official 32-px "
        "MinibatchDiscriminator_MNIST has a fourth stride-2 stage that jaxmi's 32-px discriminator lacks"
      )
    assert isinstance(critic, KEDMIDiscriminator)
    params = _kedmi_discriminator(sd, width, gan_cfg.channels, num_classes, (critic.mbd_kernels, critic.mbd_kernel_dim))
  sd.finish()
  return _float32({"params": params})
