"""Tests for the benchmark (tiny sizes; the real run is a manual command)."""

import os
import sys

import pytest

from visgen import bench
from visgen import bench_config
from visgen import hugepages


def test_matmul_peak_reports_both_precisions():
  peak = bench.matmul_peak(n=64, repeats=2)
  assert set(peak) == {'fp32', 'bf16'}
  for v in peak.values():
    assert v['n'] == 64
    assert v['best_gflops'] >= v['median_gflops'] > 0


def test_ensure_hugepages_reexecs_once(monkeypatch):
  calls = []

  def fake_execve(path, argv, env):
    calls.append((path, argv, env))
    raise SystemExit('exec')

  monkeypatch.setattr(os, 'execve', fake_execve)
  monkeypatch.setattr(sys, 'platform', 'linux')
  monkeypatch.delenv('VISGEN_NO_HUGEPAGE_REEXEC', raising=False)
  monkeypatch.setenv('GLIBC_TUNABLES', 'glibc.malloc.arena_max=2')
  with pytest.raises(SystemExit):
    hugepages.ensure_hugepages()
  path, argv, env = calls[0]
  assert path == sys.executable and argv[0] == sys.executable
  assert env['GLIBC_TUNABLES'] == (
      'glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1')
  assert env['VISGEN_NO_HUGEPAGE_REEXEC'] == '1'
  # Already set (the re-executed process), or opted out: no exec.
  monkeypatch.setenv('GLIBC_TUNABLES', 'glibc.malloc.hugetlb=1')
  hugepages.ensure_hugepages()
  monkeypatch.setenv('GLIBC_TUNABLES', 'glibc.malloc.hugetlb=0')
  assert not hugepages.hugepages_enabled()
  monkeypatch.setenv('VISGEN_NO_HUGEPAGE_REEXEC', '1')
  hugepages.ensure_hugepages()
  assert len(calls) == 1


def test_run_runlocal_consistent_report():
  cfg = bench_config.get_config('runlocal')
  r = bench.run(cfg, sample=True)
  t, s = r['train'], r['sample']
  assert t['gflop'] > 0 and s['forward_gflop'] > 0
  # A train step costs about three forward passes (forward + backward).
  assert 2.5 < t['gflop'] / s['forward_gflop'] * s['n'] / t['batch'] < 3.6
  assert len(t['step_times_s']) == cfg.bench.steps
  assert t['step_s'] == sorted(t['step_times_s'])[len(t['step_times_s']) // 2]
  assert t['gflops'] == pytest.approx(t['gflop'] / t['step_s'])
  assert t['share_of_peak'] == pytest.approx(
      t['gflops'] / r['peak']['fp32']['best_gflops'])
  assert s['images_per_s'] == pytest.approx(8 / s['time_s'])
  assert all(abs(x) < 1e3 for x in t['losses'])
  table = bench.markdown(r)
  assert '| train GFLOP/step (XLA) |' in table and 'share of fp32 peak' in table


def test_bench_config_default_is_acceptance_size():
  m = bench_config.get_config().model
  assert (m.depth, m.width, m.heads, m.patch, m.input_size) == (
      6, 256, 4, 2, 32)
  assert bench_config.get_config().data.batch_size == 64
  with pytest.raises(ValueError, match='Valid args'):
    bench_config.get_config('widht=3')
