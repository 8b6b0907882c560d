"""GAN prior: weight-compatible fast convolutions, shapes, WGAN-GP pieces, resume."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxmi.data import ArraySplit, Splits
from jaxmi.errors import Interrupted
from jaxmi.nets import gan as gan_lib
from jaxmi.nets.gan import GANConfig
from jaxmi.train.gan import GANExperimentConfig, GANTrainConfig, gradient_penalty, load_gan, train_gan


def torch_convtranspose(x, w, b):
  """Direct scatter form of PyTorch ConvTranspose2d(k=5, s=2, p=2, output_padding=1), float64."""
  n, h, wd, _ = x.shape
  out = np.zeros((n, 2 * h + 5, 2 * wd + 5, w.shape[1]))
  for iy in range(h):
    for ix in range(wd):
      for ky in range(5):
        for kx in range(5):
          out[:, 2 * iy + ky, 2 * ix + kx, :] += x[:, iy, ix, :] @ w[:, :, ky, kx]
  return out[:, 2 : 2 + 2 * h, 2 : 2 + 2 * wd, :] + b


@pytest.mark.parametrize("h, cin, cout", [(1, 3, 2), (4, 8, 5), (5, 2, 3)])
def test_subpixel_equals_transposed_conv_and_the_pytorch_definition(h, cin, cout):
  rng = np.random.default_rng(h)
  x, w, b = rng.normal(size=(2, h, h, cin)), rng.normal(size=(cin, cout, 5, 5)), rng.normal(size=cout)
  expected = torch_convtranspose(x, w, b)
  with jax.default_matmul_precision("highest"):
    args = [jnp.asarray(a, jnp.float32) for a in (x, w, b)]
    ref = np.asarray(gan_lib.convtranspose_reference(*args))
    sub = np.asarray(gan_lib.convtranspose_subpixel(*args))
    assert sub.shape == (2, 2 * h, 2 * h, cout)
    np.testing.assert_allclose(ref, expected, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(sub, expected, rtol=1e-5, atol=1e-4)
    # Gradients agree too (the attacks differentiate through the generator).
    loss = lambda f: lambda x: jnp.sum(jnp.sin(f(x, args[1], args[2])))
    np.testing.assert_allclose(
      jax.grad(loss(gan_lib.convtranspose_subpixel))(args[0]),
      jax.grad(loss(gan_lib.convtranspose_reference))(args[0]),
      rtol=1e-4,
      atol=1e-4,
    )
  # A deliberately wrong (unflipped) kernel mapping is far off: the comparison discriminates.
  wrong = np.asarray(gan_lib.convtranspose_reference(args[0], jnp.flip(args[1], (2, 3)), args[2]))
  assert np.abs(wrong - expected).max() > 1e-2


@pytest.mark.parametrize("k", [5, 3])  # GMI's/KEDMI's 5x5 (padding 2) and KEDMI's last 3x3 (padding 1)
def test_space_to_depth_equals_the_strided_conv_and_its_gradient(k):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(3, 16, 16, 4)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(k, k, 4, 6)), jnp.float32)
  b = jnp.asarray(rng.normal(size=6), jnp.float32)
  p = (k - 1) // 2
  with jax.default_matmul_precision("highest"):
    direct = lax.conv_general_dilated(x, w, (2, 2), ((p, p), (p, p)), dimension_numbers=("NHWC", "HWIO", "NHWC"))
    np.testing.assert_allclose(
      gan_lib.conv_s2_space_to_depth(x, w, b), direct + b[None, None, None, :], rtol=1e-5, atol=1e-4
    )
    g = lambda f: jax.grad(lambda x, w: jnp.sum(jnp.tanh(f(x, w, b))), argnums=(0, 1))(x, w)
    for a, r in zip(g(gan_lib.conv_s2_space_to_depth), g(gan_lib.conv_s2_reference)):
      np.testing.assert_allclose(a, r, rtol=1e-4, atol=1e-4)


# 64 px (AT&T) compiles the 4-stage nets: the slow tier.
@pytest.mark.parametrize("stages, size", [(3, 32), pytest.param(4, 64, marks=pytest.mark.slow)])
def test_generator_and_critic_shapes_and_switchable_implementations(stages, size):
  cfg = GANConfig(z_dim=100, base_width=8, stages=stages, channels=3)
  z = jax.random.normal(jax.random.PRNGKey(0), (4, 100))
  gen = gan_lib.Generator(cfg)
  variables = gen.init(jax.random.PRNGKey(1), z)
  assert variables["params"]["up0"]["kernel"].shape == (8 * 2 ** (stages - 1), 8 * 2 ** (stages - 2), 5, 5)
  fast = jax.jit(lambda v, z: gen.apply(v, z))(variables, z)
  slow = gan_lib.Generator(dataclasses.replace(cfg, upsample="transpose")).apply(variables, z)
  assert fast.shape == (4, size, size, 3) and float(fast.min()) >= 0 and float(fast.max()) <= 1
  np.testing.assert_allclose(fast, slow, atol=2e-5)
  critic = gan_lib.Critic(base_width=8, stages=stages)
  d_vars = critic.init(jax.random.PRNGKey(2), fast)
  scores = critic.apply(d_vars, fast)
  direct = gan_lib.Critic(base_width=8, stages=stages, downsample="direct").apply(d_vars, fast)
  assert scores.shape == (4,)
  np.testing.assert_allclose(scores, direct, rtol=1e-4, atol=1e-4)


@pytest.mark.slow  # issue 14: the fast tier stays under 5 minutes; CI runs this in the slow tier
def test_gradient_penalty_matches_per_example_gradients():
  critic = gan_lib.Critic(base_width=4, stages=3)
  rng = np.random.default_rng(1)
  real = jnp.asarray(rng.uniform(size=(3, 32, 32, 1)), jnp.float32)
  fake = jnp.asarray(rng.uniform(size=(3, 32, 32, 1)), jnp.float32)
  params = critic.init(jax.random.PRNGKey(0), real)["params"]
  eps = jnp.asarray([0.1, 0.5, 0.9]).reshape(3, 1, 1, 1)
  x_hat = eps * real + (1 - eps) * fake
  norms = [np.linalg.norm(jax.grad(lambda x: critic.apply({"params": params}, x[None])[0])(x_hat[i])) for i in range(3)]
  expected = np.mean((np.array(norms) - 1.0) ** 2)
  assert float(gradient_penalty(critic, params, real, fake, eps)) == pytest.approx(expected, rel=1e-4)


def _tiny_splits(n=96):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (n, 32, 32, 1), dtype=np.uint8)
  split = ArraySplit(images, np.zeros(n, np.int32), np.zeros(n, np.int32))
  return Splits(split, split, split, 1, 1, "synthetic")


@pytest.mark.slow  # issue 14: the fast tier stays under 5 minutes; CI runs this in the slow tier
def test_gan_training_resumes_exactly_and_loads(tmp_path):
  from jaxmi.data import DataConfig

  cfg = GANExperimentConfig(
    name="g",
    data=DataConfig(image_size=32, channels=1),
    gan=GANConfig(base_width=4, stages=3, channels=1),
    train=GANTrainConfig(epochs=2, batch_size=8, n_critic=2, log_every=2, checkpoint_every=4),
  )
  splits = _tiny_splits()
  train_gan(cfg, tmp_path / "full", splits=splits, progress=False)
  with pytest.raises(Interrupted):
    train_gan(cfg, tmp_path / "resumed", splits=splits, progress=False, stop_at_step=5)
  assert train_gan(cfg, tmp_path / "resumed", splits=splits, progress=False)["resumed_from_step"] == 5
  a, b = load_gan(tmp_path / "full"), load_gan(tmp_path / "resumed")
  for x, y in zip(jax.tree.leaves((a.g_variables, a.d_variables)), jax.tree.leaves((b.g_variables, b.d_variables))):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  assert (tmp_path / "full" / "samples" / "epoch_001.png").exists() and (tmp_path / "full" / "samples.png").exists()
