"""DDRM: Denoising Diffusion Restoration Models (Kawar et al. 2022).

For y = H x0 + sigma_y n with H = U diag(s) V^T (`visgen.inverse.operators`),
DDRM runs the reverse process in the spectral coordinates xbar = V^T x of the
variance-exploding scaling x / alpha(t), whose noise level is
sigma~(t) = sigma(t) / alpha(t), with ybar = U^T y / s (where s > 0). Given the
network's x0_hat and eps_hat at x_t (any prediction kind and any path, through
the denoiser view), the next state at noise level sigma~' is, per spectral
coordinate i (Kawar et al. eq. 7-8, the reference `efficient_generalized_steps`):

  no singular value:     x0bar + sqrt(1 - eta^2) sigma~' epsbar + eta sigma~' z
  s sigma~' < sigma_y:   x0bar + sqrt(1 - eta^2) sigma~' (s ybar - s x0bar)
                           / sigma_y + eta sigma~' z
  s sigma~' >= sigma_y:  (1 - eta_b) x0bar + eta_b ybar
                           + sqrt(sigma~'^2 - eta_b^2 sigma_y^2 / s^2) z

and x_{t'} = alpha(t') V xbar'. The last step goes to sigma~' = 0 (the
reference's alpha-bar = 1 after its last timestep), so the output is a
restoration, not a noisy state; NFE = len(ts). The initial state follows the
paper's q(x_T | y): ybar + sqrt(sigma~_T^2 - sigma_y^2 / s^2) z where
s sigma~_T > sigma_y, sigma~_T z elsewhere (the reference code's N(0, I) in
the VP scaling, to the prior's accuracy).

DDRM is an approximate posterior sampler even with an exact denoiser: the
denoiser is the unconditional E[x0 | x_t], which sees y only through the
re-noised coordinates ybar + noise (so where the missing coordinates settle a
multimodal prior's mode, the observation is still blurred: inpainting a
separated mixture lands in wrong modes), and eta is a per-step fraction of
fresh noise, so the chain does not converge to p(x | y) as NFE grows (eta = 1
even drifts away). For a Gaussian prior its output law is closed form
(`visgen.inverse.exact.ddrm_gaussian_law`, checked in tests/test_inverse.py).

Paths: every path with alpha(t) > 0 on the grid. VP / DDPM paths (the paper's
setting), sub-VP, VE / NCSN and EDM (alpha = 1, sigma~ = sigma) run as is;
rectified flow and GVP have alpha(1) = 0 (sigma~ infinite), so their grid must
start below t = 1 (e.g. `get_path('linear', t_max=0.999)`, sigma~ = 999): the
function refuses a grid whose first alpha is not positive. Bridges are not
supported.
"""

import jax
import jax.numpy as jnp

from visgen.inverse import operators as ops_lib
from visgen.samplers import denoiser as denoiser_lib
from visgen.validate import UserError


def _check(path, ts):
  if path.is_bridge:
    raise UserError(f'DDRM is defined for ordinary paths; {path.name!r} is a '
                    'bridge.')
  with jax.ensure_compile_time_eval():
    try:
      a0 = float(path.alpha(jnp.float32(ts[0])))
    except (jax.errors.ConcretizationTypeError,
            jax.errors.TracerArrayConversionError):
      return  # A traced grid: the caller vouches for it.
  if not a0 > 1e-6:
    raise UserError(
        f'DDRM works in the scaling x / alpha(t), and alpha(ts[0]) = {a0:.3g} '
        f'on path {path.name!r}. Start the grid below t = 1: build the path '
        f"with t_max < 1 (e.g. get_path('{path.name}', t_max=0.999)) before "
        'make_grid.')


def ddrm(denoise_fn, operator: ops_lib.Operator, y, *, path, prediction, ts,
         key, sigma_y, eta=0.85, eta_b=1.0, cond=None, x_init=None):
  """Restores x from y = H x + sigma_y n with DDRM.

  Args:
    denoise_fn: `(x_t, t_B, cond) -> prediction` of kind `prediction` on
      images of shape (B, *operator.x_shape) (wrap a flat model with
      `visgen.inverse.reshaped`).
    operator: the degradation H (`visgen.inverse.operators`).
    y: measurements (B, *operator.y_shape).
    path: the path the denoiser was trained on (alpha > 0 on the grid).
    prediction: the kind `denoise_fn` returns.
    ts: decreasing times (traced is fine), e.g. `samplers.make_grid(...)`;
      the first is where x_T is drawn. NFE = len(ts).
    key: PRNG key.
    sigma_y: measurement noise std (>= 0, may be traced).
    eta, eta_b: DDRM's eta (noise of the unobserved / less noisy
      coordinates) and eta_b (weight of y on the noisier ones); the paper's
      defaults 0.85 and 1. May be traced.
    cond: conditioning dict passed to the denoiser (e.g. the null label).
    x_init: optional state at ts[0] (default: q(x_T | y) above).

  Returns:
    (x0 restorations (B, *x_shape), info dict with 'nfe').
  """
  view = denoiser_lib.make_view(denoise_fn, path=path, prediction=prediction,
                                cond=cond)
  operator.check_y(y)
  ts = jnp.asarray(ts, jnp.float32)
  if ts.ndim != 1 or ts.shape[0] < 1:
    raise UserError(f'ts must be a 1-D grid, got shape {ts.shape}.')
  _check(path, ts)
  n_b = y.shape[0]
  s = operator.singulars
  support = jnp.asarray(operator.support)
  s_safe = jnp.where(s > 0, s, 1.0)
  sigma_y = jnp.asarray(sigma_y, jnp.float32)
  eta = jnp.asarray(eta, jnp.float32)
  eta_b = jnp.asarray(eta_b, jnp.float32)
  uty = operator.Ut(y)  # (B, D): s * ybar on the support, 0 elsewhere
  ybar = jnp.where(support & (s > 0), uty / s_safe, 0.0)
  alphas = path.alpha(ts)
  sig_ve = path.sigma(ts) / alphas
  alpha_next = jnp.concatenate([alphas[1:], jnp.ones((1,), jnp.float32)])
  sig_next = jnp.concatenate([sig_ve[1:], jnp.zeros((1,), jnp.float32)])
  k_init, k_run = jax.random.split(key)

  if x_init is None:
    z = jax.random.normal(k_init, (n_b, operator.dim))
    noisier = support & (s * sig_ve[0] > sigma_y)
    var = jnp.maximum(sig_ve[0] ** 2 - sigma_y**2 / s_safe**2, 0.0)
    zbar = jnp.where(noisier, ybar + jnp.sqrt(var) * z, sig_ve[0] * z)
    x_init = alphas[0] * operator.V(zbar)
  else:
    operator.check_x(x_init)

  def body(i, x):
    x0, eps = view.x0_eps(x, ts[i])
    x0b, epsb = operator.Vt(x0), operator.Vt(eps)
    sn = sig_next[i]
    z = jax.random.normal(jax.random.fold_in(k_run, i), x0b.shape)
    # Eq. 7's cases are sigma~' < sigma_y / s and sigma~' >= sigma_y / s: the
    # tie belongs to the y branch. It occurs for sigma_y = 0 at the last step
    # (sigma~' = 0), where the observed coordinates must come out as ybar
    # (eta_b = 1), not as the denoiser's x0bar.
    before = support & (s * sn >= sigma_y)  # noisier than y (or tied)
    after = support & (s * sn < sigma_y)  # less noisy than y
    keep = jnp.sqrt(jnp.maximum(1.0 - eta**2, 0.0)) * sn
    missing_next = x0b + keep * epsb + eta * sn * z
    resid = (uty - s * x0b) / jnp.where(sigma_y > 0, sigma_y, 1.0)
    after_next = x0b + keep * resid + eta * sn * z
    var_b = jnp.maximum(sn**2 - eta_b**2 * sigma_y**2 / s_safe**2, 0.0)
    before_next = ((1.0 - eta_b) * x0b + eta_b * ybar
                   + jnp.sqrt(var_b) * z)
    zn = jnp.where(before, before_next,
                   jnp.where(after, after_next, missing_next))
    return alpha_next[i] * operator.V(zn)

  x = jax.lax.fori_loop(0, ts.shape[0], body, x_init)
  return x, dict(nfe=ts.shape[0])
