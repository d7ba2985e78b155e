"""Regression: Heun with the exact 8-D mixture denoiser hung at large batch.

Root cause (jax 0.10.2, 2 cores): the mixture's closed form factorised
C_k(t) = alpha^2 S_k + sigma^2 I with a batched Cholesky per call (n K
matrices). jaxlib's LAPACK kernels split a large batch over XLA's intra-op
thread pool and block the calling pool thread until the pieces finish. In a
Heun step the two factorisations (at t and t + h) depend only on t, so XLA
runs them concurrently; with a 2-thread pool both threads then wait for work
that no free thread can run: a deadlock at 0% CPU (one core: the kernel runs
inline; Euler: one factorisation at a time). The mixture now diagonalises
each S_k once (numpy) and its per-call marginal is matmuls only.
"""

import math
import os
import re
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np

from visgen import samplers
from visgen.groundtruth import make_mixture
from visgen.interpolants import get_path

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_mixture_sampling_program_has_no_lapack_custom_calls():
  """Deterministic form of the regression: before the fix the compiled Heun
  loop held two LAPACK potrf calls per step (and the deadlock was a race)."""
  gmm = make_mixture(jax.random.PRNGKey(0), dim=8, num_components=4)
  path = get_path('ddpm_linear')
  fn = gmm.denoiser(path=path, kind='eps')
  run = jax.jit(lambda ts, x: samplers.sample(
      'heun', fn, path=path, prediction='eps', ts=ts, x_init=x))
  ts = samplers.make_grid('uniform', 10, path=path)
  text = run.lower(ts, jnp.zeros((4096, 8))).compile().as_text()
  targets = set(re.findall(r'custom_call_target="([^"]+)"', text))
  assert not {t for t in targets if 'lapack' in t}, targets


def test_mixture_marginal_matches_float64_closed_form():
  gmm = make_mixture(jax.random.PRNGKey(3), dim=8, num_components=4)
  path = get_path('ddpm_linear')
  x = 2.0 * jax.random.normal(jax.random.PRNGKey(1), (32, 8))
  t = jnp.linspace(0.01, 0.99, 32)
  logp = gmm.log_prob_t(x, t, path=path)
  x0, score, _ = gmm.posterior(x, t, path=path)
  w, mu, cov = (np.asarray(a, np.float64) for a in (gmm.weights, gmm.means,
                                                    gmm.covs))
  a = np.asarray(path.alpha(t), np.float64)[:, None, None, None]
  s = np.asarray(path.sigma(t), np.float64)[:, None, None, None]
  c = a**2 * cov[None] + s**2 * np.eye(8)  # (n, K, D, D)
  diff = np.asarray(x, np.float64)[:, None] - a[..., 0] * mu[None]
  sol = np.linalg.solve(c, diff[..., None])[..., 0]
  logn = -0.5 * (np.sum(diff * sol, -1) + np.linalg.slogdet(c)[1]
                 + 8 * math.log(2 * math.pi)) + np.log(w)
  ref_logp = np.logaddexp.reduce(logn, -1)
  r = np.exp(logn - ref_logp[:, None])
  ref_score = -np.einsum('nk,nkd->nd', r, sol)
  ref_x0 = np.einsum('nk,nkd->nd', r, mu[None] + a[..., 0] * np.einsum(
      'kde,nke->nkd', cov, sol))
  np.testing.assert_allclose(logp, ref_logp, rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(score, ref_score, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(x0, ref_x0, rtol=1e-4, atol=1e-4)


def test_heun_at_large_batch_returns_within_timeout():
  """The issue's exact case in a subprocess with a hard timeout, so a
  regression fails the test instead of hanging the suite."""
  script = textwrap.dedent('''
      import jax, jax.numpy as jnp
      from visgen import samplers
      from visgen.groundtruth import make_mixture
      from visgen.interpolants import get_path
      gmm = make_mixture(jax.random.PRNGKey(0), dim=8, num_components=4)
      path = get_path('ddpm_linear')
      fn = gmm.denoiser(path=path, kind='eps')
      ts = samplers.make_grid('uniform', 10, path=path)
      for name in ('heun', 'euler'):
        x = samplers.sample(name, fn, path=path, prediction='eps', ts=ts,
                            key=jax.random.PRNGKey(0), shape=(4096, 8))
        assert bool(jnp.all(jnp.isfinite(x))), name
      print('ok')
  ''')
  env = dict(os.environ, PYTHONPATH=_ROOT + os.pathsep + os.environ.get(
      'PYTHONPATH', ''))
  try:
    out = subprocess.run([sys.executable, '-c', script], env=env, cwd=_ROOT,
                         capture_output=True, text=True, timeout=180)
  except subprocess.TimeoutExpired as e:
    raise AssertionError('Heun with the exact mixture at batch 4096 did not '
                         'return within 180 s (the LAPACK thread-pool '
                         'deadlock is back?)') from e
  assert out.returncode == 0 and out.stdout.strip().endswith('ok'), (
      out.stdout[-2000:] + out.stderr[-2000:])
