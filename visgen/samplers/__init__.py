"""Samplers: one entry point over a registry of jit-friendly solvers.

`sample(name, denoise_fn, *, path, prediction, ts, ...)` draws samples with
the denoiser callable `denoise_fn(x_t, t_B, cond) -> prediction of kind
`prediction`` trained on `path`; `make_grid(name, num_steps, path=...)` builds
the decreasing time grid `ts` (t_max -> t_min; `make_grid('auto', n,
path=..., sampler=name)` is the sampler's default grid). Every loop is a
`lax.fori_loop` / `lax.while_loop` over traced grids and option values, so
under one `jax.jit` any grid of the same length, any guidance scale and any
float option reuse the compiled program; only static options (strings,
counts, `denoise_final`) and shapes recompile.

| name              | method                                      | NFE/step |
|-------------------|---------------------------------------------|----------|
| ddpm              | DDPM ancestral (posterior or beta variance) | 1        |
| ddim              | DDIM with eta                               | 1        |
| euler, heun, rk4  | probability-flow ODE on the grid            | 1, 2, 4  |
| dopri5            | PF-ODE, adaptive Dormand-Prince (rtol/atol) | adaptive |
| euler_maruyama    | reverse SDE, tunable w(t) (SiT's forms)     | 1        |
| pc                | Score-SDE predictor-corrector (Langevin)    | 1 + corr |
| annealed_langevin | NCSN's annealed Langevin (alpha = 1 paths)  | inner    |
| edm               | EDM's stochastic Heun (S_churn, S_noise)    | 2        |
| dpm_solver_2m/3m  | DPM-Solver++ multistep, data prediction     | 1        |
| dpm_solver_2m_sde | SDE-DPM-Solver++(2M) (diffusers' midpoint)  | 1        |
| unipc             | UniPC: UniP-p + UniC-p (bh1/bh2), p <= 3    | 1        |
| ipndm             | iPNDM: Adams-Bashforth on dx_hat/ds = eps   | 1        |
| bridge_heun       | DDBM's hybrid (stochastic step + Heun)      | 3        |

A final denoising step is never implicit: `denoise_final=True` returns
E[x0 | x_{t_min}] after the last step (one more NFE); with False the state at
ts[-1] is returned as is. The multistep solvers (unipc, dpm_solver_*, ipndm)
also accept grids that end at data (t = 0 where sigma(0) = 0, e.g.
'logsnr_data', their default): the last step then goes to x0 without an
evaluation there, so NFE = N, as in diffusers' final_sigmas_type='zero'.
Pathwise errors per NFE: experiments/sampler_convergence.py (`--parts=nfe`).

A new sampler: a function `fn(view, x, ts, key, **options) -> (x, info)` in a
module here, decorated with `base.sampler(...)` (its spec: stochastic, own
final step, applicability checks), and one line in `SAMPLERS` below;
importing a sampler module registers nothing.
"""

import jax
import jax.numpy as jnp

from visgen import registry
from visgen.interpolants import get_path
from visgen.samplers import ancestral
from visgen.samplers import bridge
from visgen.samplers import dpm_solver
from visgen.samplers import edm
from visgen.samplers import ipndm
from visgen.samplers import ode
from visgen.samplers import sde
from visgen.samplers import unipc
from visgen.samplers.denoiser import make_view
from visgen.samplers.grids import GRIDS
from visgen.samplers.grids import make_grid

SAMPLERS = registry.Registry('sampler')
SAMPLERS.register('ddpm')(ancestral.ddpm.spec)
SAMPLERS.register('ddim')(ancestral.ddim.spec)
SAMPLERS.register('euler')(ode.euler.spec)
SAMPLERS.register('heun')(ode.heun.spec)
SAMPLERS.register('rk4')(ode.rk4.spec)
SAMPLERS.register('dopri5')(ode.dopri5.spec)
SAMPLERS.register('euler_maruyama')(sde.euler_maruyama.spec)
SAMPLERS.register('pc')(sde.predictor_corrector.spec)
SAMPLERS.register('annealed_langevin')(sde.annealed_langevin.spec)
SAMPLERS.register('edm')(edm.edm.spec)
SAMPLERS.register('dpm_solver_2m')(dpm_solver.dpm_solver_2m.spec)
SAMPLERS.register('dpm_solver_3m')(dpm_solver.dpm_solver_3m.spec)
SAMPLERS.register('dpm_solver_2m_sde')(dpm_solver.dpm_solver_2m_sde.spec)
SAMPLERS.register('unipc')(unipc.unipc.spec)
SAMPLERS.register('ipndm')(ipndm.ipndm.spec)
SAMPLERS.register('bridge_heun')(bridge.bridge_heun.spec)

__all__ = ['sample', 'get_sampler', 'make_grid', 'SAMPLERS', 'GRIDS',
           'check_applicable']


def get_sampler(name):
  """The `base.SamplerSpec` of sampler `name` (ValueError lists choices)."""
  return SAMPLERS.get(name)


def check_applicable(name, path, **options):
  """Raises ValueError if sampler `name` does not apply to `path`."""
  spec = get_sampler(name)
  path = get_path(path)
  reason = spec.check(path, options)
  if reason:
    raise ValueError(
        f'Sampler {name!r} does not apply to path {path.name!r}: {reason}')
  return spec


def sample(name, denoise_fn, *, path, prediction, ts, x_init=None, key=None,
           shape=None, cond=None, y=None, denoise_final=False,
           return_info=False, **options):
  """Runs sampler `name` over the time grid `ts`.

  Args:
    name: a registered sampler (see the module docstring).
    denoise_fn: `(x_t, t_B, cond) -> prediction` of kind `prediction`.
    path: the path (object or registered name) the denoiser was trained on.
    prediction: the kind `denoise_fn` returns.
    ts: decreasing times, ts[0] = t_max of the path (where the prior is
      sampled) to ts[-1] = t_min; a traced array (see `make_grid`).
    x_init: the state at ts[0]; if None it is drawn from the path's prior
      with `key` and `shape` (for bridges, around gamma(t_max) y).
    key: PRNG key for the prior and for stochastic samplers.
    shape: the sample shape (B, ...) when `x_init` is None.
    cond: conditioning dict passed to `denoise_fn` untouched (for bridges
      `y` is added as cond['y'] unless present).
    y: the bridge source image (required for bridge paths).
    denoise_final: if True, return E[x0 | x_{ts[-1]}] (one extra NFE).
    return_info: if True, return (x, info) with info['nfe'].
    **options: sampler options (e.g. eta, S_churn, rtol, diffusion); floats
      may be traced values.

  Returns:
    Samples x (B, ...), or (x, info).
  """
  path = get_path(path)
  spec = check_applicable(name, path, **options)
  view = make_view(denoise_fn, path=path, prediction=prediction, cond=cond,
                   y=y)
  ts = jnp.asarray(ts, jnp.float32)
  if ts.ndim != 1 or ts.shape[0] < 2:
    raise ValueError(f'ts must be a 1-D grid of at least 2 times, got shape '
                     f'{ts.shape}; build one with make_grid().')
  if key is None and (x_init is None or spec.stochastic):
    raise ValueError(f'Sampler {name!r} needs `key` (for the prior and/or '
                     'its noise).')
  k_init, k_run = jax.random.split(key) if key is not None else (None, None)
  if x_init is None:
    if shape is None:
      raise ValueError('Pass x_init, or key and shape to sample the prior.')
    x_init = path.prior_sample(k_init, shape, y=y)
  if spec.own_final:
    options = dict(options, denoise_final=bool(denoise_final))
  try:
    x, info = spec.fn(view, x_init, ts, k_run, **options)
  except TypeError as e:
    if 'unexpected keyword' in str(e):
      raise ValueError(f'Bad option for sampler {name!r}: {e}') from e
    raise
  if denoise_final and not spec.own_final:
    x = view.x0_eps(x, ts[-1])[0]
    info = dict(info, nfe=info['nfe'] + 1)
  return (x, info) if return_info else x
