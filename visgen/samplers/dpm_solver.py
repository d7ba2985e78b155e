"""DPM-Solver++ (Lu et al. 2022): multistep 2M and 3M, and the 2M SDE variant.

With lambda = log(alpha / sigma) (half the log-SNR) and h = lambda_s -
lambda_t > 0 for a step t -> s, the exact solution of the PF-ODE is
x_s = sigma_s / sigma_t x_t + alpha_s int e^{-(lambda_s - l)} x0_hat(l) dl.
Freezing x0_hat gives the first-order step
x_s = sigma_s / sigma_t x_t + alpha_s (1 - e^{-h}) x0_hat; 2M and 3M replace
x0_hat by backward-difference extrapolations over the previous one or two
steps (2M: (1 + 1/(2r)) D_i - 1/(2r) D_{i-1}, r = h_{i-1} / h_i; 3M: the
k-diffusion form with phi_2 = (e^{-h} - 1)/h + 1, phi_3 = phi_2 / h - 1/2).
The first steps use the lower orders. The first-order part is written
without lambda (`multistep.first_order`), so it is exact at alpha = 0
(rectified flow at t = 1) and at a final sigma = 0 (data).

`lower_order_final` (diffusers' default, on): on grids of fewer than 15
steps the last step is first order and the one before at most second order;
a step to sigma = 0 is always first order. It is what keeps 3M from
diverging on grids whose last step is long in lambda (time-uniform to
t_min at 10 NFE: issue 15's 3.2), at a small cost where it is not needed
(single Gaussian, VP, 8 log-SNR steps: 0.151 with, 0.055 without). NFE = N.

`dpm_solver_2m_sde` is diffusers' 'sde-dpmsolver++' (midpoint) 2M: the
reverse SDE solved with the same data-prediction extrapolation,
x_s = sigma_s / sigma_t e^{-h} x_t + alpha_s (1 - e^{-2h}) (D + D'/2)
+ sigma_s sqrt(1 - e^{-2h}) z, where D' = (D_i - D_{i-1}) / r.
"""

import jax
import jax.numpy as jnp

from visgen.samplers import base
from visgen.samplers import multistep as ms

# Diffusers lowers the final orders only on grids shorter than this.
_LOWER_ORDER_FINAL_STEPS = 15


def _step_order(i, n, order, lower_order_final, data_end, lam):
  """Order of step i: warm-up, lower_order_final, first order into data
  and wherever a step involved is shorter than MIN_H in lambda."""
  p = jnp.minimum(order, i + 1)
  if lower_order_final and n < _LOWER_ORDER_FINAL_STEPS:
    p = jnp.minimum(p, n - i)
  p = jnp.where(data_end | (lam[i + 1] - lam[i] <= ms.MIN_H), 1, p)
  for k in (1, 2):  # the previous steps the extrapolation uses
    short = lam[i + 1 - k] - lam[jnp.maximum(i - k, 0)] <= ms.MIN_H
    p = jnp.where((i >= k) & short, jnp.minimum(p, k), p)
  return p


def _multistep(view, x, ts, order, lower_order_final):
  path = view.path
  n = ts.shape[0] - 1
  lam = ms.lambdas(path, ts)

  def body(i, carry):
    x, d1, d2 = carry  # x0_hat of the previous two steps
    t, s = ts[i], ts[i + 1]
    h = lam[i + 1] - lam[i]
    x0, _ = view.x0_eps(x, t)
    c_x, c_0 = ms.first_order(path, t, s)
    p = _step_order(i, n, order, lower_order_final, ms.is_data_end(path, s),
                    lam)
    h1 = lam[i] - lam[jnp.maximum(i - 1, 0)]
    r0 = jnp.where(p >= 2, h1 / jnp.where(p >= 2, h, 1.0), 1.0)
    if order == 2:
      corr = jnp.where(p >= 2, 1.0 / (2.0 * r0), 0.0)
      x_new = c_x * x + c_0 * ((1.0 + corr) * x0 - corr * d1)
    else:
      h2 = lam[jnp.maximum(i - 1, 0)] - lam[jnp.maximum(i - 2, 0)]
      r1 = jnp.where(p >= 3, h2 / jnp.where(p >= 3, h, 1.0), 1.0)
      g1, g2 = ms.g_coeffs(-h, 2)
      phi2, phi3 = -g1, g2  # (e^{-h} - 1)/h + 1 and phi2 / h - 1/2
      d1_0 = (x0 - d1) / r0
      d1_1 = (d1 - d2) / r1
      second = phi2 * d1_0
      third = phi2 * (d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)) - phi3 * (
          (d1_0 - d1_1) / (r0 + r1))
      extra = jnp.where(p >= 3, third, jnp.where(p == 2, second, 0.0))
      x_new = c_x * x + c_0 * x0 + path.alpha(s) * extra
    return x_new, x0, d1

  zeros = jnp.zeros_like(x)
  x, _, _ = jax.lax.fori_loop(0, n, body, (x, zeros, zeros))
  return x, dict(nfe=n)


@base.sampler(stochastic=False, checks=(base.not_bridge,),
              summary='DPM-Solver++(2M), multistep 2nd order')
def dpm_solver_2m(view, x, ts, key, *, lower_order_final=True):
  del key
  return _multistep(view, x, ts, 2, lower_order_final)


@base.sampler(stochastic=False, checks=(base.not_bridge,),
              summary='DPM-Solver++(3M), multistep 3rd order')
def dpm_solver_3m(view, x, ts, key, *, lower_order_final=True):
  del key
  return _multistep(view, x, ts, 3, lower_order_final)


@base.sampler(stochastic=True,
              checks=(base.not_bridge,),
              summary='SDE-DPM-Solver++(2M), midpoint, data prediction')
def dpm_solver_2m_sde(view, x, ts, key, *, lower_order_final=True):
  """SDE-DPM-Solver++(2M); the noise of step i is normal(fold_in(key, i))."""
  path = view.path
  n = ts.shape[0] - 1
  lam = ms.lambdas(path, ts)

  def body(i, carry):
    x, d_prev = carry
    t, s = ts[i], ts[i + 1]
    x0, _ = view.x0_eps(x, t)
    sig_t, sig_s = path.sigma(t), path.sigma(s)
    a_t, a_s = path.alpha(t), path.alpha(s)
    e_h = sig_s * a_t / (a_s * sig_t)  # e^{-h}, exact at both ends
    one_m = 1.0 - e_h**2
    p = _step_order(i, n, 2, lower_order_final, ms.is_data_end(path, s),
                    lam)
    h = lam[i + 1] - lam[i]
    h_prev = lam[i] - lam[jnp.maximum(i - 1, 0)]
    r0 = jnp.where(p >= 2, h_prev / jnp.where(p >= 2, h, 1.0), 1.0)
    d1 = jnp.where(p >= 2, (x0 - d_prev) / r0, 0.0)
    z = jax.random.normal(jax.random.fold_in(key, i), x.shape, x.dtype)
    x_new = (sig_s / sig_t * e_h * x + a_s * one_m * (x0 + 0.5 * d1)
             + sig_s * jnp.sqrt(jnp.maximum(one_m, 0.0)) * z)
    return x_new, x0

  x, _ = jax.lax.fori_loop(0, n, body, (x, jnp.zeros_like(x)))
  return x, dict(nfe=n)
