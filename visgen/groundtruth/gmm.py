"""Gaussian-mixture data with closed-form denoisers: visgen's ground truth.

If x0 ~ sum_k pi_k N(mu_k, S_k) and x_t = alpha x0 + sigma eps (+ gamma y), then
given y the shifted z = x_t - gamma y is again a mixture,
z ~ sum_k pi_k N(alpha mu_k, alpha^2 S_k + sigma^2 I), and

  E[x0 | x_t] = sum_k r_k(z) (mu_k + alpha S_k C_k^{-1} (z - alpha mu_k)),
  score(x_t)  = -sum_k r_k(z) C_k^{-1} (z - alpha mu_k),
  C_k = alpha^2 S_k + sigma^2 I,

with responsibilities r_k(z) proportional to pi_k N(z; alpha mu_k, C_k). Every
prediction kind follows from E[x0 | x_t] by `predictions.convert`. Components
may carry class labels, giving exact class-conditional denoisers (label ==
num_classes is the null label: the unconditional mixture).
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from visgen.interpolants import base
from visgen.objectives import predictions


@dataclasses.dataclass(frozen=True, eq=False)
class GaussianMixture:
  """weights (K,), means (K, D), covs (K, D, D), labels (K,) int or None."""

  weights: jax.Array
  means: jax.Array
  covs: jax.Array
  labels: jax.Array | None = None

  @property
  def dim(self):
    return self.means.shape[-1]

  @property
  def num_components(self):
    return self.means.shape[0]

  @property
  def num_classes(self):
    # np.asarray: the labels are concrete even when used inside jit.
    return 0 if self.labels is None else int(np.asarray(self.labels).max()) + 1

  # ---- data ----------------------------------------------------------------
  def sample(self, key, n, label=None):
    """Samples (x (n, D), component labels (n,) or None).

    With `label` (an int), samples from the components of that class.
    """
    k_c, k_z = jax.random.split(key)
    logits = self._log_weights(None if label is None else jnp.full((n,), label))
    logits = jnp.broadcast_to(logits, (n, self.num_components))
    comp = jax.random.categorical(k_c, logits, axis=-1)
    chol = jnp.linalg.cholesky(self.covs)
    z = jax.random.normal(k_z, (n, self.dim))
    x = self.means[comp] + jnp.einsum('nij,nj->ni', chol[comp], z)
    lab = None if self.labels is None else self.labels[comp]
    return x, lab

  def _log_weights(self, label_n):
    """Log mixture weights (n, K) restricted to each example's class."""
    log_w = jnp.log(self.weights)[None]
    if label_n is None or self.labels is None:
      return log_w
    label_n = jnp.asarray(label_n)
    keep = (self.labels[None, :] == label_n[:, None]) | (
        label_n[:, None] == self.num_classes)
    return jnp.where(keep, log_w, -jnp.inf)

  # ---- marginals at time t -------------------------------------------------
  def _eig(self):
    """Eigendecomposition S_k = U_k diag(l_k) U_k^T: (l (K, D), U (K, D, D)).

    Computed once in float64 numpy when the covariances are concrete, so the
    per-call marginal below is matmuls only. A batched LAPACK factorisation
    per call (the former per-example Cholesky of C_k) deadlocks jaxlib 0.10.2
    on small CPUs: its LAPACK kernels split large batches over XLA's intra-op
    pool and block waiting, and two such calls that XLA runs concurrently
    (Heun's two C_k(t) factorisations do not depend on x) take every pool
    thread. Traced covariances fall back to one (K, D, D) eigh per call.
    """
    cached = self.__dict__.get('_eig_cache')  # numpy: never a tracer
    if cached is None:
      try:
        covs = np.asarray(self.covs, np.float64)
      except jax.errors.TracerArrayConversionError:
        return jnp.linalg.eigh(self.covs)
      lam, vec = np.linalg.eigh(0.5 * (covs + np.swapaxes(covs, -1, -2)))
      cached = (lam.astype(np.float32), vec.astype(np.float32))
      object.__setattr__(self, '_eig_cache', cached)
    return jnp.asarray(cached[0]), jnp.asarray(cached[1])

  def _marginal(self, z, alpha, sigma):
    """Per-component log N(z; alpha mu_k, C_k) (n, K) and C_k^{-1}(z - m_k).

    C_k = U_k diag(alpha^2 l_k + sigma^2) U_k^T, so the solve and the
    log-determinant are closed form in the eigenbasis of S_k.
    """
    lam, vec = self._eig()
    diff = z[:, None, :] - alpha[:, None, None] * self.means[None]  # (n, K, D)
    var = (alpha[:, None, None] ** 2 * lam[None]
           + sigma[:, None, None] ** 2)  # (n, K, D) eigenvalues of C_k
    proj = jnp.einsum('kde,nkd->nke', vec, diff)  # U_k^T diff
    sol = jnp.einsum('kde,nke->nkd', vec, proj / var)
    logdet = jnp.sum(jnp.log(var), -1)
    logn = -0.5 * (jnp.sum(proj**2 / var, -1) + logdet
                   + self.dim * math.log(2 * math.pi))
    return logn, sol

  def log_prob_t(self, x_t, t, *, path, label=None, y=None):
    """Exact log p_t(x_t [| label, y]) of the marginal at time t, (n,)."""
    z, alpha, sigma = self._shift(x_t, t, path, y)
    logn, _ = self._marginal(z, alpha, sigma)
    log_w = self._log_weights(label)
    return jax.scipy.special.logsumexp(log_w + logn, axis=-1) - jnp.log(
        jnp.sum(jnp.exp(log_w), -1))

  def log_prob(self, x0, label=None):
    """Exact data log-density log p(x0), (n,)."""
    n = x0.shape[0]
    return self.log_prob_t(x0, jnp.zeros((n,)), path=_Identity(), label=label)

  def _shift(self, x_t, t, path, y):
    t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), x_t.shape[:1])
    alpha, sigma = path.alpha(t), path.sigma(t)
    z = x_t
    if path.is_bridge:
      z = x_t - base.bcast(path.gamma(t), x_t) * y
    return z, alpha, sigma

  def posterior(self, x_t, t, *, path, label=None, y=None):
    """Returns (E[x0 | x_t], score of p_t(x_t | label, y), responsibilities)."""
    z, alpha, sigma = self._shift(x_t, t, path, y)
    logn, sol = self._marginal(z, alpha, sigma)
    r = jax.nn.softmax(self._log_weights(label) + logn, axis=-1)  # (n, K)
    score = -jnp.einsum('nk,nkd->nd', r, sol)
    # mu_k + alpha S_k C_k^{-1}(z - alpha mu_k), averaged with r_k.
    x0_k = self.means[None] + alpha[:, None, None] * jnp.einsum(
        'kde,nke->nkd', self.covs, sol)
    return jnp.einsum('nk,nkd->nd', r, x0_k), score, r

  def predict(self, x_t, t, *, path, kind, label=None, y=None):
    """The exact (Bayes-optimal) prediction of `kind` at (x_t, t)."""
    x0_hat, score, _ = self.posterior(x_t, t, path=path, label=label, y=y)
    if kind == 'score':
      return score
    t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), x_t.shape[:1])
    # eps from the score is better conditioned than from x0 when sigma is
    # small; both are exact.
    eps_hat = -base.bcast(path.sigma(t), x_t) * score
    return predictions.target(kind, x0=x0_hat, eps=eps_hat, t=t, path=path, y=y)

  def denoiser(self, *, path, kind):
    """A network-like callable `(x_t, t, cond) -> prediction of kind`.

    `cond` may hold 'label' (class-conditional; the null label num_classes
    means unconditional) and 'y' (bridge source).
    """

    def fn(x_t, t, cond=None):
      cond = cond or {}
      return self.predict(x_t, t, path=path, kind=kind,
                          label=cond.get('label'), y=cond.get('y'))

    return fn


@dataclasses.dataclass(frozen=True)
class _Identity(base.Path):
  """alpha = 1, sigma = 0: evaluates the data density itself."""

  def alpha(self, t):
    return jnp.ones_like(t)

  def sigma(self, t):
    return jnp.zeros_like(t)


def make_mixture(key, *, dim=2, num_components=4, num_classes=None,
                 scale=2.0, std=0.3, full_cov=True) -> GaussianMixture:
  """A random test mixture: means ~ scale * N(0, I), covariances near std^2 I.

  With `num_classes`, component k gets label k % num_classes.
  """
  k_w, k_m, k_c = jax.random.split(key, 3)
  weights = jax.nn.softmax(0.5 * jax.random.normal(k_w, (num_components,)))
  means = scale * jax.random.normal(k_m, (num_components, dim))
  if full_cov:
    a = jax.random.normal(k_c, (num_components, dim, dim)) * (0.5 * std)
    covs = std**2 * jnp.eye(dim) + jnp.einsum('kij,klj->kil', a, a) / dim
  else:
    covs = jnp.broadcast_to(std**2 * jnp.eye(dim), (num_components, dim, dim))
  labels = None
  if num_classes:
    labels = jnp.arange(num_components) % num_classes
  return GaussianMixture(weights, means, covs, labels)
