"""DDPM ancestral sampling and DDIM, for any ordinary (non-bridge) path.

Between grid times s < t the forward process of a path is Markov with
x_t | x_s ~ N(a x_s, b I), a = alpha_t / alpha_s, b = sigma_t^2 - a^2 sigma_s^2
(DDPM's 1 - beta and beta on consecutive steps of its table). The posterior is

  q(x_s | x_t, x0) = N(mu, c^2 I),  mu = a sigma_s^2 / sigma_t^2 x_t
                                        + alpha_s b / sigma_t^2 x0,
                     c^2 = b sigma_s^2 / sigma_t^2     (DDPM's beta-tilde),

and DDPM ancestral sampling plugs x0_hat into mu. DDIM (Song et al. 2021)
keeps the marginals for any eta in [0, 1]:
x_s = alpha_s x0_hat + sqrt(sigma_s^2 - eta^2 c^2) eps_hat + eta c z,
so eta = 1 is DDPM with the beta-tilde variance and eta = 0 is deterministic.
Both are exact on the first step of rectified flow (alpha_t = 0 gives a = 0).
"""

import jax
import jax.numpy as jnp

from visgen.samplers import base


def _posterior(path, t, s):
  a = path.alpha(t) / path.alpha(s)
  a = jnp.where(jnp.isfinite(a), a, 0.0)
  sig_t2, sig_s2 = path.sigma(t) ** 2, path.sigma(s) ** 2
  b = jnp.maximum(sig_t2 - a**2 * sig_s2, 0.0)
  return a, b, sig_t2, sig_s2


def check_variance(path, options):
  del path
  if options.get('variance', 'posterior') not in ('posterior', 'beta'):
    return 'variance must be one of: posterior, beta'
  return None


@base.register('ddpm', stochastic=True,
               checks=(base.not_bridge, check_variance),
               summary='DDPM ancestral sampling (posterior mean + noise)')
def ddpm(view, x, ts, key, *, variance='posterior', mean_shift=None):
  """Ancestral sampling on the grid ts.

  Args:
    variance: 'posterior' (beta-tilde, c^2 above) or 'beta' (DDPM's upper
      choice b, the forward step variance).
    mean_shift: optional `(x_t, t_B, cond) -> g` added as mu + var * g
      (classifier guidance in ADM's mean-shift form, see
      `visgen.samplers.guidance.classifier_mean_shift`).
  """
  path = view.path

  def body(i, x):
    t, s = ts[i], ts[i + 1]
    a, b, sig_t2, sig_s2 = _posterior(path, t, s)
    x0, _ = view.x0_eps(x, t)
    mu = (a * sig_s2 / sig_t2) * x + (path.alpha(s) * b / sig_t2) * x0
    var = b * sig_s2 / sig_t2 if variance == 'posterior' else b
    if mean_shift is not None:
      mu = mu + var * mean_shift(x, view.t_batch(x, t), view.cond)
    z = jax.random.normal(jax.random.fold_in(key, i), x.shape, x.dtype)
    return mu + jnp.sqrt(var) * z

  n = ts.shape[0] - 1
  return jax.lax.fori_loop(0, n, body, x), dict(nfe=n)


@base.register('ddim', stochastic=True, checks=(base.not_bridge,),
               summary='DDIM with eta (0: deterministic, 1: DDPM)')
def ddim(view, x, ts, key, *, eta=0.0):
  path = view.path

  def body(i, x):
    t, s = ts[i], ts[i + 1]
    _, b, sig_t2, sig_s2 = _posterior(path, t, s)
    c2 = eta**2 * b * sig_s2 / sig_t2
    x0, eps = view.x0_eps(x, t)
    z = jax.random.normal(jax.random.fold_in(key, i), x.shape, x.dtype)
    return (path.alpha(s) * x0 + jnp.sqrt(jnp.maximum(sig_s2 - c2, 0.0)) * eps
            + jnp.sqrt(c2) * z)

  n = ts.shape[0] - 1
  return jax.lax.fori_loop(0, n, body, x), dict(nfe=n)
