"""Guidance as combinators over a denoiser callable (never inside models).

Every combinator takes `denoise_fn(x_t, t_B, cond) -> prediction` and returns
a callable of the same signature, so every sampler works with it unchanged.
Scales, rescale and intervals may be traced values: build the wrapped
denoiser *inside* the jitted sampling function and a new value never
recompiles.

Classifier-free guidance (Ho & Salimans 2022), DiT's convention (`cfg`):

  D_s = D(x, t, null) + s (D(x, t, c) - D(x, t, null)),

so s = 1 is the conditional model and s = 0 the unconditional one (ADM and
Ho & Salimans write (1 + w) D_c - w D_null: w = s - 1). The conditional and
null halves go through ONE batched call. Every prediction kind is affine in
(x0, eps) at fixed (x_t, t) with coefficients that do not depend on the
condition, so the guided score is the same whatever the prediction space;
the space matters only for the rescale. Options:
  * `interval` (t_lo, t_hi) (Kynkaanniemi et al. 2024): guide only for
    t_lo <= t <= t_hi, plain conditional elsewhere (`t_interval_from_sigma`
    turns a sigma = sigma(t) / alpha(t) range into times).
  * `rescale` phi (Lin et al. 2024, "Common diffusion noise schedules...",
    Alg. 2): D <- phi D_s std(D_c) / std(D_s) + (1 - phi) D_s with
    per-example standard deviations, in prediction space `space` (default
    the denoiser's own kind; Lin et al. use v).
  * `channels`: guide only the first `channels` entries of the last axis and
    keep D_c elsewhere -- DiT's `forward_with_cfg` guides 3 of its 4 latent
    channels (DiT#41; scale 1.5 on 3 channels is about 1.375 on all 4).
    Default None guides every channel; use it only to reproduce DiT/SiT.

InstructPix2Pix's dual guidance (`dual_cfg`, Brooks et al. 2023) guides an
image condition and a text condition with separate scales s_I and s_T from
three evaluations (c_I, c_T), (c_I, null), (null, null) in one batched call.

Classifier guidance (Dhariwal & Nichol 2021, ADM `condition_score` and
`condition_mean`) with a log-classifier `log_classifier(x_t, t_B, cond) ->
log p(c | x_t, t) (B,)` (e.g. `noisy_classifier.log_prob_fn`):
  * score form (ODE / SDE / DDIM samplers, `classifier_guidance`): score' =
    score + s grad_x log p(c | x_t), i.e. eps' = eps - sigma s grad and
    x0' = x0 + sigma^2 / alpha s grad at fixed x_t. Where alpha(t) ~ 0 (the
    prior end of rectified flow, where Heun grids start) x_t carries no
    information about c and the x0 shift is undefined: there the
    prediction stays unguided (no division by alpha, no NaN).
  * mean-shift form (DDPM ancestral, `classifier_mean_shift`): mu' = mu +
    Sigma s grad, passed as the 'ddpm' sampler's `mean_shift=`.
"""

import functools
from typing import Any
from typing import Callable
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from visgen.interpolants import base
from visgen.objectives import predictions


def _inside(t_B, interval):
  """Boolean (B,): t in [t_lo, t_hi] (all True without an interval)."""
  if interval is None:
    return jnp.ones(t_B.shape, bool)
  lo, hi = interval
  return (t_B >= lo) & (t_B <= hi)


def _is_off(value) -> bool:
  """A Python 0 / None: the option is statically off (nothing traced)."""
  return value is None or (isinstance(value, (int, float)) and value == 0)


def t_interval_from_sigma(path: base.Path, *, sigma_lo,
                          sigma_hi) -> tuple[Any, Any]:
  """The (t_lo, t_hi) whose noise level sigma / alpha is in [lo, hi]."""
  return path.t_from_sigma(sigma_lo), path.t_from_sigma(sigma_hi)


def _null_cond(cond: dict, n: int, null_class, null_cond) -> dict:
  """The unconditional version of `cond`."""
  if null_class is not None:
    return dict(cond, label=jnp.full((n,), null_class, jnp.int32))
  if callable(null_cond):
    return dict(null_cond(cond))
  return {**cond, **null_cond}


def _concat_halves(cond: dict, null: dict) -> dict:
  """cond and its null version stacked along axis 0 (one batched call)."""
  if set(cond) != set(null):
    raise ValueError(
        f'The null condition must replace entries of cond, not add or drop '
        f'them: cond has {sorted(cond)}, the null one {sorted(null)}. Pass '
        'every entry the null condition sets in cond too.')

  def cat(key, c, u):
    if np.ndim(c) == 0:  # Shared scalars (no batch axis) must not change.
      if u is not c:
        raise ValueError(f'cond[{key!r}] has no batch axis, so its null '
                         'version must be the same object; give it a '
                         'leading batch axis to guide on it.')
      return c
    c = jnp.asarray(c)
    return jnp.concatenate([c, jnp.asarray(u).astype(c.dtype)])

  return {k: jax.tree.map(functools.partial(cat, k), cond[k], null[k])
          for k in cond}


def combine_cfg(cond_out, uncond_out, *, scale, t_B=None, channels=None,
                rescale=0.0, interval=None):
  """The guided prediction from the conditional and null predictions.

  Args:
    cond_out: D(x, t, c), (B, ...).
    uncond_out: D(x, t, null), same shape.
    scale: s, may be traced; s = 1 returns cond_out.
    t_B: the times (B,), needed with `interval`.
    channels: guide only the first `channels` entries of the last axis
      (static int; DiT reproductions only).
    rescale: phi in [0, 1] (0: off), may be traced.
    interval: (t_lo, t_hi) where guidance applies, may be traced.

  Returns:
    The guided prediction, same shape as `cond_out`.
  """
  c, u = cond_out, uncond_out
  guided = u + jnp.asarray(scale, c.dtype) * (c - u)
  if channels is not None:
    k = int(channels)
    if not 0 < k <= c.shape[-1]:
      raise ValueError(f'channels={k} must be in [1, {c.shape[-1]}] (the '
                       'last axis of the prediction), or None for all.')
    guided = jnp.where(jnp.arange(c.shape[-1]) < k, guided, c)
  if not _is_off(rescale):
    axes = tuple(range(1, c.ndim))
    std_c = jnp.std(c, axis=axes, keepdims=True)
    std_g = jnp.std(guided, axis=axes, keepdims=True)
    rescaled = guided * std_c / jnp.maximum(std_g, 1e-12)
    guided = rescale * rescaled + (1.0 - rescale) * guided
  if interval is not None:
    if t_B is None:
      raise ValueError('combine_cfg(interval=...) needs the times t_B.')
    guided = jnp.where(base.bcast(_inside(t_B, interval), c), guided, c)
  return guided


def cfg(denoise_fn: Callable, *, scale, null_class: int | None = None,
        null_cond: dict | Callable | None = None,
        channels: int | None = None, rescale=0.0,
        interval: Sequence | None = None, path: base.Path | None = None,
        prediction: str | None = None,
        space: str | None = None) -> Callable:
  """Classifier-free guidance: one batched call on the (cond, null) halves.

  Args:
    denoise_fn: `(x_t, t_B, cond) -> prediction`.
    scale: s, may be traced (s = 1: conditional, s = 0: unconditional).
    null_class: the null label (num_classes of the model): the null half
      has cond['label'] = null_class. Give this or `null_cond`.
    null_cond: dict of cond entries that make the call unconditional (each
      with the batch axis, e.g. {'label': null_B}), or a function cond ->
      unconditional cond (same entries).
    channels: DiT's partial guidance (see the module docstring).
    rescale: guidance rescale phi (0: off), may be traced.
    interval: (t_lo, t_hi) guidance interval, may be traced.
    path, prediction, space: with `space` other than `prediction` (the kind
      `denoise_fn` returns), guide and rescale in kind `space` (needs the
      path); the result is converted back to `prediction`.

  Returns:
    A denoiser returning the same kind as `denoise_fn`.
  """
  if (null_class is None) == (null_cond is None):
    raise ValueError('cfg needs exactly one of null_class= (the null label) '
                     'or null_cond= (a dict of null entries or a function '
                     'cond -> null cond).')
  convert = space is not None and space != prediction
  if convert:
    if path is None or prediction is None:
      raise ValueError(f'cfg(space={space!r}) needs path= and prediction= '
                       '(the kind denoise_fn returns) to convert.')
    predictions.check_kind(space)

  def fn(x_t, t, cond=None):
    cond = dict(cond or {})
    if null_class is not None and 'label' not in cond:
      raise ValueError("cfg(null_class=...) needs cond['label'].")
    if channels is not None and not 0 < int(channels) <= x_t.shape[-1]:
      raise ValueError(f'channels={channels} must be in [1, '
                       f'{x_t.shape[-1]}] (the last axis of x_t), or None '
                       'for all.')
    n = x_t.shape[0]
    both_cond = _concat_halves(cond, _null_cond(cond, n, null_class,
                                                null_cond))
    both = denoise_fn(jnp.concatenate([x_t, x_t]), jnp.concatenate([t, t]),
                      both_cond)
    c, u = both[:n], both[n:]
    to = lambda p, src, dst: predictions.convert(
        p, src=src, dst=dst, x_t=x_t, t=t, path=path, y=cond.get('y'))
    if convert:
      c, u = to(c, prediction, space), to(u, prediction, space)
    out = combine_cfg(c, u, scale=scale, t_B=t, channels=channels,
                      rescale=rescale, interval=interval)
    return to(out, space, prediction) if convert else out

  return fn


def classifier_grad(log_classifier: Callable, *, x_t, t, cond):
  """grad_x log p(c | x_t, t) per example, (B, ...).

  Example i's log-probability depends on x_t[i] only, so the gradient of
  the batch sum is the per-example gradient.
  """
  return jax.grad(lambda x: jnp.sum(log_classifier(x, t, cond)))(x_t)


def classifier_guidance(denoise_fn: Callable, log_classifier: Callable, *,
                        scale, path: base.Path, prediction: str,
                        interval: Sequence | None = None,
                        alpha_min: float = 1e-4) -> Callable:
  """Score-form classifier guidance: score' = score + s grad log p(c | x_t).

  Args:
    denoise_fn: `(x_t, t_B, cond) -> prediction of kind `prediction``.
    log_classifier: `(x_t, t_B, cond) -> log p(c | x_t, t) (B,)` of the class
      in `cond` (examples must not interact).
    scale: s, may be traced; s = 0 returns the base prediction; s = 1 turns
      an exact unconditional score plus an exact classifier into the exact
      conditional score.
    path: the (non-bridge) path of the denoiser and the classifier.
    prediction: the kind `denoise_fn` returns (and the wrapper returns).
    interval: optional (t_lo, t_hi) where guidance applies, may be traced.
    alpha_min: unguided where alpha(t) <= alpha_min (see module docstring).

  Returns:
    A denoiser of kind `prediction`.
  """
  if path.is_bridge:
    raise ValueError(f'Classifier guidance is defined here for ordinary '
                     f'paths; {path.name!r} is a bridge.')
  predictions.check_kind(prediction)

  def fn(x_t, t, cond=None):
    pred = denoise_fn(x_t, t, cond)
    x0, eps = predictions.to_x0_eps(pred, kind=prediction, x_t=x_t, t=t,
                                    path=path)
    g = classifier_grad(log_classifier, x_t=x_t, t=t, cond=cond)
    alpha, sigma = path.alpha(t), path.sigma(t)
    ok = (alpha > alpha_min) & _inside(t, interval)
    g = jnp.where(base.bcast(ok, g), g, 0.0)  # A NaN there must not leak.
    w = jnp.where(ok, jnp.asarray(scale, jnp.float32), 0.0)
    d_eps = base.bcast(-sigma * w, g) * g
    # The guard keeps alpha = 0 out of the division (w = 0 there anyway).
    d_x0 = base.bcast(sigma**2 * w / jnp.where(ok, alpha, 1.0), g) * g
    return predictions.target(prediction, x0=x0 + d_x0, eps=eps + d_eps,
                              t=t, path=path)

  return fn


def classifier_mean_shift(log_classifier: Callable, *, scale,
                          interval: Sequence | None = None) -> Callable:
  """ADM's `condition_mean`: `shift(x_t, t_B, cond) = s grad log p(c|x_t)`.

  Pass as `mean_shift=` to the 'ddpm' sampler, which adds the step variance
  Sigma times it to the posterior mean. `scale` and `interval` may be traced.
  """

  def fn(x_t, t, cond=None):
    g = classifier_grad(log_classifier, x_t=x_t, t=t, cond=cond)
    w = jnp.where(_inside(t, interval), jnp.asarray(scale, jnp.float32), 0.0)
    return base.bcast(w, g) * g

  return fn


def with_label(denoise_fn: Callable, *, label: int) -> Callable:
  """The denoiser with every label replaced by `label` (e.g. the null class:
  an unconditional base model for classifier guidance)."""

  def fn(x_t, t, cond=None):
    cond = dict(cond or {})
    cond['label'] = jnp.full(x_t.shape[:1], label, jnp.int32)
    return denoise_fn(x_t, t, cond)

  return fn


def combine_dual_cfg(full, image_only, uncond, *, image_scale, text_scale):
  """InstructPix2Pix's guidance (Brooks, Holynski & Efros 2023, eq. 3):

    e(c_I, c_T) ~ e(0, 0) + s_I (e(c_I, 0) - e(0, 0))
                          + s_T (e(c_I, c_T) - e(c_I, 0)),

  with `full` = e(c_I, c_T), `image_only` = e(c_I, 0) and `uncond` = e(0, 0);
  s_I = s_T = 1 returns `full`. Scales may be traced.
  """
  s_i = jnp.asarray(image_scale, full.dtype)
  s_t = jnp.asarray(text_scale, full.dtype)
  return (uncond + s_i * (image_only - uncond)
          + s_t * (full - image_only))


def dual_cfg(denoise_fn: Callable, *, image_scale, text_scale,
             null_image: dict | Callable, null_text: dict | Callable
             ) -> Callable:
  """InstructPix2Pix's two-scale classifier-free guidance: three
  evaluations per step, (c_I, c_T), (c_I, null_T) and (null_I, null_T),
  in ONE batched call, combined by `combine_dual_cfg`.

  Args:
    denoise_fn: `(x_t, t_B, cond) -> prediction`.
    image_scale, text_scale: s_I and s_T (may be traced).
    null_image: cond entries (with the batch axis) that remove the image
      condition, e.g. {'concat': zeros}, or a function cond -> cond.
    null_text: the same for the text / instruction condition.
  """

  def fn(x_t, t, cond=None):
    cond = dict(cond or {})
    n = x_t.shape[0]
    no_text = _null_cond(cond, n, None, null_text)
    no_both = _null_cond(no_text, n, None, null_image)
    two = _concat_halves(cond, no_text)
    both = _concat_halves(two, _concat_halves(no_both, no_both))
    # Four stacked copies (the last two equal) keep _concat_halves's checks;
    # only the first three are evaluated.
    three = jax.tree.map(lambda a: a[:3 * n] if np.ndim(a) else a, both)
    out = denoise_fn(jnp.concatenate([x_t] * 3), jnp.concatenate([t] * 3),
                     three)
    return combine_dual_cfg(out[:n], out[n:2 * n], out[2 * n:],
                            image_scale=image_scale, text_scale=text_scale)

  return fn
