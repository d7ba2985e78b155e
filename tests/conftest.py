"""Settings shared by the test files."""

import os

import jax
import pytest

# The suite checks logic and numerics, not speed: XLA without most of its
# optimisations compiles every jitted function faster (flax examples' CI
# trick; with the other trims of that change the suite went from 873 s to
# about 615 s on 2 cores). VISGEN_TEST_FULL_OPT=1 runs it fully optimised;
# the `full_opt` fixture does so for one test.
if not os.environ.get('VISGEN_TEST_FULL_OPT'):
  jax.config.update('jax_disable_most_optimizations', True)


@pytest.fixture
def full_opt():
  """XLA's full optimisations for one test: for checks whose tolerance is
  set by the optimised numerics (e.g. remat against no remat, where the
  unoptimised recompute rounds differently at the 1e-6 level), and for
  compute-bound tests (long training scans), which run about 2x faster
  fully optimised than the fast-compile default saves in compiling."""
  before = jax.config.read('jax_disable_most_optimizations')
  jax.config.update('jax_disable_most_optimizations', False)
  yield
  jax.config.update('jax_disable_most_optimizations', before)
