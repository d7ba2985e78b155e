"""Shared pieces of the exponential-integrator multistep solvers.

DPM-Solver++ and UniPC work in lambda = log(alpha / sigma) (half the
log-SNR) with data predictions x0_hat. For a step t -> s, h = lambda_s -
lambda_t > 0 and the exact first-order part is

  x_s = sigma_s / sigma_t x_t + (alpha_s - sigma_s alpha_t / sigma_t) x0_hat,

written without lambda so that it is exact at both special ends: sigma_s = 0
(a final step to data: x_s = x0_hat) and alpha_t = 0 (rectified flow at
t = 1). Higher-order corrections use lambda clipped to +-_LAMBDA_CLIP (e^{-h}
there is below float32 resolution) and the phi functions below, evaluated
by their Taylor series for small h where the textbook recurrence
(phi_k = (phi_{k-1} - 1/(k-1)!) / h) loses every digit in float32.
A step whose target has sigma = 0 is always first order: lambda = inf there,
so every extrapolation in lambda is meaningless (diffusers'
`lower_order_final` / `final_sigmas_type='zero'` do the same).
"""

import math

import jax.numpy as jnp

LAMBDA_CLIP = 15.0
_SERIES_TERMS = 12


def lambdas(path, ts):
  """lambda(t) = logsnr / 2 on the grid, NaN (alpha = 0) -> -clip, clipped."""
  lam = 0.5 * path.logsnr(ts)
  lam = jnp.where(jnp.isnan(lam), -LAMBDA_CLIP, lam)
  return jnp.clip(lam, -LAMBDA_CLIP, LAMBDA_CLIP)


def first_order(path, t, s):
  """(c_x, c_0): x_s = c_x x_t + c_0 x0_hat, exact at sigma_s = 0, alpha_t = 0.
  """
  sig_t, sig_s = path.sigma(t), path.sigma(s)
  a_t, a_s = path.alpha(t), path.alpha(s)
  return sig_s / sig_t, a_s - sig_s * a_t / sig_t


# Steps shorter than this in lambda (repeated grid times, or times beyond
# the clip) take the exact first-order step: extrapolation would divide by h.
MIN_H = 1e-6


def is_data_end(path, s):
  """True where the step's target is data (sigma(s) = 0)."""
  return path.sigma(s) <= 0.0


def g_coeffs(hh, order):
  """g_j = sum_{m >= 1} hh^m / (m + j)!, j = 1..order (traced scalar hh).

  g_j = phi_{j+1}(hh) * hh with UniPC's recurrence g_1 = (e^hh - 1)/hh - 1,
  g_{j+1} = g_j / hh - 1/(j+1)!; the series is used for |hh| < 1, the
  recurrence (accurate there) above.
  """
  small = jnp.abs(hh) < 1.0
  hh_s = jnp.where(small, hh, 0.5)
  hh_r = jnp.where(small, 1.0, hh)  # recurrence only where it is accurate
  out = []
  g_rec = jnp.expm1(hh_r) / hh_r - 1.0
  for j in range(1, order + 1):
    series = sum(hh_s**m * (1.0 / math.factorial(m + j))
                 for m in range(1, _SERIES_TERMS + 1))
    out.append(jnp.where(small, series, g_rec))
    g_rec = g_rec / hh_r - 1.0 / math.factorial(j + 1)
  return out


def solve_small(a, b):
  """Solves a (n x n, n <= 3, nested lists of scalars) x = b by Cramer."""
  n = len(b)
  if n == 1:
    return [b[0] / a[0][0]]
  if n == 2:
    det = a[0][0] * a[1][1] - a[0][1] * a[1][0]
    return [(b[0] * a[1][1] - a[0][1] * b[1]) / det,
            (a[0][0] * b[1] - b[0] * a[1][0]) / det]
  if n == 3:
    def det3(m):
      return (m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1])
              - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
              + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0]))
    det = det3(a)
    out = []
    for col in range(3):
      m = [[b[r] if c == col else a[r][c] for c in range(3)]
           for r in range(3)]
      out.append(det3(m) / det)
    return out
  raise ValueError(f'solve_small handles n <= 3, got {n}.')


def combine(weights, arrays):
  """sum_i w_i a_i for scalar weights and same-shape arrays."""
  out = weights[0] * arrays[0]
  for w, a in zip(weights[1:], arrays[1:]):
    out = out + w * a
  return out
