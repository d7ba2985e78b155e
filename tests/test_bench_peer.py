"""The benchmark's PyTorch peer (`python -m visgen.bench --peer=torch`).

The core suite needs no torch: the protocol and the JSON are tested with a
stand-in peer script (pure Python, fixed step times), the missing-torch
path with a python that cannot import torch; the parameter-count match
runs only where a torch python is available ($VISGEN_TORCH_PYTHON).
"""

import json
import os
import statistics
import subprocess
import sys

import jax
import numpy as np
import pytest

from visgen import bench
from visgen import bench_config
from visgen import builder
from visgen import validate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A stand-in for benchmarks/torch_peer.py: same protocol, known times.
FAKE_PEER = r'''
import json, sys
spec = json.loads(sys.argv[sys.argv.index('--spec') + 1])
out = sys.stdout
def reply(o):
  out.write(json.dumps(o) + '\n'); out.flush()
reply(dict(ready=True, params=123, torch='fake', threads=2, setup_s=0.0,
           warmup_times_s=[9.0] * spec['warmup_steps'], batch=spec['batch']))
k = 0
for line in sys.stdin:
  cmd = json.loads(line)
  if cmd['cmd'] == 'train':
    times = [0.5 + 0.1 * (k + i) for i in range(cmd['steps'])]
    k += cmd['steps']
    reply(dict(times=times, losses=[1.0] * cmd['steps']))
  elif cmd['cmd'] == 'sample':
    reply(dict(times=[0.25] * cmd['repeats'], warmup_s=1.0, finite=True))
  else:
    reply(dict(maxrss_gib=0.125))
    break
'''


def _has_torch(python):
  try:
    return subprocess.run([python, '-c', 'import torch'],
                          capture_output=True, timeout=120).returncode == 0
  except OSError:
    return False


def test_no_torch_exits_2_with_install_hint():
  if _has_torch(sys.executable):
    pytest.skip('this python imports torch')
  with pytest.raises(validate.UserError, match='requirements-torch.txt'):
    bench.peer_python(sys.executable)
  with pytest.raises(validate.UserError, match='Valid choices: torch'):
    bench.check_peers(['torch', 'tensorflow'])
  # The command line: one 'error:' line naming the fix, exit status 2,
  # before any model is built.
  env = dict(os.environ, VISGEN_NO_HUGEPAGE_REEXEC='1')
  p = subprocess.run(
      [sys.executable, '-m', 'visgen.bench',
       '--config=visgen/bench_config.py:runlocal', '--peer=torch',
       f'--peer_python={sys.executable}', '--hugepages=false'],
      capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
  assert p.returncode == 2, p.stderr[-2000:]
  assert 'error: --peer=torch needs PyTorch' in p.stderr
  assert 'pip install -r requirements-torch.txt' in p.stderr


def test_run_with_peer_json(tmp_path, monkeypatch):
  script = tmp_path / 'fake_peer.py'
  script.write_text(FAKE_PEER)
  monkeypatch.setattr(bench, 'PEER_SCRIPT', str(script))
  cfg = bench_config.get_config('runlocal')
  r = bench.run_with_peer(cfg, python=sys.executable, rounds=3)
  json.dumps(r, default=str)  # JSON-ready
  steps = cfg.bench.steps
  # Alternating rounds: V P, P V, V P.
  assert [x['order'] for x in r['rounds']] == [
      ['visgen', 'peer'], ['peer', 'visgen'], ['visgen', 'peer']]
  peer_times = [0.5 + 0.1 * i for i in range(3 * steps)]
  assert r['peer']['step_times_s'] == pytest.approx(peer_times)
  assert r['peer_step_s'] == pytest.approx(statistics.median(peer_times))
  assert len(r['train']['step_times_s']) == 3 * steps
  assert r['step_s'] == statistics.median(r['train']['step_times_s'])
  assert r['ratio'] == pytest.approx(r['step_s'] / r['peer_step_s'])
  assert r['peer_peak_rss_gib'] == 0.125
  assert r['peak_rss_gib'] > 0.1
  assert r['params'] == 31468 and r['peer_params'] == 123
  assert r['precision'] == 'fp32'
  # Sampling: 10 Euler steps with CFG at the bench batch, alternated.
  s = r['sample']
  assert (s['n'], s['steps'], s['sampler']) == (8, 10, 'euler')
  assert len(s['times_s']) == len(s['peer_times_s']) == 2
  assert r['peer_sample_images_per_s'] == pytest.approx(8 / 0.25)
  assert r['sample_images_per_s'] == pytest.approx(
      8 / statistics.median(s['times_s']))
  assert len(r['loadavg']) == 3 and 'load average' in r['uptime_start']
  md = bench.peer_markdown(r)
  assert f"{r['ratio']:.3f}" in md


def test_peer_spec_mirrors_config():
  cfg = bench_config.get_config('dtype=bfloat16,model=unet')
  spec = bench.peer_spec(cfg, compile_=True)
  assert spec['dtype'] == 'bfloat16' and spec['compile']
  assert spec['model']['channel_mult'] == [1, 2]
  assert (spec['batch'], spec['x_shape']) == (256, [16, 16, 3])
  assert spec['optim'] == dict(lr=1e-4, b1=0.9, b2=0.999, eps=1e-8,
                               weight_decay=0.0, grad_clip=1.0)
  assert spec['ema_decays'] == [0.9999] and spec['label_dropout'] == 0.1
  assert spec['sample'] == dict(n=256, steps=10, cfg_scale=0.0)


@pytest.mark.parametrize('arg,expected', [('', 7373324),
                                          ('model=unet', 707267)])
def test_torch_peer_param_count_matches(arg, expected):
  python = os.environ.get('VISGEN_TORCH_PYTHON')
  if not python or not _has_torch(python):
    pytest.skip('no torch python (set VISGEN_TORCH_PYTHON to one)')
  cfg = bench_config.get_config(arg)
  spec = bench.peer_spec(cfg, compile_=False)
  p = subprocess.run([python, bench.PEER_SCRIPT, '--count_params',
                      '--spec', json.dumps(spec)], capture_output=True,
                     text=True, timeout=300, check=True)
  peer = json.loads(p.stdout)['params']
  ours = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(
      builder.build(cfg).abstract_params))
  assert ours == expected
  assert peer == ours
