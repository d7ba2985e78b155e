"""Time grids for samplers: `make_grid(name, num_steps, *, path, **kw)`.

Every grid is a float32 array of `num_steps + 1` times, decreasing from
`t_max` (the prior) to `t_min` (closest to data), in visgen's convention
(t = 0 data). Grids are ordinary arrays, so a sampler jitted once accepts any
grid of the same length without recompiling. Grids defined through the noise
level go through the path's inverse maps:

| name        | spacing                                                      |
|-------------|--------------------------------------------------------------|
| uniform     | uniform in t                                                 |
| quadratic   | t = t_min + (t_max - t_min) u^2, u uniform (DDIM's quadratic)  |
| karras      | EDM's rho schedule in s = sigma / alpha (rho = 7)             |
| logsnr      | uniform in log-SNR (DPM-Solver's logSNR grid)                 |
| flow_shift  | SD3's shift: t' = s u / (1 + (s - 1) u), u uniform            |

The noise-level grids (karras, logsnr) span s = sigma / alpha in
[`sigma_min`, `sigma_max`], by default the path's own range clipped to EDM's
[0.002, 80] (rectified flow has s = inf at t = 1, VP has s = 152 there); the
end times themselves are always kept as the first and last points, so every
grid spans [t_min, t_max] and starts where the prior is sampled.
"""

import jax
import jax.numpy as jnp
import numpy as np

from visgen import registry

GRIDS = registry.Registry('time grid')
_S_RANGE = (0.002, 80.0)  # EDM's noise-level range, the default clip


def _ends(path, t_min, t_max):
  t_min = path.t_min if t_min is None else t_min
  t_max = path.t_max if t_max is None else t_max
  if not 0.0 <= t_min < t_max <= 1.0:
    raise ValueError(f'Need 0 <= t_min < t_max <= 1, got {t_min}, {t_max}.')
  return t_min, t_max


def _pin_ends(ts, t_min, t_max):
  return ts.at[0].set(t_max).at[-1].set(t_min)


@GRIDS.register('uniform')
def uniform(num_steps, *, path, t_min=None, t_max=None):
  t_min, t_max = _ends(path, t_min, t_max)
  return jnp.linspace(t_max, t_min, num_steps + 1, dtype=jnp.float32)


@GRIDS.register('quadratic')
def quadratic(num_steps, *, path, t_min=None, t_max=None):
  t_min, t_max = _ends(path, t_min, t_max)
  u = jnp.linspace(1.0, 0.0, num_steps + 1, dtype=jnp.float32)
  return _pin_ends(t_min + (t_max - t_min) * u**2, t_min, t_max)


def _s_range(path, t_min, t_max, sigma_min, sigma_max):
  """Default noise-level range: the path's s = sigma / alpha at its ends,
  clipped to EDM's range (non-finite ends, e.g. alpha = 0, take the clip)."""
  def s_at(t, fallback):
    with jax.ensure_compile_time_eval():
      s = float(np.exp(-0.5 * float(path.logsnr(jnp.float32(t)))))
    return s if np.isfinite(s) else fallback
  if sigma_max is None:
    sigma_max = min(s_at(t_max, _S_RANGE[1]), _S_RANGE[1])
  if sigma_min is None:
    sigma_min = max(s_at(t_min, _S_RANGE[0]), _S_RANGE[0])
  if not 0 < sigma_min < sigma_max:
    raise ValueError(f'Need 0 < sigma_min < sigma_max, got {sigma_min}, '
                     f'{sigma_max}.')
  return sigma_min, sigma_max


@GRIDS.register('karras')
def karras(num_steps, *, path, t_min=None, t_max=None, rho=7.0,
           sigma_min=None, sigma_max=None):
  """EDM's grid: s_i^(1/rho) uniform between s_max^(1/rho) and s_min^(1/rho)
  with s = sigma / alpha (EDM's sigma for every path)."""
  t_min, t_max = _ends(path, t_min, t_max)
  sigma_min, sigma_max = _s_range(path, t_min, t_max, sigma_min, sigma_max)
  u = jnp.linspace(0.0, 1.0, num_steps + 1, dtype=jnp.float32)
  lo, hi = sigma_min ** (1.0 / rho), sigma_max ** (1.0 / rho)
  s = (hi + u * (lo - hi)) ** rho
  ts = jnp.clip(path.t_from_sigma(s), t_min, t_max)
  return _pin_ends(ts, t_min, t_max)


@GRIDS.register('logsnr')
def logsnr(num_steps, *, path, t_min=None, t_max=None, sigma_min=None,
           sigma_max=None):
  t_min, t_max = _ends(path, t_min, t_max)
  sigma_min, sigma_max = _s_range(path, t_min, t_max, sigma_min, sigma_max)
  lam = jnp.linspace(-2.0 * np.log(sigma_max), -2.0 * np.log(sigma_min),
                     num_steps + 1, dtype=jnp.float32)
  ts = jnp.clip(path.t_from_logsnr(lam), t_min, t_max)
  return _pin_ends(ts, t_min, t_max)


@GRIDS.register('flow_shift')
def flow_shift(num_steps, *, path, t_min=None, t_max=None, shift=3.0):
  """SD3's timestep shift (shift > 1 spends more steps at high noise)."""
  t_min, t_max = _ends(path, t_min, t_max)
  u = jnp.linspace(1.0, 0.0, num_steps + 1, dtype=jnp.float32)
  u = shift * u / (1.0 + (shift - 1.0) * u)
  return t_min + (t_max - t_min) * u


def make_grid(name, num_steps, *, path, **kwargs):
  """Builds the time grid `name` with `num_steps` steps (num_steps + 1 times,
  decreasing from t_max to t_min); see the module docstring for the names."""
  if int(num_steps) < 1:
    raise ValueError(f'num_steps must be >= 1, got {num_steps}.')
  fn = GRIDS.get(name)
  try:
    return fn(int(num_steps), path=path, **kwargs)
  except TypeError as e:
    raise ValueError(f'Bad arguments for time grid {name!r}: {e}') from e
