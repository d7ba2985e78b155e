"""The one way every CLI reads a config file: `configs/X.py[:arg]`.

  python -m visgen.main --config=configs/X.py:runlocal --config.a.b=v
  config = config_loader.load('configs/X.py:runlocal', {'total_steps': 10})

`define_flag` is the absl flag of `visgen.main` and `visgen.bench`
(ml_collections' config file flag, locked: a mistyped override fails);
`load` gives scripts and experiments the same ConfigDict without flags. Light
on purpose (no JAX): `visgen.main` imports it before the huge-page re-exec.
"""

import importlib.util
import os
from typing import Any

from ml_collections import config_flags


def define_flag(name: str = 'config', help_string: str | None = None):
  """The `--config` flag (with `--config.a.b=v` overrides), locked."""
  return config_flags.DEFINE_config_file(
      name, None, help_string or 'Config file (configs/X.py[:args]).',
      lock_config=True)


def load(spec: str, overrides: dict[str, Any] | None = None, *,
         lock: bool = False):
  """configs/X.py[:arg] -> its ConfigDict, as `--config=spec` builds it.

  Args:
    spec: the config file, optionally followed by ':' and its argument.
    overrides: dotted keys -> values, applied like `--config.a.b=v`.
    lock: lock the ConfigDict afterwards (as the flag does).
  """
  file = spec.split(':', 1)[0]
  if not os.path.isfile(file):
    raise FileNotFoundError(f'Config file {file!r} (from {spec!r}) not '
                            'found; pass configs/X.py[:arg] relative to '
                            'the repository root or an absolute path.')
  # As ml_collections' config file flag: everything after the first ':' is
  # get_config's one argument; without ':' it is called without one.
  module_spec = importlib.util.spec_from_file_location('config', file)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  config = module.get_config(*spec.split(':', 1)[1:])
  for key, value in (overrides or {}).items():
    node = config
    *parents, leaf = key.split('.')
    for p in parents:
      node = node[p]
    if leaf not in node:
      raise KeyError(f'Config override {key!r}: {file} has no field '
                     f'{leaf!r} there.')
    node[leaf] = value
  if lock:
    config.lock()
  return config


def _tuples(v: Any) -> Any:
  """JSON lists back to the tuples configs are written with."""
  if isinstance(v, dict):
    return {k: _tuples(x) for k, x in v.items()}
  if isinstance(v, list):
    return tuple(_tuples(x) for x in v)
  return v


def load_workdir(workdir: str):
  """The config a training run saved in WORKDIR/config.json, as a
  ConfigDict (lists back to tuples): what sampling and generation from an
  existing workdir build, with no config file to name."""
  import json  # pylint: disable=g-import-not-at-top

  import ml_collections as mlc  # pylint: disable=g-import-not-at-top

  path = os.path.join(workdir, 'config.json')
  if not os.path.isfile(path):
    raise FileNotFoundError(
        f'{path} not found: {workdir} is not a visgen training workdir (or '
        'its run never started). Fix: pass the workdir of a run, or name '
        'its config with --config=configs/X.py[:arg].')
  try:
    with open(path) as f:
      raw = json.load(f)
  except ValueError as e:
    raise ValueError(f'{path} is not valid JSON ({e}); pass the config '
                     'with --config=configs/X.py[:arg].') from e
  return mlc.ConfigDict(_tuples(raw))
