"""Diffusion classifiers: p(y | x) from a class-conditional denoiser.

Bayes' rule with the diffusion ELBO as log p(x | y) (Li et al. 2023, "Your
diffusion model is secretly a zero-shot classifier"; Clark & Jaini 2023):

  log p(y | x) = log p(y) - D (t_max - t_min) E_{t, eps}[ w(t) mse_y(t, eps) ]
                 + const(x),

where mse_y is the per-dimension error of the denoiser conditioned on y,
w is the 'likelihood' weighting (-lambda'(t) / 2 on the eps error), and the
expectation is estimated with the *same* (t, eps) draws for every class, so
the class-independent noise cancels in the comparison. With this weighting the
expectation is the negative diffusion ELBO, which is tight for the exact
score: with an exact class-conditional denoiser the classifier converges to
the Bayes-optimal one as the number of draws grows.

The adaptive schedule evaluates `n_i` more draws at stage i and keeps the
`keep_i` best classes, so most of the budget goes to the plausible classes
(Li et al.'s eval_prob_adaptive, n = (50, 500), keep = (5, 1) by default).

Time draws are stratified in log-SNR: t = t(lambda) with lambda uniform on
[lambda(t_max), lambda(t_min)]. Then dt = d lambda / |lambda'| and the
integrand -lambda'/2 mse becomes mse / 2, which has far lower variance than
uniform t near t = 0.
"""

import dataclasses
import math
from typing import Callable
from typing import Sequence

import jax
import jax.numpy as jnp

from visgen.interpolants import base
from visgen.objectives import predictions


def label_cond(labels):
  """The conditioning of class `labels` for a class-label denoiser (the
  exact mixtures of `visgen.groundtruth`); a task passes its own
  (`GenerationTask.diffusion_classifier`)."""
  return {'label': labels}


@dataclasses.dataclass(frozen=True)
class DiffusionClassifier:
  """Scores classes of x by the class-conditional denoising error.

  Attributes:
    denoise_fn: `(x_t, t_B, cond) -> prediction of kind `prediction``, with
      cond = cond_fn(labels (B,) int).
    path: the path the denoiser was trained on.
    prediction: the denoiser's prediction kind.
    num_classes: number of classes.
    t_min, t_max: the integration range (default: the path's).
    log_prior: optional log p(y), (num_classes,).
    cond_fn: class labels (int array) -> the denoiser's `cond`.
  """

  denoise_fn: Callable
  path: base.Path
  prediction: str
  num_classes: int
  t_min: float | None = None
  t_max: float | None = None
  log_prior: jax.Array | None = None
  cond_fn: Callable = label_cond

  def _range(self):
    lo = self.path.t_min if self.t_min is None else self.t_min
    hi = self.path.t_max if self.t_max is None else self.t_max
    # Keep log-SNR finite at both ends (alpha(1) = 0 for flows, sigma(0) = 0).
    return max(lo, 1e-4), min(hi, 1.0 - 1e-4)

  def draws(self, key, n, shape):
    """n shared (t, eps) draws: t stratified uniformly in log-SNR."""
    lo, hi = self._range()
    lam_hi = self.path.logsnr(jnp.float32(lo))
    lam_lo = self.path.logsnr(jnp.float32(hi))
    k_u, k_e = jax.random.split(key)
    u = jnp.mod(jax.random.uniform(k_u, ()) + jnp.arange(n) / n, 1.0)
    lam = lam_lo + u * (lam_hi - lam_lo)
    t = self.path.t_from_logsnr(lam)
    eps = jax.random.normal(k_e, (n,) + tuple(shape))
    return t, eps, lam_hi - lam_lo

  def errors(self, x_B, labels_BxK, t_N, eps_N):
    """Per-draw eps-space errors, summed over dimensions: (B, K, N)."""
    b, k = labels_BxK.shape
    n = t_N.shape[0]
    x = jnp.broadcast_to(x_B[:, None, None], (b, k, n) + x_B.shape[1:])
    eps = jnp.broadcast_to(eps_N[None, None], x.shape)
    t = jnp.broadcast_to(t_N[None, None], (b, k, n))
    lab = jnp.broadcast_to(labels_BxK[:, :, None], (b, k, n))
    flat = lambda a: a.reshape((b * k * n,) + a.shape[3:])
    x0, eps, t, lab = flat(x), flat(eps), flat(t), flat(lab)
    x_t = self.path.sample_xt(x0=x0, eps=eps, t=t)
    pred = self.denoise_fn(x_t, t, self.cond_fn(lab))
    _, eps_hat = predictions.to_x0_eps(pred, kind=self.prediction, x_t=x_t,
                                       t=t, path=self.path)
    err = jnp.sum(((eps_hat - eps) ** 2).reshape(b * k * n, -1), -1)
    return err.reshape(b, k, n)

  def logits(self, x_B, key, *, num_draws: int = 64, chunk: int | None = None):
    """Non-adaptive estimate of log p(y | x) + const for all classes.

    Returns (B, num_classes): log p(y) - 1/2 int mse_y d lambda.
    """
    t, eps, span = self.draws(key, num_draws, x_B.shape[1:])
    labels = jnp.broadcast_to(jnp.arange(self.num_classes), (x_B.shape[0],
                                                             self.num_classes))
    chunk = chunk or num_draws
    errs = [self.errors(x_B, labels, t[i:i + chunk], eps[i:i + chunk])
            for i in range(0, num_draws, chunk)]
    err = jnp.concatenate(errs, -1)
    logits = -0.5 * span * jnp.mean(err, -1)
    if self.log_prior is not None:
      logits = logits + self.log_prior[None]
    return logits

  def classify_adaptive(self, x_B, key, *, stages: Sequence[tuple[int, int]] =
                        ((50, 5), (500, 1))):
    """Li et al.'s adaptive schedule.

    Args:
      x_B: the inputs.
      key: PRNG key; the same draws are shared by all classes of an input.
      stages: (n_i, keep_i): evaluate n_i more draws for the surviving
        classes, then keep the keep_i with the smallest mean error.

    Returns:
      (predicted labels (B,), number of denoiser evaluations per input).
    """
    b = x_B.shape[0]
    cand = jnp.broadcast_to(jnp.arange(self.num_classes), (b, self.num_classes))
    sums = jnp.zeros((b, self.num_classes))
    total_n, nfe = 0, 0
    keys = jax.random.split(key, len(stages))
    for (n, keep), k in zip(stages, keys):
      t, eps, span = self.draws(k, n, x_B.shape[1:])
      err = self.errors(x_B, cand, t, eps)  # (B, K, n)
      sums = sums + jnp.sum(err, -1)
      total_n += n
      nfe += n * cand.shape[1]
      score = -0.5 * span * sums / total_n
      if self.log_prior is not None:
        score = score + self.log_prior[cand]
      keep = min(keep, cand.shape[1])
      _, idx = jax.lax.top_k(score, keep)
      cand = jnp.take_along_axis(cand, idx, 1)
      sums = jnp.take_along_axis(sums, idx, 1)
    return cand[:, 0], nfe


def bayes_accuracy_sampling_error(accuracy: float, n: int) -> float:
  """Binomial standard error of an accuracy measured on n examples."""
  return math.sqrt(max(accuracy * (1 - accuracy), 1e-12) / n)
