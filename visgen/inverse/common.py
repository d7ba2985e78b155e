"""Shared pieces of the inverse-problem solvers: the likelihood-guidance core
of DPS and Pi-GDM, and a reshaping wrapper for flat models."""

import jax
import jax.numpy as jnp

from visgen.interpolants import base
from visgen.objectives import predictions
from visgen.validate import UserError


def reshaped(denoise_fn, *, model_shape, x_shape):
  """`denoise_fn` on (B, *model_shape) seen as a denoiser on (B, *x_shape)
  (e.g. a flat 64-vector MLP as an 8x8x1 image for the operators)."""
  model_shape, x_shape = tuple(model_shape), tuple(x_shape)

  def fn(x, t, cond=None):
    out = denoise_fn(x.reshape((x.shape[0],) + model_shape), t, cond)
    return out.reshape((x.shape[0],) + x_shape + out.shape[1 + len(
        model_shape):])

  return fn


def likelihood_guidance(denoise_fn, grad_fn, *, scale, path, prediction,
                        alpha_min=1e-4):
  """score' = score + scale * g with g = grad_fn(...) ~ grad_x log p(y | x_t).

  `grad_fn(x0_hat, t_B, vjp)` returns g (B, ...): `vjp(v)` is
  (d x0_hat / d x_t)^T v, the vector-Jacobian product through the network
  (one backward pass; examples do not interact, so the batch-summed VJP is
  per example). As in `visgen.samplers.guidance.classifier_guidance` the
  shifted score is returned in the denoiser's kind: eps' = eps - sigma w g,
  x0' = x0 + sigma^2 / alpha w g; unguided where alpha(t) <= alpha_min.
  """
  if path.is_bridge:
    raise UserError(f'Likelihood guidance is defined here for ordinary '
                    f'paths; {path.name!r} is a bridge.')
  predictions.check_kind(prediction)

  def fn(x_t, t, cond=None):
    def x0_of(x):
      pred = denoise_fn(x, t, cond)
      x0, eps = predictions.to_x0_eps(pred, kind=prediction, x_t=x, t=t,
                                      path=path)
      return x0, eps

    x0, vjp_fn, eps = jax.vjp(x0_of, x_t, has_aux=True)
    g = grad_fn(x0, t, lambda v: vjp_fn(v)[0])
    alpha, sigma = path.alpha(t), path.sigma(t)
    ok = alpha > alpha_min
    g = jnp.where(base.bcast(ok, g), g, 0.0)
    w = jnp.where(ok, jnp.asarray(scale, jnp.float32), 0.0)
    d_eps = base.bcast(-sigma * w, g) * g
    d_x0 = base.bcast(sigma**2 * w / jnp.where(ok, alpha, 1.0), g) * g
    x0 = jax.lax.stop_gradient(x0)
    return predictions.target(prediction, x0=x0 + d_x0, eps=eps + d_eps,
                              t=t, path=path)

  return fn
