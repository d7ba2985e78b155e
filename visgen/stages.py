"""Stages: parts a run trains first, each in its own sub-workdir.

A latent generator needs a trained autoencoder; a ControlNet needs its base.
A config lists such prerequisites under `config.stages` and names their
weights with a 'stage:<name>' source:

  c.stages = dict(autoencoder=dict(config='configs/autoencoder_shapes.py'))
  c.frozen = dict(autoencoder=dict(source='stage:autoencoder'))

`python -m visgen.main --config=... --workdir=DIR` then trains each stage's
config through the same loop into DIR/stages/<name> (resumable like any run:
an interrupted stage continues from its last checkpoint, a finished one, i.e.
its metrics.json reports its total_steps, is not trained again) before the
run itself builds anything, and the run's wall clock counts every stage.
'stage:<name>' is rewritten to 'workdir:DIR/stages/<name>' (`resolve`), so
the config.json a run saves, `--mode=sample|eval` and `visgen.generate`
read the stage's checkpoint like any other workdir source.

A stage's `config` is a config spec (configs/X.py[:arg], relative to the
current directory or to the repository root) with optional `overrides`
(dotted keys, as `--config.a.b=v`).
"""

import json
import os
from typing import Any, Callable

from absl import logging

PREFIX = 'stage:'
FIELDS = ('config', 'overrides')
ROOT = os.path.normpath(os.path.join(os.path.dirname(__file__), '..'))


def stage_dir(workdir: str, name: str) -> str:
  return os.path.join(os.path.abspath(workdir), 'stages', name)


def symbolic(source: str) -> str:
  """'workdir:<any>/stages/<name>' -> 'stage:<name>' (others unchanged):
  how checkpoint fingerprints name a stage, wherever the workdir now is."""
  kind, _, path = source.partition(':')
  parent, name = os.path.split(os.path.normpath(path))
  if kind == 'workdir' and os.path.basename(parent) == 'stages' and name:
    return PREFIX + name
  return source


def _spec_file(spec: str) -> str:
  """The config file of a spec, relative to cwd or the repository root."""
  file, sep, arg = spec.partition(':')
  if not os.path.isfile(file) and os.path.isfile(os.path.join(ROOT, file)):
    file = os.path.join(ROOT, file)
  return file + sep + arg


def _sources(config) -> list[tuple[str, Any, str]]:
  """(config key, the dict holding 'source', source) of each weight source."""
  out = []
  for name, entry in (config.get('frozen') or {}).items():
    out.append((f'frozen.{name}.source', entry, entry.get('source')))
  init = config.get('init_from')
  if init and init.get('source'):
    out.append(('init_from.source', init, init.get('source')))
  return out


def check(config) -> None:
  """Stage entries are well formed and every 'stage:' source names one.

  Raises ValueError naming the key and the fix.
  """
  stages = config.get('stages') or {}
  for name, spec in stages.items():
    spec = dict(spec)
    unknown = sorted(set(spec) - set(FIELDS))
    if unknown:
      raise ValueError(f'config.stages.{name} has unknown fields {unknown}; '
                       f'valid fields: {", ".join(FIELDS)}.')
    if not isinstance(spec.get('config'), str) or not spec['config']:
      raise ValueError(f'config.stages.{name}.config must name a config '
                       "file, e.g. 'configs/autoencoder_shapes.py'.")
    file = _spec_file(spec['config']).split(':', 1)[0]
    if not os.path.isfile(file):
      raise ValueError(f'config.stages.{name}.config: no config file '
                       f'{spec["config"]!r} (looked in {os.getcwd()} and '
                       f'{ROOT}). Fix: name an existing configs/X.py.')
  for key, _, source in _sources(config):
    if isinstance(source, str) and source.startswith(PREFIX):
      name = source[len(PREFIX):]
      if name not in stages:
        raise ValueError(
            f'config.{key}={source!r} names no stage; stages: '
            f'{sorted(stages) or "none"}. Fix: add config.stages.{name} = '
            "dict(config='configs/X.py') or use a 'workdir:PATH' source.")


def resolve(config, workdir: str):
  """Rewrites 'stage:<name>' sources to the stage's workdir (in place)."""
  check(config)
  for _, holder, source in _sources(config):
    if isinstance(source, str) and source.startswith(PREFIX):
      holder['source'] = 'workdir:' + stage_dir(
          workdir, source[len(PREFIX):])
  return config


def load_stage_config(spec: dict):
  from visgen import config_loader  # pylint: disable=g-import-not-at-top
  spec = dict(spec)
  return config_loader.load(_spec_file(spec['config']),
                            dict(spec.get('overrides') or {}))


def finished(sub: str, stage_config) -> bool:
  """Whether the stage in `sub` trained to its total_steps and evaluated."""
  path = os.path.join(sub, 'metrics.json')
  if not os.path.isfile(path):
    return False
  try:
    with open(path) as f:
      steps = json.load(f).get('steps')
  except (OSError, ValueError):
    return False
  return steps == int(stage_config.total_steps)


def run(config, workdir: str, train_fn: Callable[[Any, str], dict]
        ) -> dict[str, dict]:
  """Trains every unfinished stage; returns each stage's metrics.json."""
  check(config)
  out = {}
  for name, spec in (config.get('stages') or {}).items():
    sub = stage_dir(workdir, name)
    stage_config = load_stage_config(spec)
    if finished(sub, stage_config):
      logging.info('Stage %r: finished in %s, not trained again.', name, sub)
    else:
      logging.info('Stage %r: training %s into %s.', name, spec['config'],
                   sub)
      train_fn(stage_config, sub)
    with open(os.path.join(sub, 'metrics.json')) as f:
      out[name] = json.load(f)
  return out
