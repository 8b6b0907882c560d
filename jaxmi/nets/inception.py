"""Inception-v3 as pytorch-fid builds it: the 2048-d pool3 features every FID in the MI literature uses.

pytorch-fid (github.com/mseitzer/pytorch-fid, ``src/pytorch_fid/inception.py``) takes torchvision's
``Inception3`` blocks with the TF 2015-12-05 weights (``pt_inception-2015-12-05-6726825d.pth``) and patches
them to reproduce TensorFlow's graph: the 3x3 average pools inside Mixed_5b-5d (FIDInceptionA), Mixed_6b-6e
(FIDInceptionC) and Mixed_7b (FIDInceptionE_1) do not count the zero padding (``count_include_pad=False``),
and Mixed_7c (FIDInceptionE_2) max-pools where the paper average-pools. ``InceptionV3`` (block index 3)
resizes its input to 299x299 (bilinear, ``align_corners=False``), maps [0, 1] to [-1, 1] and runs the blocks up
to the global average pool. ``FIDInceptionV3`` is that network in Flax; ``from_torch`` fills it from the
weights file. Submodules carry torchvision's names, so the Flax tree path of every layer is its torch key.

This is a frozen feature extractor: BatchNorm always uses the running statistics (eps 0.001, torchvision's
``BasicConv2d``) and there is no training mode.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxmi.nets.torch_import import StrictStateDict, batch_norm, conv_kernel

FEATURE_DIM = 2048
# The file's classifier (1008 classes: TF's ImageNet head). pool3 does not use it; its shape tells this file
# from torchvision's 1000-class ImageNet weights, whose graph differs (padded average pools, transform_input).
FC_SHAPE = (1008, FEATURE_DIM)


class BasicConv(nn.Module):
  """torchvision's ``BasicConv2d``: Conv2d without bias -> BatchNorm2d(eps=0.001) -> ReLU, torch's padding."""

  features: int
  kernel: tuple[int, int]
  stride: int = 1
  padding: tuple[int, int] = (0, 0)

  @nn.compact
  def __call__(self, x):
    (ph, pw), s = self.padding, self.stride
    x = nn.Conv(self.features, self.kernel, (s, s), padding=((ph, ph), (pw, pw)), use_bias=False, name="conv")(x)
    x = nn.BatchNorm(use_running_average=True, momentum=0.9, epsilon=1e-3, name="bn")(x)
    return nn.relu(x)


def _avg_pool_3x3(x):
  """``F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)``: TF's SAME average pool, borders divide by what they saw."""
  return nn.avg_pool(x, (3, 3), (1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_3x3_s2(x):
  """``MaxPool2d(3, stride=2)`` (no padding, floor): every reduction between stages."""
  return nn.max_pool(x, (3, 3), (2, 2), padding="VALID")


class InceptionA(nn.Module):
  """Mixed_5b-5d (pytorch-fid's FIDInceptionA)."""

  pool_features: int

  @nn.compact
  def __call__(self, x):
    b1 = BasicConv(64, (1, 1), name="branch1x1")(x)
    b5 = BasicConv(48, (1, 1), name="branch5x5_1")(x)
    b5 = BasicConv(64, (5, 5), padding=(2, 2), name="branch5x5_2")(b5)
    b3 = BasicConv(64, (1, 1), name="branch3x3dbl_1")(x)
    b3 = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(b3)
    b3 = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_3")(b3)
    bp = BasicConv(self.pool_features, (1, 1), name="branch_pool")(_avg_pool_3x3(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
  """Mixed_6a (torchvision's InceptionB, unpatched): 35x35 -> 17x17."""

  @nn.compact
  def __call__(self, x):
    b3 = BasicConv(384, (3, 3), stride=2, name="branch3x3")(x)
    bd = BasicConv(64, (1, 1), name="branch3x3dbl_1")(x)
    bd = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
    bd = BasicConv(96, (3, 3), stride=2, name="branch3x3dbl_3")(bd)
    return jnp.concatenate([b3, bd, _max_pool_3x3_s2(x)], axis=-1)


class InceptionC(nn.Module):
  """Mixed_6b-6e (pytorch-fid's FIDInceptionC): factorised 7x7 convolutions."""

  channels_7x7: int

  @nn.compact
  def __call__(self, x):
    c7 = self.channels_7x7
    row, col = {"kernel": (1, 7), "padding": (0, 3)}, {"kernel": (7, 1), "padding": (3, 0)}
    b1 = BasicConv(192, (1, 1), name="branch1x1")(x)
    b7 = BasicConv(c7, (1, 1), name="branch7x7_1")(x)
    b7 = BasicConv(c7, **row, name="branch7x7_2")(b7)
    b7 = BasicConv(192, **col, name="branch7x7_3")(b7)
    bd = BasicConv(c7, (1, 1), name="branch7x7dbl_1")(x)
    bd = BasicConv(c7, **col, name="branch7x7dbl_2")(bd)
    bd = BasicConv(c7, **row, name="branch7x7dbl_3")(bd)
    bd = BasicConv(c7, **col, name="branch7x7dbl_4")(bd)
    bd = BasicConv(192, **row, name="branch7x7dbl_5")(bd)
    bp = BasicConv(192, (1, 1), name="branch_pool")(_avg_pool_3x3(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
  """Mixed_7a (torchvision's InceptionD, unpatched): 17x17 -> 8x8."""

  @nn.compact
  def __call__(self, x):
    b3 = BasicConv(192, (1, 1), name="branch3x3_1")(x)
    b3 = BasicConv(320, (3, 3), stride=2, name="branch3x3_2")(b3)
    b7 = BasicConv(192, (1, 1), name="branch7x7x3_1")(x)
    b7 = BasicConv(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
    b7 = BasicConv(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
    b7 = BasicConv(192, (3, 3), stride=2, name="branch7x7x3_4")(b7)
    return jnp.concatenate([b3, b7, _max_pool_3x3_s2(x)], axis=-1)


class InceptionE(nn.Module):
  """Mixed_7b (FIDInceptionE_1: unpadded-count average pool) and Mixed_7c (FIDInceptionE_2: max pool)."""

  pool: str  # "avg" | "max"

  @nn.compact
  def __call__(self, x):
    row, col = {"kernel": (1, 3), "padding": (0, 1)}, {"kernel": (3, 1), "padding": (1, 0)}
    b1 = BasicConv(320, (1, 1), name="branch1x1")(x)
    b3 = BasicConv(384, (1, 1), name="branch3x3_1")(x)
    b3 = [BasicConv(384, **row, name="branch3x3_2a")(b3), BasicConv(384, **col, name="branch3x3_2b")(b3)]
    bd = BasicConv(448, (1, 1), name="branch3x3dbl_1")(x)
    bd = BasicConv(384, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
    bd = [BasicConv(384, **row, name="branch3x3dbl_3a")(bd), BasicConv(384, **col, name="branch3x3dbl_3b")(bd)]
    # E_2's max pool pads with -inf as torch's does (x >= 0 here anyway: it is a concatenation of ReLUs).
    pooled = _avg_pool_3x3(x) if self.pool == "avg" else nn.max_pool(x, (3, 3), (1, 1), padding=((1, 1), (1, 1)))
    bp = BasicConv(192, (1, 1), name="branch_pool")(pooled)
    return jnp.concatenate([b1, *b3, *bd, bp], axis=-1)


def resize_bilinear(images: jax.Array, size: int) -> jax.Array:
  """[B, H, W, C] -> [B, size, size, C] as ``F.interpolate(mode="bilinear", align_corners=False)``.

  Half-pixel centres, the two nearest pixels, edges clamped: jax's triangle kernel renormalised at the border
  is the same. ``antialias=False``: torch does not low-pass when downsampling (inputs larger than 299), so
  neither do we; FIDs of large images then alias exactly as pytorch-fid's do.
  """
  if images.shape[1:3] == (size, size):
    return images
  return jax.image.resize(images, (images.shape[0], size, size, images.shape[3]), "bilinear", antialias=False)


class FIDInceptionV3(nn.Module):
  """pytorch-fid's ``InceptionV3()`` (output block 3): NHWC images in [0, 1], any size -> [B, 2048] pool3 features.

  ``image_size`` is the side the input is resized to: 299 for FID (what the weights were trained at and every
  published FID used); smaller (>= 75) only for cheap structural checks.
  """

  image_size: int = 299

  @nn.compact
  def __call__(self, images):
    if images.shape[-1] == 1:  # grayscale (MNIST): the extractor wants RGB
      images = jnp.repeat(images, 3, axis=-1)
    x = resize_bilinear(images, self.image_size) * 2.0 - 1.0
    x = BasicConv(32, (3, 3), stride=2, name="Conv2d_1a_3x3")(x)
    x = BasicConv(32, (3, 3), name="Conv2d_2a_3x3")(x)
    x = BasicConv(64, (3, 3), padding=(1, 1), name="Conv2d_2b_3x3")(x)
    x = _max_pool_3x3_s2(x)
    x = BasicConv(80, (1, 1), name="Conv2d_3b_1x1")(x)
    x = BasicConv(192, (3, 3), name="Conv2d_4a_3x3")(x)
    x = _max_pool_3x3_s2(x)
    x = InceptionA(32, name="Mixed_5b")(x)
    x = InceptionA(64, name="Mixed_5c")(x)
    x = InceptionA(64, name="Mixed_5d")(x)
    x = InceptionB(name="Mixed_6a")(x)
    for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
      x = InceptionC(c7, name=name)(x)
    x = InceptionD(name="Mixed_7a")(x)
    x = InceptionE("avg", name="Mixed_7b")(x)
    x = InceptionE("max", name="Mixed_7c")(x)
    return jnp.mean(x, axis=(1, 2))  # AdaptiveAvgPool2d((1, 1)) + flatten


@functools.cache
def _variable_shapes() -> dict:
  # Tracing the network takes seconds; the shapes do not depend on image_size.
  return jax.eval_shape(FIDInceptionV3(image_size=75).init, jax.random.key(0), jnp.zeros((1, 75, 75, 3), jnp.float32))


def variable_shapes() -> dict:
  """The variables' tree with ``jax.ShapeDtypeStruct`` leaves, without running the network."""
  return jax.tree.map(lambda s: s, _variable_shapes())


def from_torch(tensors: dict, source: str = "checkpoint") -> dict:
  """``{"params", "batch_stats"}`` of ``FIDInceptionV3`` from pytorch-fid's state dict, strictly.

  Every BasicConv at Flax path ``a/b`` takes torch's ``a.b.conv.weight`` and ``a.b.bn.{weight,bias,running_mean,
  running_var}`` (``num_batches_tracked`` skipped). The published file also holds ``fc.weight``/``fc.bias``
  (Inception3's 1008-class head, which pool3 never reaches): they are consumed explicitly, optional, but
  shape-checked when present so torchvision's 1000-class ImageNet file is refused. Anything else is refused.
  """
  sd = StrictStateDict(tensors, source)
  shapes = variable_shapes()

  def fill(tree, path):
    if "conv" in tree:  # a BasicConv
      prefix = ".".join(path)
      kernel = tree["conv"]["kernel"].shape
      bn_params, bn_stats = batch_norm(sd, f"{prefix}.bn", kernel[-1])
      conv = {"kernel": conv_kernel(sd, f"{prefix}.conv.weight", kernel)}
      return {"conv": conv, "bn": bn_params}, {"bn": bn_stats}
    filled = {name: fill(sub, (*path, name)) for name, sub in tree.items()}
    return {k: v[0] for k, v in filled.items()}, {k: v[1] for k, v in filled.items()}

  params, stats = fill(shapes["params"], ())
  if "fc.weight" in sd.tensors or "fc.bias" in sd.tensors:
    sd.take("fc.weight", FC_SHAPE)
    sd.take("fc.bias", FC_SHAPE[:1])
  sd.finish()
  return {"params": params, "batch_stats": stats}
