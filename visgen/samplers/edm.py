"""EDM's stochastic sampler (Karras et al. 2022, Algorithm 2) on any path.

EDM writes every path as x = alpha (x_hat + s eps) with s = sigma / alpha and
integrates dx_hat/ds = eps_hat (the PF-ODE in those variables), adding
"churn" noise: at each step with s_i in [S_min, S_max], s_hat = s_i (1 +
gamma), gamma = min(S_churn / N, sqrt(2) - 1), x_hat += sqrt(s_hat^2 - s_i^2)
S_noise z, then one Heun step from s_hat to s_{i+1}. On alpha = 1 paths with
the Karras grid this is EDM's algorithm; with S_churn = 0 it is EDM's
deterministic Heun sampler. EDM's final step to sigma = 0 is
`denoise_final=True` here. NFE = 2 N.
"""

import math

import jax
import jax.numpy as jnp

from visgen.samplers import base


@base.register('edm', stochastic=True,
               checks=(base.not_bridge, base.alpha_positive),
               summary="EDM's stochastic Heun sampler (S_churn, S_noise)")
def edm(view, x, ts, key, *, S_churn=0.0, S_min=0.0,  # noqa: N803
        S_max=float('inf'), S_noise=1.0):
  path = view.path
  n = ts.shape[0] - 1
  s_of = lambda t: path.sigma(t) / path.alpha(t)

  def eps_at(x_hat, t):
    return view.x0_eps(path.alpha(t) * x_hat, t)[1]

  def body(i, x_hat):
    t, t_next = ts[i], ts[i + 1]
    s_i = s_of(t)
    gamma = jnp.where((s_i >= S_min) & (s_i <= S_max),
                      jnp.minimum(S_churn / n, math.sqrt(2.0) - 1.0), 0.0)
    # The churned time; bisection-based inverses stop at t = 1, so the
    # actual s_hat is recomputed from it.
    t_hat = jnp.maximum(path.t_from_sigma(s_i * (1.0 + gamma)), t)
    t_hat = jnp.where(gamma > 0, t_hat, t)
    s_hat = s_of(t_hat)
    z = jax.random.normal(jax.random.fold_in(key, i), x_hat.shape)
    x_hat = x_hat + jnp.sqrt(jnp.maximum(s_hat**2 - s_i**2, 0.0)) * (
        S_noise * z)
    d = eps_at(x_hat, t_hat)
    ds = s_of(t_next) - s_hat
    x_euler = x_hat + ds * d
    d2 = eps_at(x_euler, t_next)
    return x_hat + ds * 0.5 * (d + d2)

  x_hat = jax.lax.fori_loop(0, n, body, x / path.alpha(ts[0]))
  return path.alpha(ts[-1]) * x_hat, dict(nfe=2 * n)
