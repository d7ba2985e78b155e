"""EDM's stochastic sampler against a numpy transcription of EDM's own.

The reference is `edm_sampler` of Karras et al.'s generate.py (Algorithm 2)
written out in float64 numpy with the exact posterior mean of a 2-D Gaussian
mixture as the network and the same churn noise z_i as visgen's sampler
(`normal(fold_in(key, i))`). Two properties of EDM that a golden trajectory
pins down: gamma = min(S_churn / N, sqrt(2) - 1) with N the number of noise
levels (EDM's `num_steps`, counting the final step to sigma = 0), and the
churn is applied before that final step too.
"""

import jax
import jax.numpy as jnp
import numpy as np

from visgen import samplers
from visgen.groundtruth import make_mixture
from visgen.interpolants import get_path
from visgen.samplers.denoiser import make_view

GMM = make_mixture(jax.random.PRNGKey(0), dim=2, num_components=4)


def _posterior_mean(x, sigma):
  """E[x0 | x0 + sigma eps = x] of the mixture, float64 numpy."""
  w = np.asarray(GMM.weights, np.float64)
  mu = np.asarray(GMM.means, np.float64)
  cov = np.asarray(GMM.covs, np.float64)
  c = cov + sigma**2 * np.eye(mu.shape[1])
  diff = x[:, None, :] - mu[None]  # (n, K, D)
  sol = np.linalg.solve(c[None], diff[..., None])[..., 0]
  logdet = np.linalg.slogdet(c)[1]
  logn = -0.5 * (np.sum(diff * sol, -1) + logdet) + np.log(w)
  r = np.exp(logn - logn.max(-1, keepdims=True))
  r /= r.sum(-1, keepdims=True)
  x0_k = mu[None] + np.einsum('kde,nke->nkd', cov, sol)
  return np.einsum('nk,nkd->nd', r, x0_k)


def _edm_reference(x, sigmas, noises, *, s_churn, s_min, s_max, s_noise):
  """EDM's edm_sampler, line by line (t there is sigma here)."""
  num_steps = len(sigmas)
  t_steps = np.concatenate([sigmas, [0.0]])
  x_next = x
  for i, (t_cur, t_next) in enumerate(zip(t_steps[:-1], t_steps[1:])):
    x_cur = x_next
    gamma = (min(s_churn / num_steps, np.sqrt(2) - 1)
             if s_min <= t_cur <= s_max else 0)
    t_hat = t_cur + gamma * t_cur
    x_hat = x_cur + np.sqrt(t_hat**2 - t_cur**2) * s_noise * noises[i]
    denoised = _posterior_mean(x_hat, t_hat)
    d_cur = (x_hat - denoised) / t_hat
    x_next = x_hat + (t_next - t_hat) * d_cur
    if i < num_steps - 1:
      denoised = _posterior_mean(x_next, t_next)
      d_prime = (x_next - denoised) / t_next
      x_next = x_hat + (t_next - t_hat) * (0.5 * d_cur + 0.5 * d_prime)
  return x_next


def test_edm_churn_matches_edm_reference_trajectory():
  path = get_path('edm')
  rho, lo, hi = path.rho, path.sigma_min ** (1 / path.rho), path.sigma_max ** (
      1 / path.rho)
  # EDM's schedule with sigma_min = 0.2 (N = 8 levels) so that the churn
  # before the final step is visible at float32 precision.
  num_levels = 8
  u = np.arange(num_levels) / (num_levels - 1)
  sigmas = (80.0 ** (1 / rho) + u * (0.2 ** (1 / rho) - 80.0 ** (1 / rho))
            ) ** rho
  ts = jnp.asarray((sigmas ** (1 / rho) - lo) / (hi - lo), jnp.float32)
  sigmas = np.asarray(path.sigma(ts), np.float64)  # the float32 grid's
  n = 64
  x_init = np.asarray(jax.random.normal(jax.random.PRNGKey(1), (n, 2)),
                      np.float64) * sigmas[0]
  key = jax.random.PRNGKey(2)
  noises = [np.asarray(jax.random.normal(jax.random.fold_in(key, i), (n, 2)),
                       np.float64) for i in range(num_levels)]
  view = make_view(GMM.denoiser(path=path, kind='x0'), path=path,
                   prediction='x0')
  spec = samplers.get_sampler('edm')
  # S_churn = 2: gamma = 2/8 (EDM), not 2/7; [S_min, S_max] leaves out the
  # first two levels; S_churn = 40 hits the sqrt(2) - 1 clip.
  cases = (dict(S_churn=2.0, S_min=0.1, S_max=20.0, S_noise=1.007),
           dict(S_churn=40.0, S_min=0.0, S_max=float('inf'), S_noise=1.0))
  run = jax.jit(lambda x, ts: [spec.fn(view, x, ts, key, denoise_final=True,
                                       **c) for c in cases])
  for c, (x, info) in zip(cases, run(jnp.asarray(x_init, jnp.float32), ts)):
    ref = _edm_reference(x_init, sigmas, noises, s_churn=c['S_churn'],
                         s_min=c['S_min'], s_max=c['S_max'],
                         s_noise=c['S_noise'])
    assert int(info['nfe']) == 2 * num_levels - 1  # EDM's NFE
    # float32 round-off reaches 4e-3 on the few samples near a decision
    # boundary between components; either defect (S_churn / (N - 1), or no
    # churn before the final step) moves the samples by 0.1 on average and
    # most of them by more than 5e-3.
    err = np.abs(np.asarray(x, np.float64) - ref)
    assert err.max() < 1e-2 and err.mean() < 2e-4, (c, err.max(),
                                                     err.mean())


def test_edm_without_churn_is_deterministic_and_counts_nfe():
  path = get_path('edm')
  fn = GMM.denoiser(path=path, kind='x0')
  ts = samplers.make_grid('karras', 6, path=path)
  x_init = 80.0 * jax.random.normal(jax.random.PRNGKey(1), (16, 2))

  @jax.jit
  def run(key):
    kw = dict(path=path, prediction='x0', ts=ts, x_init=x_init,
              return_info=True)
    return (samplers.sample('edm', fn, key=key, denoise_final=True, **kw),
            samplers.sample('edm', fn, key=key, **kw))

  (x_f, info_f), (x, info) = run(jax.random.PRNGKey(0))
  (_, _), (x_other_key, _) = run(jax.random.PRNGKey(1))
  assert int(info_f['nfe']) == 13 and int(info['nfe']) == 12
  np.testing.assert_array_equal(x, x_other_key)  # S_churn = 0: no noise
  x0 = GMM.predict(x, jnp.full((16,), ts[-1]), path=path, kind='x0')
  np.testing.assert_allclose(x_f, x0, atol=1e-5)
