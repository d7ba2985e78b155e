"""DPM-Solver++ (Lu et al. 2022), multistep 2M and 3M, data prediction.

With lambda = log(alpha / sigma) (half the log-SNR) and h = lambda_s -
lambda_t > 0 for a step t -> s, the exact solution of the PF-ODE is
x_s = sigma_s / sigma_t x_t + alpha_s int e^{-(lambda_s - l)} x0_hat(l) dl.
Freezing x0_hat gives the first-order step
x_s = sigma_s / sigma_t x_t + alpha_s (1 - e^{-h}) x0_hat; 2M and 3M replace
x0_hat by backward-difference extrapolations over the previous one or two
steps (2M: (1 + 1/(2r)) D_i - 1/(2r) D_{i-1}, r = h_{i-1} / h_i; 3M: the
k-diffusion form with phi_2 = (e^{-h} - 1)/h + 1, phi_3 = phi_2 / h - 1/2).
The first steps use the lower orders. Written in x (not x / alpha) so that it
also starts at alpha = 0 (rectified flow at t = 1), where lambda is clipped
to -_LAMBDA_CLIP and e^{-h} underflows to 0 exactly as it should.
NFE = N.
"""

import jax
import jax.numpy as jnp

from visgen.samplers import base

_LAMBDA_CLIP = 15.0


def _lambda(path, t):
  return jnp.clip(0.5 * path.logsnr(t), -_LAMBDA_CLIP, _LAMBDA_CLIP)


def _multistep(view, x, ts, order):
  path = view.path
  n = ts.shape[0] - 1
  lam = jax.vmap(lambda t: _lambda(path, t))(ts)
  lam = jnp.where(jnp.isnan(lam), -_LAMBDA_CLIP, lam)

  def body(i, carry):
    x, d1, d2 = carry  # x0_hat of the previous two steps
    t, s = ts[i], ts[i + 1]
    h = lam[i + 1] - lam[i]
    x0, _ = view.x0_eps(x, t)
    em = -jnp.expm1(-h)  # 1 - e^{-h}
    x_new = path.sigma(s) / path.sigma(t) * x
    if order == 2:
      r = (lam[i] - lam[jnp.maximum(i - 1, 0)]) / h
      corr = jnp.where(i >= 1, 1.0 / (2.0 * jnp.where(i >= 1, r, 1.0)), 0.0)
      d = (1.0 + corr) * x0 - corr * d1
      x_new = x_new + path.alpha(s) * em * d
    else:
      h1 = lam[i] - lam[jnp.maximum(i - 1, 0)]
      h2 = lam[jnp.maximum(i - 1, 0)] - lam[jnp.maximum(i - 2, 0)]
      r0 = jnp.where(i >= 1, h1 / h, 1.0)
      r1 = jnp.where(i >= 2, h2 / h, 1.0)
      phi2 = -em / h + 1.0
      phi3 = phi2 / h - 0.5
      d1_0 = (x0 - d1) / r0
      d1_1 = (d1 - d2) / r1
      second = phi2 * d1_0
      third = phi2 * (d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)) - phi3 * (
          (d1_0 - d1_1) / (r0 + r1))
      extra = jnp.where(i >= 2, 1.0, 0.0) * third + jnp.where(
          i == 1, 1.0, 0.0) * second
      x_new = x_new + path.alpha(s) * (em * x0 + extra)
    return x_new, x0, d1

  zeros = jnp.zeros_like(x)
  x, _, _ = jax.lax.fori_loop(0, n, body, (x, zeros, zeros))
  return x, dict(nfe=n)


@base.register('dpm_solver_2m', stochastic=False, checks=(base.not_bridge,),
               summary='DPM-Solver++(2M), multistep 2nd order')
def dpm_solver_2m(view, x, ts, key):
  del key
  return _multistep(view, x, ts, 2)


@base.register('dpm_solver_3m', stochastic=False, checks=(base.not_bridge,),
               summary='DPM-Solver++(3M), multistep 3rd order')
def dpm_solver_3m(view, x, ts, key):
  del key
  return _multistep(view, x, ts, 3)
