"""Input preconditioning: what the network sees of (x_t, t).

The loss and the samplers call the network through one function
`(x_t, t, cond) -> prediction`. EDM (Karras et al. 2022, Table 1) writes the
denoiser of every path as

  D(x_t; s) = c_skip(s) x_hat + c_out(s) F(c_in x_t, c_noise(s)),

with s = sigma / alpha and x_hat = x_t / alpha. The output side (c_skip,
c_out) is the prediction kind 'edm' (`predictions.coefficients`); this module
is the input side, a wrapper around the network apply:

| mode   | network input          | time input                          |
|--------|------------------------|-------------------------------------|
| 'none' | x_t                    | t in [0, 1]                         |
| 'c_in' | c_in x_t               | t in [0, 1]                         |
| 'edm'  | c_in x_t               | c_noise = log(sigma / alpha) / 4    |

c_in = 1 / sqrt(alpha^2 sigma_data^2 + sigma^2) is EDM's
1 / sqrt(s^2 + sigma_data^2) with the 1 / alpha of x_hat folded in: for
data of standard deviation sigma_data the network input has unit variance
at every noise level (on the 'edm' path x_t alone reaches std 80). c_noise
is EDM's noise conditioning; the network's time embedding receives it as its
`t` argument (EDM feeds it to the positional embedding unscaled: build the
model with `t_scale=1`).

Because the wrapper is applied once, to the network, by the task, the loss
and every sampler (and any guidance combinator on top) see the same
function.
"""

import math

import jax
import jax.numpy as jnp

from visgen.interpolants import base

MODES = ('none', 'c_in', 'edm')


def resolve_mode(mode, *, prediction: str, path: base.Path) -> str:
  """The preconditioning mode of a config (None: chosen from the kind).

  None gives 'edm' for the 'edm' prediction kind on ordinary paths (F-
  prediction's c_skip / c_out assume an input scaled by c_in and EDM's noise
  conditioning) and 'none' otherwise, which keeps every other recipe as its
  paper wrote it.
  """
  if mode is None:
    return 'edm' if prediction == 'edm' and not path.is_bridge else 'none'
  if mode not in MODES:
    raise ValueError(f'Unknown preconditioning {mode!r}: valid choices are '
                     f'{", ".join(MODES)} (config.precond).')
  return mode


def c_in(*, t, path: base.Path):
  """1 / sqrt(alpha^2 sigma_data^2 + sigma^2): unit-variance network input."""
  alpha, sigma = path.alpha(t), path.sigma(t)
  return jax.lax.rsqrt(alpha**2 * path.sigma_data**2 + sigma**2)


def c_noise(*, t, path: base.Path):
  """EDM's noise conditioning log(sigma / alpha) / 4 = -logsnr / 8."""
  return -0.125 * path.logsnr(t)


def network_inputs(*, x_t, t, path: base.Path, mode: str):
  """(x_in, t_in) that the network receives in `mode` at (x_t, t)."""
  if mode == 'none':
    return x_t, t
  t = jnp.asarray(t, jnp.float32)
  x_in = base.bcast(c_in(t=t, path=path), x_t).astype(x_t.dtype) * x_t
  t_in = t if mode == 'c_in' else c_noise(t=t, path=path)
  return x_in, t_in


def _check(path: base.Path, mode: str) -> None:
  if mode not in MODES:
    raise ValueError(f'Unknown preconditioning {mode!r}: valid choices are '
                     f'{", ".join(MODES)}.')
  if mode != 'none' and path.is_bridge:
    raise ValueError(
        f'Input preconditioning {mode!r} is not implemented for the bridge '
        f'path {path.name!r} (DDBM scales by the joint variance of x_t and '
        "the source y); use config.precond = 'none'.")
  if mode == 'edm':
    for t in (path.t_min, path.t_max):
      with jax.ensure_compile_time_eval():  # static check, also under jit
        lam = float(path.logsnr(jnp.float32(t)))
      if not math.isfinite(lam):
        raise ValueError(
            f"EDM's noise conditioning log(sigma / alpha) / 4 is infinite at "
            f't = {t} of path {path.name!r}. Build the path with t_min / '
            "t_max inside the interval, or use config.precond = 'c_in'.")


def precondition(apply_fn, *, path: base.Path, mode: str):
  """Wraps `apply_fn(x_in, t_in, cond)` into `(x_t, t, cond) -> prediction`.

  The prediction itself is unchanged: its kind (for EDM, 'edm', i.e. F)
  is converted by `predictions`, exactly as without preconditioning.
  """
  _check(path, mode)
  if mode == 'none':
    return apply_fn

  def fn(x_t, t, cond):
    x_in, t_in = network_inputs(x_t=x_t, t=t, path=path, mode=mode)
    return apply_fn(x_in, t_in, cond)

  return fn

