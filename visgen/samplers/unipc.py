"""UniPC (Zhao et al. 2023): multistep predictor UniP-p with corrector UniC-p.

Data-prediction form, lambda = log(alpha / sigma), one denoiser call per
step (NFE = N). At step i, with x_i and the denoised m_i = x0_hat(x_i, t_i):

1. corrector (i > 0, `corrector=True`): recompute x_i from x_{i-1} with the
   same exponential-integrator step that produced it, now also using m_i
   (UniC-p, order p of that step; m_i is not re-evaluated, so it costs no
   NFE);
2. predictor UniP-p from t_i to t_{i+1} with the p - 1 previous
   data predictions.

With h = lambda_{i+1} - lambda_i, r_k = (lambda_{i-k} - lambda_i) / h,
D_k = (m_{i-k} - m_i) / r_k, B(h) = -h ('bh1') or e^{-h} - 1 ('bh2'), the
step is x_{i+1} = sigma_{i+1} / sigma_i x_i - alpha_{i+1} (e^{-h} - 1) m_i
- alpha_{i+1} B(h) sum_k rho_k D_k, where rho solves the order conditions
sum_k rho_k r_k^(j-1) = j! g_j(-h) / B(h), j = 1..p-1 (g_j: multistep.
g_coeffs), UniP-2 takes rho = 1/2, and UniC-p appends (r = 1, D = m_{i+1} -
m_i) and solves all p conditions (UniC-1: rho = 1/2). This is diffusers'
`UniPCMultistepScheduler` (predict_x0, solver_order = `order`,
solver_type = `variant`, lower_order_final) on any grid and any path; the
orders ramp up over the first steps (warm-up). A final step to sigma = 0 is
first order (its output is the data prediction m_{N-1}).
"""

import math

import jax
import jax.numpy as jnp

from visgen.samplers import base
from visgen.samplers import multistep as ms

VARIANTS = ('bh1', 'bh2')


def _b_h(hh, variant):
  return hh if variant == 'bh1' else jnp.expm1(hh)


def _safe(r):
  return jnp.where(r == 0.0, 1.0, r)


def _step_terms(hist_lam, lam, variant, p):
  """(hh = -h, B(h), r_k = (lam_{i-k} - lam_i) / h for k < p) of a step
  from hist_lam[0] to lam (UniPC's notation, Zhao et al. 2023)."""
  h = lam - hist_lam[0]
  rks = [_safe((hist_lam[k] - hist_lam[0]) / h) for k in range(1, p)]
  return -h, _b_h(-h, variant), rks


def _rho_solve(hh, b_h, nodes, n):
  """rho solving sum_k rho_k r_k^j = g_j (j + 1)! / B(h), j < n."""
  g = ms.g_coeffs(hh, n)
  b = [g[j] * math.factorial(j + 1) / b_h for j in range(n)]
  return ms.solve_small([[r**j for r in nodes] for j in range(n)], b)


def _add_differences(w, alpha, b_h, rhos, rks):
  """Adds UniPC's -alpha B(h) sum_k rho_k D_k / r_k, D_k = m_{i-k} - m_i,
  as weights on m_{i-k} (w[k + 1]) and m_i (w[1])."""
  for k, (rho, r) in enumerate(zip(rhos, rks), start=1):
    coef = alpha * b_h * rho / r
    w[k + 1] = w[k + 1] - coef
    w[1] = w[1] + coef
  return w


def _predictor_weights(p, hist_lam, lam_next, c_x, c_0, alpha_next, variant,
                       max_order):
  """Weights on [x_i, m_i, m_{i-1}, ...] of UniP-p (length max_order + 1)."""
  w = [c_x, c_0] + [jnp.zeros(())] * (max_order - 1)
  if p == 1:
    return w
  hh, b_h, rks = _step_terms(hist_lam, lam_next, variant, p)
  rhos = ([jnp.asarray(0.5)] if p == 2 else
          _rho_solve(hh, b_h, rks, p - 1))
  return _add_differences(w, alpha_next, b_h, rhos, rks)


def _corrector_weights(p, hist_lam, lam_cur, c_x, c_0, alpha_cur, variant,
                       max_order):
  """Weights on [x_{i-1}, m_{i-1}, m_{i-2}, ..., m_i] of UniC-p."""
  w = [c_x, c_0] + [jnp.zeros(())] * (max_order - 1) + [jnp.zeros(())]
  hh, b_h, rks = _step_terms(hist_lam, lam_cur, variant, p)
  rhos = ([jnp.asarray(0.5)] if p == 1 else
          _rho_solve(hh, b_h, rks + [jnp.ones(())], p))
  w = _add_differences(w, alpha_cur, b_h, rhos[:-1], rks)
  coef = alpha_cur * b_h * rhos[-1]  # D = m_i - m_{i-1}, r = 1
  w[-1] = w[-1] - coef
  w[1] = w[1] + coef
  return w


def _select(order, weight_lists):
  """Picks weight_lists[order - 1] elementwise for a traced order."""
  out = []
  for parts in zip(*weight_lists):
    val = parts[0]
    for p, part in enumerate(parts[1:], start=2):
      val = jnp.where(order == p, part, val)
    out.append(val)
  return out


def check_unipc(path, options):
  reason = base.not_bridge(path, options)
  if reason:
    return reason
  if options.get('variant', 'bh2') not in VARIANTS:
    return f"variant must be one of {', '.join(VARIANTS)}"
  if options.get('order', 3) not in (1, 2, 3):
    return 'order must be 1, 2 or 3'
  return None


@base.sampler(stochastic=False, checks=(check_unipc,),
              summary='UniPC multistep (UniP-p + UniC-p), bh1/bh2')
def unipc(view, x, ts, key, *, order=3, variant='bh2', corrector=True,
          lower_order_final=True):
  """UniPC over the grid `ts` (see the module docstring); NFE = N.

  Args:
    order: UniP/UniC order p (1, 2 or 3; static). 3 (UniPC's choice for
      unconditional sampling) was the most accurate per NFE on exact
      mixtures; diffusers' default, 2, is UniPC's advice under strong
      guidance.
    variant: 'bh1' (B(h) = h) or 'bh2' (B(h) = e^h - 1).
    corrector: apply UniC (free: it reuses the next step's evaluation).
    lower_order_final: at most order N - i at step i (diffusers' default).
  """
  del key
  path = view.path
  n = ts.shape[0] - 1
  max_order = order
  lam = ms.lambdas(path, ts)

  def body(i, carry):
    x, x_prev, hist, hist_lam = carry
    t = ts[i]
    m = view.x0_eps(x, t)[0]
    if corrector and max_order >= 1:
      t_prev = ts[jnp.maximum(i - 1, 0)]
      c_x, c_0 = ms.first_order(path, t_prev, t)
      # UniC-p uses the order p of the step that produced x_i.
      p_prev = _order_at(i - 1, n, max_order, lower_order_final)
      weights = _select(p_prev, [
          _corrector_weights(p, hist_lam, lam[i], c_x, c_0, path.alpha(t),
                             variant, max_order)
          for p in range(1, max_order + 1)])
      x_c = ms.combine(weights, [x_prev] + list(hist) + [m])
      x = jnp.where((i > 0) & (lam[i] - hist_lam[0] > ms.MIN_H), x_c, x)
    hist = (m,) + tuple(hist[:-1])
    hist_lam = jnp.concatenate([lam[i][None], hist_lam[:-1]])
    t_next = ts[i + 1]
    p_now = _order_at(i, n, max_order, lower_order_final)
    p_now = jnp.where(ms.is_data_end(path, t_next)
                      | (lam[i + 1] - lam[i] <= ms.MIN_H), 1, p_now)
    c_x, c_0 = ms.first_order(path, t, t_next)
    weights = _select(p_now, [
        _predictor_weights(p, hist_lam, lam[i + 1], c_x, c_0,
                           path.alpha(t_next), variant, max_order)
        for p in range(1, max_order + 1)])
    x_next = ms.combine(weights, [x] + list(hist))
    return x_next, x, hist, hist_lam

  hist = tuple(jnp.zeros_like(x) for _ in range(max_order))
  # Placeholder lambdas (distinct, so that unused branches stay finite).
  hist_lam = lam[0] - 1.0 - jnp.arange(max_order, dtype=jnp.float32)
  x, _, _, _ = jax.lax.fori_loop(0, n, body, (x, x, hist, hist_lam))
  return x, dict(nfe=n)


def _order_at(i, n, max_order, lower_order_final):
  """Order of the step i -> i + 1: warm-up min(p, i + 1), and with
  lower_order_final at most n - i (the steps left)."""
  p = jnp.minimum(max_order, i + 1)
  if lower_order_final:
    p = jnp.minimum(p, n - i)
  return jnp.maximum(p, 1)
