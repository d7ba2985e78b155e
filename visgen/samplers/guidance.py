"""Guidance as combinators over a denoiser callable (never inside models).

Every combinator takes `denoise_fn(x_t, t_B, cond) -> prediction` and returns
a callable of the same signature, so any sampler can use it; every scale is
an ordinary (traceable) value, so changing it under `jax.jit` does not
recompile.

* `cfg`: classifier-free guidance D = D_u + s (D_c - D_u) on all channels
  (the DiT/SiT pitfall of guiding only the first channels is avoided by
  construction). Every prediction kind is an affine function of the others
  at fixed (x_t, t) with coefficients that sum through, so the guided result
  is the same in every prediction space; `space` matters only for the
  rescale. Optional: an interval of t (Kynkaanniemi et al. 2024) outside
  which D_c is used, and Lin et al.'s (2023) guidance rescale phi, which
  matches the per-example std of the guided prediction to that of D_c.
* `classifier_guidance`: score <- score + s grad_x log p(c | x_t, t)
  (Dhariwal & Nichol's score form: for DDIM eps <- eps - sigma s grad), for
  ODE / SDE / DDIM samplers.
* `classifier_mean_shift`: ADM's ancestral form mu <- mu + s Sigma grad; pass
  it as `mean_shift=` to the 'ddpm' sampler.
"""

import jax
import jax.numpy as jnp

from visgen.interpolants import base
from visgen.objectives import predictions


def _replace(cond, null_cond):
  if callable(null_cond):
    return null_cond(cond)
  return {**(cond or {}), **null_cond}


def _per_example_std(u):
  flat = u.reshape(u.shape[0], -1)
  return base.bcast(jnp.std(flat, axis=-1), u)


def t_interval_from_sigma(path, sigma_lo, sigma_hi):
  """The t interval whose noise level s = sigma / alpha is in [lo, hi]."""
  return path.t_from_sigma(sigma_lo), path.t_from_sigma(sigma_hi)


def cfg(denoise_fn, scale, *, null_cond, t_interval=None, rescale=None,
        path=None, prediction=None, space='x0'):
  """Classifier-free guidance over `denoise_fn`.

  Args:
    denoise_fn: `(x_t, t_B, cond) -> prediction`.
    scale: guidance scale s (1 = conditional, 0 = unconditional); traceable.
    null_cond: dict of cond entries that make the call unconditional (e.g.
      {'label': null_label_B}), or a function cond -> unconditional cond.
    t_interval: optional (t_lo, t_hi): guide only for t in [t_lo, t_hi]
      (see `t_interval_from_sigma`), else return D_c.
    rescale: optional phi in [0, 1] of Lin et al. (2023); needs `path` and
      `prediction` (the kind `denoise_fn` returns) and rescales in `space`.
    path, prediction, space: for the rescale (and to guide in `space`).

  Returns:
    The guided denoiser, returning the same kind as `denoise_fn`.
  """
  if rescale is not None and (path is None or prediction is None):
    raise ValueError('cfg(rescale=...) needs path= and prediction= (the kind '
                     'denoise_fn returns) to rescale in prediction space '
                     f'{space!r}.')

  def guided(x_t, t, cond=None):
    d_c = denoise_fn(x_t, t, cond)
    d_u = denoise_fn(x_t, t, _replace(cond, null_cond))
    y = (cond or {}).get('y')
    to_space = lambda d: d
    from_space = lambda d: d
    if path is not None and prediction is not None:
      conv = lambda d, src, dst: predictions.convert(
          d, src=src, dst=dst, x_t=x_t, t=t, path=path, y=y)
      to_space = lambda d: conv(d, prediction, space)
      from_space = lambda d: conv(d, space, prediction)
    c, u = to_space(d_c), to_space(d_u)
    g = u + scale * (c - u)
    if rescale is not None:
      g_rescaled = g * _per_example_std(c) / _per_example_std(g)
      g = rescale * g_rescaled + (1.0 - rescale) * g
    if t_interval is not None:
      inside = (t >= t_interval[0]) & (t <= t_interval[1])
      g = jnp.where(base.bcast(inside, g), g, c)
    return from_space(g)

  return guided


def _grad_log_classifier(log_classifier, x_t, t, cond):
  return jax.grad(lambda x: jnp.sum(log_classifier(x, t, cond)))(x_t)


def classifier_guidance(denoise_fn, log_classifier, scale, *, path,
                        prediction):
  """Classifier guidance in score form: score + scale * grad log p(c | x_t).

  Args:
    log_classifier: `(x_t, t_B, cond) -> (B,)` log p(c | x_t, t) of the
      class in `cond` (any differentiable function; summed over the batch
      before `jax.grad`, so examples must not interact).
    scale: guidance scale (traceable); 1 turns an exact unconditional score
      plus an exact classifier into the exact conditional score.
    path, prediction: the path and the kind `denoise_fn` returns.
  """

  def guided(x_t, t, cond=None):
    y = (cond or {}).get('y')
    pred = denoise_fn(x_t, t, cond)
    score = predictions.convert(pred, src=prediction, dst='score', x_t=x_t,
                                t=t, path=path, y=y)
    score = score + scale * _grad_log_classifier(log_classifier, x_t, t, cond)
    return predictions.convert(score, src='score', dst=prediction, x_t=x_t,
                               t=t, path=path, y=y)

  return guided


def classifier_mean_shift(log_classifier, scale):
  """ADM's ancestral classifier guidance: returns `shift(x_t, t_B, cond) =
  scale * grad log p(c | x_t)`, which the 'ddpm' sampler adds to its
  posterior mean times the step variance (`mean_shift=`)."""

  def shift(x_t, t, cond=None):
    return scale * _grad_log_classifier(log_classifier, x_t, t, cond)

  return shift
