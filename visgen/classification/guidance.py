"""Guidance combinators for class-conditional sampling.

Each combinator wraps a denoiser `(x_t, t_B, cond) -> prediction` and returns
another of the same kind, so every sampler works with it unchanged. Scales and
intervals are plain arguments that may be traced values: build the wrapped
denoiser *inside* the jitted sampling function and a new scale never
recompiles.

Classifier-free guidance (Ho & Salimans 2022), DiT's convention:

  D_s = D(x, t, null) + s (D(x, t, y) - D(x, t, null)),

so s = 1 is the plain conditional model and s = 0 the unconditional one (ADM
and Ho & Salimans write (1 + w) D_y - w D_null: w = s - 1). The combination
is affine in the prediction, so it is the same guided score whatever the
prediction kind. Options:
  * `channels`: guide only the first `channels` entries of the last axis and
    keep the conditional prediction elsewhere -- DiT's `forward_with_cfg`
    guides 3 of its 4 latent channels (DiT#41; scale 1.5 on 3 channels is
    about 1.375 on all 4). Default None guides every channel; use the flag
    only to reproduce DiT/SiT numbers.
  * `rescale` phi (Lin et al. 2024, "Common diffusion noise schedules...",
    Alg. 2): D <- phi D_s std(D_y) / std(D_s) + (1 - phi) D_s with per-example
    standard deviations, in the space of `rescale_kind` (default the
    denoiser's own kind; Lin et al. use v).
  * `interval` (t_lo, t_hi) (Kynkaanniemi et al. 2024): guide only for
    t_lo <= t <= t_hi, plain conditional elsewhere. For a sigma interval pass
    the times of those sigmas on the path.

Classifier guidance (Dhariwal & Nichol 2021, ADM `condition_score` and
`condition_mean`) with a log-classifier `log_prob_fn(x_t, t_B, labels_B) ->
log p(y | x_t, t) (B,)`:
  * score form (ODE / SDE / DDIM samplers): score' = score + s grad_x log
    p(y | x_t), i.e. eps' = eps - sigma s grad, x0' = x0 + sigma^2 / alpha
    s grad at fixed x_t (`classifier_guided`);
  * mean-shift form (DDPM ancestral): mu' = mu + Sigma s grad
    (`classifier_mean_shift`, passed as the 'ddpm' sampler's `mean_shift`).
Where alpha(t) ~ 0 (the prior end of rectified flow) x_t carries no
information about y and the x0 shift sigma^2 / alpha grad is undefined:
there the score form leaves the prediction unguided.
"""

from typing import Callable, Sequence

import jax
import jax.numpy as jnp

from visgen.interpolants import base
from visgen.objectives import predictions


def _in_interval(t_B, interval):
  if interval is None:
    return jnp.ones(t_B.shape, bool)
  lo, hi = interval
  return (t_B >= lo) & (t_B <= hi)


def _per_example(v_B, x):
  return base.bcast(v_B, x)


def combine_cfg(cond_out, uncond_out, *, scale, t_B=None, channels=None,
                rescale=0.0, interval=None):
  """The guided prediction from conditional and null-class predictions.

  Args:
    cond_out: D(x, t, y), (B, ...).
    uncond_out: D(x, t, null), same shape.
    scale: s (scalar, may be traced); s = 1 returns cond_out.
    t_B: the times, needed with `interval`.
    channels: guide only the first `channels` entries of the last axis.
    rescale: phi in [0, 1] (0: off); may be traced.
    interval: (t_lo, t_hi) where guidance applies (may be traced).

  Returns:
    The guided prediction, same shape as `cond_out`.
  """
  s = jnp.asarray(scale, jnp.float32)
  if interval is not None:
    if t_B is None:
      raise ValueError('combine_cfg(interval=...) needs the times t_B.')
    s = jnp.where(_in_interval(t_B, interval), s, 1.0)
    s = _per_example(s, cond_out)
  guided = uncond_out + s * (cond_out - uncond_out)
  if channels is not None:
    c = int(channels)
    if not 0 < c <= cond_out.shape[-1]:
      raise ValueError(f'channels={c} must be in [1, {cond_out.shape[-1]}] '
                       f'(the last axis of the prediction).')
    mask = jnp.arange(cond_out.shape[-1]) < c
    guided = jnp.where(mask, guided, cond_out)
  if isinstance(rescale, (int, float)) and rescale == 0.0:
    return guided
  axes = tuple(range(1, cond_out.ndim))
  std_c = jnp.std(cond_out, axis=axes, keepdims=True)
  std_g = jnp.std(guided, axis=axes, keepdims=True)
  rescaled = guided * std_c / jnp.maximum(std_g, 1e-12)
  return rescale * rescaled + (1.0 - rescale) * guided


def cfg(denoise_fn: Callable, *, scale, null_class: int,
        channels: int | None = None, rescale=0.0,
        interval: Sequence | None = None, path=None,
        prediction: str | None = None,
        rescale_kind: str | None = None) -> Callable:
  """Classifier-free guidance: one batched call on the (y, null) halves.

  Args:
    denoise_fn: `(x_t, t_B, cond) -> prediction`; cond['label'] (B,) int.
    scale: s, may be traced (s = 1: conditional, s = 0: unconditional).
    null_class: the null label (num_classes of the model).
    channels: DiT's partial guidance (see the module docstring).
    rescale: guidance rescale phi (0: off), may be traced.
    interval: (t_lo, t_hi) guidance interval, may be traced.
    path, prediction, rescale_kind: with `rescale_kind` different from
      `prediction`, the rescale is done in that kind (needs the path).

  Returns:
    A denoiser of the same kind as `denoise_fn`.
  """
  convert = rescale_kind is not None and rescale_kind != prediction
  if convert and (path is None or prediction is None):
    raise ValueError('cfg(rescale_kind=...) needs path and prediction to '
                     'convert the predictions.')

  def fn(x_t, t, cond):
    if cond is None or 'label' not in cond:
      raise ValueError("Classifier-free guidance needs cond['label'].")
    n = x_t.shape[0]
    labels = jnp.concatenate([cond['label'].astype(jnp.int32),
                              jnp.full((n,), null_class, jnp.int32)])
    both = denoise_fn(jnp.concatenate([x_t, x_t]), jnp.concatenate([t, t]),
                      dict(cond, label=labels))
    c, u = both[:n], both[n:]
    if convert:
      c, u = (predictions.convert(p, src=prediction, dst=rescale_kind,
                                  x_t=x_t, t=t, path=path) for p in (c, u))
    out = combine_cfg(c, u, scale=scale, t_B=t, channels=channels,
                      rescale=rescale, interval=interval)
    if convert:
      out = predictions.convert(out, src=rescale_kind, dst=prediction,
                                x_t=x_t, t=t, path=path)
    return out

  return fn


def classifier_grad(log_prob_fn: Callable, x_t, t_B, labels_B):
  """grad_x log p(y | x_t, t) per example (B, ...).

  Example i's log-probability depends on x_t[i] only, so the gradient of the
  batch sum is the per-example gradient.
  """
  return jax.grad(lambda x: jnp.sum(log_prob_fn(x, t_B, labels_B)))(x_t)


def classifier_guided(denoise_fn: Callable, log_prob_fn: Callable, *, scale,
                      path, prediction: str, interval: Sequence | None = None,
                      alpha_min: float = 1e-4) -> Callable:
  """Score-form classifier guidance: score' = score + s grad log p(y | x_t).

  Args:
    denoise_fn: `(x_t, t_B, cond) -> prediction of kind `prediction``.
    log_prob_fn: `(x_t, t_B, labels_B) -> log p(y | x_t, t) (B,)`, e.g.
      `noisy_classifier.log_prob_fn(apply, params)`.
    scale: s, may be traced; s = 0 returns the base denoiser's prediction.
    path: the (non-bridge) path of the denoiser and the classifier.
    prediction: the kind `denoise_fn` returns (and the wrapper returns).
    interval: optional (t_lo, t_hi) where guidance applies.
    alpha_min: no guidance where alpha(t) <= alpha_min (see module doc).

  Returns:
    A denoiser of kind `prediction`; labels come from cond['label'].
  """
  if path.is_bridge:
    raise ValueError(f'Classifier guidance is defined here for ordinary '
                     f'paths; {path.name!r} is a bridge.')
  predictions.check_kind(prediction)

  def fn(x_t, t, cond):
    if cond is None or 'label' not in cond:
      raise ValueError("Classifier guidance needs cond['label'] (the class "
                       'to guide towards).')
    pred = denoise_fn(x_t, t, cond)
    x0, eps = predictions.to_x0_eps(pred, kind=prediction, x_t=x_t, t=t,
                                    path=path)
    g = classifier_grad(log_prob_fn, x_t, t, cond['label'])
    alpha, sigma = path.alpha(t), path.sigma(t)
    ok = (alpha > alpha_min) & _in_interval(t, interval)
    w = jnp.where(ok, jnp.asarray(scale, jnp.float32), 0.0)
    d_eps = _per_example(-sigma * w, g) * g
    d_x0 = _per_example(sigma**2 * w / jnp.where(ok, alpha, 1.0), g) * g
    return predictions.target(prediction, x0=x0 + d_x0, eps=eps + d_eps,
                              t=t, path=path)

  return fn


def classifier_mean_shift(log_prob_fn: Callable, *, scale,
                          interval: Sequence | None = None) -> Callable:
  """ADM's `condition_mean` gradient: `(x_t, t_B, cond) -> s grad log p`.

  Pass as `mean_shift=` to the 'ddpm' sampler, which adds Sigma times it to
  the posterior mean.
  """

  def fn(x_t, t, cond):
    g = classifier_grad(log_prob_fn, x_t, t, cond['label'])
    w = jnp.where(_in_interval(t, interval), jnp.asarray(scale, jnp.float32),
                  0.0)
    return _per_example(w, g) * g

  return fn


def with_label(denoise_fn: Callable, label: int) -> Callable:
  """The denoiser with every label replaced by `label` (e.g. the null class:
  an unconditional base model for classifier guidance)."""

  def fn(x_t, t, cond):
    cond = dict(cond or {})
    cond['label'] = jnp.full(x_t.shape[:1], label, jnp.int32)
    return denoise_fn(x_t, t, cond)

  return fn
