"""jaxmi.augment: each transform against a direct computation, and the randomness keyed per example."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmi.errors import ConfigError
from jaxmi.augment import PLG_AUGMENT, TRAP_AUGMENT, ImageAugment, augment_batch, augment_image, resized_crop, rotate


def _image(h=9, w=9, c=2, seed=0):
  return jax.random.uniform(jax.random.PRNGKey(seed), (h, w, c))


def test_full_box_crop_and_zero_rotation_are_the_identity():
  img = _image()
  np.testing.assert_allclose(resized_crop(img, 0.0, 0.0, 9.0, 9.0), img, atol=1e-6)
  np.testing.assert_allclose(rotate(img, jnp.float32(0.0)), img, atol=1e-6)


def test_rotation_by_a_right_angle_is_a_pixel_permutation():
  # odd size: the centre is a pixel, so a quarter turn maps the grid onto itself exactly (up to cos(pi/2) ~ 4e-8)
  img = _image(7, 7, 1)
  turned = np.asarray(rotate(img, jnp.float32(np.pi / 2)))
  candidates = [np.rot90(np.asarray(img), k) for k in (1, 3)]
  assert min(np.abs(turned - c).max() for c in candidates) < 1e-5


def test_rotation_pads_with_zeros_and_interpolates_bilinearly():
  img = jnp.ones((8, 8, 1))
  out = np.asarray(rotate(img, jnp.deg2rad(30.0)))
  assert out[0, 0, 0] == 0.0  # a corner comes from outside the image
  assert out[4, 4, 0] == pytest.approx(1.0, abs=1e-6)  # the centre stays inside
  # a linear ramp stays a linear function under bilinear sampling (away from the border)
  ramp = jnp.broadcast_to(jnp.arange(16.0)[None, :, None], (16, 16, 1))
  angle = jnp.deg2rad(10.0)
  got = np.asarray(rotate(ramp, angle))[5:11, 5:11, 0]
  yy, xx = np.meshgrid(np.arange(16.0) - 7.5, np.arange(16.0) - 7.5, indexing="ij")
  want = (7.5 + np.sin(10 * np.pi / 180) * yy + np.cos(10 * np.pi / 180) * xx)[5:11, 5:11]
  np.testing.assert_allclose(got, want, atol=1e-4)


def test_resized_crop_samples_the_box_with_aligned_corners():
  ramp = jnp.broadcast_to(jnp.arange(9.0)[None, :, None], (9, 9, 1))  # value = column
  out = np.asarray(resized_crop(ramp, 1.0, 2.0, 5.0, 5.0))[0, :, 0]
  np.testing.assert_allclose(out, 2.0 + np.arange(9) * 4.0 / 8.0, atol=1e-5)  # columns 2..6, corners aligned


def test_off_by_default_and_each_transform_changes_the_image():
  img = _image(16, 16, 1)
  key = jax.random.PRNGKey(3)
  assert ImageAugment().identity and augment_image(img, key, ImageAugment()) is img
  for cfg in (
    ImageAugment(crop_scale=(0.5, 0.6)),
    ImageAugment(brightness=0.5),
    ImageAugment(contrast=0.5),
    ImageAugment(hflip_p=1.0),
    ImageAugment(rotation_deg=20.0),
  ):
    out = augment_image(img, key, cfg)
    assert out.shape == img.shape and not np.allclose(out, img), cfg
  np.testing.assert_array_equal(augment_image(img, key, ImageAugment(hflip_p=1.0)), img[:, ::-1])


def test_probabilities_zero_and_one():
  img = _image(16, 16, 1)
  for k in range(5):
    key = jax.random.PRNGKey(k)
    np.testing.assert_array_equal(augment_image(img, key, ImageAugment(rotation_deg=20.0, rotation_p=0.0)), img)
  batch = jnp.stack([img] * 64)
  out = augment_batch(batch, jax.random.PRNGKey(0), ImageAugment(hflip_p=0.5))
  flipped = np.array([np.array_equal(o, img[:, ::-1]) for o in np.asarray(out)])
  kept = np.array([np.array_equal(o, img) for o in np.asarray(out)])
  assert np.all(flipped | kept) and 16 < flipped.sum() < 48  # p = 0.5 of 64: P(outside) < 1e-4


def test_deterministic_per_key_and_independent_of_the_batch():
  imgs = jax.random.uniform(jax.random.PRNGKey(1), (6, 16, 16, 3))
  key = jax.random.PRNGKey(7)
  a = augment_batch(imgs, key, PLG_AUGMENT)
  np.testing.assert_array_equal(a, augment_batch(imgs, key, PLG_AUGMENT))
  keys = jax.random.split(key, 6)
  np.testing.assert_array_equal(a[4], augment_image(imgs[4], keys[4], PLG_AUGMENT))  # example 4 alone: same draw
  assert not np.allclose(a, augment_batch(imgs, jax.random.PRNGKey(8), PLG_AUGMENT))


def test_differentiable_with_respect_to_the_image():
  img = _image(16, 16, 1)
  for cfg in (PLG_AUGMENT, TRAP_AUGMENT):
    g = jax.grad(lambda x: jnp.sum(augment_image(x, jax.random.PRNGKey(2), cfg) ** 2))(img)
    assert np.all(np.isfinite(g)) and np.abs(g).sum() > 0


def test_bad_settings_are_refused():
  for bad in (dict(crop_scale=(0.0, 1.0)), dict(crop_scale=(0.9, 0.8)), dict(hflip_p=1.5), dict(rotation_deg=-1.0)):
    with pytest.raises(ConfigError):
      ImageAugment(**bad)


def test_colour_jitter_is_kornia_brightness_and_contrast_in_either_order():
  img = 0.2 + 0.55 * _image(8, 8, 3)  # inside (0.2, 0.75): single factors within 0.7-1.3 clamp nothing
  x = np.asarray(img, np.float64)
  mean = np.mean(x @ np.array([0.299, 0.587, 0.114]))
  orders = set()
  for k in range(16):
    key = jax.random.PRNGKey(k)
    # the factors are drawn from the same keys whichever transforms are on: read them off the single ones
    b_only = np.asarray(augment_image(img, key, ImageAugment(brightness=0.3)), np.float64)
    b = np.median(b_only / x)
    np.testing.assert_allclose(b_only, x * b, atol=1e-5)
    assert 0.7 <= b <= 1.3
    c_only = np.asarray(augment_image(img, key, ImageAugment(contrast=0.3)), np.float64)
    c = np.polyfit(x.ravel(), c_only.ravel(), 1)[0]
    np.testing.assert_allclose(c_only, c * x + (1 - c) * mean, atol=1e-5)  # kornia: mean of the grey image
    both = np.asarray(augment_image(img, key, ImageAugment(brightness=0.3, contrast=0.3)), np.float64)
    contrast = lambda v: np.clip(c * v + (1 - c) * np.mean(v @ np.array([0.299, 0.587, 0.114])), 0, 1)
    brightness = lambda v: np.clip(v * b, 0, 1)
    errors = {
      "b then c": np.abs(both - contrast(brightness(x))).max(),
      "c then b": np.abs(both - brightness(contrast(x))).max(),
    }
    order = min(errors, key=errors.get)
    assert errors[order] < 1e-5, errors
    orders.add(order)
  assert orders == {"b then c", "c then b"}  # both orders occur (P(not) = 2 * 2^-16)


def test_the_same_draw_with_x64_on():
  """Float64 tests (Trap-MID's) rely on a key giving the same augmentation whatever the default float width."""
  img = np.asarray(_image(16, 16, 1))
  key = jax.random.PRNGKey(5)
  cfg = dataclasses.replace(TRAP_AUGMENT, crop_p=1.0, rotation_p=1.0, brightness=0.2)
  want = np.asarray(augment_image(jnp.asarray(img), key, cfg), np.float64)
  with jax.enable_x64(True):
    got = np.asarray(augment_image(jnp.asarray(img, jnp.float64), key, cfg))
  np.testing.assert_allclose(got, want, atol=1e-5)
