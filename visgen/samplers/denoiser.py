"""What every sampler sees of a network: (x0, eps), velocity and score.

Samplers receive `denoise_fn(x_t, t_B, cond) -> prediction` of a given kind
(eps, x0, v, score, velocity, edm) and convert it once per call with
`visgen.objectives.predictions`, which is exact for every path. For a bridge,
y is fixed during sampling, so z = x_t - gamma(t) y is an ordinary path
(alpha, sigma) for p(x0 | y) and the same formulas apply after the shift.

Conventions (t = 0 data, t = 1 prior, x_t = alpha x0 + sigma eps + gamma y):

  velocity   v(x, t) = alpha' x0_hat + sigma' eps_hat + gamma' y   (PF-ODE)
  score      s(x, t) = -eps_hat / sigma                    (of p_t(x | y))
"""

import dataclasses
from typing import Any
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from visgen.interpolants import base
from visgen.objectives import predictions


@dataclasses.dataclass(frozen=True)
class DenoiserView:
  """A denoiser callable seen through the path: x0, eps, velocity, score.

  Attributes:
    denoise_fn: `(x_t, t_B, cond) -> prediction of kind `prediction``.
    path: the `visgen.interpolants.Path` the network was trained on.
    prediction: the kind the callable returns.
    cond: conditioning dict passed to `denoise_fn` untouched (for bridges the
      source `y` is added as cond['y'] when absent).
    y: bridge source image (None for ordinary paths).
  """

  denoise_fn: Callable[..., Any]
  path: base.Path
  prediction: str
  cond: Any = None
  y: Any = None

  def t_batch(self, x, t):
    return jnp.broadcast_to(jnp.asarray(t, jnp.float32), x.shape[:1])

  def x0_eps(self, x, t):
    """(E[x0 | x_t], E[eps | x_t]) at the scalar or per-example time t."""
    t_b = self.t_batch(x, t)
    pred = self.denoise_fn(x, t_b, self.cond)
    if pred.shape[-1] == 2 * x.shape[-1] and pred.shape[:-1] == x.shape[:-1]:
      # A learned-variance (learn_sigma) output [prediction, v]: only the
      # 'ddpm' sampler's variance='learned' reads v (samplers.ancestral).
      pred = pred[..., :x.shape[-1]]
    return predictions.to_x0_eps(pred, kind=self.prediction, x_t=x, t=t_b,
                                 path=self.path, y=self.y)

  def shift(self, x, t):
    """gamma(t) y for bridges (0 otherwise), broadcast against x."""
    if not self.path.is_bridge:
      return jnp.zeros((), x.dtype)
    return base.bcast(self.path.gamma(self.t_batch(x, t)), x) * self.y

  def velocity_from(self, x0, eps, x, t):
    t_b = self.t_batch(x, t)
    v = (base.bcast(self.path.d_alpha(t_b), x) * x0
         + base.bcast(self.path.d_sigma(t_b), x) * eps)
    if self.path.is_bridge:
      v = v + base.bcast(self.path.d_gamma(t_b), x) * self.y
    return v

  def velocity(self, x, t):
    x0, eps = self.x0_eps(x, t)
    return self.velocity_from(x0, eps, x, t)

  def velocity_fn_t(self, t, x):
    """`velocity` with the (t, y) argument order of `odeint`."""
    return self.velocity(x, t)

  def score_from(self, eps, x, t):
    return -eps / base.bcast(self.path.sigma(self.t_batch(x, t)), x)


def coeffs(path, t):
  """(alpha, sigma, gamma) at scalar t (float32 arrays)."""
  t = jnp.asarray(t, jnp.float32)
  return path.alpha(t), path.sigma(t), path.gamma(t)


def make_view(denoise_fn, *, path, prediction, cond=None, y=None):
  """Builds a `DenoiserView`, checking the kind and the bridge source."""
  predictions.check_kind(prediction)
  if path.is_bridge:
    if y is None:
      raise ValueError(
          f'Path {path.name!r} is a bridge: pass the source image `y` to the '
          'sampler (the x_T each sample is bridged from).')
    cond = dict(cond or {})
    cond.setdefault('y', y)
  check_invertible(path, prediction)
  return DenoiserView(denoise_fn, path, prediction, cond, y)


def check_invertible(path, prediction):
  """Refuses a kind that cannot give x0 at an end of the path (e.g. eps at
  t = 1 of rectified flow, where alpha = 0): the conversion would divide by
  zero and return NaN."""
  for t in (path.t_min, path.t_max):
    with jax.ensure_compile_time_eval():  # static check, also under jit
      det = float(predictions.eps_error_scale(
          prediction, t=jnp.float32(t), path=path))
    if not np.isfinite(det) or abs(det) < 1e-6:
      raise ValueError(
          f'Prediction {prediction!r} cannot be converted to x0 at t={t} of '
          f'path {path.name!r} (det={det:.3g}). Use a kind that stays '
          "invertible there ('x0', 'v', 'velocity') or build the path with "
          'a t_min / t_max inside the interval.')

