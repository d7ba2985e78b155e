"""EDM's stochastic sampler (Karras et al. 2022, Algorithm 2) on any path.

EDM writes every path as x = alpha (x_hat + s eps) with s = sigma / alpha and
integrates dx_hat/ds = eps_hat (the PF-ODE in those variables). The grid `ts`
holds EDM's N noise levels s_0 > ... > s_{N-1} (EDM's `num_steps` = N =
len(ts); EDM appends s_N = 0). Every step i = 0..N-1 with s_i in [S_min,
S_max] first adds "churn" noise: s_hat = s_i (1 + gamma), gamma =
min(S_churn / N, sqrt(2) - 1), x_hat += sqrt(s_hat^2 - s_i^2) S_noise z_i.
Steps 0..N-2 then take one Heun step from s_hat to s_{i+1}. EDM's last step
(s_{N-1} -> 0) is an Euler step, i.e. the denoised E[x0 | x_hat] at s_hat;
here it is taken with `denoise_final=True` (after the churn, as in EDM),
and with False the state at ts[-1] is returned before that last churn. On
alpha = 1 paths with the Karras grid this is EDM's `edm_sampler`; with
S_churn = 0 it is EDM's deterministic Heun sampler. The churn noise of step
i is `normal(fold_in(key, i))`. NFE = 2 (N - 1) (+ 1 for the final step).
"""

import math

import jax
import jax.numpy as jnp

from visgen.samplers import base


@base.sampler(stochastic=True, own_final=True,
              checks=(base.not_bridge, base.alpha_positive),
              summary="EDM's stochastic Heun sampler (S_churn, S_noise)")
def edm(view, x, ts, key, *, S_churn=0.0, S_min=0.0,  # noqa: N803
        S_max=float('inf'), S_noise=1.0, denoise_final=False):
  path = view.path
  num_levels = ts.shape[0]  # EDM's num_steps: the final step counts
  s_of = lambda t: path.sigma(t) / path.alpha(t)

  def eps_at(x_hat, t):
    return view.x0_eps(path.alpha(t) * x_hat, t)[1]

  def churn(i, x_hat):
    """EDM's 'increase noise temporarily' at level i: (x_hat, t_hat)."""
    t = ts[i]
    s_i = s_of(t)
    gamma = jnp.where((s_i >= S_min) & (s_i <= S_max),
                      jnp.minimum(S_churn / num_levels, math.sqrt(2.0) - 1.0),
                      0.0)
    # The churned time; bisection-based inverses stop at t = 1, so the
    # actual s_hat is recomputed from it.
    t_hat = jnp.maximum(path.t_from_sigma(s_i * (1.0 + gamma)), t)
    t_hat = jnp.where(gamma > 0, t_hat, t)
    s_hat = s_of(t_hat)
    z = jax.random.normal(jax.random.fold_in(key, i), x_hat.shape)
    x_hat = x_hat + jnp.sqrt(jnp.maximum(s_hat**2 - s_i**2, 0.0)) * (
        S_noise * z)
    return x_hat, t_hat

  def body(i, x_hat):
    x_hat, t_hat = churn(i, x_hat)
    t_next = ts[i + 1]
    d = eps_at(x_hat, t_hat)
    ds = s_of(t_next) - s_of(t_hat)
    x_euler = x_hat + ds * d
    d2 = eps_at(x_euler, t_next)
    return x_hat + ds * 0.5 * (d + d2)

  n = num_levels - 1
  x_hat = jax.lax.fori_loop(0, n, body, x / path.alpha(ts[0]))
  if not denoise_final:
    return path.alpha(ts[-1]) * x_hat, dict(nfe=2 * n)
  # EDM's last step: churn at s_{N-1}, then Euler to s = 0 (= denoise).
  x_hat, t_hat = churn(n, x_hat)
  x0 = view.x0_eps(path.alpha(t_hat) * x_hat, t_hat)[0]
  return x0, dict(nfe=2 * n + 1)
