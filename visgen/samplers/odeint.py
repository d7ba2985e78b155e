"""ODE integrators on pytrees, shared by the PF-ODE samplers and likelihoods.

`integrate_grid(method, f, y0, ts)` steps over a given time grid (any
direction) with Euler, Heun (explicit trapezoid) or classical RK4 inside a
`lax.fori_loop`, so the grid is a traced array. `dopri5(f, y0, t0, t1, ...)`
is adaptive Dormand-Prince 5(4) with FSAL and the standard step-size
controller, in a `lax.while_loop`; it reports the number of function
evaluations. `f(t, y) -> dy/dt` with scalar t.
"""

import jax
import jax.numpy as jnp

from visgen import registry

_tree_map = jax.tree_util.tree_map


def _axpy(y, h, *terms):
  """y + h * sum_i c_i k_i for terms (c_i, k_i)."""
  def comb(y_leaf, *ks):
    acc = y_leaf
    for (c, _), k in zip(terms, ks):
      acc = acc + (h * c) * k
    return acc
  return _tree_map(comb, y, *[k for _, k in terms])


def euler_step(f, t, y, h):
  return _axpy(y, h, (1.0, f(t, y))), 1


def heun_step(f, t, y, h):
  k1 = f(t, y)
  k2 = f(t + h, _axpy(y, h, (1.0, k1)))
  return _axpy(y, h, (0.5, k1), (0.5, k2)), 2


def rk4_step(f, t, y, h):
  k1 = f(t, y)
  k2 = f(t + 0.5 * h, _axpy(y, h, (0.5, k1)))
  k3 = f(t + 0.5 * h, _axpy(y, h, (0.5, k2)))
  k4 = f(t + h, _axpy(y, h, (1.0, k3)))
  return _axpy(y, h, (1 / 6, k1), (1 / 3, k2), (1 / 3, k3), (1 / 6, k4)), 4


STEPPERS = registry.Registry('ODE method')
STEPPERS.register('euler')(euler_step)
STEPPERS.register('heun')(heun_step)
STEPPERS.register('rk4')(rk4_step)


def integrate_grid(method, f, y0, ts):
  """Integrates dy/dt = f(t, y) from ts[0] through every ts[i] to ts[-1].

  Returns (y at ts[-1], number of evaluations of f).
  """
  step = STEPPERS.get(method)
  ts = jnp.asarray(ts, jnp.float32)
  n = ts.shape[0] - 1

  def body(i, y):
    return step(f, ts[i], y, ts[i + 1] - ts[i])[0]

  nfe_per_step = step(lambda t, y: y, 0.0, jnp.zeros(()), 0.0)[1]
  return jax.lax.fori_loop(0, n, body, y0), n * nfe_per_step


# Dormand-Prince 5(4) tableau.
_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
)
_B5 = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0)
_B4 = (5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200,
       187 / 2100, 1 / 40)


def _error_norm(err, y0, y1, rtol, atol):
  """RMS of err / (atol + rtol max(|y0|, |y1|)) over all leaves."""
  sq, cnt = 0.0, 0
  for e, a, b in zip(*(jax.tree_util.tree_leaves(u) for u in (err, y0, y1))):
    scale = atol + rtol * jnp.maximum(jnp.abs(a), jnp.abs(b))
    sq = sq + jnp.sum((e / scale) ** 2)
    cnt += e.size
  return jnp.sqrt(sq / cnt)


def dopri5(f, y0, t0, t1, *, rtol=1e-5, atol=1e-5, h0=None, max_steps=2000):
  """Adaptive Dormand-Prince 5(4) from t0 to t1 (either direction).

  The step size follows the standard controller
  h <- h * clip(0.9 * err^(-1/5), 0.2, 10) with err the RMS error relative to
  atol + rtol |y|; rejected steps are retried with the smaller h. Gives up
  after `max_steps` attempts (accepted or not): `info['finished']` says
  whether t1 was reached.

  Returns:
    (y(t1), info) with info = {'nfe', 'accepted', 'rejected', 'finished'}.
  """
  t0 = jnp.asarray(t0, jnp.float32)
  t1 = jnp.asarray(t1, jnp.float32)
  span = t1 - t0
  direction = jnp.sign(span)
  h_init = 0.01 * span if h0 is None else direction * jnp.abs(h0)
  k1 = f(t0, y0)

  def cond(state):
    t, _, _, _, attempts, *_ = state
    return (direction * (t1 - t) > 1e-7 * jnp.abs(span)) & (
        attempts < max_steps)

  def body(state):
    t, y, k1, h, attempts, accepted, nfe = state
    h = direction * jnp.minimum(jnp.abs(h), jnp.abs(t1 - t))
    ks = [k1]
    for i in range(1, 7):
      yi = _axpy(y, h, *zip(_A[i], ks))
      ks.append(f(t + _C[i] * h, yi))
    y5 = _axpy(y, h, *zip(_B5, ks))
    err = _tree_map(lambda *k: h * sum((b5 - b4) * ki for b5, b4, ki in zip(
        _B5, _B4, k)), *ks)
    e = _error_norm(err, y, y5, rtol, atol)
    ok = e <= 1.0
    factor = jnp.clip(0.9 * jnp.where(e > 0, e, 1e-10) ** -0.2, 0.2, 10.0)
    pick = lambda a, b: _tree_map(lambda u, v: jnp.where(ok, u, v), a, b)
    return (jnp.where(ok, t + h, t), pick(y5, y), pick(ks[6], k1),
            h * factor, attempts + 1, accepted + ok.astype(jnp.int32),
            nfe + 6)

  state = (t0, y0, k1, h_init, jnp.int32(0), jnp.int32(0), jnp.int32(1))
  t, y, _, _, attempts, accepted, nfe = jax.lax.while_loop(cond, body, state)
  reached = direction * (t1 - t) <= 1e-7 * jnp.abs(span)
  info = dict(nfe=nfe, accepted=accepted, rejected=attempts - accepted,
              finished=reached)
  return y, info
