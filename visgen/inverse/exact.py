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


def ddrm_gaussian_law(mean, cov, operator, y, *, sigmas, sigma_y, eta=0.85,
                      eta_b=1.0):
  """The exact law N(m, C) of DDRM's output for a Gaussian prior.

  For x0 ~ N(mean, cov) the exact denoiser is affine (in the scaling
  x / alpha, xbar = V^T x: x0bar = mub + Sb (Sb + sigma~^2 I)^{-1} (xbar -
  mub), Sb = V^T cov V), so every DDRM step (Kawar et al. eq. 7-8, the cases
  of `visgen.inverse.ddrm`) maps xbar affinely plus independent Gaussian
  noise, and the output is Gaussian; its mean and covariance are propagated
  here step by step in float64. `sigmas` are the grid's noise levels
  sigma(t) / alpha(t) (decreasing; the last step goes to 0), `y` (m,) one
  measurement. This is DDRM's own output distribution, not the posterior
  (DDRM is an approximate sampler: compare with `linear_gaussian_posterior`).
  Returns (m (D,), C (D, D)) in the image layout, flattened.
  """
  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp
  from visgen.inverse import operators as ops_lib
  mu = np.asarray(mean, np.float64).reshape(-1)
  cov = np.asarray(cov, np.float64)
  d = mu.size
  v = ops_lib.dense(operator, 'V').astype(np.float64)  # columns: V's
  s = np.asarray(operator.singulars, np.float64)
  supp = np.asarray(operator.support) & (s > 0)
  s_safe = np.where(supp, s, 1.0)
  yb = jnp.asarray(np.asarray(y, np.float32).reshape((1,) +
                                                     tuple(operator.y_shape)))
  uty = np.asarray(operator.Ut(yb), np.float64)[0]
  ybar = np.where(supp, uty / s_safe, 0.0)
  mub, sb = v.T @ mu, v.T @ cov @ v
  sigmas = np.asarray(sigmas, np.float64).reshape(-1)
  nxt = np.append(sigmas[1:], 0.0)
  # q(x_T | y): ybar + sqrt(sigma~_T^2 - sigma_y^2 / s^2) z where
  # s sigma~_T > sigma_y, sigma~_T z elsewhere.
  noisier = supp & (s * sigmas[0] > sigma_y)
  m = np.where(noisier, ybar, 0.0)
  c = np.diag(np.where(noisier, np.maximum(
      sigmas[0]**2 - sigma_y**2 / s_safe**2, 0.0), sigmas[0]**2))
  k = np.sqrt(max(1.0 - eta**2, 0.0))
  eye = np.eye(d)
  for sig, sn in zip(sigmas, nxt):
    a = sb @ np.linalg.inv(sb + sig**2 * eye)  # x0bar = a xbar + (I - a) mub
    b0 = (eye - a) @ mub
    before = supp & (s * sn >= sigma_y)  # eq. 7's sigma_t >= sigma_y / s
    after = supp & (s * sn < sigma_y)
    # Missing: x0 + k sn (x - x0) / sig + eta sn z.
    p = a + (k * sn / sig) * (eye - a)
    q = b0 - (k * sn / sig) * b0
    g = np.full(d, eta * sn)
    # Less noisy than y: x0 + k sn (s ybar - s x0) / sigma_y + eta sn z.
    f = 1.0 - k * sn * s / (sigma_y if sigma_y > 0 else 1.0)
    p = np.where(after[:, None], f[:, None] * a, p)
    q = np.where(after, f * b0 + k * sn * uty / (sigma_y if sigma_y > 0
                                                 else 1.0), q)
    # Noisier than y: (1 - eta_b) x0 + eta_b ybar + sqrt(sn^2 - eta_b^2
    # sigma_y^2 / s^2) z.
    p = np.where(before[:, None], (1.0 - eta_b) * a, p)
    q = np.where(before, (1.0 - eta_b) * b0 + eta_b * ybar, q)
    g = np.where(before, np.sqrt(np.maximum(
        sn**2 - eta_b**2 * sigma_y**2 / s_safe**2, 0.0)), g)
    m = p @ m + q
    c = p @ c @ p.T + np.diag(g**2)
  return v @ m, v @ c @ v.T
