"""Malformed invocations of every CLI: a non-zero exit, one line naming the
offending key or file, no traceback, and (for the config cases) no work.

The cases run in-process (`visgen.main.cli`, `visgen.evaluate.main`,
guided sampling's `main`): validation fails before JAX compiles anything,
so the whole file takes seconds. Two subprocesses cover what needs a real
process: `python -m visgen.main` itself, and a batch of 15 on 2 devices.
"""

import os
import subprocess
import sys

import numpy as np
import pytest

from visgen import main as main_lib

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..'))
QS = os.path.join(ROOT, 'configs', 'quickstart.py')
CONFIG = f'--config={QS}:runlocal'

# (extra args, substrings the one error line must contain). The workdir is
# a fresh temporary directory unless the args name one.
CONFIG_CASES = [
    (['--config.total_steps=-5'], ['total_steps', '-5']),
    (['--config.total_steps=0'], ['total_steps']),
    (['--config.total_steps=abc'], ['total_steps', 'abc']),
    (['--config.total_steps=1.5'], ['total_steps', '1.5']),
    (['--config.total_steps'], ['total_steps']),
    (['--config.ckpt_every=0'], ['ckpt_every']),
    (['--config.ckpt_every=-1'], ['ckpt_every']),
    (['--config.keep_last=0'], ['keep_last']),
    (['--config.log_every=0'], ['log_every']),
    (['--config.keep_every=-1'], ['keep_every']),
    (['--config.sample_every=-2'], ['sample_every']),
    (['--config.num_grid_samples=-1'], ['num_grid_samples']),
    (['--config.num_samples=0'], ['num_samples']),
    (['--config.sample_batch=0'], ['sample_batch']),
    (['--config.seed=x'], ['seed']),
    (['--config.ema_decays=(1.5,)'], ['ema_decays', '1.5']),
    (['--config.ema_decays=(0.0,)'], ['ema_decays']),
    (['--config.ema_decays=(1.0,)'], ['ema_decays']),
    (['--config.ema_decays=(-0.5,)'], ['ema_decays']),
    (['--config.optim.lr=0'], ['optim.lr']),
    (['--config.optim.lr=-0.001'], ['optim.lr']),
    (['--config.optim.lr=nan'], ['optim.lr', 'nan']),
    (['--config.optim.lr=inf'], ['optim.lr', 'inf']),
    (['--config.optim.warmup_steps=-10'], ['warmup_steps', '-10']),
    (['--config.optim.schedule=linear'], ['optim.schedule', 'cosine']),
    (['--config.optim.weight_decay=-1.0'], ['weight_decay']),
    (['--config.optim.b1=1.0'], ['optim.b1']),
    (['--config.optim.b2=1.5'], ['optim.b2']),
    (['--config.optim.eps=0.0'], ['optim.eps']),
    (['--config.optim.grad_clip=-1.0'], ['grad_clip']),
    (['--config.optim.accum_steps=0'], ['accum_steps']),
    (['--config.optim.accum_steps=3'], ['batch_size', 'accum_steps']),
    (['--config.optim.lrr=0.1'], ['lrr', 'Did you mean "lr"']),
    (['--config.foo=1'], ['foo', 'total_steps']),
    (['--config.model.foo=1'], ['config.model', 'foo']),
    (['--config.task.num_classes=5'], ['num_classes', '5', '10']),
    (['--config.task.num_classes=-1'], ['task.num_classes']),
    (['--config.task.label_dropout=1.5'], ['label_dropout', '1.5']),
    (['--config.task.label_dropout=-0.1'], ['label_dropout']),
    (['--config.task.name=segmentation'], ['task.name', 'generation']),
    (['--config.task.x_shape=(8,0,1)'], ['x_shape']),
    (['--config.model.name=resnet'], ['model.name', 'mlp']),
    (['--config.model.dtype=float16'], ['model.dtype', 'bfloat16']),
    (['--config.path.name=nope'], ['path.name', 'linear']),
    (['--config.prediction=noise'], ['prediction', 'velocity']),
    (['--config.weighting.name=nope'], ['weighting.name']),
    (['--config.time_dist.name=nope'], ['time_dist.name']),
    (['--config.sampler.name=nope'], ['sampler.name', 'heun']),
    (['--config.sampler.name=annealed_langevin'],
     ['annealed_langevin', 'linear']),
    (['--config.sampler.steps=0'], ['sampler.steps']),
    (['--config.sampler.grid=nope'], ['config.sampler', "'grid'"]),
    (['--config.sampler.cfg_scale=nan'], ['cfg_scale', 'nan']),
    (['--config.sampler.cfg_scale=inf'], ['cfg_scale', 'inf']),
    (['--config.sampler.cfg_interval=(0.9,0.1)'], ['cfg_interval', '0.9']),
    (['--config.sampler.cfg_interval=(-0.1,0.5)'], ['cfg_interval']),
    (['--config.sampler.cfg_rescale=2.0'], ['cfg_rescale']),
    (['--config.sampler.cfg_channels=-1'], ['cfg_channels']),
    (['--config.sampler=foo'], ['config.sampler', 'foo']),
    (['--config.data.name=imagenet9'], ['data.name', 'digits']),
    (['--config.data.batch_size=0'], ['batch_size']),
    (['--config.data.data_dir=/x'], ['data_dir', 'config.data']),
    (["--config.sharding.mesh=[('data', 3), ('fsdp', 1)]"],
     ['sharding.mesh']),
    (['--config.optim.freeze=blocks/('], ['optim.freeze', 'blocks/(']),
    (['--config.optim.trainable=(1,)'], ['optim.trainable']),
    (['--config.init_from.source=nowhere'], ['init_from.source', 'nowhere']),
    (['--config.init_from.source=npz:w.npz', '--config.init_from.weights=best'],
     ['init_from.weights', 'best']),
    (['--config.init_from.source=npz:w.npz', '--config.init_from.step=-1'],
     ['init_from.step', '-1']),
    (['--config.init_from.source=npz:w.npz',
      '--config.init_from.converter=nope'], ['init_from.converter', 'nope']),
    (['--config.init_from.source=npz:w.npz',
      "--config.init_from.mapping=(('(.*)',),)"], ['init_from.mapping']),
    (['--mode=bogus'], ['mode', 'bogus']),
    (['--bogus'], ['bogus']),
]


def _flags_cases(tmp):
  """Workdir / config-file cases, with the files they need."""
  a_file = os.path.join(tmp, 'a_file')
  with open(a_file, 'w') as f:
    f.write('x')
  empty = os.path.join(tmp, 'empty_workdir')
  os.makedirs(empty)
  wd = f'--workdir={tmp}/wd'
  return [
      ([CONFIG, '--workdir='], ['--workdir', 'empty']),
      ([CONFIG, f'--workdir={a_file}'], [a_file, 'is a file']),
      ([CONFIG, f'--workdir={a_file}/run'], [a_file, 'is a file']),
      ([CONFIG, '--workdir=/sys/visgen_fuzz'], ['/sys/visgen_fuzz',
                                                'not writable']),
      ([CONFIG], ['--workdir']),
      ([wd], ['--config']),
      (['--config=configs/nope.py', wd], ['configs/nope.py']),
      ([f'--config={QS}:foo=1', wd], ["'foo'", 'runlocal']),
      ([f'--config={QS}:runlocal=maybe', wd], ['runlocal', 'maybe']),
      ([f'--config={a_file}', wd], [a_file]),
      ([CONFIG, '--mode=sample', f'--workdir={tmp}/never_trained'],
       ['never_trained', 'does not exist']),
      ([CONFIG, '--mode=eval', f'--workdir={empty}'],
       ['empty_workdir', 'No checkpoint']),
  ]


def _check(status, err, expect):
  lines = [ln for ln in err.splitlines() if ln.startswith('error: ')]
  assert status not in (0, None), err[-2000:]
  assert 'Traceback' not in err, err[-3000:]
  assert len(lines) == 1, err[-2000:]
  for s in expect:
    assert s in lines[0], (s, lines[0])


@pytest.fixture(scope='module', autouse=True)
def _absl_parsed():
  from absl import flags  # pylint: disable=g-import-not-at-top

  flags.FLAGS.mark_as_parsed()  # absl logging without app.run.


def _run_main(capsys, argv):
  status = main_lib.cli(['visgen.main', *argv])
  return status, capsys.readouterr().err


@pytest.mark.parametrize('extra,expect', CONFIG_CASES,
                         ids=[c[0][0][:40] for c in CONFIG_CASES])
def test_main_config_errors(tmp_path, capsys, extra, expect):
  status, err = _run_main(
      capsys, [CONFIG, f'--workdir={tmp_path}/wd', *extra])
  _check(status, err, expect)
  assert status == 2
  # Nothing was written: the error came before any work.
  assert not os.path.exists(tmp_path / 'wd' / 'config.json')


def test_main_flag_and_workdir_errors(tmp_path, capsys):
  for argv, expect in _flags_cases(str(tmp_path)):
    status, err = _run_main(capsys, argv)
    _check(status, err, expect)


def test_labels_beyond_num_classes_fail_on_the_first_batch(tmp_path, capsys):
  # Task and model agree on 5 classes, the digits have 10: only the data
  # can tell, on the first batch, before any step runs.
  status, err = _run_main(capsys, [
      CONFIG, f'--workdir={tmp_path}', '--config.task.num_classes=5',
      '--config.model.num_classes=5'])
  _check(status, err, ['task.num_classes=5', '0..9',
                       '--config.task.num_classes=10'])
  assert not os.path.exists(tmp_path / 'checkpoints' / '1')


# ----------------------------------------------------------------------------
# visgen.evaluate
# ----------------------------------------------------------------------------


def _batches(tmp):
  rng = np.random.default_rng(0)
  img = lambda *s: rng.integers(0, 256, s, dtype=np.uint8)
  paths = {}

  def put(name, **arrays):
    paths[name] = os.path.join(tmp, name + '.npz')
    np.savez(paths[name], **arrays)

  put('grey8', arr_0=img(6, 8, 8, 1))
  put('grey16', arr_0=img(6, 16, 16, 1))
  put('rgb8', arr_0=img(6, 8, 8, 3))
  put('float8', arr_0=img(6, 8, 8, 1).astype(np.float32))
  put('flat', arr_0=img(6, 64))
  put('two_channels', arr_0=img(6, 8, 8, 2))
  put('no_arr0', x=img(6, 8, 8, 1))
  put('empty', arr_0=img(0, 8, 8, 1))
  with open(paths['grey8'], 'rb') as f:
    data = f.read()
  paths['truncated'] = os.path.join(tmp, 'truncated.npz')
  with open(paths['truncated'], 'wb') as f:
    f.write(data[:len(data) // 2])
  paths['garbage'] = os.path.join(tmp, 'garbage.npz')
  with open(paths['garbage'], 'wb') as f:
    f.write(rng.bytes(500))
  paths['a_file'] = os.path.join(tmp, 'a_file')
  with open(paths['a_file'], 'w') as f:
    f.write('x')
  return paths


def test_evaluate_bad_inputs(tmp_path, capsys):
  from visgen import evaluate  # pylint: disable=g-import-not-at-top

  p = _batches(str(tmp_path))
  net = '--feature-net=digits'
  cases = [
      ([p['grey8'], str(tmp_path / 'missing.npz')], ['missing.npz']),
      ([str(tmp_path / 'nope.npz'), p['grey8']], ['nope.npz']),
      ([p['grey8'], p['grey16']], ['grey16.npz', '16x16', '8x8']),
      ([p['grey8'], p['rgb8']], ['rgb8.npz', 'RGB', 'grey']),
      ([p['grey8'], p['garbage']], ['garbage.npz']),
      ([p['garbage'], p['grey8']], ['garbage.npz']),
      ([p['grey8'], p['truncated']], ['truncated.npz']),
      ([p['grey8'], p['float8']], ['float8.npz', 'uint8']),
      ([p['grey8'], p['flat']], ['flat.npz', 'NHWC']),
      ([p['grey8'], p['two_channels']], ['two_channels.npz', 'channels']),
      ([p['grey8'], p['no_arr0']], ['no_arr0.npz', 'arr_0']),
      ([p['grey8'], p['empty']], ['empty.npz', 'no images']),
      ([str(tmp_path), p['grey8']], [str(tmp_path), 'directory']),
      ([p['grey8'], p['grey8'], f'--out={p["a_file"]}/m.json'],
       ['--out', 'a_file']),
      ([p['grey8'], p['grey8'], f'--out={tmp_path}'], ['--out',
                                                       'directory']),
  ]
  for argv, expect in cases:
    with pytest.raises(SystemExit) as e:
      evaluate.main([*argv, net])
    _check(e.value.code, capsys.readouterr().err, expect)
    assert e.value.code == 2
  # argparse's own errors: usage plus one line, exit 2, no traceback.
  with pytest.raises(SystemExit) as e:
    evaluate.main([p['grey8'], p['grey8'], '--feature-net=bogus'])
  err = capsys.readouterr().err
  assert e.value.code == 2 and 'bogus' in err and 'Traceback' not in err


# ----------------------------------------------------------------------------
# Guided sampling
# ----------------------------------------------------------------------------


def test_guided_sampling_bad_inputs(tmp_path, capsys):
  from visgen.classification import guided_sampling  # pylint: disable=g-import-not-at-top

  a_file = tmp_path / 'a_file'
  a_file.write_text('x')
  gen = tmp_path / 'gen'
  gen.mkdir()
  cases = [
      ([f'--generator={tmp_path}/missing'], ['--generator', 'missing']),
      ([f'--generator={a_file}'], ['--generator', 'a_file']),
      (['--generator='], ['--generator', 'empty']),
      ([f'--generator={gen}', '--scale=nan'], ['--scale', 'nan']),
      ([f'--generator={gen}', '--interval', '0.9', '0.1'], ['--interval']),
      ([f'--generator={gen}', '--per_class=0'], ['--per_class']),
      ([f'--generator={gen}', f'--out={a_file}/g.png'], ['--out']),
      ([f'--generator={gen}', f'--classifier={tmp_path}/nocls'],
       ['--classifier', 'nocls']),
      ([f'--generator={gen}', '--generator_config=configs/none.py'],
       ['configs/none.py']),
      ([f'--generator={gen}', f'--generator_config={QS}'],
       ['No checkpoint', 'gen']),
  ]
  for argv, expect in cases:
    with pytest.raises(SystemExit) as e:
      guided_sampling.main(argv)
    _check(e.value.code, capsys.readouterr().err, expect)


# ----------------------------------------------------------------------------
# Real processes: the app.run path, and 2 devices.
# ----------------------------------------------------------------------------


def _proc(args, env_extra=None):
  env = dict(os.environ, **(env_extra or {}))
  out = subprocess.run([sys.executable, '-m', 'visgen.main', *args],
                       cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=300, check=False)
  return out.returncode, out.stderr


def test_process_unknown_key_is_one_line(tmp_path):
  status, err = _proc([CONFIG, f'--workdir={tmp_path}', '--config.foo=1'])
  _check(status, err, ['--config.foo=1', "'foo'"])
  assert status == 2


def test_process_batch_not_divisible_by_devices(tmp_path):
  status, err = _proc(
      [CONFIG, f'--workdir={tmp_path}', '--config.data.batch_size=15'],
      {'XLA_FLAGS': '--xla_force_host_platform_device_count=2',
       'JAX_PLATFORMS': 'cpu'})
  _check(status, err, ['data.batch_size=15', '2 devices',
                       '--config.data.batch_size=14'])
  assert status == 2
