"""Random image augmentations on the device, differentiable with respect to the image, deterministic per key.

PLG-MI (Yuan et al., AAAI 2023) optimises its latents through random augmentations of the generated image and
trains its GAN's identity loss the same way; Trap-MID (Liu & Chen, NeurIPS 2024) trains its model and triggers on
augmented inputs. Both use kornia, whose pipeline this follows, one transform after the other as kornia's
``ImageSequential`` applies them (each with its own resampling):

  RandomResizedCrop(size = input size, scale, ratio 1) -> ColorJitter(brightness, contrast)
    -> RandomHorizontalFlip -> RandomRotation(degrees)

* crop: a square box of area ``s * H * W``, s ~ U(crop_scale), at a uniform position inside the image, resized
  back to H x W bilinearly with aligned corners (kornia's convention). The box is continuous (kornia rounds it to
  whole pixels), which keeps the transform one formula.
* colour: kornia's ColorJitter (0.6.6, the version PLG-MI pins): brightness x * b, b ~ U(1 - brightness,
  1 + brightness) (``adjust_brightness_accumulative``), contrast c x + (1 - c) mean(x), c ~ U(1 - contrast,
  1 + contrast) (``adjust_contrast_with_mean_subtraction``; the mean of the image's grey level), each clamped to
  [0, 1], in a random order. kornia draws one order per batch and, for non-RGB images, takes the mean over the
  whole batch; here both are per image, so an image's augmentation never depends on its batch.
* flip: left-right with probability ``hflip_p``.
* rotation: by an angle ~ U(-rotation_deg, rotation_deg) about the centre, bilinear, zeros outside (kornia's
  ``RandomRotation``, whose default probability is 0.5).

Each transform happens with its probability (``crop_p``, ``hflip_p``, ``rotation_p``; colour always when its
strength is non-zero) and is selected with ``jnp.where``, so shapes and the program never depend on the draw.
``augment_image`` draws everything from one key; ``augment_batch`` gives every example its own key
(``split(key, B)``), so an example's augmentation does not depend on which batch or chunk it is in.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jaxmi.errors import ConfigError


@dataclasses.dataclass(frozen=True, kw_only=True)
class ImageAugment:
  """Which random transforms to apply, and how strongly (all off by default)."""

  crop_scale: tuple[float, float] = (1.0, 1.0)  # area fraction of the square crop box
  crop_p: float = 1.0
  brightness: float = 0.0
  contrast: float = 0.0
  hflip_p: float = 0.0
  rotation_deg: float = 0.0
  rotation_p: float = 1.0

  def __post_init__(self):
    lo, hi = self.crop_scale
    if not 0.0 < lo <= hi <= 1.0:
      raise ConfigError(f"augment.crop_scale: expected 0 < low <= high <= 1, got {self.crop_scale}")
    for name in ("crop_p", "hflip_p", "rotation_p"):
      if not 0.0 <= getattr(self, name) <= 1.0:
        raise ConfigError(f"augment.{name}: expected a probability in [0, 1], got {getattr(self, name)}")
    if self.brightness < 0 or self.contrast < 0 or self.rotation_deg < 0:
      raise ConfigError("augment.brightness, contrast, rotation_deg: expected >= 0")

  @property
  def crops(self) -> bool:
    return self.crop_p > 0 and self.crop_scale != (1.0, 1.0)

  @property
  def rotates(self) -> bool:
    return self.rotation_p > 0 and self.rotation_deg > 0

  @property
  def identity(self) -> bool:
    return not (self.crops or self.rotates or self.hflip_p > 0 or self.brightness or self.contrast)


# PLG-MI's reconstruction (reconstruct.py) and its GAN's identity loss (train_cgan.py).
PLG_AUGMENT = ImageAugment(
  crop_scale=(0.8, 1.0), brightness=0.2, contrast=0.2, hflip_p=0.5, rotation_deg=5.0, rotation_p=0.5
)
# Trap-MID's training inputs (kornia, each with probability 0.5).
TRAP_AUGMENT = ImageAugment(crop_scale=(0.8, 1.0), crop_p=0.5, hflip_p=0.5, rotation_deg=30.0, rotation_p=0.5)


def _interp_matrix(start: jax.Array, step: jax.Array, n: int) -> jax.Array:
  """[n, n] bilinear weights: output row i samples input position start + i * step (inside [0, n - 1])."""
  pos = start + step * jnp.arange(n, dtype=jnp.float32)
  return jnp.maximum(0.0, 1.0 - jnp.abs(pos[:, None] - jnp.arange(n, dtype=jnp.float32)[None, :]))


def resized_crop(image: jax.Array, top: jax.Array, left: jax.Array, side_h: jax.Array, side_w: jax.Array):
  """The box [top, top + side_h - 1] x [left, left + side_w - 1] (pixels) of ``image`` [H, W, C], resized to H x W
  with aligned corners. Axis-aligned, so separable: two small matrix products (fast on CPU, in both directions)."""
  h, w = image.shape[:2]
  rows = _interp_matrix(top, (side_h - 1) / max(h - 1, 1), h)
  cols = _interp_matrix(left, (side_w - 1) / max(w - 1, 1), w)
  return jnp.einsum("ij,jkc,lk->ilc", rows, image, cols)


def rotate(image: jax.Array, angle: jax.Array) -> jax.Array:
  """``image`` [H, W, C] rotated by ``angle`` radians about its centre, bilinear, zeros outside (grid_sample's
  zero padding: each of the four neighbours outside the image contributes 0)."""
  h, w = image.shape[:2]
  cy, cx = (h - 1) / 2, (w - 1) / 2
  yy, xx = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32) - cy, jnp.arange(w, dtype=jnp.float32) - cx, indexing="ij")
  cos, sin = jnp.cos(angle), jnp.sin(angle)
  src_y, src_x = cy + cos * yy - sin * xx, cx + sin * yy + cos * xx
  y0, x0 = jnp.floor(src_y), jnp.floor(src_x)
  out = jnp.zeros_like(image)
  for dy in (0, 1):
    for dx in (0, 1):
      yi, xi = y0 + dy, x0 + dx
      weight = (1 - jnp.abs(src_y - yi)) * (1 - jnp.abs(src_x - xi))
      inside = (yi >= 0) & (yi <= h - 1) & (xi >= 0) & (xi <= w - 1)
      pixels = image[jnp.clip(yi, 0, h - 1).astype(jnp.int32), jnp.clip(xi, 0, w - 1).astype(jnp.int32)]
      out = out + jnp.where(inside, weight, 0.0)[..., None] * pixels
  return out


def uniform(key: jax.Array, minval: float = 0.0, maxval: float = 1.0) -> jax.Array:
  """One float32 draw: fixed dtype, so a key gives the same augmentation with jax_enable_x64 on (float64 tests)."""
  return jax.random.uniform(key, (), jnp.float32, minval, maxval)


def bernoulli(key: jax.Array, p: float) -> jax.Array:
  return jax.random.bernoulli(key, jnp.float32(p))


def grey(image: jax.Array) -> jax.Array:
  """[H, W] grey level: ITU-R 601 luma of RGB (kornia's ``rgb_to_grayscale``), the channel mean otherwise."""
  if image.shape[-1] == 3:
    return image @ jnp.array([0.299, 0.587, 0.114], image.dtype)
  return jnp.mean(image, axis=-1)


def augment_image(image: jax.Array, key: jax.Array, cfg: ImageAugment) -> jax.Array:
  """One random draw of ``cfg``'s transforms applied to ``image`` [H, W, C] (values in [0, 1])."""
  if cfg.identity:
    return image
  h, w = image.shape[:2]
  k_crop, k_colour, k_flip, k_rot = jax.random.split(key, 4)
  dtype = image.dtype
  image = image.astype(jnp.float32)
  if cfg.crops:
    k_apply, k_scale, k_y, k_x = jax.random.split(k_crop, 4)
    frac = jnp.sqrt(uniform(k_scale, minval=cfg.crop_scale[0], maxval=cfg.crop_scale[1]))
    side_h, side_w = frac * h, frac * w
    top = uniform(k_y) * (h - side_h)
    left = uniform(k_x) * (w - side_w)
    cropped = resized_crop(image, top, left, side_h, side_w)
    image = jnp.where(bernoulli(k_apply, cfg.crop_p), cropped, image)
  if cfg.brightness or cfg.contrast:
    k_b, k_c, k_order = jax.random.split(k_colour, 3)
    b = uniform(k_b, minval=max(0.0, 1 - cfg.brightness), maxval=1 + cfg.brightness)
    c = uniform(k_c, minval=max(0.0, 1 - cfg.contrast), maxval=1 + cfg.contrast)
    brighter = lambda x: jnp.clip(x * b, 0.0, 1.0) if cfg.brightness else x
    contrast = lambda x: jnp.clip(c * x + (1 - c) * jnp.mean(grey(x)), 0.0, 1.0) if cfg.contrast else x
    swap = bernoulli(k_order, 0.5)
    image = jnp.where(swap, brighter(contrast(image)), contrast(brighter(image)))
  if cfg.hflip_p:
    image = jnp.where(bernoulli(k_flip, cfg.hflip_p), image[:, ::-1], image)
  if cfg.rotates:
    k_apply, k_angle = jax.random.split(k_rot)
    angle = jnp.deg2rad(uniform(k_angle, minval=-cfg.rotation_deg, maxval=cfg.rotation_deg))
    image = jnp.where(bernoulli(k_apply, cfg.rotation_p), rotate(image, angle), image)
  return image.astype(dtype)


def augment_batch(images: jax.Array, key: jax.Array, cfg: ImageAugment) -> jax.Array:
  """``augment_image`` on each of ``images`` [B, H, W, C], example b with key ``split(key, B)[b]``."""
  if cfg.identity:
    return images
  return jax.vmap(augment_image, in_axes=(0, 0, None))(images, jax.random.split(key, images.shape[0]), cfg)
