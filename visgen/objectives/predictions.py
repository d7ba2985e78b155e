"""Axis (B): what the network predicts, and exact conversions between kinds.

Every prediction kind is a linear functional of (x0, eps, y) at time t:

  pred_k = a_k(t) x0 + b_k(t) eps + c_k(t) y,

with the path's x_t = alpha x0 + sigma eps + gamma y. The kinds:

| kind     | a_k                        | b_k                         | c_k    |
|----------|----------------------------|-----------------------------|--------|
| eps      | 0                          | 1                           | 0      |
| x0       | 1                          | 0                           | 0      |
| v        | -sigma                     | alpha                       | 0      |
| score    | 0                          | -1 / sigma                  | 0      |
| velocity | d alpha / dt               | d sigma / dt                | dgamma |
| edm      | (1 - c_skip) / c_out       | -c_skip s / c_out           | 0      |

`v` is Salimans & Ho's v = alpha eps - sigma x0. `score` is the score of
p(x_t | y). `velocity` is the probability-flow / flow-matching velocity
dx_t/dt (in visgen's time direction, data at t = 0). `edm` is the raw network
output F of EDM's preconditioning D = c_skip x_hat + c_out F with
x_hat = (x_t - gamma y) / alpha, s = sigma / alpha the EDM noise level,
c_skip = s_d^2 / (s^2 + s_d^2), c_out = s s_d / sqrt(s^2 + s_d^2).

Converting between kinds solves the 2x2 system
[alpha sigma; a_k b_k] [x0; eps] = [x_t - gamma y; pred - c_k y]
for (x0, eps), which is exact whenever det = alpha b_k - sigma a_k != 0.
Training regresses `target(kind, ...)`, the same functional applied to the true
(x0, eps, y): this is the (A_t, B_t) of the unified loss.
"""

import jax.numpy as jnp

from visgen.interpolants import base

KINDS = ('eps', 'x0', 'v', 'score', 'velocity', 'edm')


def check_kind(kind: str) -> str:
  if kind not in KINDS:
    raise ValueError(
        f'Unknown prediction kind {kind!r}. Valid choices: {", ".join(KINDS)}.')
  return kind


def edm_coefficients(*, t, path):
  """EDM's preconditioning (c_skip, c_out, c_in, c_noise) at time t.

  c_in multiplies the network input x_t (it includes the 1/alpha that maps x_t
  to EDM's x_hat), c_noise = log(s) / 4 is EDM's noise conditioning.
  """
  alpha, sigma = path.alpha(t), path.sigma(t)
  s = sigma / alpha
  sd = path.sigma_data
  c_skip = sd**2 / (s**2 + sd**2)
  c_out = s * sd / jnp.sqrt(s**2 + sd**2)
  c_in = 1.0 / (alpha * jnp.sqrt(s**2 + sd**2))
  c_noise = 0.25 * jnp.log(s)
  return dict(c_skip=c_skip, c_out=c_out, c_in=c_in, c_noise=c_noise)


def coefficients(kind: str, *, t, path: base.Path):
  """(a_k, b_k, c_k) of `kind` at time t (arrays shaped like t)."""
  check_kind(kind)
  t = jnp.asarray(t, jnp.float32)
  zero, one = jnp.zeros_like(t), jnp.ones_like(t)
  if kind == 'eps':
    return zero, one, zero
  if kind == 'x0':
    return one, zero, zero
  if kind == 'v':
    return -path.sigma(t), path.alpha(t), zero
  if kind == 'score':
    return zero, -1.0 / path.sigma(t), zero
  if kind == 'velocity':
    return path.d_alpha(t), path.d_sigma(t), path.d_gamma(t)
  # edm
  c = edm_coefficients(t=t, path=path)
  s = path.sigma(t) / path.alpha(t)
  return (1.0 - c['c_skip']) / c['c_out'], -c['c_skip'] * s / c['c_out'], zero


def eps_error_scale(kind: str, *, t, path: base.Path):
  """det_k = alpha b_k - sigma a_k: pred_k errors are det_k / alpha times the
  corresponding eps errors at fixed x_t.

  An error e in eps at fixed x_t moves x0 by -sigma / alpha * e, so kind k
  moves by (b_k - a_k sigma / alpha) e = det_k / alpha * e. Ratios of det
  convert a loss weighting from one kind's space to another's.
  """
  a, b, _ = coefficients(kind, t=t, path=path)
  return path.alpha(t) * b - path.sigma(t) * a


def _need_y(path, y):
  if path.is_bridge and y is None:
    raise ValueError(f'Path {path.name!r} is a bridge: pass the source `y`.')


def target(kind: str, *, x0, eps, t, path: base.Path, y=None):
  """The regression target a_k x0 + b_k eps + c_k y for prediction `kind`."""
  _need_y(path, y)
  a, b, c = coefficients(kind, t=t, path=path)
  out = base.bcast(a, x0) * x0 + base.bcast(b, x0) * eps
  if path.is_bridge:
    out = out + base.bcast(c, x0) * y
  return out


def to_x0_eps(pred, *, kind: str, x_t, t, path: base.Path, y=None):
  """Recovers (x0, eps) from a prediction of `kind` at (x_t, t)."""
  _need_y(path, y)
  a, b, c = (base.bcast(u, x_t) for u in coefficients(kind, t=t, path=path))
  alpha, sigma = base.bcast(path.alpha(t), x_t), base.bcast(path.sigma(t), x_t)
  r1, r2 = x_t, pred
  if path.is_bridge:
    r1 = x_t - base.bcast(path.gamma(t), x_t) * y
    r2 = pred - c * y
  det = alpha * b - sigma * a
  x0 = (b * r1 - sigma * r2) / det
  eps = (alpha * r2 - a * r1) / det
  return x0, eps


def convert(pred, *, src: str, dst: str, x_t, t, path: base.Path, y=None):
  """Converts a prediction of kind `src` at (x_t, t) into kind `dst`."""
  check_kind(dst)
  if src == dst:
    return pred
  x0, eps = to_x0_eps(pred, kind=src, x_t=x_t, t=t, path=path, y=y)
  return target(dst, x0=x0, eps=eps, t=t, path=path, y=y)
