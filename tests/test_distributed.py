"""Two processes on localhost form one JAX job through launch/local.sh.

jax.distributed.initialize() is wired from VISGEN_COORDINATOR /
VISGEN_NUM_PROCESSES / VISGEN_PROCESS_ID (visgen.main). JAX 0.10.2 runs
cross-process collectives on CPU (gloo), so the 2-process run really
trains: each process feeds its half of every global batch, and the losses
must equal a single-process run of the same config to float32 rounding
(the gradient all-reduce sums in a different order).
"""

import json
import os
import subprocess
import sys

import numpy as np

from tests.test_train import losses
from tests.test_train import tiny_config
from visgen import train

ROOT = os.path.join(os.path.dirname(__file__), '..')


def test_two_processes_train_like_one(tmp_path):
  multi = str(tmp_path / 'multi')
  env = dict(os.environ, NUM_PROCESSES='2', PYTHON=sys.executable,
             PYTHONPATH=ROOT, JAX_DISABLE_MOST_OPTIMIZATIONS='1')
  env.pop('XLA_FLAGS', None)
  proc = subprocess.run(
      ['bash', 'launch/local.sh', 'configs/quickstart.py:runlocal', multi,
       '--config.total_steps=3', '--config.log_every=1',
       '--config.num_grid_samples=0', '--config.optim.warmup_steps=2'],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  logs = [open(os.path.join(multi, f'log_process_{i}.txt')).read()
          for i in range(2)]
  assert proc.returncode == 0, logs[0][-3000:] + logs[1][-3000:]
  assert 'Process 0/2, 2 devices' in logs[0]
  assert 'Process 1/2, 2 devices' in logs[1]
  # Each process saved its own data-iterator position with the state.
  data_dir = os.path.join(multi, 'checkpoints', '3', 'data')
  assert {'process_0-of-2.json', 'process_1-of-2.json'} <= set(
      os.listdir(data_dir))

  single = str(tmp_path / 'single')
  cfg = tiny_config(total_steps=3)
  train.train_and_evaluate(cfg, single)
  a, b = losses(single), losses(multi)
  assert sorted(b) == [1, 2, 3]
  np.testing.assert_allclose([b[s] for s in (1, 2, 3)],
                             [a[s] for s in (1, 2, 3)], rtol=1e-5)
  with open(os.path.join(multi, 'metrics.json')) as f:
    assert json.load(f)['steps'] == 3
