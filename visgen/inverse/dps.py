"""DPS: Diffusion Posterior Sampling (Chung et al. 2023) as a denoiser
combinator.

DPS approximates p(y | x_t) by p(y | x0 = x0_hat(x_t)) (Tweedie's mean
plugged into the likelihood, Chung et al. eq. 16) and adds its gradient to
the score through the network's Jacobian:

  grad_x log p(y | x_t) ~ -(1 / 2 sigma_y^2) grad_x ||y - H x0_hat(x_t)||^2.

In practice (Alg. 1, the reference code) the step is normalised:
zeta_i = zeta / ||y - H x0_hat||, i.e. the gradient of the *norm*. Both forms
are here, in the score form of `visgen.samplers.guidance` so any sampler
runs them unchanged:

  form='norm'      g = -grad_x ||y - H x0_hat(x_t)||          (DPS practice)
  form='gaussian'  g = -grad_x ||y - H x0_hat(x_t)||^2 / (2 sigma_y^2)

score' = score + scale * g. With form='gaussian' scale = 1 is the literal
approximation; with 'norm' the scale plays zeta's role per unit of score (the
reference's zeta applies to a DDPM step of size beta_t; here it multiplies
the score, so the same value does not carry over between grids). Each NFE is
one network call plus one vector-Jacobian product.
"""

import jax.numpy as jnp

from visgen.inverse import common
from visgen.inverse import operators as ops_lib
from visgen.validate import UserError


def dps(denoise_fn, operator: ops_lib.Operator, y, *, scale, path,
        prediction, form='norm', sigma_y=None):
  """The DPS-guided denoiser `(x_t, t_B, cond) -> prediction`.

  Args:
    denoise_fn: `(x_t, t_B, cond) -> prediction` on (B, *operator.x_shape).
    operator: the degradation H.
    y: measurements (B, *operator.y_shape).
    scale: the guidance weight (may be traced).
    path, prediction: the denoiser's path and kind.
    form: 'norm' (DPS's normalised step) or 'gaussian' (needs sigma_y > 0).
    sigma_y: measurement noise std (form='gaussian').
  """
  operator.check_y(y)
  if form not in ('norm', 'gaussian'):
    raise UserError(f"dps: form must be 'norm' or 'gaussian', got {form!r}.")
  if form == 'gaussian' and sigma_y is None:
    raise UserError("dps(form='gaussian') needs sigma_y (> 0).")

  def grad_fn(x0, t, vjp):
    del t
    r = y - operator.H(x0)
    g = vjp(operator.Ht(r))  # -grad ||r||^2 / 2
    if form == 'gaussian':
      return g / jnp.asarray(sigma_y, jnp.float32) ** 2
    norm = jnp.sqrt(jnp.sum(r.reshape(r.shape[0], -1) ** 2, -1))
    return g / jnp.maximum(norm, 1e-12).reshape((-1,) + (1,) * (g.ndim - 1))

  return common.likelihood_guidance(denoise_fn, grad_fn, scale=scale,
                                    path=path, prediction=prediction)
