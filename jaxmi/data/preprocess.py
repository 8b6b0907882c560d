"""Vectorised crop, channel conversion and resize of uint8 image batches."""

import functools

import numpy as np
from PIL import Image

from jaxmi.errors import ConfigError

# ITU-R 601-2 luma, the weights PIL uses for RGB -> L.
_LUMA = np.asarray([0.299, 0.587, 0.114], np.float32)
_CHUNK = 4096  # images per float32 pass, to bound memory on large datasets


@functools.lru_cache(maxsize=32)
def resize_matrix(size_in: int, size_out: int) -> np.ndarray:
  """[size_in, size_out] weights of PIL's antialiased bilinear resize.

  PIL's resize is separable and linear on float ('F') images, so resizing the
  rows of an identity matrix yields its weights; a whole batch then resizes as
  two matrix products instead of one PIL call per image.
  """
  identity = Image.fromarray(np.eye(size_in, dtype=np.float32))
  resized = identity.resize((size_out, size_in), Image.Resampling.BILINEAR)
  return np.asarray(resized, np.float32)


def check_crop_form(crop: tuple[int, ...]) -> None:
  if len(crop) != 4 or min(crop) < 0 or crop[2] < 1 or crop[3] < 1:
    raise ConfigError(f"data.crop: {tuple(crop)} must be () or (top, left, height, width) with height, width >= 1")


def check_crop(crop: tuple[int, ...], height: int, width: int, dataset: str) -> None:
  """Raises unless crop is well formed and fits height x width images."""
  check_crop_form(crop)
  top, left, crop_h, crop_w = crop
  if top + crop_h > height or left + crop_w > width:
    raise ConfigError(f"data.crop: {tuple(crop)} does not fit the {height}x{width} (h x w) images of {dataset}")


def preprocess(
  images: np.ndarray, *, image_size: int, channels: int, crop: tuple[int, ...] = (), dataset: str = "dataset"
) -> np.ndarray:
  """Crops, converts channels and resizes uint8 [N,H,W,C] to [N,S,S,channels].

  `crop` is (top, left, height, width); () takes the centre square of
  non-square images. Grey becomes RGB by repetition, RGB becomes grey by luma.
  """
  _, height, width, in_channels = images.shape
  if crop:
    check_crop(crop, height, width, dataset)
    top, left, height, width = crop
  else:
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    height = width = side
  images = images[:, top : top + height, left : left + width]
  if in_channels == channels and height == width == image_size:
    return np.ascontiguousarray(images)
  if in_channels == 1 and channels == 3 and height == width == image_size:
    return np.repeat(images, 3, axis=-1)
  rows = resize_matrix(height, image_size)
  cols = resize_matrix(width, image_size)
  out = np.empty((len(images), image_size, image_size, channels), np.uint8)
  for start in range(0, len(images), _CHUNK):
    chunk = images[start : start + _CHUNK].astype(np.float32)
    if in_channels == 3 and channels == 1:
      chunk = chunk @ _LUMA[:, None]
    # Channels first, so both resizes are batched BLAS matrix products.
    chunk = rows.T @ (chunk.transpose(0, 3, 1, 2) @ cols)
    chunk = chunk.transpose(0, 2, 3, 1)
    if chunk.shape[-1] != channels:
      chunk = np.repeat(chunk, channels, axis=-1)
    out[start : start + _CHUNK] = np.clip(np.rint(chunk), 0, 255)
  return out
