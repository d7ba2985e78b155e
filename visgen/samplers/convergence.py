"""Pathwise accuracy of deterministic samplers: converged PF-ODE references.

`pf_reference` solves the probability-flow ODE from `x_init` at t_max to the
end a few-step grid of `make_grid` reaches (data, t = 0, where sigma(0) = 0;
else the path's t_min) with UniPC-3 on a fine log-SNR grid, then, on paths
that end at data, geometric steps in t from the path's t_min down to
s = sigma / alpha ~ 1e-6 and a last step to data (error O(1e-12)).
`path_rmse` is the RMS distance sqrt(mean_n |x_n - ref_n|^2) of issue 15's
table. On the 8-D mixture of `experiments.sampler_convergence` 1000 and
2000 steps agree to 3e-5, so the reference is converged far below the
few-step errors.
"""

import jax
import jax.numpy as jnp
import numpy as np

from visgen.interpolants import get_path
from visgen.samplers import grids


def _s(path, t):
  with jax.ensure_compile_time_eval():
    return float(np.exp(-0.5 * float(path.logsnr(jnp.float32(t)))))


def reference_grid(path, num_steps, *, t_end=None, tail_steps=40,
                   s_end=1e-6):
  """The fine grid of `pf_reference` (float32, decreasing): log-SNR to the
  path's t_min, then (paths that reach data) geometric in t down to the
  smallest 10^-k t_min with s >= `s_end` (inside the lambda clip of the
  multistep solvers), then data."""
  path = get_path(path)
  end = grids._data_end(path, t_end)  # pylint: disable=protected-access
  if end > 0.0 or path.t_min <= 0.0:
    return grids.make_grid('logsnr', num_steps, path=path, t_min=end)
  main = np.asarray(grids.make_grid('logsnr', num_steps, path=path))
  t_tail = path.t_min
  for k in range(1, 13):
    if not _s(path, path.t_min * 10.0**-k) >= s_end:
      break
    t_tail = path.t_min * 10.0**-k
  if t_tail >= path.t_min:  # s already tiny at t_min: straight to data
    return jnp.asarray(np.append(main, 0.0), jnp.float32)
  tail = np.geomspace(path.t_min, t_tail, tail_steps + 1)[1:]
  return jnp.asarray(np.concatenate([main, tail, [0.0]]), jnp.float32)


def pf_reference(denoise_fn, *, path, prediction, x_init, num_steps=2000,
                 t_end=None, cond=None):
  """Converged PF-ODE solution from x_init at t_max to `t_end` (default:
  data where sigma(0) = 0, else the path's t_min; see the docstring)."""
  from visgen import samplers  # pylint: disable=import-outside-toplevel
  path = get_path(path)
  ts = reference_grid(path, num_steps, t_end=t_end)
  run = jax.jit(lambda ts, x: samplers.sample(
      'unipc', denoise_fn, path=path, prediction=prediction, ts=ts,
      x_init=x, cond=cond, order=3))
  return run(ts, x_init)


def path_rmse(x, ref):
  """sqrt(mean_n |x_n - ref_n|^2) over the batch (a float)."""
  diff = (x - ref).reshape(x.shape[0], -1)
  return float(jnp.sqrt(jnp.mean(jnp.sum(diff**2, -1))))
