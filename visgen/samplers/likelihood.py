"""Likelihoods: probability-flow ODE log-density, bits/dim, DDPM's VLB.

**PF-ODE likelihood.** Along the PF-ODE dx/dt = v(x, t) the marginal density
obeys d/dt log p_t(x_t) = -div v(x_t, t), hence

  log p_{t_min}(x) = log p_prior(x_{t_max}) + int_{t_min}^{t_max} div v dt,

integrating (x, int div v) forward from x at t_min (RK4 on a grid or adaptive
Dormand-Prince). The divergence is exact (D forward-mode JVPs against the
basis vectors, for small D; it assumes the denoiser treats examples
independently) or Hutchinson's estimate eps^T (dv/dx) eps with one
Rademacher or Gaussian probe per example held fixed along the trajectory
(unbiased; Score-SDE / FFJORD). The prior is the path's `prior_logp` at
t_max, which neglects alpha(t_max) x0 (see `Path.prior_sample`).

**Bits per dimension.** For 8-bit data k in {0..255} mapped to
x = k / 127.5 - 1, each value owns a bin of width Delta = 1 / 127.5. A
density p on the uniformly dequantised data gives P(k) ~= p(x) Delta, so
bpd = (nll_nats / D - log Delta) / ln 2 = (nll_nats / D + log 127.5) / ln 2.
(Score-SDE's [0, 1] scaling with (k + u) / 256 has Delta = 1/256 before the
[-1, 1] map, i.e. its "+ 8 - 1" bits.) A discrete NLL (e.g. the VLB below)
needs no offset: pass `bin_width=1`.

**DDPM variational bound** (Ho et al. 2020; Nichol & Dhariwal 2021) over the
discrete table alpha_bar_i, i = 0..T-1:
L = L_T + sum_{i=1}^{T-1} L_{i-1} + L_0 with L_T = KL(q(x_{T-1} | x0) ||
N(0, I)), L_{i-1} = KL(q(x_{i-1} | x_i, x0) || p(x_{i-1} | x_i)) and
L_0 = -log p(x0 | x_0-step) under the discretised Gaussian decoder (bins of
width 2/255 on [-1, 1], open-ended outer bins).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

from visgen.interpolants import get_path
from visgen.samplers import grids
from visgen.samplers import odeint
from visgen.samplers.denoiser import make_view


def _sum_except_batch(u):
  return jnp.sum(u.reshape(u.shape[0], -1), axis=-1)


# Divergences use reverse mode (vector-Jacobian products): the models' matmuls
# carry a custom VJP (bf16 operands with fp32 gradients), which forward mode
# cannot differentiate.


def exact_divergence(fn, x):
  """div fn at x (B, ...) for a function acting on each example separately."""
  shape = x.shape
  d = math.prod(shape[1:])
  _, vjp_fn = jax.vjp(fn, x)

  def row(i):
    e = jnp.broadcast_to(jax.nn.one_hot(i, d, dtype=x.dtype), (shape[0], d))
    return vjp_fn(e.reshape(shape))[0].reshape(shape[0], d)[:, i]

  return jnp.sum(jax.lax.map(row, jnp.arange(d)), axis=0)


def velocity_and_divergence(fn, x, probe=None):
  """(fn(x), div fn(x)): exact, or Hutchinson's eps^T (d fn / dx) eps (an
  unbiased estimate for E[eps eps^T] = I) when a probe is given."""
  v, vjp_fn = jax.vjp(fn, x)
  if probe is None:
    return v, exact_divergence(fn, x)
  return v, _sum_except_batch(probe * vjp_fn(probe)[0])


def hutchinson_divergence(fn, x, probe):
  """eps^T (d fn / dx) eps, an unbiased estimate of div fn for E[eps eps^T]
  = I."""
  return velocity_and_divergence(fn, x, probe)[1]


def ode_log_likelihood(denoise_fn, x, *, path, prediction, cond=None, y=None,
                       divergence='exact', probe='rademacher', key=None,
                       method='rk4', num_steps=100, grid='uniform', rtol=1e-5,
                       atol=1e-5, max_steps=2000):
  """log p_{t_min}(x) under the PF-ODE of the denoiser, in nats per example.

  Args:
    denoise_fn, path, prediction, cond, y: as for `samplers.sample`.
    x: data (B, ...) (taken as x_{t_min}).
    divergence: 'exact' or 'hutchinson'.
    probe: 'rademacher' or 'gaussian' (Hutchinson); needs `key`.
    method: 'rk4', 'heun', 'euler' on `grid` with `num_steps`, or 'dopri5'
      (adaptive, rtol / atol).

  Returns:
    (logp (B,), info) with info = {'nfe', 'prior_logp', 'delta_logp',
    'x_T'} (nfe counts velocity evaluations, each with its divergence).
  """
  path = get_path(path)
  view = make_view(denoise_fn, path=path, prediction=prediction, cond=cond,
                   y=y)
  if divergence == 'hutchinson':
    if key is None:
      raise ValueError('Hutchinson divergence needs `key` for its probes.')
    if probe == 'rademacher':
      eps = jax.random.rademacher(key, x.shape, jnp.float32)
    elif probe == 'gaussian':
      eps = jax.random.normal(key, x.shape)
    else:
      raise ValueError(f'Unknown probe {probe!r}. Valid choices: '
                       'gaussian, rademacher.')
  elif divergence != 'exact':
    raise ValueError(f'Unknown divergence {divergence!r}. Valid choices: '
                     'exact, hutchinson.')

  def rhs(t, state):
    xt, _ = state
    v_fn = lambda u: view.velocity(u, t)
    return velocity_and_divergence(
        v_fn, xt, None if divergence == 'exact' else eps)

  state0 = (x, jnp.zeros(x.shape[:1], jnp.float32))
  if method == 'dopri5':
    (x_T, delta), info = odeint.dopri5(
        rhs, state0, path.t_min, path.t_max, rtol=rtol, atol=atol,
        max_steps=max_steps)
    nfe = info['nfe']
  else:
    ts = grids.make_grid(grid, num_steps, path=path)[::-1]
    (x_T, delta), nfe = odeint.integrate_grid(method, rhs, state0, ts)
  prior = path.prior_logp(x_T, y=y)
  return prior + delta, dict(nfe=nfe, prior_logp=prior, delta_logp=delta,
                             x_T=x_T)


def bits_per_dim(nll_nats, *, dim, bin_width=1.0 / 127.5):
  """Bits per dimension of a per-example NLL in nats (see module docstring).

  `bin_width` is the dequantisation bin of one discrete value in the data's
  scale (1 / 127.5 for 8-bit data in [-1, 1]); use 1 for a discrete NLL.
  """
  return (jnp.asarray(nll_nats) / dim - math.log(bin_width)) / math.log(2.0)


def _normal_kl(mean1, logvar1, mean2, logvar2):
  return 0.5 * (logvar2 - logvar1 + jnp.exp(logvar1 - logvar2)
                + (mean1 - mean2) ** 2 * jnp.exp(-logvar2) - 1.0)


def _std_normal_cdf(u):
  return 0.5 * (1.0 + jax.scipy.special.erf(u / math.sqrt(2.0)))


def discretized_gaussian_log_likelihood(x, *, mean, log_scale):
  """log P(x) of 8-bit data in [-1, 1] under N(mean, exp(log_scale)^2)
  integrated over the value's bin (width 2/255; outer bins open-ended)."""
  inv = jnp.exp(-log_scale)
  upper = _std_normal_cdf(inv * (x - mean + 1.0 / 255.0))
  lower = _std_normal_cdf(inv * (x - mean - 1.0 / 255.0))
  log_upper = jnp.log(jnp.maximum(upper, 1e-12))
  log_one_minus_lower = jnp.log(jnp.maximum(1.0 - lower, 1e-12))
  log_mid = jnp.log(jnp.maximum(upper - lower, 1e-12))
  return jnp.where(x < -0.999, log_upper,
                   jnp.where(x > 0.999, log_one_minus_lower, log_mid))


def ddpm_vlb(denoise_fn, x0, *, key, path, prediction, cond=None,
             variance='posterior'):
  """The discrete-time VLB of a DDPM-style path, in nats per example.

  Evaluates every term (T - 1 network calls, one noise draw per step, as
  ADM's `calc_bpd_loop`).

  Args:
    x0: data on the 8-bit grid in [-1, 1], (B, ...).
    path: a discrete path ('ddpm_linear', 'ddpm_cosine' or a
      `DiscreteVPPath`) whose `alpha_bars()` gives the table.
    variance: the reverse variance, 'posterior' (beta-tilde) or 'beta'.
      The decoder at step 0 uses beta-tilde_1 for both, as ADM.

  Returns:
    dict(total, prior, decoder, terms) with `terms` (T - 1, B) the
    L_{i-1}, i = 1..T-1; total = prior + sum(terms) + decoder.
  """
  path = get_path(path)
  if not hasattr(path, 'alpha_bars'):
    raise ValueError(f'ddpm_vlb needs a discrete DDPM path with a table '
                     f"(ddpm_linear, ddpm_cosine), got {path.name!r}.")
  if variance not in ('posterior', 'beta'):
    raise ValueError(f'Unknown variance {variance!r}. Valid choices: '
                     'beta, posterior.')
  view = make_view(denoise_fn, path=path, prediction=prediction, cond=cond)
  ab = path.alpha_bars()
  big_t = ab.shape[0]
  ab_prev = np.concatenate([[1.0], ab[:-1]])
  betas = 1.0 - ab / ab_prev
  post_var = betas * (1.0 - ab_prev) / (1.0 - ab)
  coef_x0 = np.sqrt(ab_prev) * betas / (1.0 - ab)
  coef_xt = np.sqrt(1.0 - betas) * (1.0 - ab_prev) / (1.0 - ab)
  post_logvar = np.log(np.append(post_var[1], post_var[1:]))
  model_logvar = post_logvar if variance == 'posterior' else np.log(
      np.append(post_var[1], betas[1:]))
  tab = {k: jnp.asarray(v, jnp.float32) for k, v in dict(
      ab=ab, cx0=coef_x0, cxt=coef_xt, plv=post_logvar,
      mlv=model_logvar).items()}

  def q_sample(i, k):
    eps = jax.random.normal(k, x0.shape)
    return jnp.sqrt(tab['ab'][i]) * x0 + jnp.sqrt(1.0 - tab['ab'][i]) * eps

  def x0_hat(x_i, i):
    t = (i + 1.0) / big_t
    return view.x0_eps(x_i, t)[0]

  def term(_, i):
    x_i = q_sample(i, jax.random.fold_in(key, i))
    mu_q = tab['cx0'][i] * x0 + tab['cxt'][i] * x_i
    mu_p = tab['cx0'][i] * x0_hat(x_i, i) + tab['cxt'][i] * x_i
    kl = _normal_kl(mu_q, tab['plv'][i], mu_p, tab['mlv'][i])
    return None, _sum_except_batch(kl)

  _, terms = jax.lax.scan(term, None, jnp.arange(1, big_t))
  x_first = q_sample(0, jax.random.fold_in(key, 0))
  decoder = -_sum_except_batch(discretized_gaussian_log_likelihood(
      x0, mean=x0_hat(x_first, 0), log_scale=0.5 * tab['mlv'][0]))
  mean_t = jnp.sqrt(tab['ab'][-1]) * x0
  prior = _sum_except_batch(_normal_kl(
      mean_t, jnp.log(1.0 - tab['ab'][-1]), 0.0, 0.0))
  total = prior + jnp.sum(terms, axis=0) + decoder
  return dict(total=total, prior=prior, decoder=decoder, terms=terms)
