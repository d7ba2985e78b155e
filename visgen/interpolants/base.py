"""The path abstraction shared by diffusion, flow matching and bridges.

Convention (used everywhere in visgen): `t` lies in [0, 1]; `t = 0` is data and
`t = 1` is the prior. A path defines

  x_t = alpha(t) * x0 + sigma(t) * eps + gamma(t) * y,

where `eps ~ N(0, I)` and `y` is the source image of a bridge (`gamma = 0` for
ordinary diffusion / flow paths). The log signal-to-noise ratio is
`logsnr(t) = log(alpha(t)^2 / sigma(t)^2)`; it decreases in `t`, and samplers
build their time grids through `logsnr` and its inverse `t_from_logsnr`.

Other codebases' conventions map onto this one as follows: SiT and Meta's
flow_matching put data at t = 1 and noise at t = 0, so their `t` is our
`1 - t` and their velocity is minus ours; DDPM's discrete step `i` in
{0, ..., T - 1} is our `t = (i + 1) / T`; EDM's and DDBM's `sigma` (their
"time")
is our `sigma(t)` evaluated at the `t` that gives it (`t_from_sigma`).
"""

import abc
import dataclasses
import math

import jax
import jax.numpy as jnp


def bcast(t, x):
  """Reshapes a per-example array `t_B` so that it broadcasts against `x`."""
  t = jnp.asarray(t)
  return t.reshape(t.shape + (1,) * (jnp.ndim(x) - t.ndim))


def _bisect_decreasing(fn, target, lo, hi, iters=60):
  """Solves fn(t) = target for a decreasing fn on [lo, hi], elementwise."""
  target = jnp.asarray(target, jnp.float32)
  lo = jnp.full_like(target, lo)
  hi = jnp.full_like(target, hi)

  def body(_, bounds):
    lo, hi = bounds
    mid = 0.5 * (lo + hi)
    go_right = fn(mid) > target  # fn decreasing: value too high -> move right
    return jnp.where(go_right, mid, lo), jnp.where(go_right, hi, mid)

  lo, hi = jax.lax.fori_loop(0, iters, body, (lo, hi))
  return 0.5 * (lo + hi)


@dataclasses.dataclass(frozen=True)
class Path(abc.ABC):
  """Base class: subclasses implement `alpha` and `sigma` (and may override the
  derivatives, `gamma`, `t_from_logsnr` with closed forms).

  Attributes:
    t_min: smallest time used for training and sampling (avoids logsnr = inf).
    t_max: largest time; the prior is taken at `t_max`.
    sigma_data: data standard deviation assumed by EDM preconditioning.
  """

  t_min: float = 1e-5
  t_max: float = 1.0
  sigma_data: float = 0.5

  name = 'path'
  is_bridge = False
  # Variance-exploding paths (alpha == 1) have a prior that depends on t_max.
  variance_preserving = False

  # ---- coefficients -------------------------------------------------------
  @abc.abstractmethod
  def alpha(self, t):
    """Signal coefficient alpha(t)."""

  @abc.abstractmethod
  def sigma(self, t):
    """Noise coefficient sigma(t)."""

  def gamma(self, t):
    return jnp.zeros_like(jnp.asarray(t, jnp.float32))

  def _deriv(self, fn, t):
    t = jnp.asarray(t, jnp.float32)
    return jax.jvp(fn, (t,), (jnp.ones_like(t),))[1]

  def d_alpha(self, t):
    return self._deriv(self.alpha, t)

  def d_sigma(self, t):
    return self._deriv(self.sigma, t)

  def d_gamma(self, t):
    return self._deriv(self.gamma, t)

  def logsnr(self, t):
    return 2.0 * (jnp.log(self.alpha(t)) - jnp.log(self.sigma(t)))

  def d_logsnr(self, t):
    return self._deriv(self.logsnr, t)

  def t_from_logsnr(self, logsnr):
    """Inverse of `logsnr` (bisection unless a subclass has a closed form)."""
    return _bisect_decreasing(self.logsnr, logsnr, 0.0, 1.0)

  def t_from_sigma(self, sigma_ve):
    """The `t` whose noise-to-signal ratio `sigma/alpha` equals `sigma_ve`.

    This is the time of EDM's and NCSN's sigma for any path.
    """
    return self.t_from_logsnr(-2.0 * jnp.log(jnp.asarray(sigma_ve)))

  # ---- sampling -----------------------------------------------------------
  def sample_xt(self, *, x0, eps, t, y=None):
    x_t = bcast(self.alpha(t), x0) * x0 + bcast(self.sigma(t), x0) * eps
    if self.is_bridge:
      if y is None:
        raise ValueError(
            f'Path {self.name!r} is a bridge: pass the source image `y` '
            '(e.g. the degraded or other-domain image of each pair).')
      x_t = x_t + bcast(self.gamma(t), x0) * y
    return x_t

  def prior_std(self):
    # A Python float: the path's constants are static, also under jit.
    with jax.ensure_compile_time_eval():
      return float(self.sigma(jnp.float32(self.t_max)))

  def prior_mean(self, y=None, shape=None):
    if self.is_bridge:
      if y is None:
        raise ValueError(f'Bridge path {self.name!r} needs the source `y`.')
      return self.gamma(jnp.float32(self.t_max)) * y
    return jnp.zeros(shape, jnp.float32)

  def prior_sample(self, key, shape, y=None):
    """Samples x at `t_max`: N(gamma * y, sigma(t_max)^2 I).

    The data term alpha(t_max) * x0 is neglected, as in every reference code;
    it is exactly zero for rectified flow, GVP and bridges and below 0.007 for
    the standard VP schedules.
    """
    mean = self.prior_mean(y, shape)
    return mean + self.prior_std() * jax.random.normal(key, shape)

  def prior_logp(self, x, y=None):
    """Log-density of the prior, summed over all but the first axis."""
    mean = self.prior_mean(y, x.shape)
    std = self.prior_std()
    d = math.prod(x.shape[1:])
    z = ((x - mean) / std).reshape(x.shape[0], -1)
    return -0.5 * jnp.sum(z**2, -1) - d * (math.log(std) + 0.5 * math.log(
        2 * math.pi))
