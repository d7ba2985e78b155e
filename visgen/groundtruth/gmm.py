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
  def _marginal(self, z, alpha, sigma):
    """Per-component log N(z; alpha mu_k, C_k) (n, K) and C_k^{-1}(z - m_k)."""
    eye = jnp.eye(self.dim)
    cov = (alpha[:, None, None, None] ** 2 * self.covs[None]
           + sigma[:, None, None, None] ** 2 * eye)  # (n, K, D, D)
    diff = z[:, None, :] - alpha[:, None, None] * self.means[None]  # (n, K, D)
    chol = jnp.linalg.cholesky(cov)
    sol = jax.scipy.linalg.cho_solve((chol, True), diff[..., None])[..., 0]
    logdet = 2 * jnp.sum(jnp.log(jnp.diagonal(chol, axis1=-2, axis2=-1)), -1)
    logn = -0.5 * (jnp.sum(diff * sol, -1) + logdet
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
