"""Inception Score (ADM's split form) and Kernel Inception Distance.

Inception Score, as ADM's `compute_inception_score`: split the predictions
into consecutive chunks of `split_size` (5000); per chunk
  exp( mean_i sum_y p(y|x_i) (log p(y|x_i) - log mean_j p(y|x_j)) )
and report the mean over chunks. Here p is computed from logits with a
float64 log-softmax, so p = 0 never produces 0 * log 0 = nan.

KID (Bińkowski et al., 2018), as clean-fid/torch-fidelity compute it: the
unbiased MMD^2 with the cubic polynomial kernel k(x, y) = (x.y / d + 1)^3,
averaged over `num_subsets` random subsets of `subset_size` points drawn
without replacement from each set:
  MMD^2_u = sum_{i!=j} k(x_i,x_j)/(m(m-1)) + sum_{i!=j} k(y_i,y_j)/(m(m-1))
            - 2 sum_{i,j} k(x_i,y_j)/m^2.
"""

import numpy as np
import scipy.special


def inception_score(*, logits: np.ndarray, split_size: int = 5000) -> float:
  """ADM's Inception Score from (N, C) logits (mean over splits)."""
  logits = np.asarray(logits, np.float64)
  if logits.ndim != 2 or logits.shape[0] == 0:
    raise ValueError(f'logits must be (N > 0, C), got {logits.shape}.')
  scores = []
  for start in range(0, logits.shape[0], split_size):
    logp = scipy.special.log_softmax(logits[start : start + split_size], 1)
    p = np.exp(logp)
    log_pbar = np.log(np.mean(p, axis=0, keepdims=True))
    kl = np.mean(np.sum(p * (logp - log_pbar), axis=1))
    scores.append(np.exp(kl))
  return float(np.mean(scores))


def _poly_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
  return (x @ y.T / x.shape[1] + 1.0) ** 3


def mmd2_unbiased(*, x: np.ndarray, y: np.ndarray) -> float:
  """Unbiased MMD^2 with the cubic polynomial kernel, equal-size sets."""
  x = np.asarray(x, np.float64)
  y = np.asarray(y, np.float64)
  m = x.shape[0]
  if y.shape[0] != m or m < 2:
    raise ValueError(
        f'mmd2_unbiased needs two sets of equal size >= 2, got {x.shape[0]}'
        f' and {y.shape[0]}.'
    )
  kxx = _poly_kernel(x, x)
  kyy = _poly_kernel(y, y)
  kxy = _poly_kernel(x, y)
  within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (
      m * (m - 1)
  )
  return float(within - 2.0 * kxy.sum() / (m * m))


def kernel_inception_distance(
    *,
    features1: np.ndarray,
    features2: np.ndarray,
    num_subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
) -> float:
  """KID: mean unbiased MMD^2 over random subsets (clean-fid defaults)."""
  f1 = np.asarray(features1, np.float64)
  f2 = np.asarray(features2, np.float64)
  m = min(subset_size, f1.shape[0], f2.shape[0])
  rng = np.random.default_rng(seed)
  total = 0.0
  for _ in range(num_subsets):
    x = f1[rng.choice(f1.shape[0], m, replace=False)]
    y = f2[rng.choice(f2.shape[0], m, replace=False)]
    total += mmd2_unbiased(x=x, y=y)
  return total / num_subsets
