"""Weightings, time distributions and the unified loss."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from visgen.groundtruth import make_mixture
from visgen.interpolants import get_path
from visgen.objectives import TIME_DISTS
from visgen.objectives import WEIGHTINGS
from visgen.objectives import exact_loss_grid
from visgen.objectives import get_time_dist
from visgen.objectives import get_weighting
from visgen.objectives import predictions
from visgen.objectives import unified_loss


def test_min_snr_is_the_same_objective_in_every_space():
  # Hang et al.: min(SNR, g)/SNR (eps), min(SNR, g) (x0),
  # min(SNR, g)/(SNR + 1) (v, on a VP path).
  p = get_path('vp')
  t = jnp.linspace(0.05, 0.95, 7)
  snr = np.exp(np.asarray(p.logsnr(t), np.float64))
  w = get_weighting('min_snr', gamma=5.0)
  np.testing.assert_allclose(w(t=t, path=p, kind='eps'),
                             np.minimum(snr, 5) / snr, rtol=1e-4)
  np.testing.assert_allclose(w(t=t, path=p, kind='x0'), np.minimum(snr, 5),
                             rtol=1e-4)
  np.testing.assert_allclose(w(t=t, path=p, kind='v'),
                             np.minimum(snr, 5) / (snr + 1), rtol=1e-4)


def test_weighted_errors_agree_across_kinds():
  # For any perturbation of the eps prediction at fixed x_t, w_k * err_k^2 is
  # the same number whatever kind k the network predicts.
  p = get_path('gvp')
  t = jnp.linspace(0.05, 0.95, 5)
  x0 = jax.random.normal(jax.random.key(0), (5, 4))
  eps = jax.random.normal(jax.random.key(1), (5, 4))
  x_t = p.sample_xt(x0=x0, eps=eps, t=t)
  eps_hat = eps + 0.1 * jax.random.normal(jax.random.key(2), (5, 4))
  for name in ['snr', 'min_snr', 'edm', 'p2', 'cosmap', 'likelihood']:
    w = get_weighting(name)
    vals = []
    for kind in predictions.KINDS:
      pred = predictions.convert(eps_hat, src='eps', dst=kind, x_t=x_t, t=t,
                                 path=p)
      tgt = predictions.target(kind, x0=x0, eps=eps, t=t, path=p)
      vals.append(w(t=t, path=p, kind=kind) * jnp.sum((pred - tgt) ** 2, -1))
    for v in vals[1:]:
      np.testing.assert_allclose(v, vals[0], rtol=2e-3, err_msg=name)


def test_weighting_closed_forms():
  vp = get_path('vp')
  t = jnp.asarray([0.2, 0.6])
  beta = 0.1 + t * 19.9
  np.testing.assert_allclose(
      get_weighting('likelihood')(t=t, path=vp, kind='eps'),
      beta / (2 * vp.sigma(t) ** 2), rtol=1e-3)
  edm = get_path('edm')
  # EDM's lambda * c_out^2 = 1: uniform on the F-MSE.
  np.testing.assert_allclose(get_weighting('edm')(t=t, path=edm, kind='edm'),
                             1.0, rtol=1e-4)
  lin = get_path('linear')
  np.testing.assert_allclose(
      get_weighting('cosmap')(t=t, path=lin, kind='velocity'),
      2 / (np.pi * (1 - 2 * t + 2 * t**2)), rtol=1e-6)
  np.testing.assert_allclose(
      get_weighting('sigma_sqrt')(t=t, path=lin, kind='velocity'), t**-2.0,
      rtol=1e-6)
  snr = np.exp(np.asarray(vp.logsnr(t)))
  np.testing.assert_allclose(
      get_weighting('truncated_snr')(t=t, path=vp, kind='eps'),
      np.maximum(snr, 1), rtol=1e-4)
  np.testing.assert_allclose(
      get_weighting('p2', gamma=0.5, k=1.0)(t=t, path=vp, kind='eps'),
      (1 + snr) ** -0.5, rtol=1e-4)


def test_time_distribution_moments():
  key = jax.random.key(0)
  n = 20000
  t, c = get_time_dist('logit_normal', mean=0.5, std=0.8).sample(key, n)
  z = np.log(t / (1 - t))
  assert np.mean(z) == pytest.approx(0.5, abs=0.03)
  assert np.std(z) == pytest.approx(0.8, abs=0.03)
  np.testing.assert_array_equal(c, 1.0)
  edm = get_path('edm')
  t, _ = get_time_dist('lognormal_sigma').sample(key, n, path=edm)
  log_s = np.log(np.asarray(edm.sigma(t)))
  inside = (log_s > np.log(0.0021)) & (log_s < np.log(79))
  assert np.mean(log_s[inside]) == pytest.approx(-1.2, abs=0.05)
  assert np.std(log_s[inside]) == pytest.approx(1.2, abs=0.05)
  t, _ = get_time_dist('stratified').sample(key, 64, path=get_path('linear'))
  gaps = np.diff(np.sort(np.asarray(t)))
  np.testing.assert_allclose(gaps, (1 - 1e-5) / 64, rtol=1e-3)
  t, _ = get_time_dist('discrete', num_timesteps=10).sample(key, 1000)
  assert set(np.round(np.asarray(t) * 10).astype(int)) == set(range(1, 11))
  # Without num_timesteps, the grid of the path's own T (here 100).
  t, _ = get_time_dist('discrete').sample(
      key, 2000, path=get_path('ddpm_linear', num_timesteps=100))
  assert set(np.round(np.asarray(t) * 100).astype(int)) == set(range(1, 101))
  for name in ['mode', 'cosmap', 'uniform']:
    t, _ = get_time_dist(name).sample(key, 4000, path=get_path('linear'))
    assert 0 < float(t.min()) and float(t.max()) <= 1
    assert 0.4 < float(t.mean()) < 0.6  # all three are symmetric about 1/2


def test_importance_sampler_is_unbiased():
  d = get_time_dist('importance', num_timesteps=20, history=3)
  state = d.init_state()
  # Before warm-up: uniform.
  np.testing.assert_allclose(d.probs(state), 1 / 20)
  steps = jnp.repeat(jnp.arange(1, 21) / 20, 3)
  losses = jnp.repeat(jnp.arange(1, 21, dtype=jnp.float32), 3)
  state = d.update(state, steps, losses)
  p = np.asarray(d.probs(state))
  expect = np.arange(1, 21) / np.arange(1, 21).sum() * (1 - 0.001) + 0.001 / 20
  np.testing.assert_allclose(p, expect, rtol=1e-5)
  # E[correction * f(t)] equals the uniform mean of f.
  t, c = d.sample(jax.random.key(3), 200000, state=state)
  f = lambda t: jnp.sin(3 * t) + t**2
  grid = jnp.arange(1, 21) / 20
  assert float(jnp.mean(c * f(t))) == pytest.approx(float(jnp.mean(f(grid))),
                                                    rel=0.01)


COMBOS = [
    ('ddpm_linear', 'eps', 'uniform'),
    ('vp', 'score', 'likelihood'),
    ('ve', 'eps', 'uniform'),
    ('edm', 'edm', 'edm'),
    ('linear', 'velocity', 'uniform'),
    ('linear', 'velocity', 'cosmap'),
    ('gvp', 'v', 'min_snr'),
    ('subvp', 'x0', 'snr'),
    ('ddpm_cosine', 'eps', 'p2'),
    ('bridge_ve', 'x0', 'edm'),
    ('bridge_vp', 'velocity', 'uniform'),
]


@pytest.mark.parametrize('path_name,kind,weighting', COMBOS)
def test_exact_denoiser_minimises_the_loss(path_name, kind, weighting):
  p = get_path(path_name)
  gmm = make_mixture(jax.random.key(1), dim=2, num_components=3)
  n = 4096
  k = jax.random.split(jax.random.key(2), 4)
  x0, _ = gmm.sample(k[0], n)
  eps = jax.random.normal(k[1], x0.shape)
  t = jax.random.uniform(k[2], (n,), minval=0.05, maxval=0.95)
  y = jax.random.normal(k[3], x0.shape) if p.is_bridge else None
  exact = gmm.denoiser(path=p, kind=kind)
  fn = lambda x_t, t, cond: exact(x_t, t, {'y': y})
  scale = lambda x_t, t, cond: 1.05 * fn(x_t, t, cond)
  shift = lambda x_t, t, cond: fn(x_t, t, cond) + 0.05 * jnp.tanh(x_t)
  common = dict(x0=x0, cond=None, eps=eps, t=t, path=p, prediction=kind,
                weighting=weighting, y=y)
  l_exact = float(jnp.mean(exact_loss_grid(fn, **common)))
  for bad in (scale, shift):
    assert l_exact < float(jnp.mean(exact_loss_grid(bad, **common)))


def test_unified_loss_plumbing_and_errors():
  p = get_path('linear')
  x0 = jnp.ones((8, 2))
  cond = {'label': jnp.arange(8)}
  seen = {}

  def net(x_t, t, c):
    seen['cond'] = c
    return jnp.zeros_like(x_t)

  loss, aux = unified_loss(net, x0=x0, cond=cond, key=jax.random.key(0),
                           path='linear', prediction='velocity',
                           weighting='uniform', time_dist='logit_normal')
  assert seen['cond'] is cond
  # Zero prediction: the loss is the mean squared velocity target eps - x0.
  eps = jax.random.normal(jax.random.split(jax.random.key(0))[1], x0.shape)
  np.testing.assert_allclose(loss, jnp.mean((eps - x0) ** 2), rtol=1e-5)
  assert aux['t'].shape == (8,)
  # Element-wise weights multiply the squared error before the mean.
  pw = jnp.asarray([[1.0, 3.0]])
  loss_w, _ = unified_loss(net, x0=x0, cond=cond, key=jax.random.key(0),
                           path='linear', prediction='velocity',
                           weighting='uniform', time_dist='logit_normal',
                           pixel_weight=pw)
  np.testing.assert_allclose(loss_w, jnp.mean(pw * (eps - x0) ** 2),
                             rtol=1e-5)
  with pytest.raises(ValueError, match='bridge'):
    unified_loss(net, x0=x0, cond=None, key=jax.random.key(0),
                 path='bridge_vp')
  with pytest.raises(ValueError, match='Valid choices'):
    unified_loss(net, x0=x0, cond=None, key=jax.random.key(0), path=p,
                 weighting='snr_min')
  with pytest.raises(ValueError, match='Valid choices'):
    unified_loss(net, x0=x0, cond=None, key=jax.random.key(0), path=p,
                 time_dist='logitnormal')
  with pytest.raises(ValueError, match='shape'):
    unified_loss(lambda x, t, c: x[:, :1], x0=x0, cond=None,
                 key=jax.random.key(0), path=p)


def test_every_combination_is_valid_config():
  # The axes are independent: every (kind, weighting) pair, with the paths and
  # time distributions cycled through, yields a finite loss.
  x0 = jax.random.normal(jax.random.key(0), (16, 2))
  net = lambda x_t, t, c: 0.5 * x_t
  paths = ['vp', 'edm', 'linear', 'gvp', 've', 'ddpm_cosine']
  dists = TIME_DISTS.names()
  pairs = list(itertools.product(predictions.KINDS, WEIGHTINGS.names()))
  for i, (kind, w) in enumerate(pairs):
    path_name, td = paths[i % len(paths)], dists[i % len(dists)]
    loss, _ = unified_loss(net, x0=x0, cond=None, key=jax.random.key(1),
                           path=path_name, prediction=kind, weighting=w,
                           time_dist=td)
    assert np.isfinite(float(loss)), (path_name, kind, w, td)
