"""The unified loss of visgen:

  L = E_{t ~ p(t)} [ w(t) * || NN(x_t, t, cond) - (A_t x0 + B_t eps) ||^2 ],

over four independent axes: the path (A), the prediction kind (B) whose
target is A_t x0 + B_t eps (+ C_t y for bridges), the weighting w (C) and the
time distribution p (D). The squared error is averaged over the non-batch
dimensions; conditioning passes through to the network untouched.

| family           | path         | prediction | weighting      | p(t)         |
|------------------|--------------|------------|----------------|--------------|
| DDPM             | ddpm_linear  | eps        | uniform        | discrete     |
| improved DDPM    | ddpm_cosine  | eps        | uniform        | importance   |
| NCSN / SMLD      | ve           | score      | uniform(eps) * | uniform      |
| Score-SDE VP/VE  | vp / ve      | score      | uniform(eps) / | uniform      |
|                  |              |            | likelihood     |              |
| Flow Matching/RF | linear       | velocity   | uniform        | logit_normal |
| SiT (GVP)        | gvp          | velocity   | uniform        | uniform      |
| EDM              | edm          | edm        | edm            | lognormal_   |
|                  |              |            |                | sigma        |
| DDBM             | bridge_vp/ve | x0 / edm   | edm            | lognormal_   |
|                  |              |            |                | sigma        |

(*) `get_weighting('uniform', space='eps')`: NCSN's lambda(sigma) = sigma^2 on
the score MSE is exactly the uniform eps MSE.

improved DDPM / ADM / DiT with a learned variance (a `learn_sigma` network)
add iDDPM's L_vlb term: `learned_variance=dict(lambda_vlb=0.001)` gives
L_hybrid (`visgen.objectives.learned_variance`).
"""

import jax
import jax.numpy as jnp

from visgen.interpolants import get_path
from visgen.objectives import learned_variance as lv_lib
from visgen.objectives import predictions
from visgen.objectives.time_dists import get_time_dist
from visgen.objectives.weightings import get_weighting


def per_example_mse(pred, target, pixel_weight=None):
  err = (pred - target).astype(jnp.float32) ** 2
  if pixel_weight is not None:
    err = err * jnp.broadcast_to(pixel_weight, err.shape)
  return jnp.mean(err.reshape(err.shape[0], -1), axis=-1)


def unified_loss(apply_fn, *, x0, cond, key, path, prediction='eps',
                 weighting='uniform', time_dist='uniform', y=None,
                 time_state=None, t=None, eps=None, learned_variance=None,
                 pixel_weight=None):
  """The loss of one batch.

  Args:
    apply_fn: network callable `(x_t, t, cond) -> prediction of kind
      `prediction``, with t of shape (B,) in [0, 1].
    x0: clean data (B, ...), float.
    cond: conditioning dict passed through to `apply_fn` (may be None / {}).
    key: PRNG key for t and eps.
    path, prediction, weighting, time_dist: the four axes, as objects or
      registered names.
    y: the source image for bridge paths.
    time_state: state of a stateful time distribution (importance sampling).
    t, eps: optional fixed times / noise (tests, diffusion classifiers).
    learned_variance: None, or a `learned_variance.LearnedVariance` (or its
      config dict): iDDPM's L_hybrid. `apply_fn` then returns 2C channels
      [prediction, v] on the last axis, times are snapped to the DDPM grid
      of T steps, and each example's loss is
      correction * (w mse + lambda T L_vlb), with L_vlb (bits / dim) using
      the stopped prediction, so it trains only the variance.
    pixel_weight: None, or weights broadcastable to x0 multiplying the
      squared error element-wise before the mean (e.g. an edit task's
      emphasis on the pixels its edit may change); None is all ones.

  Returns:
    (scalar loss, aux) where aux holds per-example `t`, `mse` (the unweighted
    error of the trained kind), `loss` (weighted, corrected),
    `uncorrected` (weighted, before the time distribution's correction)
    and, with a learned variance, `vlb` (L_t in bits / dim).
  """
  path = get_path(path)
  lv = lv_lib.from_config(learned_variance)
  if lv is not None and path.is_bridge:
    raise ValueError(f'A learned variance (iDDPM) needs an ordinary path; '
                     f'{path.name!r} is a bridge.')
  predictions.check_kind(prediction)
  weighting = get_weighting(weighting)
  time_dist = get_time_dist(time_dist)
  if path.is_bridge and y is None:
    raise ValueError(
        f'Path {path.name!r} is a bridge and needs the source image `y` of '
        'each pair; use a non-bridge path for unpaired data.')
  n = x0.shape[0]
  k_t, k_eps = jax.random.split(key)
  if t is None:
    t, correction = time_dist.sample(k_t, n, path=path, state=time_state)
  else:
    correction = jnp.ones((n,))
  if lv is not None:
    step_i, t = lv.snap(t, path)
  if eps is None:
    eps = jax.random.normal(k_eps, x0.shape, x0.dtype)
  x_t = path.sample_xt(x0=x0, eps=eps, t=t, y=y)
  pred = apply_fn(x_t, t, cond)
  if lv is not None:
    pred, v = lv_lib.split_output(pred, x0.shape[-1])
  if pred.shape != x0.shape:
    raise ValueError(f'The network returned shape {pred.shape} for data of '
                     f'shape {x0.shape}; they must match.')
  tgt = predictions.target(prediction, x0=x0, eps=eps, t=t, path=path, y=y)
  mse = per_example_mse(pred, tgt, pixel_weight)
  w = weighting(t=t, path=path, kind=prediction)
  per_example = w * mse
  aux = dict(t=t, mse=mse)
  if lv is not None:
    vlb = lv.vlb_terms(pred=jax.lax.stop_gradient(pred), v=v,
                       kind=prediction, x0=x0, x_t=x_t, i=step_i, path=path)
    per_example = per_example + lv.lambda_vlb * lv.steps(path) * vlb
    aux['vlb'] = vlb
  loss = correction * per_example
  # `uncorrected` feeds the importance sampler's loss history (ADM keeps
  # the loss before its 1 / (T p) weights).
  return jnp.mean(loss), dict(aux, loss=loss, uncorrected=per_example)


def exact_loss_grid(apply_fn, *, x0, cond, eps, t, path, prediction, weighting,
                    y=None):
  """Weighted per-example loss at given (t, eps): used by tests and diffusion
  classifiers, which compare losses on shared noise."""
  path = get_path(path)
  weighting = get_weighting(weighting)
  x_t = path.sample_xt(x0=x0, eps=eps, t=t, y=y)
  pred = apply_fn(x_t, t, cond)
  tgt = predictions.target(prediction, x0=x0, eps=eps, t=t, path=path, y=y)
  return weighting(t=t, path=path, kind=prediction) * per_example_mse(pred, tgt)



