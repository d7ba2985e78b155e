"""Fréchet distance and streaming feature statistics (FID, sFID).

The distance follows ADM's evaluator (openai/guided-diffusion,
evaluations/evaluator.py, `FIDStatistics.frechet_distance`) exactly:

  covmean = sqrtm(S1 @ S2)
  if covmean is not finite: covmean = sqrtm((S1 + eps I) @ (S2 + eps I))
  if covmean is complex: raise if any |imag| on its diagonal > 1e-3, else
    keep the real part
  FD = |mu1 - mu2|^2 + tr S1 + tr S2 - 2 tr covmean

with eps = 1e-6, in float64. Statistics are `mu = mean(x)` and the unbiased
covariance (N - 1), like `np.cov(x, rowvar=False)`.

`FeatureStats` accumulates the same statistics batch by batch (float64 sums
around a shift fixed by the first batch, which avoids the cancellation of the
naive sum-of-squares formula), so 50k samples never need to be held at once.
"""

import dataclasses
import warnings

import numpy as np
import scipy.linalg


@dataclasses.dataclass(frozen=True)
class GaussianStats:
  """Mean and covariance of a feature distribution (float64)."""

  mu: np.ndarray
  sigma: np.ndarray

  @classmethod
  def from_features(cls, features_NxD: np.ndarray) -> 'GaussianStats':
    x = np.asarray(features_NxD, np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
      raise ValueError(
          f'Need features of shape (N >= 2, D), got {x.shape}.'
      )
    return cls(mu=x.mean(0), sigma=np.cov(x, rowvar=False))


class FeatureStats:
  """Streaming mean/covariance of features, exact up to float64 rounding.

  Keeps n, sum(x - c) and sum((x - c)(x - c)^T) with c the mean of the first
  batch; memory is O(D^2) whatever the number of samples.
  """

  def __init__(self):
    self.n = 0
    self._shift = None
    self._sum = None
    self._sum_sq = None

  def update(self, features_BxD) -> None:
    x = np.asarray(features_BxD, np.float64)
    if x.ndim != 2:
      raise ValueError(f'Features must be (B, D), got shape {x.shape}.')
    if x.shape[0] == 0:
      return
    if self._shift is None:
      d = x.shape[1]
      self._shift = x.mean(0)
      self._sum = np.zeros(d)
      self._sum_sq = np.zeros((d, d))
    elif x.shape[1] != self._shift.shape[0]:
      raise ValueError(
          f'Feature dimension changed from {self._shift.shape[0]} to '
          f'{x.shape[1]}.'
      )
    xc = x - self._shift
    self.n += x.shape[0]
    self._sum += xc.sum(0)
    self._sum_sq += xc.T @ xc

  def stats(self) -> GaussianStats:
    if self.n < 2:
      raise ValueError(
          f'Need at least 2 feature vectors for a covariance, got {self.n}.'
      )
    mean_c = self._sum / self.n
    cov = (self._sum_sq - self.n * np.outer(mean_c, mean_c)) / (self.n - 1)
    # Symmetrise: the float64 sums are symmetric up to rounding only.
    cov = 0.5 * (cov + cov.T)
    return GaussianStats(mu=self._shift + mean_c, sigma=cov)


def frechet_distance(
    *,
    mu1: np.ndarray,
    sigma1: np.ndarray,
    mu2: np.ndarray,
    sigma2: np.ndarray,
    eps: float = 1e-6,
) -> float:
  """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2) as ADM does."""
  mu1 = np.atleast_1d(np.asarray(mu1, np.float64))
  mu2 = np.atleast_1d(np.asarray(mu2, np.float64))
  sigma1 = np.atleast_2d(np.asarray(sigma1, np.float64))
  sigma2 = np.atleast_2d(np.asarray(sigma2, np.float64))
  if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
    raise ValueError(
        'Statistics have different dimensions: mu '
        f'{mu1.shape} vs {mu2.shape}, sigma {sigma1.shape} vs {sigma2.shape}.'
        ' Were they computed with the same feature network?'
    )
  diff = mu1 - mu2
  covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
  if not np.isfinite(covmean).all():
    warnings.warn(
        'Fréchet distance: singular covariance product; adding '
        f'{eps} to the diagonal of both covariances (as ADM does).',
        stacklevel=2)
    offset = np.eye(sigma1.shape[0]) * eps
    covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
  if np.iscomplexobj(covmean):
    if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
      raise ValueError(
          'Fréchet distance: sqrtm has an imaginary component of '
          f'{np.max(np.abs(covmean.imag)):.3g}; the statistics are '
          'numerically unusable (too few samples for the dimension?).'
      )
    covmean = covmean.real
  return float(
      diff @ diff
      + np.trace(sigma1)
      + np.trace(sigma2)
      - 2.0 * np.trace(covmean)
  )


def frechet_distance_stats(a: GaussianStats, b: GaussianStats) -> float:
  """`frechet_distance` on two `GaussianStats`."""
  return frechet_distance(mu1=a.mu, sigma1=a.sigma, mu2=b.mu, sigma2=b.sigma)
