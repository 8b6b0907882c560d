"""KEDMI (Chen et al., ICCV 2021, "Knowledge-Enriched Distributional Model Inversion").

Per identity, a Gaussian over the latent space, N(mu, exp(logvar)) with mu = 0, logvar = 1 at
the start, is learned by reparameterisation:

  min_{mu, logvar}  E_eps [ Prior(G(z)) + lambda * CE(T(G(z)), y) ],   z = mu + eps * exp(logvar / 2)

with Adam(0.02), lambda = 100, 2400 steps, one distribution per identity, and evaluation on 5
images drawn from each learned distribution (attacks.md section 3.2). The prior is the GAN's
realism score: with KEDMI's inversion-specific GAN (``train-gan --kind kedmi``) it is
-log P(real) = softplus(LSE(l)) - LSE(l); with GMI's WGAN critic it is -D(G(z)).

``clip_z`` (default 0 in KEDMI's configs) clamps each sampled z to [-c, c] before the
generator, as LOMMA's KEDMI path does. LOMMA on top is configuration, as for GMI.
"""

from __future__ import annotations

from jaxmi.attacks.engine import AttackModels, DistributionalLatent, InversionConfig, Inverter
from jaxmi.attacks.gmi import loss_terms


def build_kedmi(models: AttackModels, z_dim: int, cfg: InversionConfig) -> Inverter:
  latent = DistributionalLatent(z_dim, clip=cfg.clip_z, init_logvar=cfg.init_logvar, draws=cfg.eval_draws)
  return Inverter(models, latent, loss_terms(cfg), cfg)
