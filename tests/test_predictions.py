"""Prediction kinds: exact conversions between every pair, on every path."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from visgen.interpolants import PATHS
from visgen.interpolants import get_path
from visgen.objectives import predictions

KINDS = predictions.KINDS
PATH_NAMES = [n for n in PATHS.names() if n != 'interpolant']


def _setup(name, key=0):
  p = get_path(name)
  k1, k2, k3 = jax.random.split(jax.random.key(key), 3)
  n = 7
  t = jnp.linspace(max(p.t_min, 0.05), min(p.t_max, 0.95), n)
  x0 = jax.random.normal(k1, (n, 3, 2))
  eps = jax.random.normal(k2, (n, 3, 2))
  y = jax.random.normal(k3, (n, 3, 2)) if p.is_bridge else None
  x_t = p.sample_xt(x0=x0, eps=eps, t=t, y=y)
  return p, t, x0, eps, y, x_t


@pytest.mark.parametrize('name', PATH_NAMES)
def test_every_pair_converts_exactly(name):
  p, t, x0, eps, y, x_t = _setup(name)
  targets = {k: predictions.target(k, x0=x0, eps=eps, t=t, path=p, y=y)
             for k in KINDS}
  for src, dst in itertools.product(KINDS, KINDS):
    out = predictions.convert(targets[src], src=src, dst=dst, x_t=x_t, t=t,
                              path=p, y=y)
    scale = 1.0 + float(jnp.max(jnp.abs(targets[dst])))
    np.testing.assert_allclose(out, targets[dst], atol=2e-4 * scale,
                               err_msg=f'{name}: {src} -> {dst}')


@pytest.mark.parametrize('name', ['vp', 've', 'edm', 'linear', 'bridge_vp'])
def test_round_trip_of_arbitrary_predictions(name):
  # Not only true targets: any array round-trips src -> dst -> src.
  p, t, _, _, y, x_t = _setup(name, key=1)
  pred = jax.random.normal(jax.random.key(5), x_t.shape)
  for src, dst in itertools.product(KINDS, KINDS):
    there = predictions.convert(pred, src=src, dst=dst, x_t=x_t, t=t, path=p,
                                y=y)
    back = predictions.convert(there, src=dst, dst=src, x_t=x_t, t=t, path=p,
                               y=y)
    np.testing.assert_allclose(back, pred, atol=5e-3, rtol=1e-3,
                               err_msg=f'{name}: {src} <-> {dst}')


def test_known_closed_forms():
  p = get_path('vp')
  t = jnp.asarray([0.3])
  x0, eps = jnp.ones((1, 2)), 2 * jnp.ones((1, 2))
  a, s = p.alpha(t)[0], p.sigma(t)[0]
  np.testing.assert_allclose(
      predictions.target('v', x0=x0, eps=eps, t=t, path=p), a * eps - s * x0,
      rtol=1e-6)
  np.testing.assert_allclose(
      predictions.target('score', x0=x0, eps=eps, t=t, path=p), -eps / s,
      rtol=1e-6)
  lin = get_path('linear')
  np.testing.assert_allclose(
      predictions.target('velocity', x0=x0, eps=eps, t=t, path=lin), eps - x0)


def test_edm_preconditioning_matches_karras():
  # D = c_skip x + c_out F reproduces x0 when F is the 'edm' target.
  p = get_path('edm')
  t = jnp.asarray([0.2, 0.7])
  x0 = jnp.asarray([[0.3], [-0.4]])
  eps = jnp.asarray([[1.0], [-2.0]])
  x_t = p.sample_xt(x0=x0, eps=eps, t=t)
  c = predictions.edm_coefficients(t=t, path=p)
  f = predictions.target('edm', x0=x0, eps=eps, t=t, path=p)
  d = c['c_skip'][:, None] * x_t + c['c_out'][:, None] * f
  np.testing.assert_allclose(d, x0, atol=1e-5)
  s = p.sigma(t)
  np.testing.assert_allclose(c['c_in'], 1 / np.sqrt(s**2 + 0.25), rtol=1e-6)
  np.testing.assert_allclose(c['c_noise'], np.log(s) / 4, rtol=1e-6)


def test_unknown_kind():
  with pytest.raises(ValueError, match='Valid choices: eps, x0, v'):
    predictions.check_kind('noise')
