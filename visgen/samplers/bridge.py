"""DDBM's hybrid sampler for diffusion bridges (Zhou et al. 2023).

With the source y fixed, z = x_t - gamma(t) y follows the ordinary path
(alpha, sigma) of p(x0 | y), so the reverse SDE and the PF-ODE of
`sde.py` / `ode.py` hold for the bridge after the shift (velocity gains
gamma' y). Each step t_i -> t_{i+1} is DDBM's `sample_heun`:

1. an Euler-Maruyama step of the reverse SDE with w = g (the path's own
   forward SDE, which is DDBM's h-transformed SDE) from t_i to
   t_hat = t_i + r (t_{i+1} - t_i), r = `churn_step_ratio` (DDBM: 0.33);
2. a Heun step of the PF-ODE from t_hat to t_{i+1}.

The first step is therefore stochastic, which is what makes the samples of
one source diverse. DDBM's last step to sigma = 0 is Euler; here the grid
ends at t_min > 0 and `denoise_final=True` returns E[x0 | x_{t_min}, y].
NFE = 3 N. DDBM zeroes the y-attraction term of its VE stochastic step; we
keep the exact reverse SDE, which preserves the bridge marginals.
"""

import jax

from visgen.samplers import base
from visgen.samplers import sde


def _bridge_only(path, options):
  del options
  if not path.is_bridge:
    return ("it is DDBM's bridge sampler; for ordinary paths use 'edm' "
            "(the same Heun + churn idea) or 'euler_maruyama'.")
  return None


@base.sampler(stochastic=True,
              checks=(_bridge_only, base.alpha_positive),
              summary="DDBM's hybrid sampler: stochastic step + Heun")
def bridge_heun(view, x, ts, key, *, churn_step_ratio=0.33):
  def body(i, x):
    t, t_next = ts[i], ts[i + 1]
    t_hat = t + churn_step_ratio * (t_next - t)
    x, _ = sde.em_step(view, x, t, t_hat, jax.random.fold_in(key, i),
                       'sde', 1.0)
    h = t_next - t_hat
    d = view.velocity(x, t_hat)
    d2 = view.velocity(x + h * d, t_next)
    return x + 0.5 * h * (d + d2)

  n = ts.shape[0] - 1
  return jax.lax.fori_loop(0, n, body, x), dict(nfe=3 * n)
