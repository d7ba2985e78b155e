"""iDDPM's learned variance: L_vlb against hand-computed Gaussians, the
hybrid loss's stopped mean, the sampler's variance and the optimal variance
on an exact mixture."""

import functools
import math

from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from scipy import stats

from experiments import learned_variance as lv_exp
from visgen import models
from visgen import samplers
from visgen.groundtruth import make_mixture
from visgen.groundtruth import sliced_wasserstein
from visgen.interpolants import get_path
from visgen.objectives import learned_variance as lv_lib
from visgen.objectives import loss as loss_lib
from visgen.tasks import get_task

T = 100


def _iddpm_tables(num_timesteps):
  """improved DDPM's GaussianDiffusion tables for the linear schedule."""
  scale = 1000 / num_timesteps
  betas = np.linspace(scale * 1e-4, scale * 0.02, num_timesteps)
  ab = np.cumprod(1 - betas)
  ab_prev = np.append(1.0, ab[:-1])
  post_var = betas * (1 - ab_prev) / (1 - ab)
  return dict(
      betas=betas, ab=ab, post_var=post_var,
      post_log_var_clipped=np.log(np.append(post_var[1], post_var[1:])),
      coef1=betas * np.sqrt(ab_prev) / (1 - ab),
      coef2=(1 - ab_prev) * np.sqrt(1 - betas) / (1 - ab))


def _case(i, key=0):
  rng = np.random.default_rng(key)
  x0 = np.round(rng.uniform(0, 255, (2, 3))) / 127.5 - 1  # 8-bit values
  x0[0, 0], x0[1, 2] = -1.0, 1.0  # the open end bins of the decoder
  eps = rng.standard_normal((2, 3))
  eps_hat = eps + 0.5 * rng.standard_normal((2, 3))  # an imperfect model
  v = rng.uniform(-1, 1, (2, 3))
  tab = _iddpm_tables(T)
  x_t = np.sqrt(tab['ab'][i]) * x0 + np.sqrt(1 - tab['ab'][i]) * eps
  return x0, x_t, eps_hat, v, tab


def _model_mean_logvar(x_t, eps_hat, v, tab, i):
  x0_hat = (x_t - np.sqrt(1 - tab['ab'][i]) * eps_hat) / np.sqrt(tab['ab'][i])
  mean = tab['coef1'][i] * x0_hat + tab['coef2'][i] * x_t
  frac = (v + 1) / 2
  logvar = frac * np.log(tab['betas'][i]) + (1 - frac) * tab[
      'post_log_var_clipped'][i]
  return mean, logvar


def _vlb(i, x0, x_t, eps_hat, v):
  lv = lv_lib.LearnedVariance()
  path = get_path('ddpm_linear', num_timesteps=T)
  fn = jax.jit(functools.partial(lv.vlb_terms, kind='eps', path=path))
  f32 = lambda a: jnp.asarray(a, jnp.float32)
  return np.asarray(fn(pred=f32(eps_hat), v=f32(v), x0=f32(x0),
                       x_t=f32(x_t), i=jnp.full((2,), i)))


def test_vlb_term_is_the_hand_computed_gaussian_kl():
  i = 37
  x0, x_t, eps_hat, v, tab = _case(i)
  mean, logvar = _model_mean_logvar(x_t, eps_hat, v, tab, i)
  true_mean = tab['coef1'][i] * x0 + tab['coef2'][i] * x_t
  var1, var2 = tab['post_var'][i], np.exp(logvar)
  # KL(N(m1, v1) || N(m2, v2)) = log(s2 / s1) + (v1 + (m1 - m2)^2) / 2 v2
  # - 1/2, averaged over dimensions, in bits.
  kl = (0.5 * np.log(var2 / var1) + (var1 + (true_mean - mean) ** 2)
        / (2 * var2) - 0.5)
  want = kl.mean(-1) / math.log(2)
  np.testing.assert_allclose(_vlb(i, x0, x_t, eps_hat, v), want, rtol=2e-4)


def test_first_step_is_the_discretized_decoder_nll():
  x0, x_t, eps_hat, v, tab = _case(0, key=1)
  mean, logvar = _model_mean_logvar(x_t, eps_hat, v, tab, 0)
  sd = np.exp(0.5 * logvar)
  hi = np.where(x0 > 0.999, np.inf, x0 + 1 / 255)
  lo = np.where(x0 < -0.999, -np.inf, x0 - 1 / 255)
  prob = stats.norm.cdf(hi, mean, sd) - stats.norm.cdf(lo, mean, sd)
  assert prob.min() > 1e-6  # a case away from iDDPM's 1e-12 clamp
  want = -np.log(prob).mean(-1) / math.log(2)
  np.testing.assert_allclose(_vlb(0, x0, x_t, eps_hat, v), want, rtol=2e-4)


def test_hybrid_loss_stops_the_mean_in_l_vlb():
  path = get_path('ddpm_linear', num_timesteps=T)
  x0 = jax.random.uniform(jax.random.key(0), (4, 3), minval=-1, maxval=1)
  lv = lv_lib.LearnedVariance(lambda_vlb=0.001)
  t = jnp.array([0.005, 0.2, 0.51, 1.0])  # snapped to steps 0, 19, 50, 99

  def loss(mean_out, v_out, learned):
    fn = lambda x_t, t, c: jnp.concatenate([mean_out, v_out], -1)
    if not learned:
      fn = lambda x_t, t, c: mean_out
    return loss_lib.unified_loss(
        fn, x0=x0, cond={}, key=jax.random.key(1), path=path, t=t,
        learned_variance=lv if learned else None)

  m = jax.random.normal(jax.random.key(2), (4, 3))
  v = jax.random.uniform(jax.random.key(3), (4, 3), minval=-1, maxval=1)
  (total, aux), (g_m, g_v) = jax.jit(jax.value_and_grad(
      lambda a, b: loss(a, b, True), argnums=(0, 1), has_aux=True))(m, v)
  (simple, aux0), g_m0 = jax.jit(jax.value_and_grad(
      lambda a: loss(a, v, False), has_aux=True))(m)
  np.testing.assert_array_equal(aux['t'], jnp.array([1, 20, 51, 100]) / T)
  np.testing.assert_allclose(
      total, simple + 0.001 * T * jnp.mean(aux['vlb']), rtol=1e-6)
  np.testing.assert_allclose(aux['mse'], aux0['mse'], rtol=1e-6)
  np.testing.assert_allclose(g_m, g_m0, rtol=1e-6)  # L_vlb: no mean grad
  assert float(jnp.min(jnp.abs(g_v))) > 0  # ... but trains the variance
  with pytest.raises(ValueError, match='learn_sigma'):
    loss_lib.unified_loss(lambda x_t, t, c: m, x0=x0, cond={},
                          key=jax.random.key(1), path=path,
                          learned_variance=dict(lambda_vlb=0.001))
  with pytest.raises(ValueError, match='num_timesteps'):
    lv_lib.LearnedVariance(num_timesteps=50).steps(path)


def test_mlp_learn_sigma_outputs_two_halves():
  m = models.get_model('mlp', rngs=nnx.Rngs(0), dim=5, width=8, depth=1,
                       learn_sigma=True)
  assert m(jnp.zeros((3, 5)), jnp.zeros((3,))).shape == (3, 10)


def _config():
  c = ml_collections.ConfigDict()
  c.task = dict(name='generation', num_classes=0, flatten=True,
                x_shape=(2, 2, 1))
  c.path = dict(name='ddpm_cosine', num_timesteps=T)
  c.prediction = 'eps'
  c.weighting = dict(name='uniform')
  c.time_dist = dict(name='uniform')
  c.learned_variance = dict(lambda_vlb=0.001)
  c.sampler = dict(name='ddpm', steps=4)
  return c


def test_ancestral_learned_variance_interpolates_the_respaced_step():
  """v = +1 is beta, v = -1 beta_tilde of the step actually taken (a
  4-step respacing of T = 100), through the task's default sampler."""
  c = _config()
  x0_fn = lambda x_t: 0.5 * jnp.tanh(x_t)  # any mean
  path = get_path('ddpm_cosine', num_timesteps=T)
  key = jax.random.key(5)

  def apply(params, x_t, t, cond, **kw):
    del cond, kw
    a, s = path.alpha(t)[:, None], path.sigma(t)[:, None]
    eps = (x_t - a * x0_fn(x_t)) / s
    return jnp.concatenate([eps, jnp.full_like(x_t, params['v'])], -1)

  task = get_task(c, apply=apply)
  sample = jax.jit(lambda params: task.sample(params, None, {}, key, n=6))
  out = {v: sample({'v': jnp.float32(v)}).reshape(6, -1) for v in (1., -1.)}
  # The training loss sees the same 2C network and reports L_vlb.
  _, metrics, _ = task.loss({'v': 0.0}, None, task.init_state(key), {
      'image': jnp.zeros((6, 2, 2, 1), jnp.uint8)}, key)
  assert metrics['vlb'].shape == (6,)
  ts = samplers.make_grid('uniform', 4, path=path)
  den = lambda x_t, t, cond: (
      x_t - path.alpha(t)[:, None] * x0_fn(x_t)) / path.sigma(t)[:, None]
  for v, variance in ((1.0, 'beta'), (-1.0, 'posterior')):
    want = samplers.sample('ddpm', den, key=key, shape=(6, 4), path=path,
                           prediction='eps', ts=ts, variance=variance)
    np.testing.assert_allclose(out[v], want, rtol=1e-5, atol=1e-6)
  assert not np.allclose(out[1.0], out[-1.0])


def test_optimal_variance_beats_fixed_at_few_steps_on_the_mixture():
  gmm = make_mixture(jax.random.key(3), dim=8, num_components=4, scale=2.0,
                     std=0.3, full_cov=True)
  path = get_path('ddpm_linear')
  n = 1000
  draw = jax.jit(lambda key: gmm.sample(key, 10_000)[0])
  x0, ref = draw(jax.random.key(0))[:64], draw(jax.random.key(100))

  @jax.jit
  def moments(x0):
    t = jnp.full((64,), 0.3)
    x_t = path.sample_xt(x0=x0, eps=jax.random.normal(jax.random.key(1),
                                                      x0.shape), t=t)
    return (*lv_exp.posterior_x0_moments(gmm, x_t, 0.3, path=path),
            gmm.posterior(x_t, t, path=path)[0])

  mean, var, x0_hat = moments(x0)
  np.testing.assert_allclose(mean, x0_hat, atol=1e-4)
  assert float(jnp.min(var)) >= 0
  den = gmm.denoiser(path=path, kind='eps')
  optimal = lv_exp.optimal_variance(gmm, path=path)

  @jax.jit
  def sample(w):
    """One compiled sampler for the three variances: w selects beta,
    beta_tilde or the optimal variance (a traced choice, no recompile)."""
    def variance(x_t, t, s):
      beta, beta_tilde = lv_lib.step_variances(path=path, t=t, s=s)
      return w[0] * beta + w[1] * beta_tilde + w[2] * optimal(x_t, t, s)
    return lv_exp.ancestral(den, path=path, prediction='eps', nfe=10,
                            variance=variance, key=jax.random.key(7),
                            shape=(n, 8))

  err = {name: float(sliced_wasserstein(sample(jnp.eye(3)[j]), ref))
         for j, name in enumerate(('beta', 'beta_tilde', 'optimal'))}
  # Measured: beta 0.18, beta_tilde 0.24, optimal 0.11 (floor ~0.04; with
  # n = 4000, 0.16 / 0.22 / 0.10, see experiments.learned_variance).
  assert err['optimal'] < 0.8 * min(err['beta'], err['beta_tilde']), err
