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

An *encoding* stage pre-encodes a dataset with a trained autoencoder once
(latent diffusion's data side, `visgen.data.latents`), so the generator's
step runs no encoder:

  c.stages.latents = dict(encode='stage:autoencoder', dataset='shapes',
                          split='train', num_examples=50000)
  c.data = dict(name='latents', path='stage:latents', batch_size=64)

`fields` (default ('label',)) names the per-example fields kept beside the
latents, e.g. ('label', 'caption') for text-to-image; `source_options`
are further keyword arguments of the dataset's source (e.g. shapes'
`heldout` pairs kept out of the train split). It runs after the
training stages, writes DIR/stages/<name> atomically (a killed encoding
leaves no half-written latents) and is skipped when its meta.json records
the same autoencoder, dataset, split, count, fields and source options. The data
path 'stage:<name>' is rewritten like a weight source.
"""

import json
import os
from typing import Any, Callable

from absl import logging

PREFIX = 'stage:'
FIELDS = ('config', 'overrides')
ENCODE_FIELDS = ('encode', 'dataset', 'split', 'num_examples', 'resolution',
                 'batch', 'fields', 'source_options')
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


def _is_encode(spec) -> bool:
  return 'encode' in dict(spec)


def _data_path(config) -> Any:
  data = config.get('data') or {}
  return data.get('path') if data.get('name') == 'latents' else None


def check(config) -> None:
  """Stage entries are well formed and every 'stage:' source names one.

  Raises ValueError naming the key and the fix.
  """
  stages = config.get('stages') or {}
  for name, spec in stages.items():
    spec = dict(spec)
    if _is_encode(spec):
      unknown = sorted(set(spec) - set(ENCODE_FIELDS))
      if unknown:
        raise ValueError(
            f'config.stages.{name} (an encoding stage) has unknown fields '
            f'{unknown}; valid fields: {", ".join(ENCODE_FIELDS)}.')
      source = spec['encode']
      if not isinstance(source, str) or not (
          source.startswith(PREFIX) or source.startswith('workdir:')):
        raise ValueError(
            f'config.stages.{name}.encode={source!r} must name the '
            "autoencoder: 'stage:<name>' or 'workdir:PATH'.")
      if source.startswith(PREFIX):
        other = source[len(PREFIX):]
        if other not in stages or _is_encode(stages[other]):
          raise ValueError(
              f'config.stages.{name}.encode={source!r} names no training '
              f'stage; stages: {sorted(stages)}.')
      continue
    unknown = sorted(set(spec) - set(FIELDS))
    if unknown:
      raise ValueError(f'config.stages.{name} has unknown fields {unknown}; '
                       f'valid fields: {", ".join(FIELDS)} (an encoding '
                       f'stage: {", ".join(ENCODE_FIELDS)}).')
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
      if name not in stages or _is_encode(stages[name]):
        raise ValueError(
            f'config.{key}={source!r} names no training stage; stages: '
            f'{sorted(stages) or "none"}. Fix: add config.stages.{name} = '
            "dict(config='configs/X.py') or use a 'workdir:PATH' source.")
  path = _data_path(config)
  if isinstance(path, str) and path.startswith(PREFIX):
    name = path[len(PREFIX):]
    if name not in stages or not _is_encode(stages[name]):
      raise ValueError(
          f'config.data.path={path!r} names no encoding stage; stages: '
          f'{sorted(stages) or "none"}. Fix: add config.stages.{name} = '
          "dict(encode='stage:autoencoder', dataset=..., split='train') or "
          'give the directory of pre-encoded latents.')


def resolve(config, workdir: str):
  """Rewrites 'stage:<name>' sources (and a latents data path) to the
  stage's directory (in place)."""
  check(config)
  for _, holder, source in _sources(config):
    if isinstance(source, str) and source.startswith(PREFIX):
      holder['source'] = 'workdir:' + stage_dir(
          workdir, source[len(PREFIX):])
  path = _data_path(config)
  if isinstance(path, str) and path.startswith(PREFIX):
    config.data.path = stage_dir(workdir, path[len(PREFIX):])
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


def _encode_meta(spec: dict, autoencoder: str) -> dict:
  return dict(autoencoder=symbolic('workdir:' + os.path.abspath(autoencoder)),
              dataset=spec.get('dataset', 'shapes'),
              split=spec.get('split', 'train'),
              num_examples=spec.get('num_examples'),
              fields=sorted(spec.get('fields', ('label',))),
              source_options=json.loads(json.dumps(
                  dict(spec.get('source_options') or {}))))


def _encoded(sub: str, want: dict) -> bool:
  """Whether `sub` holds the latents `want` describes (see _encode_meta)."""
  try:
    with open(os.path.join(sub, 'meta.json')) as f:
      meta = json.load(f)
  except (OSError, ValueError):
    return False
  have = dict(meta, fields=sorted(meta.get('fields', ['label'])),
              source_options=meta.get('source_options', {}))
  return all(have.get(k) == v for k, v in want.items()
             if not (k == 'num_examples' and v is None))


def run_encode(name: str, spec: dict, workdir: str) -> dict:
  """Runs one encoding stage (if not done); its metrics."""
  import shutil  # pylint: disable=g-import-not-at-top
  import time  # pylint: disable=g-import-not-at-top

  from visgen.data import latents  # pylint: disable=g-import-not-at-top

  spec = dict(spec)
  source = spec['encode']
  ae = (stage_dir(workdir, source[len(PREFIX):])
        if source.startswith(PREFIX) else source.partition(':')[2])
  sub = stage_dir(workdir, name)
  want = _encode_meta(spec, ae)
  if _encoded(sub, want):
    logging.info('Stage %r: latents in %s, not encoded again.', name, sub)
    with open(os.path.join(sub, 'meta.json')) as f:
      meta = json.load(f)
    return dict(num_examples=meta['num_examples'],
                encode_wall_time_s=meta.get('encode_wall_time_s'))
  logging.info('Stage %r: encoding %s/%s with %s into %s.', name,
               want['dataset'], want['split'], ae, sub)
  start = time.time()
  tmp = sub + '.partial'
  shutil.rmtree(tmp, ignore_errors=True)
  n, _ = latents.encode_to_dir(
      ae, out=tmp, dataset=want['dataset'], split=want['split'],
      resolution=spec.get('resolution'), num_examples=spec.get(
          'num_examples'), batch=int(spec.get('batch', 256)),
      fields=tuple(want['fields']), source_options=want['source_options'])
  elapsed = time.time() - start
  with open(os.path.join(tmp, 'meta.json')) as f:
    meta = json.load(f)
  meta.update(want, num_examples=n, encode_wall_time_s=elapsed)
  with open(os.path.join(tmp, 'meta.json'), 'w') as f:
    json.dump(meta, f, indent=1)
  shutil.rmtree(sub, ignore_errors=True)  # an outdated encoding
  os.replace(tmp, sub)  # atomic: complete latents or none
  logging.info('Stage %r: %d latents in %.0f s.', name, n, elapsed)
  return dict(num_examples=n, encode_wall_time_s=elapsed)


def run(config, workdir: str, train_fn: Callable[[Any, str], dict]
        ) -> dict[str, dict]:
  """Trains every unfinished stage, then runs the encoding stages; returns
  each stage's metrics (a trained stage's metrics.json)."""
  check(config)
  out = {}
  stages = config.get('stages') or {}
  for name, spec in stages.items():
    if _is_encode(spec):
      continue
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
  for name, spec in stages.items():
    if _is_encode(spec):
      out[name] = run_encode(name, spec, workdir)
  return out
