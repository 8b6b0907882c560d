"""KEDMI (Chen et al., ICCV 2021, "Knowledge-Enriched Distributional Model Inversion").

Per identity, a Gaussian over the latent space, N(mu, exp(logvar)) with mu = 0, logvar = 1 at
the start, is learned by reparameterisation:

  min_{mu, logvar}  E_eps [ Prior(G(z)) + lambda * CE(T(G(z)), y) ],   z = mu + eps * exp(logvar / 2)

with Adam(0.02), lambda = 100, 2400 steps, one distribution per identity, and evaluation on 5
images drawn from each learned distribution (attacks.md section 3.2). The prior is the GAN's
realism score: with KEDMI's inversion-specific GAN (``train-gan --kind kedmi``) it is
-log P(real) = softplus(LSE(l)) - LSE(l); with GMI's WGAN critic it is -D(G(z)).

With a plain WGAN prior (``train-gan --kind gmi``) the attack runs as an ablation and says so:
``run_attack`` logs a warning naming the prior it uses.

``clip_z`` (default 0 in KEDMI's configs) clamps each sampled z to [-c, c] before the
generator, as LOMMA's KEDMI path does. LOMMA on top is configuration, as for GMI.

The clamp collapses the learned distributions (KEDMI+LOMMA on Fashion-MNIST: all 5 draws the same
image). A clamped coordinate passes no gradient to mu or logvar, and at the start (mu 0, std
e^0.5) about half of every draw's coordinates are already clamped; Adam moves mu by ~lr per step
whatever the gradient's size, so within a few hundred steps most mu_d sit beyond the clamp with
logvar shrunk, and every draw becomes the same corner sign(mu) of [-c, c]^d. Measured on random
toy networks (tests/test_kedmi.py's ``toy_kedmi``, 600 steps, Adam 0.02): with ``clip_z=1`` 77-80%
of the draws' coordinates sit at +-1, in 55-61% of (identity, dimension) pairs all 5 draws are
equal and the images differ across draws by a pixel std of 0.001 (0.047 without the clamp), with
the CE and the logit loss alike: the clamp, not LOMMA's logit loss, is the cause. It is the
reference's behaviour (attacks.md section 4.2) and stays LOMMA's KEDMI default; ``run_attack``
warns when all draws coincide in over half the (identity, dimension) pairs. For diverse draws use
``clip_z=0`` (KEDMI's own setting).
"""

from __future__ import annotations

from jaxmi.attacks.engine import AttackModels, DistributionalLatent, InversionConfig, Inverter
from jaxmi.attacks.gmi import loss_terms


def build_kedmi(models: AttackModels, z_dim: int, cfg: InversionConfig) -> Inverter:
  latent = DistributionalLatent(z_dim, clip=cfg.clip_z, init_logvar=cfg.init_logvar, draws=cfg.eval_draws)
  return Inverter(models, latent, loss_terms(cfg), cfg)
