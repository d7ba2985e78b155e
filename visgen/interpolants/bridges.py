"""Diffusion bridges (DDBM, Zhou et al. 2023) as paths with an endpoint term.

A bridge pins x at t = 1 to the source image y (gamma(1) = 1, alpha(1) = 0,
sigma(1) = 0) and at t = 0 to the data x0. Conditioned on y, x_t - gamma(t) y is
an ordinary path for x0 ~ p(x0 | y), so every prediction kind and the exact
mixture denoiser carry over after subtracting gamma(t) y.
"""

import dataclasses

import jax.numpy as jnp

from visgen.interpolants import base
from visgen.interpolants import paths


@dataclasses.dataclass(frozen=True)
class VEBridgePath(base.Path):
  """DDBM's VE bridge with sigma_base(t) = sigma_max * t (DDBM's time is
  sigma_base). With r = sigma_base^2 / sigma_max^2 = t^2:
  x_t = (1 - t^2) x0 + t^2 y + sigma_max t sqrt(1 - t^2) eps.
  """

  sigma_max: float = 80.0
  t_min: float = 1e-4
  t_max: float = 1.0 - 1e-4

  name = 'bridge_ve'
  is_bridge = True

  def alpha(self, t):
    return 1.0 - jnp.asarray(t, jnp.float32) ** 2

  def gamma(self, t):
    return jnp.asarray(t, jnp.float32) ** 2

  def sigma(self, t):
    t = jnp.asarray(t, jnp.float32)
    return self.sigma_max * t * jnp.sqrt(1.0 - t**2)


@dataclasses.dataclass(frozen=True)
class VPBridgePath(base.Path):
  """DDBM's VP bridge over the VP SDE (beta_min, beta_d = beta_max - beta_min).

  With the base path's alpha_b, sigma_b and r(t) = SNR_b(1) / SNR_b(t):
  alpha = alpha_b (1 - r), gamma = alpha_b / alpha_b(1) * r,
  sigma = sigma_b sqrt(1 - r).
  """

  beta_min: float = 0.1
  beta_max: float = 2.1  # DDBM's beta_d = 2
  t_min: float = 1e-4
  t_max: float = 1.0 - 1e-4

  name = 'bridge_vp'
  is_bridge = True

  def _base(self):
    return paths.VPPath(beta_min=self.beta_min, beta_max=self.beta_max)

  def _ratio(self, t):
    b = self._base()
    return jnp.exp(b.logsnr(jnp.float32(1.0)) - b.logsnr(t))

  def alpha(self, t):
    return self._base().alpha(t) * (1.0 - self._ratio(t))

  def gamma(self, t):
    b = self._base()
    return b.alpha(t) / b.alpha(jnp.float32(1.0)) * self._ratio(t)

  def sigma(self, t):
    return self._base().sigma(t) * jnp.sqrt(1.0 - self._ratio(t))
