"""The entry point: train, sample or evaluate one config.

  python -m visgen.main --config=configs/quickstart.py --workdir=workdirs/qs
  python -m visgen.main --config=configs/dit_imagenet.py:runlocal \
      --workdir=/tmp/dit --config.total_steps=10 --mode=train

Intentionally short: logic lives in importable modules (train.py,
sample.py). The workdir may be relative or start with `~`: it is made
absolute here, once. Before any work, `visgen.validate` checks the flags and
every config value; a user error prints one line (`error: ...`, no traceback
unless --verbose) and exits 2, a failed run (a save that could not be made,
a diverged loss) exits 1. `cli(argv)` runs the whole command in-process
(tests). Multi-process runs (launch/) set the coordinator through
environment variables; see `_maybe_init_distributed`.
"""

import difflib
import os
import sys
import time

# The reported wall time starts before the (slow) imports.
_START = time.time()

from visgen import hugepages  # noqa: E402  (no heavy imports)

if __name__ == '__main__':
  # Re-executes once with glibc huge pages before JAX allocates anything.
  hugepages.ensure_hugepages()

# pylint: disable=g-import-not-at-top,wrong-import-position
from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from visgen import config_lib  # noqa: E402  (no JAX)
from visgen import validate  # noqa: E402  (imports JAX lazily)

# pylint: enable=g-import-not-at-top,wrong-import-position

MODES = ('train', 'sample', 'eval')


def _define_flags(fv: flags.FlagValues):
  """The flags of this command on `fv` (the global FLAGS, or a fresh set)."""
  # ml_collections' config file flag, locked: a mistyped override fails.
  config_flags.DEFINE_config_file(
      'config', None, 'Config file (configs/X.py[:args]).', flag_values=fv,
      lock_config=True)
  flags.DEFINE_string('workdir', None, 'Directory for checkpoints and logs '
                      '(relative paths and ~ are fine).', flag_values=fv)
  flags.DEFINE_enum('mode', 'train', MODES, 'What to do.', flag_values=fv)
  flags.DEFINE_bool('verbose', False, 'Show the traceback of errors.',
                    flag_values=fv)
  flags.mark_flags_as_required(['config', 'workdir'], flag_values=fv)


_define_flags(flags.FLAGS)
FLAGS = flags.FLAGS


def _config_overrides(argv) -> list[tuple[str, str]]:
  """(dotted key, raw arg) of every --config.KEY[=V] in argv."""
  out = []
  for a in argv[1:]:
    if a.startswith('--config.'):
      out.append((a[len('--config.'):].split('=', 1)[0], a))
  return out


def _unknown_key(config, key: str, arg: str) -> str | None:
  """The message for an override naming a key the config lacks, or None."""
  node, done = config, []
  for part in key.split('.'):
    if not hasattr(node, 'keys'):
      return None  # Past a leaf: not an unknown-key problem.
    if part not in node:
      valid = sorted(node.keys())
      where = 'config' + ''.join('.' + d for d in done)
      close = difflib.get_close_matches(part, valid, n=1)
      hint = (f'Did you mean "{close[0]}" instead of "{part}"? '
              if close else '')
      shown = ', '.join(valid[:40]) + (', ...' if len(valid) > 40 else '')
      return (f'{arg}: {where} has no key {part!r}. {hint}Valid keys of '
              f'{where}: {shown}. Fix: correct the key (the config file '
              'declares every key a run may set).')
    node, done = node[part], done + [part]
  return None


def _load_config(argv):
  """The ConfigDict of argv's --config=FILE[:arg], or None if it fails."""
  import importlib.util  # pylint: disable=g-import-not-at-top

  specs = [a.split('=', 1)[1] for a in argv[1:]
           if a.startswith('--config=')]
  if not specs:
    return None
  file, *arg = specs[-1].split(':', 1)
  try:
    module_spec = importlib.util.spec_from_file_location('config', file)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(*arg)
  except Exception:  # pylint: disable=broad-except
    return None
  finally:
    config_lib.pop_notes()  # This second load's notes are duplicates.


def _flag_error(fv: flags.FlagValues, argv, e: Exception) -> str:
  """One line that names the offending flag or config key."""
  specs = [a.split('=', 1)[1] for a in argv[1:] if a.startswith('--config=')]
  file = specs[-1].split(':', 1)[0] if specs else None
  if file is not None and not os.path.isfile(file):
    return (f'--config={specs[-1]}: no config file {file} (relative to '
            f'{os.getcwd()}). Fix: pass --config=configs/X.py[:args] from '
            'the repository root, or an absolute path.')
  config = _load_config(argv)
  if config is not None and hasattr(config, 'keys'):
    for key, arg in _config_overrides(argv):
      msg = _unknown_key(config, key, arg)
      if msg:
        return msg
  text = str(e)
  if 'Error whilst parsing config file' in text or 'Traceback' in text:
    # ml_collections embeds the config's own traceback; its last line is
    # the error (e.g. parse_arg's "Unknown config arg ...").
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    head = lines[0].split(':', 1)[0]
    text = f'{head}: {lines[-1]}'
  elif 'earlier failure to load' in text:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    text = f'--config: cannot load it: {lines[-1]}'
  if specs and config is None and '--config' not in text:
    text = f'--config={specs[-1]}: the config file failed to load: {text}'
  return ' '.join(text.split())


def _parse(fv: flags.FlagValues, argv) -> list[str]:
  """Parses argv into fv; a bad flag raises `UserError` (one line)."""
  try:
    rest = fv(argv)
    # A config file that failed to load raises on first use: here.
    _ = fv.config.keys() if fv.config is not None else None
    return rest
  except Exception as e:  # pylint: disable=broad-except
    raise validate.UserError(_flag_error(fv, argv, e)) from e


def _maybe_init_distributed():
  """jax.distributed.initialize() when a launcher asks for multi-process.

  VISGEN_COORDINATOR (host:port), VISGEN_NUM_PROCESSES, VISGEN_PROCESS_ID
  set explicitly (local.sh); VISGEN_DISTRIBUTED=1 lets JAX auto-detect
  (TPU VMs, SLURM). Otherwise a single process needs no initialisation.
  """
  import jax  # pylint: disable=g-import-not-at-top

  if os.environ.get('VISGEN_COORDINATOR'):
    jax.distributed.initialize(
        coordinator_address=os.environ['VISGEN_COORDINATOR'],
        num_processes=int(os.environ['VISGEN_NUM_PROCESSES']),
        process_id=int(os.environ['VISGEN_PROCESS_ID']))
  elif os.environ.get('VISGEN_DISTRIBUTED') == '1':
    jax.distributed.initialize()


def run(config, workdir: str | None, mode: str = 'train', *,
        verbose: bool = False, start_time: float | None = None) -> int:
  """Validates, then trains / samples / evaluates; the exit status."""

  def work():
    wd = validate.resolve_workdir(workdir, create=mode == 'train')
    for note in config_lib.pop_notes():  # What :runlocal substituted.
      logging.info('%s', note)
    _maybe_init_distributed()
    from visgen import logging_lib  # pylint: disable=g-import-not-at-top

    logging_lib.quiet_library_logs(verbose)
    validate.check_config(config, mode=mode)
    # pylint: disable=g-import-not-at-top
    from visgen import sample
    from visgen import train
    # pylint: enable=g-import-not-at-top

    if mode == 'train':
      train.train_and_evaluate(config, wd, start_time=start_time)
    elif mode == 'sample':
      sample.sample_main(config, wd)
    else:
      sample.eval_main(config, wd)

  return validate.run_cli(work, verbose=verbose)


def cli(argv: list[str]) -> int:
  """The whole command in-process on fresh flags (argv[0] is the program)."""
  fv = flags.FlagValues()
  _define_flags(fv)
  # ml_collections reads --config.* overrides from sys.argv.
  saved, sys.argv = sys.argv, list(argv)
  try:
    _parse(fv, argv)
  except validate.UserError as e:
    return validate.report(e, verbose='--verbose' in argv)
  finally:
    sys.argv = saved
  return run(fv.config, fv.workdir, fv.mode, verbose=fv.verbose)


def _app_parse(argv):
  try:
    return _parse(FLAGS, argv)
  except validate.UserError as e:
    sys.exit(validate.report(e, verbose='--verbose' in argv))


def main(argv):
  del argv
  sys.exit(run(FLAGS.config, FLAGS.workdir, FLAGS.mode,
               verbose=FLAGS.verbose, start_time=_START))


if __name__ == '__main__':
  app.run(main, flags_parser=_app_parse)
