"""The sampler spec and the applicability checks shared by samplers.

A sampler is a function decorated with `sampler(...)`, which attaches its
`SamplerSpec` as `fn.spec` (and registers nothing: the registry `SAMPLERS`
in `visgen/samplers/__init__.py` lists every spec explicitly). The spec's
`fn(view, x, ts, key, **options) ->
(x, info)` with `view` a `denoiser.DenoiserView`, `x` the state at `ts[0]`,
`ts` a decreasing time grid and `info` a dict holding at least 'nfe'. A
sampler registered with `own_final=True` also receives `denoise_final` and
does the final denoising itself (EDM churns before it); for the others
`samplers.sample` returns E[x0 | x_{ts[-1]}] after the loop. `check`
returns None when the sampler applies to a path (and static options), else
the reason it does not, so that an invalid combination fails with a message
before anything is traced instead of producing NaNs.
"""

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp



@dataclasses.dataclass(frozen=True)
class SamplerSpec:
  fn: Callable
  check: Callable
  stochastic: bool
  summary: str
  own_final: bool = False


def sampler(*, stochastic, summary, checks=(), own_final=False):
  """Decorator: attaches `fn.spec`, a `SamplerSpec` with applicability
  `checks` (functions (path, options) -> None or the reason it does not
  apply, tried in order)."""

  def check(path, options):
    for c in checks:
      reason = c(path, options)
      if reason:
        return reason
    return None

  def decorator(fn):
    fn.spec = SamplerSpec(fn, check, stochastic, summary, own_final)
    return fn

  return decorator


def _alpha(path, t):
  with jax.ensure_compile_time_eval():  # static check, also under jit
    return float(path.alpha(jnp.float32(t)))


def not_bridge(path, options):
  del options
  if path.is_bridge:
    return ('it is deterministic or assumes the Markov forward process of an '
            "ordinary path; a bridge's probability-flow ODE is singular at "
            'its endpoint (d sigma / dt -> inf) and maps all samples of one '
            "source to nearly one output. Use 'bridge_heun' (DDBM: a "
            "stochastic step, then Heun) or 'euler_maruyama'.")
  return None


def alpha_positive(path, options):
  """For samplers that divide by alpha(t) (drift f = alpha' / alpha, or
  EDM's x / alpha): refuse paths whose alpha vanishes at t_max."""
  del options
  a = _alpha(path, path.t_max)
  if not a > 1e-6:
    return (f'it divides by alpha(t), which is {a:.3g} at t_max = '
            f'{path.t_max}. Build the path with a smaller t_max (e.g. '
            f"get_path('{path.name}', t_max=0.999)) or use an ODE / "
            "'ddim' / 'ddpm' / 'dpm_solver_2m' sampler.")
  return None


def variance_exploding(path, options):
  del options
  ts = (path.t_min, 0.5 * (path.t_min + path.t_max), path.t_max)
  if path.is_bridge or any(abs(_alpha(path, t) - 1.0) > 1e-6 for t in ts):
    return ("annealed Langevin dynamics (NCSN) moves between noise levels "
            "without rescaling x, so it needs alpha(t) = 1 ('ve', 'edm').")
  return None
