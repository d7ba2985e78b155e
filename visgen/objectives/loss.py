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
"""

import jax
import jax.numpy as jnp

from visgen.interpolants import get_path
from visgen.objectives import predictions
from visgen.objectives.time_dists import get_time_dist
from visgen.objectives.weightings import get_weighting


def per_example_mse(pred, target):
  err = (pred - target).astype(jnp.float32) ** 2
  return jnp.mean(err.reshape(err.shape[0], -1), axis=-1)


def unified_loss(apply_fn, *, x0, cond, key, path, prediction='eps',
                 weighting='uniform', time_dist='uniform', y=None,
                 time_state=None, t=None, eps=None):
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

  Returns:
    (scalar loss, aux) where aux holds per-example `t`, `mse` (the unweighted
    error of the trained kind) and `loss` (weighted, corrected).
  """
  path = get_path(path)
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
  if eps is None:
    eps = jax.random.normal(k_eps, x0.shape, x0.dtype)
  x_t = path.sample_xt(x0=x0, eps=eps, t=t, y=y)
  pred = apply_fn(x_t, t, cond)
  if pred.shape != x0.shape:
    raise ValueError(f'The network returned shape {pred.shape} for data of '
                     f'shape {x0.shape}; they must match.')
  tgt = predictions.target(prediction, x0=x0, eps=eps, t=t, path=path, y=y)
  mse = per_example_mse(pred, tgt)
  w = weighting(t=t, path=path, kind=prediction)
  loss = correction * w * mse
  return jnp.mean(loss), dict(t=t, mse=mse, loss=loss)


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



