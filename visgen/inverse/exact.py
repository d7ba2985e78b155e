"""Exact posteriors of Gaussian-mixture priors under linear-Gaussian
observations: the ground truth the inverse solvers are checked against.

Prior x ~ sum_k pi_k N(mu_k, S_k), observation y = H x + sigma_y n. For each
component the evidence is y ~ N(H mu_k, G_k), G_k = H S_k H^T + sigma_y^2 I,
and the component posterior is Gaussian (the Kalman update)

  K_k = S_k H^T G_k^{-1},  m_k = mu_k + K_k (y - H mu_k),  P_k = S_k - K_k H S_k,

so p(x | y) = sum_k w_k N(m_k, P_k) with w_k proportional to
pi_k N(y; H mu_k, G_k). Computed in float64 numpy outside jit (small D);
`sample` draws with a symmetric square root from `eigh` (P_k may be
singular: for sigma_y = 0 the observed directions are fixed).
"""

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class MixturePosterior:
  weights: np.ndarray  # (K,)
  means: np.ndarray  # (K, D)
  covs: np.ndarray  # (K, D, D)

  def mean(self) -> np.ndarray:
    return np.einsum('k,kd->d', self.weights, self.means)

  def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
    comp = rng.choice(len(self.weights), size=n, p=self.weights)
    lam, vec = np.linalg.eigh(self.covs)
    root = np.einsum('kij,kj->kij', vec, np.sqrt(np.maximum(lam, 0.0)))
    z = rng.standard_normal((n, self.means.shape[1]))
    return self.means[comp] + np.einsum('nij,nj->ni', root[comp], z)


def linear_gaussian_posterior(weights, means, covs, h, y, sigma_y
                              ) -> MixturePosterior:
  """p(x | y) of the mixture (weights (K,), means (K, D), covs (K, D, D))
  for y (m,) = h (m, D) x + sigma_y n, in float64."""
  w, mu, cov = (np.asarray(a, np.float64) for a in (weights, means, covs))
  h, y = np.asarray(h, np.float64), np.asarray(y, np.float64).reshape(-1)
  m = h.shape[0]
  g = np.einsum('ij,kjl,ml->kim', h, cov, h) + sigma_y**2 * np.eye(m)
  sh = np.einsum('kij,mj->kim', cov, h)  # S_k H^T (K, D, m)
  gain = np.linalg.solve(g, np.swapaxes(sh, 1, 2))  # G^{-1} H S (K, m, D)
  gain = np.swapaxes(gain, 1, 2)  # K_k = S H^T G^{-1} (K, D, m)
  resid = y[None] - mu @ h.T  # (K, m)
  post_mu = mu + np.einsum('kdm,km->kd', gain, resid)
  post_cov = cov - np.einsum('kdm,kme->kde', gain, np.swapaxes(sh, 1, 2))
  post_cov = 0.5 * (post_cov + np.swapaxes(post_cov, 1, 2))
  sol = np.linalg.solve(g, resid[..., None])[..., 0]
  logdet = np.linalg.slogdet(g)[1]
  logev = -0.5 * (np.sum(resid * sol, -1) + logdet + m * np.log(2 * np.pi))
  logits = np.log(w) + logev
  post_w = np.exp(logits - logits.max())
  return MixturePosterior(post_w / post_w.sum(), post_mu, post_cov)
