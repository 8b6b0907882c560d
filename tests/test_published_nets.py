"""The published architectures (issue 15) inside jaxmi's machinery, not only against PyTorch: attacked by the
engine in bfloat16 in one compilation, explained by gradients and Grad-CAM, split into TL-DMI's layer groups,
and giving BiDO a hidden code per block. Random weights: these tests check what the code computes with them."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmi.attacks import AttackModels, ExecutionConfig, InversionConfig
from jaxmi.attacks.gmi import build_gmi
from jaxmi.defenses.tl_dmi import layer_groups
from jaxmi.explain import make_explainer
from jaxmi.nets import ModelConfig, build_classifier
from jaxmi.nets.gan import GANConfig, build_gan

IMAGE = (64, 64, 3)
CLASSES = 10


def random_variables(module, key, shape):
  """Variables of ``module`` drawn directly from their shapes: N(0, 0.05) weights, unit BN statistics.

  Faster than ``init`` (EfficientNet's initialisers take ~40 s to compile on CPU) and just as good here."""
  abstract = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), jnp.zeros((2, *shape)), train=False))
  leaves, treedef = jax.tree_util.tree_flatten_with_path(abstract)
  keys = jax.random.split(key, len(leaves))

  def draw(path, leaf, k):
    name = str(path[-1])
    if "var" in name:
      return jnp.ones(leaf.shape, leaf.dtype)
    if "mean" in name:
      return jnp.zeros(leaf.shape, leaf.dtype)
    if "scale" in name:
      return 1.0 + 0.05 * jax.random.normal(k, leaf.shape, leaf.dtype)
    return 0.05 * jax.random.normal(k, leaf.shape, leaf.dtype)

  tree = jax.tree_util.tree_unflatten(treedef, [draw(p, leaf, k) for (p, leaf), k in zip(leaves, keys)])
  return {"params": tree["params"], "batch_stats": tree.get("batch_stats", {})}


# ir152_64 is facenet64's code at another depth (jaxmi.nets.irse); three full-width networks in one engine
# compilation each take 30-60 s on 2 cores, hence the slow tier.
@pytest.mark.slow
@pytest.mark.parametrize("arch", ["vgg16", "facenet64", "efficientnet_b0"])
def test_a_published_target_is_attacked_explained_and_split_into_layers(arch):
  target = build_classifier(ModelConfig(arch=arch), CLASSES)
  t_vars = random_variables(target, jax.random.PRNGKey(1), IMAGE)
  images = jax.random.uniform(jax.random.PRNGKey(2), (2, *IMAGE))

  out = target.apply(t_vars, images, train=False)
  assert out.logits.shape == (2, CLASSES) and out.features.ndim == 2
  # BiDO's hidden codes: one per block, each finite and batch-first.
  assert len(out.hidden) >= 3 and all(h.shape[0] == 2 and bool(jnp.all(jnp.isfinite(h))) for h in out.hidden)

  for method in ("grad", "gradcam"):
    e = make_explainer(method, target)(t_vars, images)
    e = np.asarray(e[0] if isinstance(e, tuple) else e)
    # Gradients at the input's size; Grad-CAM at its layer's (4x4 on these 64-px networks).
    assert e.shape[0] == 2 and min(e.shape[1:3]) >= 2 and np.all(np.isfinite(e)) and np.abs(e).max() > 0, method

  groups = layer_groups(target, IMAGE)
  assert len(groups) >= 3 and "head" in groups[-1]  # TL-DMI freezes a prefix of these, the head group last

  # GMI on it with a 64-px RGB generator, networks in bfloat16: one compilation, finite, and the gradient reaches z
  # (the latents move away from where a zero learning rate leaves them). "The loss falls" was asserted here until
  # it failed once in CI: these random 1000-class nets give losses of ~1e14 that four bfloat16 steps of clipped
  # Nesterov move up and down by less than a percent, depending on the summation order of two CPU devices.
  gan = GANConfig(z_dim=16, base_width=4, stages=4, channels=3)
  generator, critic = build_gan(gan)
  variables = {
    "generator": jax.jit(generator.init)(jax.random.PRNGKey(3), jnp.zeros((2, gan.z_dim))),
    "critic": jax.jit(critic.init)(jax.random.PRNGKey(4), jnp.zeros((2, *IMAGE))),
    "targets": (t_vars,),
  }
  models = AttackModels(generator, critic, (target,), (IMAGE,))
  cfg = InversionConfig(steps=4, restarts=2, learning_rate=0.05)
  inverter = build_gmi(models, gan.z_dim, cfg, ExecutionConfig(compute_dtype="bfloat16", log_every=2))
  result = inverter.run(variables, [0, 3])
  assert result.stats.compilations == 1
  assert result.images.shape == (2, 2, *IMAGE) and np.all(np.isfinite(result.images))
  assert np.all(np.isfinite(result.loss_curve))
  unmoved = build_gmi(
    models,
    gan.z_dim,
    dataclasses.replace(cfg, learning_rate=0.0),
    ExecutionConfig(compute_dtype="bfloat16", log_every=2),
  ).run(variables, [0, 3])
  assert np.abs(result.latents - unmoved.latents).max() > 0  # 2e-4 to 0.05 measured; exactly 0 without a gradient
