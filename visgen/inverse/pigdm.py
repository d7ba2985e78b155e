"""Pi-GDM: pseudoinverse-guided diffusion models (Song et al. 2023, ICLR) as
a denoiser combinator.

Pi-GDM approximates p(x0 | x_t) by N(x0_hat(x_t), r_t^2 I), so that
p(y | x_t) ~ N(H x0_hat, r_t^2 H H^T + sigma_y^2 I) and (eq. 7-8)

  grad_x log p(y | x_t) ~ (d x0_hat / d x_t)^T H^T
                          (r_t^2 H H^T + sigma_y^2 I)^{-1} (y - H x0_hat),

a vector-Jacobian product. With H = U diag(s) V^T the inverse is diagonal:
H^T (r^2 H H^T + sigma_y^2)^{-1} r = V diag(s / (r^2 s^2 + sigma_y^2)) U^T r
(for sigma_y = 0 this is the pseudo-inverse H^+ the method is named after,
scaled by 1 / r^2). r_t^2 = v sigma~^2 / (v + sigma~^2) with sigma~ =
sigma(t) / alpha(t), the posterior variance of x0 under a N(0, v I) prior
(Pi-GDM's r_t^2 = sigma_t^2 / (1 + sigma_t^2) is v = 1); `data_var` sets v.
The gradient is added to the score (`scale` = 1 is the method; the paper
multiplies it by a schedule-dependent weight in its DDIM form, which the
score form already contains).
"""

import jax.numpy as jnp

from visgen.inverse import common
from visgen.inverse import operators as ops_lib


def pigdm(denoise_fn, operator: ops_lib.Operator, y, *, path, prediction,
          sigma_y, scale=1.0, data_var=1.0):
  """The Pi-GDM-guided denoiser `(x_t, t_B, cond) -> prediction`.

  Args:
    denoise_fn: `(x_t, t_B, cond) -> prediction` on (B, *operator.x_shape).
    operator: the degradation H (its SVD is used).
    y: measurements (B, *operator.y_shape).
    path, prediction: the denoiser's path and kind.
    sigma_y: measurement noise std (>= 0, may be traced).
    scale: guidance weight (1: the method), may be traced.
    data_var: v in r_t^2 = v sigma~^2 / (v + sigma~^2) (1 for data scaled to
      unit variance, as the paper assumes).
  """
  operator.check_y(y)
  s = operator.singulars
  uty = operator.Ut(y)

  def grad_fn(x0, t, vjp):
    alpha, sigma = path.alpha(t), path.sigma(t)
    sig2 = (sigma / alpha) ** 2  # (B,)
    r2 = (data_var * sig2 / (data_var + sig2))[:, None]
    resid = uty - operator.Ut(operator.H(x0))  # U^T (y - H x0_hat)
    den = r2 * s**2 + jnp.asarray(sigma_y, jnp.float32) ** 2
    coef = jnp.where(s > 0, s / jnp.where(den > 0, den, 1.0), 0.0)
    return vjp(operator.V(coef * resid))

  return common.likelihood_guidance(denoise_fn, grad_fn, scale=scale,
                                    path=path, prediction=prediction)
