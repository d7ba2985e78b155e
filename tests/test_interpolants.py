"""Paths: analytic identities, derivatives, inverses, DDPM tables, bridges."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from visgen.interpolants import PATHS
from visgen.interpolants import get_path

ALL = [n for n in PATHS.names() if n != 'interpolant']


def _path(name):
  if name == 'interpolant':
    return get_path(name, alpha_fn=lambda t: 1 - t**2, sigma_fn=lambda t: t)
  return get_path(name)


def _times(path, n=9):
  lo = max(path.t_min, 0.02)
  hi = min(path.t_max, 0.98)
  return jnp.linspace(lo, hi, n)


@pytest.mark.parametrize('name', ALL + ['interpolant'])
def test_logsnr_is_decreasing_and_inverted(name):
  p = _path(name)
  t = _times(p)
  lam = p.logsnr(t)
  assert np.all(np.diff(np.asarray(lam)) < 0)
  np.testing.assert_allclose(p.t_from_logsnr(lam), t, atol=2e-5)
  # logsnr agrees with its definition from alpha and sigma.
  np.testing.assert_allclose(
      lam, 2 * np.log(p.alpha(t) / p.sigma(t)), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('name', ALL + ['interpolant'])
def test_derivatives_match_finite_differences(name):
  p = _path(name)
  t = np.asarray(_times(p), np.float64)
  h = 1e-3
  if name.startswith('ddpm'):
    # Piecewise log-linear between the grid points t = i / T: difference
    # inside one cell.
    t = (np.floor(t * 1000) + 0.5) / 1000
    h = 2e-4
  for fn, dfn in [(p.alpha, p.d_alpha), (p.sigma, p.d_sigma),
                  (p.gamma, p.d_gamma)]:
    fd = (np.asarray(fn(jnp.asarray(t + h))) - np.asarray(
        fn(jnp.asarray(t - h)))) / (2 * h)
    np.testing.assert_allclose(dfn(jnp.asarray(t)), fd, rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize('schedule', ['linear', 'cosine'])
def test_ddpm_paths_match_discrete_tables(schedule):
  p = get_path(f'ddpm_{schedule}')
  betas = p.betas()
  if schedule == 'linear':
    np.testing.assert_allclose(betas[[0, -1]], [1e-4, 0.02])
  else:  # improved DDPM: beta_i = min(1 - f(i+1)/f(i), 0.999)
    f = lambda s: np.cos((s + 0.008) / 1.008 * np.pi / 2) ** 2
    np.testing.assert_allclose(betas[10], 1 - f(11 / 1000) / f(10 / 1000))
    assert betas.max() == pytest.approx(0.999)
  ab = np.cumprod(1 - betas)
  t = (np.arange(1000) + 1) / 1000
  np.testing.assert_allclose(np.asarray(p.alpha(jnp.asarray(t))) ** 2, ab,
                             rtol=1e-4, atol=1e-9)
  np.testing.assert_allclose(p.alpha(0.0), 1.0)
  np.testing.assert_array_equal(p.timestep_index(jnp.asarray(t)),
                                np.arange(1000))


@pytest.mark.parametrize('name', ['vp', 'gvp', 'ddpm_linear', 'ddpm_cosine'])
def test_variance_preserving(name):
  p = get_path(name)
  t = _times(p)
  np.testing.assert_allclose(p.alpha(t) ** 2 + p.sigma(t) ** 2, 1.0, atol=1e-5)


def test_closed_forms():
  t = jnp.asarray([0.1, 0.5, 0.9])
  vp = get_path('vp')
  log_alpha = -0.25 * t**2 * 19.9 - 0.05 * t
  np.testing.assert_allclose(vp.alpha(t), np.exp(log_alpha), rtol=1e-6)
  np.testing.assert_allclose(get_path('subvp').sigma(t),
                             1 - np.exp(2 * log_alpha), rtol=1e-5)
  ve = get_path('ve')
  np.testing.assert_allclose(ve.sigma(jnp.asarray([0.0, 1.0])), [0.01, 50.0],
                             rtol=1e-5)
  np.testing.assert_allclose(np.asarray(ve.ncsn_sigmas(10))[[0, -1]],
                             [50.0, 0.01],
                             rtol=1e-5)
  edm = get_path('edm')
  np.testing.assert_allclose(edm.sigma(jnp.asarray([0.0, 1.0])), [0.002, 80.0],
                             rtol=1e-5)
  lin = get_path('linear')
  np.testing.assert_allclose(lin.alpha(t) + lin.sigma(t), 1.0)


@pytest.mark.parametrize('name', ['bridge_vp', 'bridge_ve'])
def test_bridge_endpoints(name):
  p = get_path(name)
  assert p.is_bridge
  np.testing.assert_allclose(
      [p.alpha(0.0), p.gamma(0.0), p.sigma(0.0)], [1, 0, 0], atol=1e-6)
  np.testing.assert_allclose(
      [p.alpha(1.0), p.gamma(1.0), p.sigma(1.0)], [0, 1, 0], atol=1e-5)
  x0, y = jnp.ones((2, 3)), -jnp.ones((2, 3))
  with pytest.raises(ValueError, match='source'):
    p.sample_xt(x0=x0, eps=x0, t=jnp.full((2,), 0.5))
  x1 = p.sample_xt(x0=x0, eps=x0, t=jnp.ones((2,)), y=y)
  np.testing.assert_allclose(x1, y, atol=1e-5)


def test_ve_bridge_matches_ddbm_marginal():
  # DDBM VE: mean = r y + (1 - r) x0, var = s^2 (1 - r), r = s^2 / s_T^2.
  p = get_path('bridge_ve', sigma_max=80.0)
  t = jnp.asarray([0.3])
  s = 80.0 * 0.3
  r = s**2 / 80.0**2
  np.testing.assert_allclose(p.gamma(t), [r], rtol=1e-5)
  np.testing.assert_allclose(p.alpha(t), [1 - r], rtol=1e-5)
  np.testing.assert_allclose(p.sigma(t), [s * np.sqrt(1 - r)], rtol=1e-5)


def test_sample_xt_moments():
  p = get_path('vp')
  key = jax.random.key(0)
  x0 = jnp.full((20000, 1), 0.7)
  t = jnp.full((20000,), 0.4)
  eps = jax.random.normal(key, x0.shape)
  x = p.sample_xt(x0=x0, eps=eps, t=t)
  assert float(jnp.mean(x)) == pytest.approx(0.7 * float(p.alpha(0.4)),
                                             abs=0.02)
  assert float(jnp.std(x)) == pytest.approx(float(p.sigma(0.4)), rel=0.02)


def test_prior_logp_is_gaussian():
  p = get_path('ve')
  x = jnp.asarray([[0.0, 0.0], [50.0, -50.0]])
  expected = -0.5 * np.array([0.0, 2.0]) - 2 * (np.log(50.0) +
                                                 0.5 * np.log(2 * np.pi))
  np.testing.assert_allclose(p.prior_logp(x), expected, rtol=1e-5)


def test_bad_names_list_choices():
  with pytest.raises(ValueError, match='Valid choices: .*linear'):
    get_path('rectified')
  with pytest.raises(ValueError, match='alpha_fn'):
    get_path('interpolant')
  with pytest.raises(ValueError, match='Bad arguments'):
    get_path('vp', beta_mn=0.1)


def _iddpm_linear_alpha_bars(num_timesteps):
  """improved DDPM's get_named_beta_schedule('linear', T), then cumprod."""
  scale = 1000 / num_timesteps
  betas = np.linspace(scale * 0.0001, scale * 0.02, num_timesteps,
                      dtype=np.float64)
  return np.cumprod(1.0 - betas)


@pytest.mark.parametrize('num_timesteps,golden_last', [(100, 2.039009e-05),
                                                       (1000, 4.035830e-05)])
def test_ddpm_linear_rescales_betas_with_num_timesteps(num_timesteps,
                                                       golden_last):
  p = get_path('ddpm_linear', num_timesteps=num_timesteps)
  ref = _iddpm_linear_alpha_bars(num_timesteps)
  # Golden values (float64, ADM / iDDPM tables): the prior end stays near
  # alpha_bar = 2e-5 to 4e-5 for every T; it was 0.36 at T = 100 before the
  # 1000 / T rescale.
  assert ref[-1] == pytest.approx(golden_last, rel=1e-6)
  np.testing.assert_allclose(p.alpha_bars(), ref, rtol=1e-12)
  t = (np.arange(num_timesteps) + 1) / num_timesteps
  np.testing.assert_allclose(np.asarray(p.alpha(jnp.asarray(t))) ** 2, ref,
                             rtol=2e-4, atol=1e-9)
  assert p.t_min == pytest.approx(1 / num_timesteps)
  assert float(p.alpha(1.0)) ** 2 < 5e-5


def test_ddpm_linear_refuses_too_few_steps():
  with pytest.raises(ValueError, match='beta_end'):
    get_path('ddpm_linear', num_timesteps=20).betas()
