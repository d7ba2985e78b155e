"""Axis (A) of the design space: noise schedules, interpolants and bridges.

`get_path(name, **kwargs)` builds a path; `PATHS.names()` lists them:

| name          | alpha(t)               | sigma(t)                       |
|---------------|------------------------|--------------------------------|
| ddpm_linear   | sqrt(alpha_bar), table | sqrt(1 - alpha_bar)            |
| ddpm_cosine   | sqrt(alpha_bar), table | sqrt(1 - alpha_bar)            |
| vp            | exp(-int beta / 2)     | sqrt(1 - alpha^2)              |
| subvp         | as vp                  | 1 - alpha^2                    |
| ve            | 1                      | s_min (s_max / s_min)^t        |
| edm           | 1                      | Karras rho schedule            |
| linear        | 1 - t                  | t                              |
| gvp           | cos(pi t / 2)          | sin(pi t / 2)                  |
| interpolant   | user function          | user function                  |
| bridge_vp/ve  | DDBM bridges, plus gamma(t) * y                         |
"""

import functools

from visgen import registry
from visgen.interpolants import base
from visgen.interpolants import bridges
from visgen.interpolants import paths

Path = base.Path
bcast = base.bcast

PATHS = registry.Registry('path')
PATHS.register('ddpm_linear')(
    functools.partial(paths.DiscreteVPPath, schedule='linear'))
PATHS.register('ddpm_cosine')(
    functools.partial(paths.DiscreteVPPath, schedule='cosine'))
PATHS.register('vp')(paths.VPPath)
PATHS.register('subvp')(paths.SubVPPath)
PATHS.register('ve')(paths.VEPath)
PATHS.register('edm')(paths.EDMPath)
PATHS.register('linear')(paths.LinearPath)
PATHS.register('gvp')(paths.GVPPath)
PATHS.register('interpolant')(paths.InterpolantPath)
PATHS.register('bridge_vp')(bridges.VPBridgePath)
PATHS.register('bridge_ve')(bridges.VEBridgePath)


def get_path(name, **kwargs) -> base.Path:
  """Builds the path `name`; a Path instance is returned unchanged."""
  if isinstance(name, base.Path):
    return name
  return PATHS.build(name, **kwargs)
