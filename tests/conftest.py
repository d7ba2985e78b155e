"""Settings shared by the test files."""

import fcntl
import os
import shutil

import jax
import pytest

# The suite checks logic and numerics, not speed: XLA without most of its
# optimisations compiles every jitted function faster (flax examples' CI
# trick; with the other trims of that change the suite went from 873 s to
# about 615 s on 2 cores). VISGEN_TEST_FULL_OPT=1 runs it fully optimised;
# the `full_opt` fixture does so for one test.
if not os.environ.get('VISGEN_TEST_FULL_OPT'):
  jax.config.update('jax_disable_most_optimizations', True)
  # XLA:CPU's legacy elemental emitters compile a fusion 1.5-3x faster than
  # the fusion emitters (a U-Net train step 4.6 -> 2.8 s, a DiT step
  # 2.6 -> 1.1 s on 2 cores); read when the CPU client starts, after this.
  os.environ['XLA_FLAGS'] = ' '.join(filter(None, (
      os.environ.get('XLA_FLAGS'), '--xla_cpu_use_fusion_emitters=false')))


@pytest.fixture
def full_opt():
  """XLA's full optimisations for one test: for compute-bound tests (long
  training scans), which run about 2x faster fully optimised than the
  fast-compile default saves in compiling."""
  before = jax.config.read('jax_disable_most_optimizations')
  jax.config.update('jax_disable_most_optimizations', False)
  yield
  jax.config.update('jax_disable_most_optimizations', before)


@pytest.fixture(scope='session')
def build_once(tmp_path_factory):
  """build_once(name, build) -> a directory that `build(path)` fills once
  per test run. Under xdist the workers share it (the run's base temp
  folder): the first to ask builds it under a file lock, the others wait
  and reuse it, so a workdir trained for a module's fixtures is not
  trained again on the other worker. For read-only use: tests write their
  outputs elsewhere."""
  root = tmp_path_factory.getbasetemp()
  if os.environ.get('PYTEST_XDIST_WORKER'):
    root = root.parent  # popen-gwN's parent: one per run, shared

  def get(name, build):
    path = root / f'shared-{name}'
    with open(root / f'shared-{name}.lock', 'w') as lock:
      fcntl.flock(lock, fcntl.LOCK_EX)
      try:
        if not (path / '.built').exists():
          shutil.rmtree(path, ignore_errors=True)
          path.mkdir()
          build(str(path))
          (path / '.built').touch()
      finally:
        fcntl.flock(lock, fcntl.LOCK_UN)
    return str(path)

  return get
