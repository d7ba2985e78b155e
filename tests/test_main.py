"""The entry point in a subprocess: flags, overrides, SIGTERM, sample mode."""

import glob
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.join(os.path.dirname(__file__), '..')
CONFIG = 'configs/quickstart.py:runlocal'


def _main(*args, **kw):
  env = dict(os.environ, JAX_DISABLE_MOST_OPTIMIZATIONS='1')  # CI speed.
  return subprocess.Popen(
      [sys.executable, '-m', 'visgen.main', *args], cwd=ROOT, env=env,
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def test_config_typo_is_a_clear_error(tmp_path):
  proc = _main(f'--config={CONFIG}', f'--workdir={tmp_path}',
               '--config.optim.lrr=0.1')
  out, _ = proc.communicate(timeout=120)
  assert proc.returncode != 0
  assert 'Did you mean "lr" instead of "lrr"' in out
  assert not os.path.exists(tmp_path / 'config.json')


def test_sigterm_saves_and_exits_cleanly_then_sample_mode(tmp_path):
  workdir = str(tmp_path)
  proc = _main(f'--config={CONFIG}', f'--workdir={workdir}',
               '--config.total_steps=1000000', '--config.ckpt_every=1000000',
               '--config.log_every=1')
  metrics = os.path.join(workdir, 'metrics.jsonl')
  deadline = time.time() + 120
  while time.time() < deadline and proc.poll() is None:
    if os.path.exists(metrics) and len(open(metrics).readlines()) >= 2:
      break
    time.sleep(0.2)
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=120)
  assert proc.returncode == 0, out[-3000:]
  assert 'Preempted (SIGTERM)' in out
  steps = [int(s) for s in os.listdir(os.path.join(workdir, 'checkpoints'))]
  assert len(steps) == 1 and steps[0] >= 2
  with open(os.path.join(workdir, 'config.json')) as f:
    assert json.load(f)['total_steps'] == 1000000  # Overrides resolved.

  proc = _main(f'--config={CONFIG}', f'--workdir={workdir}', '--mode=sample',
               '--config.num_samples=12')
  out, _ = proc.communicate(timeout=180)
  assert proc.returncode == 0, out[-3000:]
  (npz,) = glob.glob(os.path.join(workdir, 'samples', '*.npz'))
  assert npz.endswith(f'samples_{steps[0]:07d}.npz')
  data = np.load(npz)
  assert data['arr_0'].dtype == np.uint8 and data['arr_0'].shape == (
      12, 8, 8, 1)
  np.testing.assert_array_equal(data['arr_1'], np.arange(12) % 10)
  assert os.path.exists(npz[:-4] + '.png')
