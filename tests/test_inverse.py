"""Inverse problems: operator SVDs against dense matrices, the exact mixture
posterior against the textbook Gaussian one, Pi-GDM's exactness on an
isotropic Gaussian prior, DDRM against exact posterior samples, errors."""

import numpy as np
import jax
import jax.numpy as jnp
import pytest

from visgen import samplers
from visgen.groundtruth import make_mixture
from visgen.groundtruth import sliced_wasserstein
from visgen.groundtruth.gmm import GaussianMixture
from visgen.interpolants import get_path
from visgen.inverse import ddrm
from visgen.inverse import dps
from visgen.inverse import exact
from visgen.inverse import operators as O
from visgen.inverse import pigdm
from visgen.validate import UserError

OPS = [
    ('denoise', (4, 4, 3), {}),
    ('inpaint_random', (4, 4, 3), dict(missing=0.5, seed=1)),
    ('inpaint_box', (4, 4, 3), dict(top=1, left=0, height=2, width=3)),
    ('sr_pool', (4, 4, 3), dict(factor=2)),
    ('sr_pool', (8, 8, 1), dict(factor=4)),
    ('sr_pool', (8, 1, 1), dict(factor=(2, 1))),
    ('sr_bicubic', (8, 8, 1), dict(factor=2)),
    ('sr_bicubic', (8, 8, 1), dict(factor=4)),
    ('deblur_gaussian', (8, 8, 1), dict(std=1.0)),
    ('deblur_uniform', (4, 4, 3), dict(size=3)),
    ('colorize', (4, 4, 3), {}),
]


@pytest.mark.parametrize('name,shape,kw', OPS,
                         ids=[f'{o[0]}{o[1]}' for o in OPS])
def test_operator_svd_matches_dense(name, shape, kw):
  op = O.build(name, shape, **kw)
  h, v, u = O.dense(op, 'H'), O.dense(op, 'V'), O.dense(op, 'U')
  d, m = op.dim, op.y_dim
  assert h.shape == (m, d) and op.support.sum() == m
  s = np.asarray(op.singulars)
  assert np.all(s[~op.support] == 0) and np.all(s[op.support] > 0)
  # H = U diag(s) V^T with orthogonal U and V, exactly (float32).
  np.testing.assert_allclose(u @ np.diag(s[op.support]) @ v[:, op.support].T,
                             h, atol=2e-6)
  np.testing.assert_allclose(v.T @ v, np.eye(d), atol=2e-6)
  np.testing.assert_allclose(u.T @ u, np.eye(m), atol=2e-6)
  np.testing.assert_allclose(O.dense(op, 'Ht'), h.T, atol=1e-7)
  x = jax.random.normal(jax.random.key(0), (2,) + op.x_shape)
  np.testing.assert_allclose(op.H_via_svd(x), op.H(x), atol=1e-5)
  if s[op.support].min() > 1e-2:  # well conditioned: the pseudo-inverse
    np.testing.assert_allclose(O.dense(op, 'pinv'), np.linalg.pinv(h),
                               atol=1e-4)


def test_pool_svd_is_closed_form():
  u, s, v = O.pool_svd(8, 4)
  a = O.pool_matrix(8, 4)
  np.testing.assert_allclose(u @ np.diag(s) @ v[:, :2].T, a, atol=1e-12)
  np.testing.assert_allclose(v.T @ v, np.eye(8), atol=1e-12)


def test_exact_posterior_one_gaussian_is_textbook():
  rng = np.random.default_rng(0)
  d, m, sig = 5, 3, 0.3
  a = rng.standard_normal((d, d))
  cov = a @ a.T / d + 0.1 * np.eye(d)
  mu = rng.standard_normal(d)
  h = rng.standard_normal((m, d))
  y = rng.standard_normal(m)
  post = exact.linear_gaussian_posterior([1.0], mu[None], cov[None], h, y, sig)
  # Information form: P = (S^-1 + H^T H / s^2)^-1, m = P (S^-1 mu + H^T y / s^2).
  p = np.linalg.inv(np.linalg.inv(cov) + h.T @ h / sig**2)
  mean = p @ (np.linalg.solve(cov, mu) + h.T @ y / sig**2)
  np.testing.assert_allclose(post.covs[0], p, atol=1e-10)
  np.testing.assert_allclose(post.means[0], mean, atol=1e-10)
  assert post.weights[0] == pytest.approx(1.0)
  x = post.sample(np.random.default_rng(1), 40000)
  np.testing.assert_allclose(np.cov(x.T), p, atol=0.02)


def test_exact_posterior_weights_are_bayes():
  """Two components, H = I: w_k proportional to pi_k N(y; mu_k, S_k + s^2)."""
  mu = np.array([[0.0, 0.0], [1.0, 0.5]])
  cov = np.stack([0.2 * np.eye(2), 0.5 * np.eye(2)])
  y = np.array([0.6, 0.1])
  post = exact.linear_gaussian_posterior([0.3, 0.7], mu, cov, np.eye(2), y,
                                         0.4)
  var = np.array([0.2, 0.5]) + 0.16
  lik = np.exp(-0.5 * np.sum((y - mu) ** 2, -1) / var) / (2 * np.pi * var)
  w = np.array([0.3, 0.7]) * lik
  np.testing.assert_allclose(post.weights, w / w.sum(), rtol=1e-10)


def _gauss_denoiser(gmm, path):
  fn = gmm.denoiser(path=path, kind='eps')
  return lambda x, t, c=None: fn(x.reshape(x.shape[0], -1), t, c).reshape(
      x.shape)


@pytest.mark.parametrize('which', ['sr_pool', 'inpaint'])
def test_pigdm_is_exact_for_isotropic_gaussian_prior(which):
  """For x0 ~ N(mu, v I), p(x0 | x_t) = N(x0_hat, r_t^2 I) exactly, so the
  Pi-GDM score equals the score of p_t(x_t | y) = N(alpha m, alpha^2 P +
  sigma^2 I) (m, P: the exact posterior), also for a mask (zero singular
  values)."""
  v, sig_y, d = 0.7, 0.2, 4
  mu = np.array([0.5, -1.0, 0.3, 2.0])
  gmm = GaussianMixture(jnp.ones((1,)), jnp.asarray(mu[None], jnp.float32),
                        jnp.asarray(v * np.eye(d)[None], jnp.float32))
  path = get_path('vp')
  op = (O.AveragePool((d, 1, 1), (2, 1)) if which == 'sr_pool' else
        O.Inpainting((d, 1, 1), np.array([1, 0, 1, 0], bool)[:, None, None]))
  y = jnp.asarray([[0.1, 0.9]], jnp.float32).reshape((1,) + op.y_shape)
  guided = pigdm(_gauss_denoiser(gmm, path), op,
                 jnp.broadcast_to(y, (3,) + op.y_shape),
                 path=path, prediction='eps', sigma_y=sig_y, data_var=v)
  x = jax.random.normal(jax.random.key(0), (3, d, 1, 1))
  t = jnp.asarray([0.1, 0.4, 0.8])
  eps = np.asarray(jax.jit(guided)(x, t)).reshape(3, d)
  post = exact.linear_gaussian_posterior([1.0], mu[None], v * np.eye(d)[None],
                                         O.dense(op, 'H'),
                                         np.asarray(y).ravel(), sig_y)
  for i in range(3):
    a, s = float(path.alpha(t[i])), float(path.sigma(t[i]))
    c = a**2 * post.covs[0] + s**2 * np.eye(d)
    score = -np.linalg.solve(c, np.asarray(x[i]).ravel() - a * post.means[0])
    np.testing.assert_allclose(-eps[i] / s, score, rtol=2e-3, atol=2e-3)


def test_dps_gaussian_form_is_the_gradient_of_its_likelihood():
  gmm = make_mixture(jax.random.PRNGKey(1), dim=4, num_components=3)
  path = get_path('vp')
  op = O.Inpainting((4, 1, 1), np.array([1, 0, 1, 0], bool)[:, None, None])
  den = _gauss_denoiser(gmm, path)
  y = jnp.asarray([[0.3, -1.0]] * 2)
  x = jax.random.normal(jax.random.key(2), (2, 4, 1, 1))
  t = jnp.asarray([0.3, 0.6])
  out = jax.jit(dps(den, op, y, scale=0.5, path=path, prediction='eps',
                    form='gaussian', sigma_y=0.2))(x, t)

  def loglik(x):
    from visgen.objectives import predictions
    x0, _ = predictions.to_x0_eps(den(x, t), kind='eps', x_t=x, t=t,
                                  path=path)
    return -jnp.sum((y - op.H(x0)) ** 2) / (2 * 0.2**2)

  expected = jax.jit(lambda x: den(x, t) - path.sigma(t)[:, None, None, None]
                     * 0.5 * jax.grad(loglik)(x))(x)
  np.testing.assert_allclose(out, expected, atol=1e-4)


def test_ddrm_mixture_denoising_within_twice_the_floor():
  """The issue's bound at a small sample size: DDRM (the paper's eta =
  0.85, eta_b = 1, 50 NFE) on the 8-D mixture, H = I, sigma_y = 0.1, N = 128:
  sliced W1 to exact posterior samples within 2x the floor (N independent
  exact samples; measured 0.021 vs floor 0.012). DDRM is not an exact
  posterior sampler: at N = 1000 its bias stands out (about 4-8x the
  floor, experiments/results/inverse_problems). Prior samples (ignoring y)
  are far outside the bound, so the check has power."""
  gmm = make_mixture(jax.random.PRNGKey(0), dim=8)
  path = get_path('ddpm_linear')
  op = O.Identity((8, 1, 1))
  n, m, sig_y = 128, 8192, 0.1
  rng = np.random.default_rng(0)
  w, mu, cov = (np.asarray(a, np.float64) for a in (gmm.weights, gmm.means,
                                                    gmm.covs))
  x_star = exact.MixturePosterior(w, mu, cov).sample(rng, 1)[0]
  y = x_star + sig_y * rng.standard_normal(8)
  post = exact.linear_gaussian_posterior(w, mu, cov, np.eye(8), y, sig_y)
  ref = jnp.asarray(post.sample(rng, m), jnp.float32)
  floor = float(sliced_wasserstein(
      jnp.asarray(post.sample(rng, n), jnp.float32), ref,
      num_projections=128))
  yb = jnp.broadcast_to(jnp.asarray(y, jnp.float32).reshape(1, 8, 1, 1),
                        (n, 8, 1, 1))
  ts = samplers.make_grid('uniform', DDRM_NFE - 1, path=path)
  x, info = jax.jit(lambda yb, ts: ddrm(
      _gauss_denoiser(gmm, path), op, yb, path=path, prediction='eps',
      ts=ts, key=jax.random.key(3), sigma_y=sig_y, eta=DDRM_ETA))(yb, ts)
  assert int(info['nfe']) == len(ts)
  sw = float(sliced_wasserstein(x.reshape(n, 8), ref, num_projections=128))
  assert sw < 2 * floor, (sw, floor)
  prior = jnp.asarray(exact.MixturePosterior(w, mu, cov).sample(rng, n),
                      jnp.float32)
  assert float(sliced_wasserstein(prior, ref)) > 20 * floor


DDRM_NFE, DDRM_ETA = 50, 0.85


def _one_gaussian(d, seed=0):
  rng = np.random.default_rng(seed)
  a = rng.standard_normal((d, d))
  cov = a @ a.T / d + 0.3 * np.eye(d)
  mu = rng.standard_normal(d)
  gmm = GaussianMixture(jnp.ones((1,)), jnp.asarray(mu[None], jnp.float32),
                        jnp.asarray(cov[None], jnp.float32))
  return mu, cov, gmm


LAW_CASES = [
    # (operator, x_shape, kwargs, path, path kwargs, sigma_y, eta, eta_b)
    ('inpaint_random', (4, 1, 1), dict(missing=0.5, seed=0), 'ddpm_linear',
     {}, 0.1, 0.85, 1.0),
    ('inpaint_box', (2, 2, 1), dict(top=0, left=1, height=2, width=1),
     'linear', dict(t_max=0.999), 0.1, 0.85, 1.0),
    ('sr_pool', (4, 1, 1), dict(factor=(2, 1)), 've', {}, 0.1, 0.85, 1.0),
    ('deblur_gaussian', (4, 1, 1), dict(std=1.0), 'ddpm_linear', {}, 0.3,
     0.5, 0.7),
    ('colorize', (1, 2, 3), {}, 'vp', {}, 0.1, 0.85, 1.0),
]


@pytest.mark.parametrize('name,shape,kw,path_name,path_kw,sig_y,eta,eta_b',
                         LAW_CASES, ids=[c[0] for c in LAW_CASES])
def test_ddrm_matches_its_closed_form_law_on_a_gaussian_prior(
    name, shape, kw, path_name, path_kw, sig_y, eta, eta_b):
  """Exact check of DDRM's spectral bookkeeping (zero singular values,
  masks, the case split, the x / alpha scaling, eta and eta_b): for a
  Gaussian prior the exact denoiser is affine, so DDRM's output is Gaussian
  with a mean and covariance propagated in closed form
  (`exact.ddrm_gaussian_law`). The samples must match it to Monte-Carlo
  accuracy. (DDRM's law is not the posterior: DDRM is an approximate
  sampler and does not converge to p(x | y) as NFE grows, see
  experiments/results/inverse_problems/README.md.)"""
  op = O.build(name, shape, **kw)
  d = op.dim
  mu, cov, gmm = _one_gaussian(d)
  path = get_path(path_name, **path_kw)
  y = O.dense(op, 'H') @ (mu + 0.5)
  n, nfe = 40000, 8
  ts = samplers.make_grid('uniform', nfe - 1, path=path)
  sigmas = np.asarray(path.sigma(ts) / path.alpha(ts), np.float64)
  m, c = exact.ddrm_gaussian_law(mu, cov, op, y, sigmas=sigmas,
                                 sigma_y=sig_y, eta=eta, eta_b=eta_b)
  yb = jnp.broadcast_to(jnp.asarray(y, jnp.float32).reshape(
      (1,) + op.y_shape), (n,) + op.y_shape)
  x, _ = jax.jit(lambda yb, ts: ddrm(
      _gauss_denoiser(gmm, path), op, yb, path=path, prediction='eps',
      ts=ts, key=jax.random.key(1), sigma_y=sig_y, eta=eta,
      eta_b=eta_b))(yb, ts)
  x = np.asarray(x, np.float64).reshape(n, d)
  sd = np.sqrt(np.diag(c))
  se_mean = sd / np.sqrt(n) + 1e-4
  se_cov = np.sqrt((np.outer(sd, sd) ** 2 + c**2) / n) + 1e-4
  assert np.all(np.abs(x.mean(0) - m) < 5 * se_mean), (x.mean(0), m)
  assert np.all(np.abs(np.cov(x.T) - c) < 5 * se_cov), (np.cov(x.T), c)


@pytest.mark.parametrize('name,kw', [('inpaint_random',
                                      dict(missing=0.5, seed=0)),
                                     ('sr_pool', dict(factor=(2, 1)))])
def test_ddrm_noiseless_observations_are_kept(name, kw):
  """sigma_y = 0: DDRM's last step (sigma~' = 0 = sigma_y / s) is eq. 7's
  sigma_t >= sigma_y / s case, which returns ybar on the observed spectral
  coordinates (eta_b = 1), so H x = y exactly; its closed-form law has no
  variance there either."""
  op = O.build(name, (4, 1, 1), **kw)
  mu, cov, gmm = _one_gaussian(4)
  path = get_path('ddpm_linear')
  h = O.dense(op, 'H')
  y = h @ (mu + 0.5)
  n = 64
  ts = samplers.make_grid('uniform', 9, path=path)
  yb = jnp.broadcast_to(jnp.asarray(y, jnp.float32).reshape(
      (1,) + op.y_shape), (n,) + op.y_shape)
  x, _ = ddrm(_gauss_denoiser(gmm, path), op, yb, path=path,
              prediction='eps', ts=ts, key=jax.random.key(0), sigma_y=0.0)
  np.testing.assert_allclose(np.asarray(op.H(x)).reshape(n, -1),
                             np.broadcast_to(y, (n, y.size)), atol=1e-5)
  m, c = exact.ddrm_gaussian_law(
      mu, cov, op, y, sigmas=np.asarray(path.sigma(ts) / path.alpha(ts)),
      sigma_y=0.0)
  np.testing.assert_allclose(h @ m, y, atol=1e-9)
  np.testing.assert_allclose(h @ c @ h.T, 0.0, atol=1e-12)


def test_errors_name_sizes_and_fix():
  op = O.AveragePool((8, 8, 1), 2)
  with pytest.raises(UserError, match=r'\(8, 8, 1\).*\(6, 6, 1\).*x_shape='):
    op.H(jnp.zeros((2, 6, 6, 1)))
  with pytest.raises(ValueError, match=r'x3 does not divide the image size '
                     r'8x8.*multiple of the factor \(height 6 or 9'):
    O.AveragePool((8, 8, 1), 3)
  with pytest.raises(ValueError, match='x3 does not divide'):
    O.Bicubic((10, 9, 1), 3)
  with pytest.raises(UserError, match='3-channel'):
    O.Colorization((4, 4, 1))
  with pytest.raises(UserError, match='does not fit in a 4x4 image'):
    O.box((4, 4, 1), top=2, left=0, height=3, width=1)
  with pytest.raises(UserError, match='measurements of shape'):
    op.Ht(jnp.zeros((1, 8, 8, 1)))
  path = get_path('linear')
  with pytest.raises(UserError, match='t_max=0.999'):
    ddrm(lambda x, t, c=None: x, O.Identity((2, 1, 1)),
         jnp.zeros((1, 2, 1, 1)), path=path, prediction='x0',
         ts=samplers.make_grid('uniform', 4, path=path),
         key=jax.random.key(0), sigma_y=0.1)
