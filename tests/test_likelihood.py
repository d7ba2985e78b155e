"""PF-ODE likelihood, Hutchinson's estimator, bits/dim and DDPM's VLB,
checked against the exact log-density of Gaussian mixtures."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from visgen.groundtruth import make_mixture
from visgen.interpolants import get_path
from visgen.samplers import likelihood

B = 64


@pytest.mark.parametrize('dim,path_name,kind,method', [
    (2, 'vp', 'eps', 'rk4'), (8, 'vp', 'eps', 'rk4'),
    (8, 'linear', 'velocity', 'dopri5')])
def test_pf_ode_nll_matches_exact_density(dim, path_name, kind, method):
  gmm = make_mixture(jax.random.PRNGKey(dim), dim=dim, num_components=4)
  x, _ = gmm.sample(jax.random.PRNGKey(1), B)
  path = get_path(path_name)
  fn = gmm.denoiser(path=path, kind=kind)
  logp, info = jax.jit(lambda x: likelihood.ode_log_likelihood(
      fn, x, path=path, prediction=kind, method=method, num_steps=20,
      grid='logsnr'))(x)
  exact = gmm.log_prob_t(x, jnp.full((B,), path.t_min), path=path)
  err = float(jnp.mean(jnp.abs(logp - exact))) / dim
  assert err < 0.01, err
  # The test can fail: the integral of the divergence is most of the answer.
  assert float(jnp.mean(jnp.abs(info['prior_logp'] - exact))) / dim > 0.3


def test_hutchinson_is_unbiased():
  dim = 2
  gmm = make_mixture(jax.random.PRNGKey(dim), dim=dim, num_components=4)
  x, _ = gmm.sample(jax.random.PRNGKey(1), 256)
  path = get_path('linear')
  fn = gmm.denoiser(path=path, kind='velocity')
  run = lambda x, key, div, probe: likelihood.ode_log_likelihood(
      fn, x, path=path, prediction='velocity', num_steps=20, grid='logsnr',
      divergence=div, probe=probe, key=key)[0]
  key = jax.random.PRNGKey(3)
  exact, rad, gauss = jax.jit(lambda x: (
      run(x, None, 'exact', None), run(x, key, 'hutchinson', 'rademacher'),
      run(x, key, 'hutchinson', 'gaussian')))(x)
  for probe, est in (('rademacher', rad), ('gaussian', gauss)):
    diff = est - exact
    se = float(jnp.std(diff)) / math.sqrt(diff.shape[0])
    assert se > 0  # a stochastic estimate...
    assert abs(float(jnp.mean(diff))) < 3 * se, (probe, diff.mean(), se)


def test_bits_per_dim_offset():
  # nll = 0 nats of a density on [-1, 1]: the dequantisation offset alone.
  np.testing.assert_allclose(likelihood.bits_per_dim(0.0, dim=3),
                             math.log2(127.5), rtol=1e-6)
  np.testing.assert_allclose(
      likelihood.bits_per_dim(3 * math.log(2.0), dim=3, bin_width=1.0), 1.0,
      rtol=1e-6)


def test_ddpm_vlb_bounds_the_discrete_nll():
  """With the exact denoiser the VLB is an upper bound on -log P(x) of the
  8-bit data (bins much narrower than the components, so -log P = -log p +
  D log 127.5). Measured gaps (n = 256): 0.57 +- 0.07 nats/dim with the
  beta-tilde variance, 0.12 +- 0.06 with beta; the first steps dominate,
  where fixed variances are loosest."""
  dim, n = 2, 64
  gmm = make_mixture(jax.random.PRNGKey(4), dim=dim, num_components=3,
                     scale=0.3, std=0.15)
  x, _ = gmm.sample(jax.random.PRNGKey(1), n)
  x = jnp.clip(jnp.round((x + 1) * 127.5), 0, 255) / 127.5 - 1
  path = get_path('ddpm_linear')
  fn = gmm.denoiser(path=path, kind='eps')
  small, large = jax.jit(lambda x, key: [likelihood.ddpm_vlb(
      fn, x, key=key, path=path, prediction='eps', variance=v)
                                         for v in ('posterior', 'beta')])(
                                             x, jax.random.PRNGKey(0))
  ab_last = path.alpha_bars()[-1]
  prior = 0.5 * jnp.sum(ab_last * x**2 - 1 + (1 - ab_last)
                        - math.log(1 - ab_last), -1)
  np.testing.assert_allclose(small['prior'], prior, rtol=1e-4, atol=1e-6)
  assert small['terms'].shape == (999, n)
  np.testing.assert_allclose(
      small['total'], small['prior'] + small['terms'].sum(0)
      + small['decoder'], rtol=1e-6)
  nll = -gmm.log_prob(x) + dim * math.log(127.5)
  gaps = []
  for out in (small, large):
    gap = (out['total'] - nll) / dim
    se = float(jnp.std(gap)) / math.sqrt(n)
    assert float(jnp.mean(gap)) > -3 * se
    gaps.append(float(jnp.mean(gap)))
  assert gaps[1] < gaps[0] < 1.0, gaps


def test_divergence_of_a_project_model():
  # The models' matmuls have a custom VJP, which forward mode cannot
  # differentiate: the divergences must work in reverse mode.
  from flax import nnx  # pylint: disable=g-import-not-at-top

  from visgen import models  # pylint: disable=g-import-not-at-top

  graphdef, params = models.split_model(
      models.get_model('mlp', rngs=nnx.Rngs(0), dim=3, width=16, depth=1))
  apply = models.make_apply(graphdef)
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 3))
  t = jnp.full((4,), 0.3)
  fn = lambda u: apply(params, u, t, {})
  jac = jax.vmap(jax.jacrev(lambda u, tt: apply(params, u[None], tt[None],
                                                {})[0]))(x, t)
  ref = jnp.trace(jac, axis1=-2, axis2=-1)
  np.testing.assert_allclose(likelihood.exact_divergence(fn, x), ref,
                             rtol=1e-5, atol=1e-5)
  probe = jax.random.rademacher(jax.random.PRNGKey(1), x.shape, jnp.float32)
  est = likelihood.hutchinson_divergence(fn, x, probe)
  np.testing.assert_allclose(est, jnp.einsum('bi,bij,bj->b', probe, jac,
                                             probe), rtol=1e-5, atol=1e-5)
