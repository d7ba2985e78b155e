"""Validation before work, and the I/O faults of a run (issue 10).

Every shipped config passes `check_config`; the error messages name the key,
the value and the fix; failed checkpoint saves (refused at once, or failing
later in Orbax's background thread) stop the run with the last good step
named; outputs are atomic strict JSON; wall time survives resumes.
"""

import errno
import glob
import importlib.util
import json
import os
import shutil
import threading
import time

import jax.numpy as jnp
import pytest

from visgen import checkpoint as ckpt_lib
from visgen import config_lib
from visgen import logging_lib
from visgen import validate

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..'))
CONFIGS = sorted(os.path.basename(p)[:-3]
                 for p in glob.glob(os.path.join(ROOT, 'configs', '*.py')))


def load(name, arg=''):
  spec = importlib.util.spec_from_file_location(
      name, os.path.join(ROOT, 'configs', f'{name}.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


@pytest.mark.parametrize('name', CONFIGS)
def test_every_config_passes_validation(name):
  # A check that rejects a shipped config is a bug in the check.
  for arg in ('', 'runlocal'):
    validate.check_config(load(name, arg), device_count=1)
  validate.check_config(load(name, 'runlocal'), device_count=8)


def _bad(config, match, **kw):
  with pytest.raises(validate.UserError, match=match):
    validate.check_config(config, device_count=kw.get('devices', 1))


def test_messages_name_key_value_and_fix():
  c = load('quickstart', 'runlocal')
  c.total_steps = -5
  _bad(c, r'^config\.total_steps=-5 is invalid: must be an integer >= 1\. '
       r'Fix: ')
  c = load('quickstart', 'runlocal')
  c.sampler.cfg_interval = (0.9, 0.1)
  _bad(c, r'cfg_interval=\(0\.9, 0\.1\).*0 <= t_lo <= t_hi <= 1')
  c = load('quickstart', 'runlocal')
  c.data.batch_size = 15
  _bad(c, r'batch_size=15 .* 2 devices .*batch_size=14 or 16', devices=2)
  c = load('quickstart', 'runlocal')
  c.sampler.name = 'annealed_langevin'  # NCSN's sampler needs alpha = 1.
  _bad(c, r"'annealed_langevin' does not apply to path 'linear'")
  c = load('quickstart', 'runlocal')
  c.sampler.eta = 0.5  # Heun has no eta.
  _bad(c, r"sampler\.eta is not an option of sampler 'heun'")
  c = load('flow_matching_cifar10', 'runlocal')
  c.sampler.grid = 'nope'
  _bad(c, r"sampler\.grid='nope' is not a known time grid.*uniform")
  c = load('quickstart', 'runlocal')
  c.sharding.mesh = [('data', 3), ('fsdp', 1)]
  _bad(c, r'sharding\.mesh.*exactly 1 devices')


def test_first_batch_labels_against_num_classes():
  labels = {'label': jnp.arange(10) % 10}
  validate.check_first_batch(labels, num_classes=10)
  validate.check_first_batch(labels, num_classes=0)  # Unconditional.
  with pytest.raises(validate.UserError, match=r'num_classes=5 .* labels '
                     r'0\.\.9 .*--config\.task\.num_classes=10'):
    validate.check_first_batch(labels, num_classes=5)


def test_nonfinite_message_names_causes_in_order_and_real_checkpoints():
  msg = validate.nonfinite_loss_message(float('nan'), 7, num_classes=10,
                                        latest_step=None, directory='/w/c')
  assert 'None' not in msg and 'No checkpoint was saved' in msg
  assert msg.index('labels') < msg.index('learning rate') < msg.index(
      'precision')
  msg = validate.nonfinite_loss_message(float('inf'), 7, num_classes=0,
                                        latest_step=5, directory='/w/c')
  assert 'step 5' in msg and 'labels' not in msg


def test_workdir_relative_home_file_and_read_only(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert validate.resolve_workdir('runs/a', create=True) == str(
      tmp_path / 'runs' / 'a')
  monkeypatch.setenv('HOME', str(tmp_path / 'home'))
  assert validate.resolve_workdir('~/b', create=True) == str(
      tmp_path / 'home' / 'b')
  (tmp_path / 'f').write_text('x')
  with pytest.raises(validate.UserError, match='is a file'):
    validate.resolve_workdir('f/run', create=True)
  with pytest.raises(validate.UserError, match='does not exist'):
    validate.resolve_workdir('never', create=False)

  def read_only(*args, **kwargs):
    raise OSError(errno.EROFS, 'Read-only file system', args[0])

  monkeypatch.setattr(os, 'makedirs', read_only)
  with pytest.raises(validate.UserError, match='read-only'):
    validate.resolve_workdir('ro', create=True)


def test_output_file_folder_is_created_before_work(tmp_path):
  out = validate.check_output_file(str(tmp_path / 'new' / 'm.json'),
                                   flag='--out')
  assert os.path.isdir(tmp_path / 'new') and not os.path.exists(out)


def test_json_is_strict_and_writes_are_atomic(tmp_path):
  path = str(tmp_path / 'metrics.json')
  logging_lib.write_json(path, {'loss': float('nan'), 'fid': float('inf'),
                                'n': [1.5, float('-inf')]})
  with open(path) as f:
    assert json.load(f) == {'loss': None, 'fid': None, 'n': [1.5, None]}
  with pytest.raises(RuntimeError):
    with logging_lib.atomic_output(path) as tmp:
      with open(tmp, 'w') as f:
        f.write('{"half')
      raise RuntimeError('disk full')
  with open(path) as f:  # The old file, whole; no temporary left behind.
    assert json.load(f)['loss'] is None
  assert os.listdir(tmp_path) == ['metrics.json']
  umask = os.umask(0)
  os.umask(umask)
  assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask


def test_runlocal_says_what_it_substituted(monkeypatch):
  config_lib.pop_notes()
  load('flow_matching_cifar10', 'runlocal')
  (note,) = config_lib.pop_notes()
  assert 'shapes' in note and "'cifar10'" in note
  load('flow_matching_cifar10', '')
  assert config_lib.pop_notes() == []
  c = load('flow_matching_cifar10', '')
  assert c.data.data_dir == ''  # Declared: --config.data.data_dir works.
  monkeypatch.setenv('VISGEN_CACHE', '/elsewhere')
  assert load('dit_imagenet').frozen.autoencoder.source.startswith(
      'safetensors:/elsewhere/')


def test_data_dir_reaches_the_dataset_message(tmp_path):
  from visgen import builder  # pylint: disable=g-import-not-at-top

  c = load('flow_matching_cifar10', '')
  c.data.data_dir = str(tmp_path / 'tfds')
  with pytest.raises(FileNotFoundError) as e:
    builder.get_source(c.data, 'train')
  assert str(tmp_path / 'tfds') in str(e.value)
  assert '--config.data.data_dir' in str(e.value)


# ----------------------------------------------------------------------------
# Checkpoint saves that fail.
# ----------------------------------------------------------------------------


def _state(v):
  return {'w': jnp.full((4,), v, jnp.float32)}


def _saved_once(tmp_path):
  """A checkpointer whose step 1 is committed (the last good one)."""
  ckpt = ckpt_lib.Checkpointer(str(tmp_path), every=1, keep_last=3)
  ckpt.save(1, _state(1))
  ckpt.wait()
  return ckpt


def _disk_full(tmp_path):
  return OSError(errno.ENOSPC, 'No space left on device', str(tmp_path))


def test_refused_save_names_cause_and_last_good_step(tmp_path, monkeypatch):
  ckpt = _saved_once(tmp_path)

  def disk_full(*args, **kwargs):
    raise _disk_full(tmp_path)

  monkeypatch.setattr(ckpt.mngr, 'save', disk_full)
  with pytest.raises(ckpt_lib.CheckpointSaveError, match=r'step 2 .*disk is '
                     r'full.*last good checkpoint is step 1'):
    ckpt.save(2, _state(2))
  assert ckpt.committed_steps() == [1]


def test_unmakeable_step_folder_fails_in_save(tmp_path):
  ckpt = _saved_once(tmp_path)
  # The checkpoint folder turns into a file: the step folder cannot be made.
  shutil.move(str(ckpt.directory), str(tmp_path / 'moved'))
  (tmp_path / 'checkpoints').write_text('x')
  with pytest.raises(ckpt_lib.CheckpointSaveError, match='step 2'):
    ckpt.save(2, _state(2))


def test_background_save_failure_stops_the_next_step(tmp_path, monkeypatch):
  import tensorstore  # pylint: disable=g-import-not-at-top

  ckpt = _saved_once(tmp_path)

  released = threading.Event()

  def disk_full(*args, **kwargs):
    # The background write fails only once save() has returned, so the
    # failure must be found by the polling, whatever the machine's load.
    if threading.current_thread() is not threading.main_thread():
      released.wait(120)
    raise _disk_full(tmp_path)

  # The array write fails in Orbax's background thread, after save().
  monkeypatch.setattr(tensorstore, 'open', disk_full)
  returned = []
  with pytest.raises(ckpt_lib.CheckpointSaveError, match=r'step 2 .*disk is '
                     r'full.*last good checkpoint is step 1'):
    ckpt.save(2, _state(2))
    returned.append(True)
    released.set()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # The loop asks every step.
      ckpt.reached_preemption(2)
      time.sleep(0.05)
  assert returned  # It was a background failure, caught by the polling.
  assert ckpt.committed_steps() == [1]


def test_loop_stops_at_a_failed_save(tmp_path, monkeypatch):
  from tests.test_train import tiny_config  # pylint: disable=g-import-not-at-top
  from visgen import train  # pylint: disable=g-import-not-at-top

  real_save = ckpt_lib.Checkpointer.save

  def save(self, step, *args, **kwargs):
    if step == 4:
      raise ckpt_lib.CheckpointSaveError('simulated: disk full')
    return real_save(self, step, *args, **kwargs)

  monkeypatch.setattr(ckpt_lib.Checkpointer, 'save', save)
  workdir = str(tmp_path)
  with pytest.raises(ckpt_lib.CheckpointSaveError):
    train.train_and_evaluate(tiny_config(ckpt_every=2, total_steps=8),
                             workdir)
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['2']
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    steps = [json.loads(line)['step'] for line in f]
  assert max(steps) <= 4  # Not one step past the lost save.
  assert not os.path.exists(os.path.join(workdir, 'metrics.json'))


def test_wall_time_accumulates_across_resumes(tmp_path):
  ckpt = ckpt_lib.Checkpointer(str(tmp_path), every=1, keep_last=1,
                               start_time=time.time() - 100.0)
  ckpt.save(1, _state(1))
  ckpt.close()
  ckpt = ckpt_lib.Checkpointer(str(tmp_path), every=1, keep_last=1,
                               start_time=time.time() - 5.0)
  abstract = {'w': jnp.zeros((4,), jnp.float32)}
  ckpt.restore(abstract)
  assert 100.0 <= ckpt.prior_wall_time_s < 110.0
  assert 105.0 <= ckpt.elapsed_s() < 120.0
  ckpt.close()


def test_failed_save_shows_only_our_line_unless_verbose(tmp_path):
  """Orbax's own error records are dropped (the checkpointer reports the
  failure in one line) unless --verbose; tensorstore's disk-full error is
  named as the OSError it wraps, with the file."""
  import logging  # pylint: disable=g-import-not-at-top

  def record(path, level):
    return logging.LogRecord('absl', level, path, 1, 'msg', (), None)

  orbax = '/venv/site-packages/orbax/checkpoint/_src/futures/future.py'
  quiet = logging_lib._DropLibraryInfo()  # pylint: disable=protected-access
  loud = logging_lib._DropLibraryInfo(verbose=True)  # pylint: disable=protected-access
  assert not quiet.filter(record(orbax, logging.ERROR))
  assert loud.filter(record(orbax, logging.ERROR))
  assert not quiet.filter(record(orbax, logging.INFO))
  assert quiet.filter(record(orbax, logging.WARNING))
  assert quiet.filter(record('/work/visgen/train.py', logging.ERROR))

  ckpt = ckpt_lib.Checkpointer(str(tmp_path), every=1, keep_last=1)
  tensorstore_error = ValueError(
      'RESOURCE_EXHAUSTED: Error writing local file "/w/checkpoints/2.orbax-'
      'checkpoint-tmp/_sharding": Failed writing: "/w/x.__lock": Failed to '
      "write 15450 bytes to file 8: No space left on device "
      "[os_error_code='28']")
  msg = str(ckpt._save_error(tensorstore_error, 2))  # pylint: disable=protected-access
  assert msg.startswith('Could not save the checkpoint of step 2')
  assert ('No space left on device (/w/checkpoints/2.orbax-checkpoint-tmp/'
          '_sharding); the disk is full') in msg
  assert 'RESOURCE_EXHAUSTED' not in msg and 'no earlier checkpoint' in msg
  ckpt.close()


def test_metric_writer_closes_quietly_at_exit_on_a_full_disk(tmp_path):
  writer = logging_lib.MetricWriter(str(tmp_path))
  writer.write_scalars(1, {'loss': 1.0})
  (ev,) = [w.event_writer for w in writer._tb.all_writers.values()]  # pylint: disable=protected-access

  def full(*_):
    raise OSError(errno.ENOSPC, 'No space left on device')

  ev.flush = full
  writer._close_at_exit()  # pylint: disable=protected-access  # no raise
  assert ev._closed and not ev._worker.is_alive()  # pylint: disable=protected-access
  ev.close()  # tensorboardX's own exit hook now has nothing to do.
  writer._close_at_exit()  # pylint: disable=protected-access  # idempotent
