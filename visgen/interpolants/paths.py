"""Diffusion and flow paths: DDPM (discrete tables), Score-SDE VP / sub-VP,
VE / NCSN, EDM, rectified flow, GVP and a user-defined stochastic interpolant.

Every path is a frozen dataclass (hashable, so it can be a static argument of
`jax.jit`) with closed-form coefficients; see `base.Path` for the conventions.
"""

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from visgen.interpolants import base


# ---------------------------------------------------------------------------
# Variance preserving family.
# ---------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class VPPath(base.Path):
  """Score-SDE's VP SDE, beta(s) = beta_min + s (beta_max - beta_min).

  log alpha(t) = -t^2 (beta_max - beta_min) / 4 - t beta_min / 2,
  sigma(t) = sqrt(1 - alpha(t)^2).
  """

  beta_min: float = 0.1
  beta_max: float = 20.0
  t_min: float = 1e-5

  name = 'vp'
  variance_preserving = True

  def _log_alpha(self, t):
    t = jnp.asarray(t, jnp.float32)
    return (-0.25 * t**2 * (self.beta_max - self.beta_min)
            - 0.5 * t * self.beta_min)

  def alpha(self, t):
    return jnp.exp(self._log_alpha(t))

  def sigma(self, t):
    return jnp.sqrt(-jnp.expm1(2.0 * self._log_alpha(t)))

  def beta(self, t):
    return self.beta_min + t * (self.beta_max - self.beta_min)

  def logsnr(self, t):
    # log(alpha^2 / (1 - alpha^2)) = -log(expm1(-2 log alpha)), stably.
    return -jnp.log(jnp.expm1(-2.0 * self._log_alpha(t)))

  def t_from_logsnr(self, logsnr):
    # -2 log alpha = log(1 + exp(-logsnr)) = b t^2 / 2 + a t; solve for t.
    c = jax.nn.softplus(-jnp.asarray(logsnr, jnp.float32))
    a, b = self.beta_min, self.beta_max - self.beta_min
    return (jnp.sqrt(a**2 + 2.0 * b * c) - a) / b


@dataclasses.dataclass(frozen=True)
class SubVPPath(VPPath):
  """Score-SDE's sub-VP SDE: alpha as VP, sigma(t) = 1 - alpha(t)^2."""

  name = 'subvp'
  variance_preserving = False

  def sigma(self, t):
    return -jnp.expm1(2.0 * self._log_alpha(t))

  def logsnr(self, t):
    return 2.0 * (self._log_alpha(t) - jnp.log(self.sigma(t)))

  def t_from_logsnr(self, logsnr):
    return base._bisect_decreasing(self.logsnr, logsnr, 0.0, 1.0)


def ddpm_betas(schedule: str, num_timesteps: int = 1000, *,
               beta_start: float = 1e-4, beta_end: float = 0.02,
               cosine_s: float = 0.008) -> np.ndarray:
  """The discrete beta tables of DDPM (linear) and improved DDPM (cosine).

  The linear schedule's `beta_start` / `beta_end` are DDPM's values for
  T = 1000 steps; as in ADM / improved DDPM (`get_named_beta_schedule`) both
  are multiplied by 1000 / T, so that every T gives about the same
  alpha_bar at the last step (~4e-5 at T = 1000, ~2e-5 at T = 100) and the
  N(0, I) prior stays right. Without the rescale T = 100 would end at
  alpha_bar = 0.36.
  """
  if num_timesteps < 1:
    raise ValueError(f'num_timesteps must be >= 1, got {num_timesteps}.')
  if schedule == 'linear':
    scale = 1000.0 / num_timesteps
    if scale * beta_end >= 1.0:
      raise ValueError(
          f'The linear schedule rescaled to T = {num_timesteps} steps has '
          f'beta_end = {scale * beta_end:.3g} >= 1; use num_timesteps > '
          f'{int(1000 * beta_end)} or a smaller beta_end.')
    return np.linspace(scale * beta_start, scale * beta_end, num_timesteps,
                       dtype=np.float64)
  if schedule == 'cosine':
    f = lambda s: np.cos((s + cosine_s) / (1 + cosine_s) * np.pi / 2) ** 2
    i = np.arange(num_timesteps, dtype=np.float64)
    return np.minimum(1 - f((i + 1) / num_timesteps) / f(i / num_timesteps),
                      0.999)
  raise ValueError(f'Unknown DDPM schedule {schedule!r}: linear, cosine.')


@dataclasses.dataclass(frozen=True)
class DiscreteVPPath(base.Path):
  """A discrete DDPM schedule as a continuous-time VP path.

  Discrete step i (0-based, T steps) is t = (i + 1) / T, and t = 0 is clean data
  (alpha_bar = 1). Between grid points log(alpha_bar) is interpolated linearly,
  so alpha(t)^2 equals the discrete alpha-bar table exactly at the grid points.
  `beta_start` / `beta_end` are the T = 1000 values, rescaled by 1000 / T
  (see `ddpm_betas`); `t_min` defaults to the first step, 1 / T.
  """

  schedule: str = 'linear'
  num_timesteps: int = 1000
  beta_start: float = 1e-4
  beta_end: float = 0.02
  cosine_s: float = 0.008
  t_min: float | None = None  # None: the first DDPM step, t = 1 / T

  variance_preserving = True

  def __post_init__(self):
    if self.t_min is None:
      # A frozen dataclass: set the derived default once, at construction.
      object.__setattr__(self, 't_min', 1.0 / self.num_timesteps)

  @property
  def name(self):
    return f'ddpm_{self.schedule}'

  def betas(self) -> np.ndarray:
    return ddpm_betas(self.schedule, self.num_timesteps,
                      beta_start=self.beta_start, beta_end=self.beta_end,
                      cosine_s=self.cosine_s)

  def alpha_bars(self) -> np.ndarray:
    """The discrete table alpha_bar_i, i = 0..T-1 (float64)."""
    return np.cumprod(1.0 - self.betas())

  def _grid(self):
    log_ab = np.concatenate([[0.0], np.log(self.alpha_bars())])
    t = np.arange(self.num_timesteps + 1) / self.num_timesteps
    return jnp.asarray(t, jnp.float32), jnp.asarray(log_ab, jnp.float32)

  def _log_alpha_bar(self, t):
    grid_t, log_ab = self._grid()
    return jnp.interp(jnp.asarray(t, jnp.float32), grid_t, log_ab)

  def alpha(self, t):
    return jnp.exp(0.5 * self._log_alpha_bar(t))

  def sigma(self, t):
    return jnp.sqrt(-jnp.expm1(self._log_alpha_bar(t)))

  def logsnr(self, t):
    return -jnp.log(jnp.expm1(-self._log_alpha_bar(t)))

  def t_from_logsnr(self, logsnr):
    grid_t, log_ab = self._grid()
    grid_l = -jnp.log(jnp.expm1(-log_ab[1:]))  # decreasing in t
    # interp needs increasing abscissae: flip both.
    return jnp.interp(jnp.asarray(logsnr, jnp.float32), grid_l[::-1],
                      grid_t[1:][::-1])

  def timestep_index(self, t):
    """Nearest discrete step i for time t (inverse of t = (i + 1) / T)."""
    i = jnp.round(jnp.asarray(t) * self.num_timesteps) - 1
    return jnp.clip(i, 0, self.num_timesteps - 1).astype(jnp.int32)


# ---------------------------------------------------------------------------
# Variance exploding family.
# ---------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class VEPath(base.Path):
  """Score-SDE's VE SDE / NCSN: alpha = 1, sigma geometric in t."""

  sigma_min: float = 0.01
  sigma_max: float = 50.0
  t_min: float = 0.0

  name = 've'

  def alpha(self, t):
    return jnp.ones_like(jnp.asarray(t, jnp.float32))

  def sigma(self, t):
    t = jnp.asarray(t, jnp.float32)
    return self.sigma_min * (self.sigma_max / self.sigma_min) ** t

  def d_sigma(self, t):
    return self.sigma(t) * np.log(self.sigma_max / self.sigma_min)

  def logsnr(self, t):
    return -2.0 * jnp.log(self.sigma(t))

  def t_from_logsnr(self, logsnr):
    log_s = -0.5 * jnp.asarray(logsnr, jnp.float32)
    return (log_s - np.log(self.sigma_min)) / np.log(
        self.sigma_max / self.sigma_min)

  def ncsn_sigmas(self, num_levels: int = 10) -> jax.Array:
    """NCSN's geometric noise levels, largest first (sigma_1 > ... >
    sigma_L)."""
    return self.sigma(jnp.linspace(1.0, 0.0, num_levels))


@dataclasses.dataclass(frozen=True)
class EDMPath(base.Path):
  """EDM (Karras et al. 2022): alpha = 1 with sigma following the rho schedule.

  sigma(t) = (s_min^(1/rho) + t (s_max^(1/rho) - s_min^(1/rho)))^rho, so a
  uniform grid in t is EDM's sampling schedule and sigma(0) = sigma_min.
  """

  sigma_min: float = 0.002
  sigma_max: float = 80.0
  rho: float = 7.0
  sigma_data: float = 0.5
  t_min: float = 0.0

  name = 'edm'

  def alpha(self, t):
    return jnp.ones_like(jnp.asarray(t, jnp.float32))

  def _ends(self):
    return self.sigma_min ** (1 / self.rho), self.sigma_max ** (1 / self.rho)

  def sigma(self, t):
    lo, hi = self._ends()
    return (lo + jnp.asarray(t, jnp.float32) * (hi - lo)) ** self.rho

  def d_sigma(self, t):
    lo, hi = self._ends()
    return self.rho * (lo + jnp.asarray(t, jnp.float32) * (hi - lo)) ** (
        self.rho - 1) * (hi - lo)

  def logsnr(self, t):
    return -2.0 * jnp.log(self.sigma(t))

  def t_from_logsnr(self, logsnr):
    lo, hi = self._ends()
    s = jnp.exp(-0.5 * jnp.asarray(logsnr, jnp.float32))
    return (s ** (1 / self.rho) - lo) / (hi - lo)


# ---------------------------------------------------------------------------
# Flows and interpolants.
# ---------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class LinearPath(base.Path):
  """Rectified flow / conditional OT flow matching: alpha = 1 - t, sigma = t."""

  t_min: float = 1e-5
  t_max: float = 1.0

  name = 'linear'

  def alpha(self, t):
    return 1.0 - jnp.asarray(t, jnp.float32)

  def sigma(self, t):
    return jnp.asarray(t, jnp.float32)

  def d_alpha(self, t):
    return -jnp.ones_like(jnp.asarray(t, jnp.float32))

  def d_sigma(self, t):
    return jnp.ones_like(jnp.asarray(t, jnp.float32))

  def t_from_logsnr(self, logsnr):
    return jax.nn.sigmoid(-0.5 * jnp.asarray(logsnr, jnp.float32))


@dataclasses.dataclass(frozen=True)
class GVPPath(base.Path):
  """SiT's generalised VP interpolant: alpha = cos(pi t / 2), sigma = sin."""

  t_min: float = 1e-5
  t_max: float = 1.0

  name = 'gvp'
  variance_preserving = True

  def alpha(self, t):
    # In float32 cos(pi / 2) = -4.4e-8: clamp so that logsnr(1) = -inf, not NaN.
    return jnp.maximum(jnp.cos(0.5 * jnp.pi * jnp.asarray(t, jnp.float32)), 0.0)

  def sigma(self, t):
    return jnp.sin(0.5 * jnp.pi * jnp.asarray(t, jnp.float32))

  def d_alpha(self, t):
    return -0.5 * jnp.pi * self.sigma(t)

  def d_sigma(self, t):
    return 0.5 * jnp.pi * self.alpha(t)

  def t_from_logsnr(self, logsnr):
    return (2 / jnp.pi) * jnp.arctan(jnp.exp(-0.5 * jnp.asarray(logsnr)))


@dataclasses.dataclass(frozen=True)
class InterpolantPath(base.Path):
  """A stochastic interpolant with user-given alpha(t) and sigma(t).

  The functions must be JAX-traceable, with alpha decreasing from ~1 and sigma
  increasing from ~0 so that logsnr is monotone (its inverse is found by
  bisection). Derivatives come from automatic differentiation.
  """

  alpha_fn: Callable[[jax.Array], jax.Array] = None
  sigma_fn: Callable[[jax.Array], jax.Array] = None
  t_min: float = 1e-5

  name = 'interpolant'

  def __post_init__(self):
    if not (callable(self.alpha_fn) and callable(self.sigma_fn)):
      raise ValueError(
          "Path 'interpolant' needs alpha_fn and sigma_fn callables, e.g. "
          "get_path('interpolant', alpha_fn=lambda t: 1 - t, "
          'sigma_fn=lambda t: t).')

  def alpha(self, t):
    return self.alpha_fn(jnp.asarray(t, jnp.float32))

  def sigma(self, t):
    return self.sigma_fn(jnp.asarray(t, jnp.float32))
