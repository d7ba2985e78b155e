"""Axis (C): the time weighting w(t) of the unified loss.

Each weighting is defined in the space where its paper defines it (`space`):
for example min-SNR-gamma is a weight on the eps-MSE and SD3's cosmap a weight
on the velocity MSE. The loss applies it to any trained prediction kind k by
the exact change of space

  w_k(t) = w_space(t) * (det_space(t) / det_k(t))^2,

(`predictions.eps_error_scale`), so "min-SNR with v-prediction" is the same
objective as "min-SNR with eps-prediction", as in Hang et al. (2023).
`space='target'` means the weight multiplies the chosen kind's own MSE.

All weightings are functions of log-SNR lambda(t) (or, for SD3's, of sigma / t).
"""

import abc
import dataclasses
import math

import jax.numpy as jnp

from visgen import registry
from visgen.objectives import predictions

WEIGHTINGS = registry.Registry('weighting')


@dataclasses.dataclass(frozen=True)
class Weighting(abc.ABC):
  """A weighting `fn(t, path)` defined in `space` (a kind or 'target')."""

  name: str
  space: str

  @abc.abstractmethod
  def raw(self, *, t, path):
    """The weight in `space` at times t."""

  def __call__(self, *, t, path, kind: str):
    """The weight applied to the MSE of prediction `kind`."""
    w = self.raw(t=t, path=path)
    if self.space in ('target', kind):
      return w
    ratio = predictions.eps_error_scale(
        self.space, t=t, path=path) / predictions.eps_error_scale(
            kind, t=t, path=path)
    return w * ratio**2


def _snr(t, path):
  return jnp.exp(path.logsnr(t))


@WEIGHTINGS.register('uniform')
@dataclasses.dataclass(frozen=True)
class Uniform(Weighting):
  """w = 1 on the trained kind's own MSE (DDPM's L_simple, rectified flow)."""

  name: str = 'uniform'
  space: str = 'target'

  def raw(self, *, t, path):
    return jnp.ones_like(jnp.asarray(t, jnp.float32))


@WEIGHTINGS.register('snr')
@dataclasses.dataclass(frozen=True)
class SNR(Weighting):
  """w = SNR on the eps-MSE, i.e. the plain x0-MSE."""

  name: str = 'snr'
  space: str = 'eps'

  def raw(self, *, t, path):
    return _snr(t, path)


@WEIGHTINGS.register('truncated_snr')
@dataclasses.dataclass(frozen=True)
class TruncatedSNR(Weighting):
  """Salimans & Ho (2022): max(||x0 err||^2, ||eps err||^2) = max(SNR, 1)."""

  name: str = 'truncated_snr'
  space: str = 'eps'

  def raw(self, *, t, path):
    return jnp.maximum(_snr(t, path), 1.0)


@WEIGHTINGS.register('min_snr')
@dataclasses.dataclass(frozen=True)
class MinSNR(Weighting):
  """Hang et al. (2023): min(SNR, gamma) / SNR on the eps-MSE."""

  gamma: float = 5.0
  name: str = 'min_snr'
  space: str = 'eps'

  def raw(self, *, t, path):
    snr = _snr(t, path)
    return jnp.minimum(snr, self.gamma) / snr


@WEIGHTINGS.register('edm')
@dataclasses.dataclass(frozen=True)
class EDMWeight(Weighting):
  """EDM's lambda(s) = (s^2 + s_d^2) / (s s_d)^2 on the x0 (D) MSE.

  With the 'edm' prediction kind this is exactly 1 on the F-MSE.
  """

  name: str = 'edm'
  space: str = 'x0'

  def raw(self, *, t, path):
    s = path.sigma(t) / path.alpha(t)
    sd = path.sigma_data
    return (s**2 + sd**2) / (s * sd) ** 2


@WEIGHTINGS.register('likelihood')
@dataclasses.dataclass(frozen=True)
class Likelihood(Weighting):
  """-lambda'(t) / 2 on the eps-MSE (Song et al. 2021; Kingma et al. 2021).

  With t ~ U[t_min, t_max] and the loss multiplied by (t_max - t_min) and the
  dimension, this is the diffusion term of the negative ELBO in nats, so the
  loss bounds the NLL (plus the prior and reconstruction terms).
  """

  name: str = 'likelihood'
  space: str = 'eps'

  def raw(self, *, t, path):
    return -0.5 * path.d_logsnr(t)


@WEIGHTINGS.register('p2')
@dataclasses.dataclass(frozen=True)
class P2(Weighting):
  """Choi et al. (2022): 1 / (k + SNR)^gamma on the eps-MSE."""

  gamma: float = 1.0
  k: float = 1.0
  name: str = 'p2'
  space: str = 'eps'

  def raw(self, *, t, path):
    return (self.k + _snr(t, path)) ** (-self.gamma)


@WEIGHTINGS.register('sigma_sqrt')
@dataclasses.dataclass(frozen=True)
class SigmaSqrt(Weighting):
  """SD3's 'sigma_sqrt': sigma(t)^-2 on the velocity MSE."""

  name: str = 'sigma_sqrt'
  space: str = 'velocity'

  def raw(self, *, t, path):
    return path.sigma(t) ** -2.0


@WEIGHTINGS.register('cosmap')
@dataclasses.dataclass(frozen=True)
class CosMap(Weighting):
  """SD3's 'cosmap': 2 / (pi (1 - 2t + 2t^2)) on the velocity MSE."""

  name: str = 'cosmap'
  space: str = 'velocity'

  def raw(self, *, t, path):
    t = jnp.asarray(t, jnp.float32)
    return 2.0 / (math.pi * (1.0 - 2.0 * t + 2.0 * t**2))


def get_weighting(name, **kwargs) -> Weighting:
  """Builds the weighting `name` (a Weighting instance passes through)."""
  if isinstance(name, Weighting):
    return name
  return WEIGHTINGS.build(name, **kwargs)
