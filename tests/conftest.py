"""Settings shared by the test files."""

import os

import jax

# The suite checks logic and numerics, not speed: XLA without most of its
# optimisations compiles every jitted function faster (flax examples' CI
# trick; 779 s against 838 s for the whole suite on 2 cores, every test
# passing either way). VISGEN_TEST_FULL_OPT=1 runs it fully optimised.
if not os.environ.get('VISGEN_TEST_FULL_OPT'):
  jax.config.update('jax_disable_most_optimizations', True)

