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

With a learned variance (improved DDPM, `variance='learned'`) the denoiser
returns [prediction, v] on the last axis (2C channels, a `learn_sigma`
model) and the step variance is exp(f log b + (1 - f) log c^2),
f = (v + 1) / 2, with b and c^2 of the step actually taken: on a grid of
fewer steps than training (iDDPM's respacing) they are recomputed between
the kept times, exactly as iDDPM recomputes its betas.
"""

import jax
import jax.numpy as jnp

from visgen.objectives import learned_variance as lv_lib
from visgen.objectives import predictions
from visgen.samplers import base


def _posterior(path, t, s):
  a = path.alpha(t) / path.alpha(s)
  a = jnp.where(jnp.isfinite(a), a, 0.0)
  sig_t2, sig_s2 = path.sigma(t) ** 2, path.sigma(s) ** 2
  b = jnp.maximum(sig_t2 - a**2 * sig_s2, 0.0)
  return a, b, sig_t2, sig_s2


def check_variance(path, options):
  del path
  variance = options.get('variance', 'posterior')
  if not callable(variance) and variance not in ('posterior', 'beta',
                                                 'learned'):
    return ('variance must be one of: posterior, beta, learned (a '
            'learn_sigma network), or a callable (x_t, t, s) -> variance')
  return None


@base.sampler(stochastic=True,
              checks=(base.not_bridge, check_variance),
              summary='DDPM ancestral sampling (posterior mean + noise)')
def ddpm(view, x, ts, key, *, variance='posterior', mean_shift=None,
         clip_x0=None):
  """Ancestral sampling on the grid ts.

  Args:
    variance: 'posterior' (beta-tilde, c^2 above), 'beta' (DDPM's upper
      choice b, the forward step variance), 'learned' (the denoiser returns
      [prediction, v]; see the module docstring) or a callable
      `(x_t, t, s) -> variance` broadcastable to x (e.g. an oracle's
      optimal variance in tests and experiments).
    mean_shift: optional `(x_t, t_B, cond) -> g` added as mu + var * g
      (classifier guidance in ADM's mean-shift form, see
      `visgen.samplers.guidance.classifier_mean_shift`).
    clip_x0: None, or a bound c: x0_hat is clipped to [-c, c] before the
      posterior mean (ADM / iDDPM's `clip_denoised` for images in [-1, 1]).
      It matters where alpha(t) is tiny (the cosine schedule has
      alpha(1) ~ 5e-5): an eps error there is amplified by 1 / alpha.
  """
  path = view.path

  def x0_and_v(x, t):
    if variance != 'learned':
      return view.x0_eps(x, t)[0], None
    t_b = view.t_batch(x, t)
    pred, v = lv_lib.split_output(view.denoise_fn(x, t_b, view.cond),
                                  x.shape[-1])
    x0, _ = predictions.to_x0_eps(pred, kind=view.prediction, x_t=x, t=t_b,
                                  path=path)
    return x0, v

  def body(i, x):
    t, s = ts[i], ts[i + 1]
    a, b, sig_t2, sig_s2 = _posterior(path, t, s)
    x0, v = x0_and_v(x, t)
    if clip_x0 is not None:
      x0 = jnp.clip(x0, -clip_x0, clip_x0)
    mu = (a * sig_s2 / sig_t2) * x + (path.alpha(s) * b / sig_t2) * x0
    if callable(variance):
      var = variance(x, t, s)
    elif variance == 'learned':
      # The smallest normal float32 keeps log finite where c^2 underflows.
      var = jnp.exp(lv_lib.interpolated_log_variance(
          v, log_beta=jnp.log(jnp.maximum(b, 1e-37)),
          log_beta_tilde=jnp.log(jnp.maximum(b * sig_s2 / sig_t2, 1e-37))))
    else:
      var = b * sig_s2 / sig_t2 if variance == 'posterior' else b
    if mean_shift is not None:
      mu = mu + var * mean_shift(x, view.t_batch(x, t), view.cond)
    z = jax.random.normal(jax.random.fold_in(key, i), x.shape, x.dtype)
    return mu + jnp.sqrt(var) * z

  n = ts.shape[0] - 1
  return jax.lax.fori_loop(0, n, body, x), dict(nfe=n)


@base.sampler(stochastic=True, checks=(base.not_bridge,),
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
