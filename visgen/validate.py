"""User-input checks before any work starts, and the entry points' error line.

Every command line (`visgen.main`, `visgen.evaluate`, guided sampling) runs
its work through `run_cli`, which turns a `UserError` (bad config value,
unknown name, unusable workdir or input file) into ONE line on stderr,

  error: config.total_steps=-5 is invalid: must be an integer >= 1. Fix: ...

and exit status 2 (a failed run, `RunError`: a save that could not be made,
a diverged loss, exits 1), with no traceback unless `--verbose`.

`check_config` looks at every value of a run's config (types and ranges,
names against the registries, sampler/path compatibility, batch sizes
against the device mesh) without building or compiling anything, so a typo
fails in the first seconds, not after training. `check_first_batch` checks
labels against `task.num_classes` on the first batch the loop sees.
"""

import math
import os
import sys
import traceback
from typing import Any
from typing import Callable

# Model / frozen-component compute dtypes the builder accepts.
DTYPES = ('float32', 'bfloat16')


class UserError(ValueError):
  """Bad input the user can fix: the message says what and how (exit 2)."""

  exit_code = 2


class RunError(RuntimeError):
  """A run that had to stop (I/O failure, diverged loss) (exit 1)."""

  exit_code = 1


class DivergedError(RunError, FloatingPointError):
  """The loss became NaN or infinite (exit 1)."""


def report(e: BaseException, *, verbose: bool = False,
           file=None) -> int:
  """Prints `error: <message>` (traceback only if verbose); exit status."""
  file = file or sys.stderr
  if verbose:
    traceback.print_exception(e, file=file)
  msg = str(e).strip() or type(e).__name__
  print(f'error: {msg}', file=file, flush=True)
  return int(getattr(e, 'exit_code', 1))


def run_cli(fn: Callable[[], Any], *, verbose: bool = False) -> int:
  """Runs fn(); user errors and I/O failures become one line + status.

  Unexpected exceptions (bugs) keep their traceback: they are not the
  user's to fix.
  """
  try:
    fn()
  except (UserError, RunError) as e:
    return report(e, verbose=verbose)
  except FileNotFoundError as e:  # Missing data/weights: the message says how.
    e.exit_code = 2
    return report(e, verbose=verbose)
  except OSError as e:  # Disk full, read-only, permission.
    return report(RunError(describe_os_error(e)), verbose=verbose)
  return 0


def describe_os_error(e: OSError) -> str:
  """'<what> (<path>)' with the likely cause for the common errnos."""
  import errno  # pylint: disable=g-import-not-at-top

  hints = {
      errno.ENOSPC: 'the disk is full: free space or use another --workdir',
      errno.EROFS: 'the file system is read-only: use a writable --workdir',
      errno.EACCES: 'permission denied: use a --workdir you can write to',
      errno.EPERM: 'permission denied: use a --workdir you can write to',
      errno.EDQUOT: 'the disk quota is exceeded: free space',
  }
  where = f' ({e.filename})' if getattr(e, 'filename', None) else ''
  hint = hints.get(e.errno)
  text = e.strerror or str(e)
  return f'{text}{where}' + (f'; {hint}' if hint else '')


# ----------------------------------------------------------------------------
# Paths.
# ----------------------------------------------------------------------------


def resolve_path(path: str | None, *, flag: str) -> str:
  """`~` expanded and made absolute (once, at the entry point)."""
  if path is None or not str(path).strip():
    raise UserError(f'{flag} is empty. Fix: pass {flag}=DIR (a relative '
                    'path is taken from the current directory).')
  return os.path.abspath(os.path.expanduser(str(path)))


def resolve_workdir(path: str | None, *, create: bool,
                    flag: str = '--workdir') -> str:
  """The absolute workdir; created (train) or required to exist (sample,
  eval). A file in its place or an unwritable one is a `UserError`."""
  path = resolve_path(path, flag=flag)
  if os.path.exists(path) and not os.path.isdir(path):
    raise UserError(f'{flag}={path} is a file, not a directory. Fix: pass a '
                    'directory path (new or an earlier run\'s workdir).')
  if not create:
    if not os.path.isdir(path):
      raise UserError(f'{flag}={path} does not exist. Fix: train first '
                      f'(--mode=train with the same {flag}).')
    return path
  parent = path
  while not os.path.exists(parent):  # The first ancestor that exists.
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent):
    raise UserError(f'{flag}={path}: {parent} is a file, so the directory '
                    'cannot be created. Fix: choose another path.')
  try:
    os.makedirs(path, exist_ok=True)
    probe = os.path.join(path, f'.write_test_{os.getpid()}')
    with open(probe, 'w') as f:
      f.write('ok')
    os.remove(probe)
  except OSError as e:
    raise UserError(f'{flag}={path} is not writable: '
                    f'{describe_os_error(e)}.') from e
  return path


def check_output_file(path: str | None, *, flag: str) -> str | None:
  """An output file's absolute path, its folder created BEFORE the work."""
  if path is None:
    return None
  path = resolve_path(path, flag=flag)
  if os.path.isdir(path):
    raise UserError(f'{flag}={path} is a directory. Fix: name a file, e.g. '
                    f'{flag}={os.path.join(path, "metrics.json")}.')
  folder = os.path.dirname(path)
  try:
    os.makedirs(folder, exist_ok=True)
  except OSError as e:
    raise UserError(f'{flag}={path}: cannot create its folder {folder}: '
                    f'{describe_os_error(e)}.') from e
  if not os.access(folder, os.W_OK):
    raise UserError(f'{flag}={path}: the folder {folder} is not writable.')
  return path


def check_arg(flag: str, value: Any, ok: bool, allowed: str) -> None:
  """A command-line value (not a config key): `UserError` unless ok."""
  if not ok:
    raise UserError(f'{flag}={value!r} is invalid: must be {allowed}. Fix: '
                    f'pass {flag}=<{allowed}>.')


def check_input_file(path: str, *, what: str) -> str:
  path = resolve_path(path, flag=what)
  if not os.path.exists(path):
    raise UserError(f'{what} {path} does not exist. Fix: check the path.')
  if os.path.isdir(path):
    raise UserError(f'{what} {path} is a directory, not a file.')
  return path


# ----------------------------------------------------------------------------
# Config values.
# ----------------------------------------------------------------------------


def _bad(key: str, value: Any, allowed: str, fix: str | None = None):
  fix = fix or f'pass --config.{key}=<{allowed}>'
  return UserError(f'config.{key}={value!r} is invalid: must be {allowed}. '
                   f'Fix: {fix}.')


def _is_int(v) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool)


def check_int(key: str, v, *, lo: int | None = None,
              hi: int | None = None) -> int:
  allowed = 'an integer' + (f' >= {lo}' if lo is not None else '') + (
      f' <= {hi}' if hi is not None else '')
  if not _is_int(v) or (lo is not None and v < lo) or (
      hi is not None and v > hi):
    raise _bad(key, v, allowed)
  return v


def check_float(key: str, v, *, lo: float | None = None,
                hi: float | None = None, lo_open: bool = False,
                hi_open: bool = False) -> float:
  """A finite number in the interval [lo, hi] (ends open when asked)."""
  parts = []
  if lo is not None:
    parts.append(f'{">" if lo_open else ">="} {lo}')
  if hi is not None:
    parts.append(f'{"<" if hi_open else "<="} {hi}')
  allowed = 'a finite number' + (' ' + ' and '.join(parts) if parts else '')
  if lo is not None and hi is not None:
    allowed = (f'a number in {"(" if lo_open else "["}{lo}, {hi}'
               f'{")" if hi_open else "]"}')
  if not _is_num(v) or not math.isfinite(v):
    raise _bad(key, v, allowed)
  if lo is not None and (v < lo or (lo_open and v == lo)):
    raise _bad(key, v, allowed)
  if hi is not None and (v > hi or (hi_open and v == hi)):
    raise _bad(key, v, allowed)
  return float(v)


def check_choice(key: str, v, choices, what: str) -> str:
  choices = sorted(choices)
  if v not in choices:
    raise UserError(f'config.{key}={v!r} is not a known {what}. Valid '
                    f'choices: {", ".join(map(str, choices))}. Fix: pass '
                    f'--config.{key}=<one of them>.')
  return v


def _named(entry, key: str) -> tuple[str, dict]:
  if isinstance(entry, str):
    return entry, {}
  if not hasattr(entry, 'keys') or 'name' not in entry:
    raise _bad(key, entry, 'a name or a dict with a "name" field')
  kw = dict(entry)
  return kw.pop('name'), kw


def _build(registry, key: str, entry, what: str, **extra):
  """Checks the name against `registry` and builds it (cheap objects)."""
  name, kw = _named(entry, key)
  check_choice(f'{key}.name' if not isinstance(entry, str) else key, name,
               registry.names(), what)
  try:
    return registry.build(name, **kw, **extra)
  except (TypeError, ValueError) as e:
    raise UserError(f'config.{key} ({what} {name!r}) has bad options '
                    f'{kw}: {e}') from e


def _evals_registry():
  """The evaluation registry, wherever this version keeps it."""
  import importlib  # pylint: disable=g-import-not-at-top

  for module in ('visgen.evaluations', 'visgen.sample'):
    try:
      mod = importlib.import_module(module)
    except ImportError:
      continue
    if hasattr(mod, 'EVALS'):
      return mod.EVALS
  return None


def mesh_batch_devices(config, device_count: int) -> int:
  """How many ways the batch is split: the sizes of the 'batch' mesh axes."""
  spec = [(str(n), s) for n, s in config.sharding.mesh]
  sizes = [s for _, s in spec]
  for (name, s) in spec:
    if not _is_int(s) or (s < 1 and s != -1):
      raise _bad('sharding.mesh', spec, 'axis sizes >= 1 (one may be -1)')
  if sizes.count(-1) > 1:
    raise _bad('sharding.mesh', spec, 'at most one axis of size -1')
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if device_count % known:
      raise _bad('sharding.mesh', spec,
                 f'a mesh that {device_count} devices can fill')
    sizes[sizes.index(-1)] = device_count // known
  if math.prod(sizes) != device_count:
    raise _bad('sharding.mesh', spec,
               f'a mesh of exactly {device_count} devices (this machine)',
               'use -1 for one axis to absorb the rest')
  rules = dict((r[0], r[1]) for r in config.sharding.get('rules', ()))
  axes = rules.get('batch', [n for n, _ in spec])
  axes = [axes] if isinstance(axes, str) else list(axes or [])
  return math.prod(s for (n, _), s in zip(spec, sizes) if n in axes)


def check_config(config, *, mode: str = 'train',
                 device_count: int | None = None) -> None:
  """Raises `UserError` for the first bad value of `config` (no compiles)."""
  # pylint: disable=g-import-not-at-top
  from visgen import interpolants
  from visgen import models
  from visgen import samplers
  from visgen import tasks
  from visgen.objectives import predictions
  from visgen.objectives import time_dists
  from visgen.objectives import weightings
  # pylint: enable=g-import-not-at-top
  c = config
  check_int('seed', c.get('seed', 0))
  check_int('total_steps', c.total_steps, lo=1)
  check_int('log_every', c.get('log_every', 1), lo=1)
  check_int('ckpt_every', c.ckpt_every, lo=1)
  check_int('keep_last', c.keep_last, lo=1)
  for k in ('keep_every', 'sample_every', 'eval_every', 'num_grid_samples'):
    check_int(k, c.get(k, 0), lo=0)
  check_int('num_samples', c.get('num_samples', 1), lo=1)
  check_int('sample_batch', c.get('sample_batch', 1), lo=1)
  decays = c.get('ema_decays', ())
  if not isinstance(decays, (tuple, list)):
    raise _bad('ema_decays', decays, 'a tuple of decays in (0, 1)',
               'e.g. --config.ema_decays="(0.999,)"')
  for i, d in enumerate(decays):
    check_float(f'ema_decays[{i}]', d, lo=0, hi=1, lo_open=True,
                hi_open=True)
  if len(set(decays)) != len(decays):
    raise _bad('ema_decays', tuple(decays), 'distinct decays')

  # Optimizer.
  o = c.optim
  check_float('optim.lr', o.lr, lo=0, lo_open=True)
  check_int('optim.warmup_steps', o.get('warmup_steps', 0), lo=0)
  from visgen import optim as optim_lib  # pylint: disable=g-import-not-at-top
  check_choice('optim.schedule', o.get('schedule', 'constant'),
               getattr(optim_lib, 'SCHEDULES', ('constant', 'cosine')),
               'learning-rate schedule')
  check_float('optim.weight_decay', o.get('weight_decay', 0.0), lo=0)
  check_float('optim.b1', o.get('b1', 0.9), lo=0, hi=1, hi_open=True)
  check_float('optim.b2', o.get('b2', 0.999), lo=0, hi=1, hi_open=True)
  check_float('optim.eps', o.get('eps', 1e-8), lo=0, lo_open=True)
  check_float('optim.grad_clip', o.get('grad_clip', 0.0), lo=0)
  check_float('optim.end_lr_factor', o.get('end_lr_factor', 0.0), lo=0,
              hi=1)
  accum = check_int('optim.accum_steps', o.get('accum_steps', 1), lo=1)
  for field in ('trainable', 'freeze'):
    check_regexes(f'optim.{field}', o.get(field))
  check_init_from(c.get('init_from'))

  # Task and model.
  t = c.task
  check_choice('task.name', t.name, tasks.TASKS.names(), 'task')
  k = check_int('task.num_classes', t.get('num_classes', 0), lo=0)
  check_float('task.label_dropout', t.get('label_dropout', 0.0), lo=0, hi=1)
  shape = t.get('x_shape')
  if shape is not None and (not isinstance(shape, (tuple, list)) or not all(
      _is_int(s) and s >= 1 for s in shape)):
    raise _bad('task.x_shape', shape, 'a tuple of positive sizes, e.g. '
               '(8, 8, 1)')
  m = c.model
  check_choice('model.name', m.name, models.MODELS.names(), 'model')
  if 'dtype' in m and m.dtype is not None:
    check_choice('model.dtype', m.dtype, DTYPES, 'dtype')
  if 'num_classes' in m and m.num_classes is not None and (
      m.num_classes != k):
    raise UserError(
        f'config.model.num_classes={m.num_classes!r} differs from '
        f'config.task.num_classes={k!r}. Fix: set both to the number of '
        'classes of the data.')
  for name, part in (c.get('frozen') or {}).items():
    if hasattr(part, 'get') and part.get('dtype') is not None:
      check_choice(f'frozen.{name}.dtype', part['dtype'], DTYPES, 'dtype')
  from visgen import stages  # pylint: disable=g-import-not-at-top
  try:  # config.stages and every 'stage:<name>' weight source.
    stages.check(c)
  except ValueError as e:
    raise UserError(str(e)) from e

  # The objective's four axes (built: they are cheap Python objects).
  path = None
  if 'path' in c:
    path = _build(interpolants.PATHS, 'path', c.path, 'path')
  if 'prediction' in c:
    check_choice('prediction', c.prediction, predictions.KINDS,
                 'prediction kind')
  if 'weighting' in c:
    _build(weightings.WEIGHTINGS, 'weighting', c.weighting, 'weighting')
  if 'time_dist' in c:
    _build(time_dists.TIME_DISTS, 'time_dist', c.time_dist,
           'time distribution')
  if path is not None and c.get('precond') is not None and (
      'prediction' in c):
    from visgen.objectives import precond  # pylint: disable=g-import-not-at-top
    try:
      precond.resolve_mode(c.precond, prediction=c.prediction, path=path)
    except ValueError as e:
      raise UserError(f'config.precond={c.precond!r}: {e}') from e
  if 'sampler' in c and path is not None:
    check_sampler(c.sampler, path, prediction=c.get('prediction'))

  # Data and batch sizes against the devices.
  d = c.data
  from visgen import data as data_lib  # pylint: disable=g-import-not-at-top
  check_choice('data.name', d.name, data_lib.SOURCES.names(), 'dataset')
  bs = check_int('data.batch_size', d.batch_size, lo=1)
  if 'data_dir' in d and d.data_dir is not None and not isinstance(
      d.data_dir, str):
    raise _bad('data.data_dir', d.data_dir, 'a directory path')
  if bs % accum:
    raise _bad('data.batch_size', bs, f'a multiple of optim.accum_steps='
               f'{accum}')
  if device_count is None:
    import jax  # pylint: disable=g-import-not-at-top
    device_count = jax.device_count()
  ways = mesh_batch_devices(c, device_count)
  if bs % ways:
    lo = bs // ways * ways or ways
    raise _bad('data.batch_size', bs,
               f'a multiple of the {ways} devices the batch is split over',
               f'pass --config.data.batch_size={lo} or {lo + ways}')

  # Evaluations.
  evals = _evals_registry()
  for name, kw in sorted((c.get('eval') or {}).items()):
    if evals is not None:
      check_choice('eval', name, evals.names(), 'evaluation')
    for key in ('num_samples', 'batch', 'num_images', 'steps'):
      if key in kw:
        check_int(f'eval.{name}.{key}', kw[key], lo=1)
    if 'feature_net' in kw:
      from visgen.evaluators import feature_nets  # pylint: disable=g-import-not-at-top
      check_choice(f'eval.{name}.feature_net', kw['feature_net'],
                   feature_nets.FEATURE_NETS.names(), 'feature net')
  del mode


def check_regexes(key: str, patterns) -> None:
  """None, or a tuple of regexes that compile (matched to parameter paths
  when the state is built, where a regex matching nothing is refused)."""
  import re  # pylint: disable=g-import-not-at-top

  if patterns is None:
    return
  if isinstance(patterns, str):
    patterns = (patterns,)
  if not isinstance(patterns, (tuple, list)) or not all(
      isinstance(p, str) for p in patterns):
    raise _bad(key, patterns, 'a tuple of regexes over /-joined parameter '
               'paths', f"e.g. --config.{key}=\"('blocks/.*',)\"")
  for p in patterns:
    try:
      re.compile(p)
    except re.error as e:
      raise _bad(key, tuple(patterns), f'valid regexes ({p!r}: {e})') from e


def check_init_from(cfg) -> None:
  """`config.init_from` (visgen.warm_start): fields, source kind, weights,
  step, converter name and mapping pairs; the source itself is read (and
  its parameters matched) only when a fresh run starts."""
  # pylint: disable=g-import-not-at-top
  from visgen import warm_start
  from visgen import weights as weights_lib
  # pylint: enable=g-import-not-at-top
  if not cfg or not cfg.get('source'):
    return
  unknown = sorted(set(cfg.keys()) - set(warm_start.FIELDS))
  if unknown:
    raise UserError(f'config.init_from has unknown fields {unknown}. Valid '
                    f'fields: {", ".join(warm_start.FIELDS)}.')
  try:
    if not str(cfg['source']).startswith('stage:'):  # checked with stages
      weights_lib.parse_source(cfg['source'],
                               what='config.init_from.source')
  except ValueError as e:
    raise UserError(str(e)) from e
  w = cfg.get('weights') or 'ema'
  if not isinstance(w, str) or not (w in ('ema', 'raw') or (
      w.startswith('ema:'))):
    raise _bad('init_from.weights', w, "'ema', 'ema:<decay>' or 'raw'")
  if cfg.get('step') is not None:
    check_int('init_from.step', cfg['step'], lo=0)
  check_choice('init_from.converter', cfg.get('converter') or 'identity',
               weights_lib.CONVERTERS.names(), 'weight converter')
  mapping = cfg.get('mapping')
  if mapping is not None:
    ok = isinstance(mapping, (tuple, list)) and all(
        isinstance(r, (tuple, list)) and len(r) == 2 and isinstance(r[0], str)
        and (r[1] is None or isinstance(r[1], str)) for r in mapping)
    if not ok:
      raise _bad('init_from.mapping', mapping, '(regex, replacement or None) '
                 'pairs', "e.g. --config.init_from.mapping=\"(('(.*)', "
                 "r'\\1'),)\"")
    check_regexes('init_from.mapping', [r[0] for r in mapping])


def check_sampler(sampler, path, *, prediction=None) -> None:
  """Name, grid, options and applicability to `path` (nothing compiled)."""
  # pylint: disable=g-import-not-at-top
  import inspect

  from visgen import samplers
  # pylint: enable=g-import-not-at-top
  name, kw = _named(sampler, 'sampler')
  check_choice('sampler.name', name, samplers.SAMPLERS.names(), 'sampler')
  check_int('sampler.steps', kw.pop('steps', 1), lo=1)
  check_choice('sampler.grid', kw.pop('grid', 'uniform'),
               samplers.GRIDS.names(), 'time grid')
  scale = kw.pop('cfg_scale', 1.0)
  check_float('sampler.cfg_scale', scale)
  check_float('sampler.cfg_rescale', kw.pop('cfg_rescale', 0.0), lo=0, hi=1)
  interval = kw.pop('cfg_interval', None)
  if interval is not None:
    ok = isinstance(interval, (tuple, list)) and len(interval) == 2 and all(
        _is_num(v) and math.isfinite(v) for v in interval)
    if not ok or not 0 <= interval[0] <= interval[1] <= 1:
      raise _bad('sampler.cfg_interval', tuple(interval) if isinstance(
          interval, (tuple, list)) else interval,
                 '(t_lo, t_hi) with 0 <= t_lo <= t_hi <= 1',
                 'e.g. --config.sampler.cfg_interval="(0.0, 1.0)"')
  final = kw.pop('denoise_final', False)  # samplers.sample's, for all.
  if not isinstance(final, bool):
    raise _bad('sampler.denoise_final', final, 'true or false')
  channels = kw.pop('cfg_channels', 0)
  if channels is not None:
    check_int('sampler.cfg_channels', channels, lo=0)
  for k, v in kw.items():
    if _is_num(v) and not math.isfinite(v):
      raise _bad(f'sampler.{k}', v, 'a finite number')
  spec = samplers.get_sampler(name)
  params = inspect.signature(spec.fn).parameters
  if not any(p.kind == p.VAR_KEYWORD for p in params.values()):
    accepted = [p for p in list(params)[4:]]
    for k in kw:
      if k not in accepted:
        raise UserError(
            f'config.sampler.{k} is not an option of sampler {name!r}. '
            f'Its options: {", ".join(accepted) or "none"}. Fix: remove '
            f'it or choose another sampler.')
  reason = spec.check(path, kw)
  if reason:
    raise UserError(
        f'config.sampler.name={name!r} does not apply to path '
        f'{path.name!r}: {reason}. Fix: choose a sampler for this path '
        f'(valid names: {", ".join(samplers.SAMPLERS.names())}).')
  del prediction


def check_first_batch(batch: dict, *, num_classes: int) -> None:
  """Labels of the first batch lie in [0, num_classes) (class-conditional
  tasks); out-of-range labels otherwise turn into a NaN loss later."""
  import numpy as np  # pylint: disable=g-import-not-at-top

  if not num_classes or 'label' not in batch:
    return
  labels = np.asarray(batch['label'])
  if labels.size == 0:
    return
  lo, hi = int(labels.min()), int(labels.max())
  if lo < 0 or hi >= num_classes:
    raise UserError(
        f'config.task.num_classes={num_classes} but the data has labels '
        f'{lo}..{hi} (first batch). Fix: pass --config.task.num_classes='
        f'{hi + 1} (and --config.model.num_classes={hi + 1}).')


def nonfinite_loss_message(loss: float, step: int, *, num_classes: int,
                           latest_step: int | None, directory: str) -> str:
  """Why a loss may be NaN/inf, likeliest first, and what is kept."""
  causes = []
  if num_classes:
    causes.append(f'labels outside [0, {num_classes}) '
                  '(check --config.task.num_classes against the data)')
  causes += ['a learning rate too high (lower --config.optim.lr, or set '
             '--config.optim.grad_clip=1.0)',
             'low precision (use --config.model.dtype=float32)']
  kept = (f'The last good checkpoint (step {latest_step}) in {directory} is '
          'intact; the run resumes from it with the same --workdir.'
          if latest_step is not None else
          'No checkpoint was saved before this step.')
  return (f'Non-finite loss {loss} at step {step}; the run stopped. Likely '
          'causes, in order: ' + '; '.join(
              f'({i}) {c}' for i, c in enumerate(causes, 1)) + '. ' + kept)
