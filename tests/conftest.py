"""Fixtures shared by the test files."""

import jax
import pytest


@pytest.fixture
def fast_compile():
  """XLA without most optimisations (flax examples' CI trick): these tests
  check logic, not speed. Use per file with
  `pytestmark = pytest.mark.usefixtures('fast_compile')`."""
  jax.config.update('jax_disable_most_optimizations', True)
  yield
  jax.config.update('jax_disable_most_optimizations', False)
