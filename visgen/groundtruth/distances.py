"""Sample-based distances and convergence helpers for checks against ground
truth: sliced Wasserstein, RBF MMD^2, the exact probability-flow map of a
Gaussian, exact-marginal initial states and fitted convergence orders."""

import jax
import jax.numpy as jnp
import numpy as np


def sliced_wasserstein(x_NxD, ref_MxD, key=None, *, num_projections=64, p=1):
  """Sliced Wasserstein-p distance between samples x (N, D) and ref (M, D).

  Projects both sets on random unit directions; in 1-D the optimal coupling
  sorts, so each projection compares the N quantiles of x with the matching
  quantiles of ref (M >= N; M >> N gives a low-noise reference). Returns the
  mean over projections of W_p, as (mean |gap|^p)^(1/p) averaged in power p.

  A host-side metric (every caller reads it as a float): the projections
  and sorts run in float64 NumPy, whose sort is 10-20x faster on CPU than
  XLA's comparator sort (80000 x 64 points: 0.2 s against 2.5-5 s).
  """
  n, m = x_NxD.shape[0], ref_MxD.shape[0]
  if x_NxD.shape[1:] != ref_MxD.shape[1:] or m < n:
    raise ValueError(f'sliced_wasserstein needs ref with the same dimension '
                     f'and at least as many points: {x_NxD.shape} vs '
                     f'{ref_MxD.shape}.')
  key = jax.random.key(123) if key is None else key
  dirs = np.asarray(jax.random.normal(key, (x_NxD.shape[-1], num_projections)),
                    np.float64)
  dirs = dirs / np.linalg.norm(dirs, axis=0, keepdims=True)
  px = np.sort(np.asarray(x_NxD, np.float64) @ dirs, axis=0)
  pr = np.sort(np.asarray(ref_MxD, np.float64) @ dirs, axis=0)
  idx = ((np.arange(n) + 0.5) / n * m).astype(np.int64)
  return float(np.mean(np.abs(px - pr[idx]) ** p) ** (1.0 / p))


def mmd_rbf(x_NxD, y_MxD, *, bandwidth=1.0):
  """Biased MMD^2 with the Gaussian kernel exp(-|a - b|^2 / (2 h^2))."""
  def k(a, b):
    d2 = jnp.sum(a**2, -1)[:, None] + jnp.sum(b**2, -1)[None] - 2 * a @ b.T
    return jnp.exp(-jnp.maximum(d2, 0.0) / (2 * bandwidth**2))

  return (jnp.mean(k(x_NxD, x_NxD)) + jnp.mean(k(y_MxD, y_MxD))
          - 2 * jnp.mean(k(x_NxD, y_MxD)))


def gaussian_flow_map(x, *, path, mean, std, t_from, t_to):
  """Exact PF-ODE map of data N(mean, std^2 I) from t_from to t_to.

  Along the probability-flow ODE of a Gaussian the standardised position
  (x_t - alpha mean) / sqrt(alpha^2 std^2 + sigma^2) is constant.
  """
  a0, s0 = path.alpha(t_from), path.sigma(t_from)
  a1, s1 = path.alpha(t_to), path.sigma(t_to)
  z = (x - a0 * mean) / jnp.sqrt(a0**2 * std**2 + s0**2)
  return a1 * mean + z * jnp.sqrt(a1**2 * std**2 + s1**2)


def fit_order(nfe, error, floor=0.0):
  """Minus the slope of log(error) against log(nfe), on errors > floor
  (on the first two points if fewer than two are above the floor)."""
  nfe, error = np.asarray(nfe, float), np.asarray(error, float)
  keep = error > floor
  if keep.sum() < 2:
    keep = np.arange(len(error)) < 2
  return float(-np.polyfit(np.log(nfe[keep]), np.log(error[keep]), 1)[0])


def exact_marginal_sample(gmm, path, key, n, y=None):
  """x_{t_max} drawn from the exact marginal (isolates sampler error from
  the prior approximation N(gamma y, sigma(t_max)^2))."""
  k0, k1 = jax.random.split(key)
  x0, _ = gmm.sample(k0, n)
  eps = jax.random.normal(k1, x0.shape)
  return path.sample_xt(x0=x0, eps=eps, t=jnp.full((n,), path.t_max), y=y)
