"""Probability-flow ODE samplers: Euler, Heun, RK4 and adaptive Dormand-Prince.

The PF-ODE in visgen's convention (t = 0 data) is dx/dt = v(x, t) with the
velocity v = alpha' x0_hat + sigma' eps_hat (+ gamma' y), integrated from
ts[0] = t_max down to ts[-1] = t_min. For Score-SDE's linear SDEs this is
f(t) x - g(t)^2 / 2 * score (e.g. VP: -beta/2 (x + score)).
"""

from visgen.samplers import base
from visgen.samplers import odeint


def _ode(method):
  def fn(view, x, ts, key):
    del key
    if method != 'heun':
      x, nfe = odeint.integrate_grid(method, view.velocity_fn_t, x, ts)
      return x, dict(nfe=nfe)
    # The last step into the end of the grid is an Euler step, as in EDM's
    # Algorithm 1 (2N - 1 NFE for Heun): near sigma = 0 the velocity of an
    # x0-type prediction holds (x - x0_hat) / sigma, so a corrector
    # evaluated there multiplies the network's error by ~h / sigma (a 0.02
    # error in x0 became 83 at t_end = 1e-5). Still second order overall.
    x, nfe = odeint.integrate_grid(method, view.velocity_fn_t, x, ts[:-1])
    x, nfe_last = odeint.integrate_grid('euler', view.velocity_fn_t, x,
                                        ts[-2:])
    return x, dict(nfe=nfe + nfe_last)
  return fn


def _ode_sampler(method, nfe):
  return base.sampler(stochastic=False, checks=(base.not_bridge,),
                      summary=f'PF-ODE, {method} ({nfe} NFE per step)')(
                          _ode(method))


euler = _ode_sampler('euler', 1)
heun = _ode_sampler('heun', 2)  # last step Euler: 2N - 1 NFE
rk4 = _ode_sampler('rk4', 4)


@base.sampler(stochastic=False, checks=(base.not_bridge,),
              summary='PF-ODE, adaptive Dormand-Prince 5(4)')
def dopri5(view, x, ts, key, *, rtol=1e-4, atol=1e-4, max_steps=1000):
  """Adaptive PF-ODE solve from ts[0] to ts[-1]; only the grid ends are used.

  info['nfe'] is the traced number of velocity evaluations.
  """
  del key
  x, info = odeint.dopri5(view.velocity_fn_t, x, ts[0], ts[-1], rtol=rtol,
                          atol=atol, max_steps=max_steps)
  return x, info
