"""Time grids for samplers: `make_grid(name, num_steps, *, path, **kw)`.

Every grid is a float32 array of `num_steps + 1` times, decreasing from
`t_max` (the prior) to `t_min` (closest to data), in visgen's convention
(t = 0 data). Grids are ordinary arrays, so a sampler jitted once accepts any
grid of the same length without recompiling. Grids defined through the noise
level go through the path's inverse maps:

| name        | spacing                                                      |
|-------------|--------------------------------------------------------------|
| uniform     | uniform in t                                                 |
| diffusers_linspace | diffusers' 'linspace' timesteps, then data (t = 0)     |
| quadratic   | t = t_min + (t_max - t_min) u^2, u uniform (DDIM's quadratic)  |
| karras      | EDM's rho schedule in s = sigma / alpha (rho = 7)             |
| logsnr      | uniform in log-SNR (DPM-Solver's logSNR grid)                 |
| flow_shift  | SD3's shift: t' = s u / (1 + (s - 1) u), u uniform            |
| logsnr_data | log-SNR down to sigma_min(N), then one step to data (t = 0)   |
| auto        | the sampler's default (`DEFAULT_GRIDS`; make_grid(sampler=))  |

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


def _check_decreasing(ts, name, path):
  """Refuses a grid with repeated times (a noise level outside what the
  path's inverse map covers is clamped onto its end): the step there would
  have h = 0 and the multistep solvers would divide by it. Only checked
  when the grid is concrete (not while tracing)."""
  try:
    values = np.asarray(ts)
  except jax.errors.TracerArrayConversionError:
    return ts
  bad = np.flatnonzero(np.diff(values) >= 0)
  if bad.size:
    raise ValueError(
        f'Time grid {name!r} on path {path.name!r} repeats t = '
        f'{values[bad[0]]:.6g} ({bad.size} times): sigma_min / sigma_max '
        "reach beyond the noise levels the path's inverse map covers. Pass "
        'sigma_min / sigma_max inside the path range (or fewer steps).')
  return ts


@GRIDS.register('uniform')
def uniform(num_steps, *, path, t_min=None, t_max=None):
  t_min, t_max = _ends(path, t_min, t_max)
  return jnp.linspace(t_max, t_min, num_steps + 1, dtype=jnp.float32)


def _data_end(path, t_min):
  """t_min for grids whose last step goes to data: 0 where sigma(0) = 0
  (VP, DDPM, flows), else the path's own t_min (EDM, VE: sigma(0) > 0)."""
  if t_min is not None:
    return t_min
  with jax.ensure_compile_time_eval():
    sigma0 = float(path.sigma(jnp.float32(0.0)))
  return 0.0 if sigma0 <= 0.0 else path.t_min


@GRIDS.register('diffusers_linspace')
def diffusers_linspace(num_steps, *, path, t_min=None, t_max=None):
  """diffusers' timestep_spacing='linspace' with final_sigmas_type='zero'.

  On a discrete DDPM schedule of T steps the N model times are the integer
  timesteps round(linspace(0, T - 1, N + 1))[::-1][:-1], i.e. t = (k + 1) /
  T here, followed by data (t = 0); on a continuous path, t uniform from
  t_max with the same final step. The last step ends at t_min (default:
  data where sigma(0) = 0).
  """
  t_min = _data_end(path, t_min)
  _, t_max = _ends(path, t_min, t_max)
  if hasattr(path, 'num_timesteps') and t_max == 1.0:
    big_t = int(path.num_timesteps)
    k = np.round(np.linspace(0, big_t - 1, num_steps + 1))[::-1][:-1]
    head = (k + 1) / big_t
  else:
    head = np.linspace(t_max, 0.0, num_steps + 1)[:-1]
  head = np.maximum(head, t_min)
  return jnp.asarray(np.append(head, t_min), jnp.float32)


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
    # A grid that ends at data (sigma(t_min) = 0, e.g. t_min = 0) spaces its
    # other points down to the path's own smallest noise level.
    s_end = s_at(t_min, _S_RANGE[0])
    if s_end <= 0.0:
      s_end = s_at(max(path.t_min, t_min), _S_RANGE[0])
    sigma_min = max(s_end, _S_RANGE[0])
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
  return _check_decreasing(_pin_ends(ts, t_min, t_max), 'karras', path)


@GRIDS.register('logsnr')
def logsnr(num_steps, *, path, t_min=None, t_max=None, sigma_min=None,
           sigma_max=None):
  t_min, t_max = _ends(path, t_min, t_max)
  sigma_min, sigma_max = _s_range(path, t_min, t_max, sigma_min, sigma_max)
  lam = jnp.linspace(-2.0 * np.log(sigma_max), -2.0 * np.log(sigma_min),
                     num_steps + 1, dtype=jnp.float32)
  ts = jnp.clip(path.t_from_logsnr(lam), t_min, t_max)
  return _check_decreasing(_pin_ends(ts, t_min, t_max), 'logsnr', path)


# The last noise level before the final step to data of `logsnr_data`:
# s_{N-1} = 0.23 (10 / N)^1.6. Fitted on issue 15's 8-D mixture (component
# std ~0.3-0.5, like images in [-1, 1]): the best s_{N-1} of log-SNR grids
# for UniPC-3 / DPM-Solver++(3M) was about 0.23, 0.07 and 0.018 at N = 10,
# 20 and 50 (see experiments.sampler_convergence).
_DATA_END_S = (0.23, 10, 1.6)


@GRIDS.register('logsnr_data')
def logsnr_data(num_steps, *, path, t_min=None, t_max=None, sigma_min=None,
                sigma_max=None):
  """Uniform in log-SNR from sigma_max down to sigma_min, then one step to
  data (t = 0) on paths with sigma(0) = 0; the default sigma_min shrinks
  with N (`_DATA_END_S`), because the final first-order step to data costs
  O(sigma_min^2). On paths that cannot reach data (EDM, VE) it is `logsnr`.
  """
  end = _data_end(path, t_min)
  if end > 0.0 or path.t_min <= 0.0:
    return logsnr(num_steps, path=path, t_min=t_min, t_max=t_max,
                  sigma_min=sigma_min, sigma_max=sigma_max)
  if sigma_min is None:
    c, n_ref, power = _DATA_END_S
    with jax.ensure_compile_time_eval():
      s_path = float(np.exp(-0.5 * float(path.logsnr(
          jnp.float32(path.t_min)))))
    sigma_min = max(c * (n_ref / max(num_steps, 1)) ** power, s_path)
  _, t_max = _ends(path, end, t_max)
  sigma_min_, sigma_max_ = _s_range(path, path.t_min, t_max, sigma_min,
                                    sigma_max)
  # num_steps - 1 log-SNR steps to sigma_min, then the step to data.
  lam = jnp.linspace(-2.0 * np.log(sigma_max_), -2.0 * np.log(sigma_min_),
                     num_steps, dtype=jnp.float32)
  ts = jnp.clip(path.t_from_logsnr(lam), path.t_min, t_max)
  ts = jnp.append(ts.at[0].set(t_max), jnp.float32(end))
  return _check_decreasing(ts, 'logsnr_data', path)


# The default grid of each sampler (`make_grid('auto', ..., sampler=...)`),
# (on diffusion paths, on flows: alpha(t_max) = 0), from the pathwise errors
# at 10-50 NFE on exact mixtures (experiments.sampler_convergence): UniPC on
# rectified flow / GVP is 3-4x more accurate time-uniform to data than on
# log-SNR, DPM-Solver++ is not. Samplers not listed use 'uniform'.
DEFAULT_GRIDS = {
    'unipc': ('logsnr_data', 'diffusers_linspace'),
    'dpm_solver_2m': ('logsnr_data', 'logsnr_data'),
    'dpm_solver_3m': ('logsnr_data', 'logsnr_data'),
    'dpm_solver_2m_sde': ('logsnr_data', 'logsnr_data'),
    'ipndm': ('logsnr_data', 'logsnr_data'),
    'edm': ('karras', 'karras'),
}


@GRIDS.register('auto')
def auto(num_steps, *, path, **kwargs):
  """Registered so that configs may name it; `make_grid` resolves it."""
  del num_steps, path, kwargs
  raise ValueError("make_grid('auto', ...) needs sampler=<name> to pick "
                   "that sampler's default grid.")


def default_grid(sampler, path):
  """The name of the default grid of `sampler` on `path`."""
  with jax.ensure_compile_time_eval():
    flow = float(path.alpha(jnp.float32(path.t_max))) <= 0.0
  return DEFAULT_GRIDS.get(sampler, ('uniform', 'uniform'))[int(flow)]


@GRIDS.register('flow_shift')
def flow_shift(num_steps, *, path, t_min=None, t_max=None, shift=3.0):
  """SD3's timestep shift (shift > 1 spends more steps at high noise)."""
  t_min, t_max = _ends(path, t_min, t_max)
  u = jnp.linspace(1.0, 0.0, num_steps + 1, dtype=jnp.float32)
  u = shift * u / (1.0 + (shift - 1.0) * u)
  return t_min + (t_max - t_min) * u


def make_grid(name, num_steps, *, path, sampler=None, **kwargs):
  """Builds the time grid `name` with `num_steps` steps (num_steps + 1 times,
  decreasing from t_max to t_min); see the module docstring for the names.
  `name='auto'` picks the default grid of `sampler` (`DEFAULT_GRIDS`)."""
  if int(num_steps) < 1:
    raise ValueError(f'num_steps must be >= 1, got {num_steps}.')
  if name == 'auto' and sampler is not None:
    name = default_grid(sampler, path)
  fn = GRIDS.get(name)
  try:
    return fn(int(num_steps), path=path, **kwargs)
  except TypeError as e:
    raise ValueError(f'Bad arguments for time grid {name!r}: {e}') from e
