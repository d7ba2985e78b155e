"""Exact checks of the ADM-style metrics (numpy only, no compiles)."""

import numpy as np
import pytest
import scipy.linalg

from visgen.evaluators import frechet
from visgen.evaluators import manifold
from visgen.evaluators import scores


def test_fid_of_set_against_itself_is_zero():
  x = np.random.default_rng(0).normal(size=(500, 16))
  s = frechet.GaussianStats.from_features(x)
  assert abs(frechet.frechet_distance_stats(s, s)) < 1e-6


def test_fid_matches_closed_form_between_gaussians():
  rng = np.random.default_rng(1)
  d = 6
  a = rng.normal(size=(d, d))
  b = rng.normal(size=(d, d))
  s1, s2 = a @ a.T + np.eye(d), b @ b.T + 0.5 * np.eye(d)
  mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
  # Closed form via the symmetric root: tr sqrt(S1 S2) =
  # tr sqrt(S1^1/2 S2 S1^1/2).
  r1 = scipy.linalg.sqrtm(s1).real
  mid = scipy.linalg.eigvalsh(r1 @ s2 @ r1)
  expected = (np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2)
              - 2 * np.sum(np.sqrt(mid)))
  got = frechet.frechet_distance(mu1=mu1, sigma1=s1, mu2=mu2, sigma2=s2)
  assert got == pytest.approx(expected, rel=1e-10)
  # Diagonal case by hand: sum (sqrt(a) - sqrt(b))^2 + |dmu|^2.
  got = frechet.frechet_distance(
      mu1=np.zeros(2), sigma1=np.diag([4.0, 9.0]),
      mu2=np.array([1.0, 0.0]), sigma2=np.diag([1.0, 1.0]))
  assert got == pytest.approx(1 + 1 + 4, rel=1e-12)


def test_fid_from_large_samples_approaches_closed_form():
  rng = np.random.default_rng(2)
  x = rng.normal(0.0, 1.0, size=(200_000, 2))
  y = rng.normal(0.0, 2.0, size=(200_000, 2)) + np.array([3.0, 0.0])
  got = frechet.frechet_distance_stats(
      frechet.GaussianStats.from_features(x),
      frechet.GaussianStats.from_features(y))
  assert got == pytest.approx(9 + 2 * (2 - 1) ** 2, abs=0.05)


def test_streaming_stats_equal_numpy():
  rng = np.random.default_rng(3)
  x = rng.normal(size=(1000, 8)) * 3 + 1e4  # large offset: no cancellation
  acc = frechet.FeatureStats()
  for s in range(0, 1000, 64):
    acc.update(x[s : s + 64])
  st = acc.stats()
  np.testing.assert_allclose(st.mu, x.mean(0), rtol=1e-14)
  np.testing.assert_allclose(st.sigma, np.cov(x, rowvar=False), rtol=1e-9,
                             atol=1e-9)


def test_fid_singular_covariance_uses_eps_fallback():
  # Rank-deficient covariances: sqrtm may be non-finite; must stay finite.
  x = np.random.default_rng(4).normal(size=(3, 10))
  s = frechet.GaussianStats.from_features(x)
  d = frechet.frechet_distance_stats(s, s)
  assert np.isfinite(d) and abs(d) < 1e-3


def test_precision_recall_identical_and_disjoint():
  x = np.random.default_rng(5).normal(size=(200, 5))
  assert manifold.precision_recall(ref_features=x, sample_features=x) == (
      1.0, 1.0)
  far = x + 1000.0
  assert manifold.precision_recall(ref_features=x, sample_features=far) == (
      0.0, 0.0)


def test_precision_recall_known_values():
  # References: 10 points at 0..9 on a line, k=3 radius^2 = 2^2 = 4 (ends: 9).
  ref = np.arange(10.0)[:, None]
  radii = manifold.manifold_radii(ref, k=3)
  np.testing.assert_allclose(radii, [9, 4, 4, 4, 4, 4, 4, 4, 4, 9])
  # Samples: 4 copies of points 0..4 region (inside) and 6 far (outside).
  sam = np.concatenate([np.array([0.5, 1.5, 2.5, 3.5]),
                        100.0 + np.arange(6.0)])[:, None]
  p, r = manifold.precision_recall(ref_features=ref, sample_features=sam)
  assert p == pytest.approx(4 / 10)
  # Sample radii: inner 4 points 0.5..3.5 have k=3 radius^2 = 3^2 = 9
  # (point 3.5: neighbours 2.5, 1.5, 0.5 -> 9); they cover refs within 3 of
  # some inner sample: 0..6 -> 7 refs. Far ones cover nothing near.
  assert r == pytest.approx(7 / 10)


def test_inception_score_bounds():
  n, c = 1000, 10
  assert scores.inception_score(logits=np.zeros((n, c))) == pytest.approx(1.0)
  one_hot = 50.0 * np.eye(c)[np.arange(n) % c]
  assert scores.inception_score(logits=one_hot) == pytest.approx(c, rel=1e-6)
  # Splits: two halves scored separately, then averaged (ADM).
  mixed = np.concatenate([one_hot[:500], np.zeros((500, c))])
  assert scores.inception_score(logits=mixed, split_size=500) == (
      pytest.approx((c + 1) / 2, rel=1e-6))


def test_kid_hand_computed_and_identical():
  x = np.array([[1.0, 0.0], [0.0, 1.0]])
  y = np.array([[1.0, 1.0], [0.0, 0.0]])
  k = lambda a, b: (np.dot(a, b) / 2 + 1) ** 3
  expected = (2 * k(x[0], x[1]) / 2 + 2 * k(y[0], y[1]) / 2
              - 2 * sum(k(a, b) for a in x for b in y) / 4)
  assert scores.mmd2_unbiased(x=x, y=y) == pytest.approx(expected)
  assert scores.kernel_inception_distance(
      features1=x, features2=y, num_subsets=3) == pytest.approx(expected)
  rng = np.random.default_rng(6)
  a, b = rng.normal(size=(2000, 8)), rng.normal(size=(2000, 8))
  kid = scores.kernel_inception_distance(
      features1=a, features2=b, num_subsets=20, subset_size=500)
  assert abs(kid) < 2e-3
  far = scores.kernel_inception_distance(
      features1=a, features2=b + 1.0, num_subsets=5, subset_size=500)
  assert far > 0.1


def test_precision_recall_blocking_is_exact():
  rng = np.random.default_rng(7)
  ref, sam = rng.normal(size=(50, 3)), rng.normal(size=(40, 3)) + 0.5
  whole = manifold.precision_recall(ref_features=ref, sample_features=sam)
  blocked = manifold.precision_recall(ref_features=ref, sample_features=sam,
                                      block=16)
  assert whole == blocked
  # Radii are ADM's: 4th smallest squared distance per row, self included.
  d = ((ref[:, None] - ref[None]) ** 2).sum(-1)
  np.testing.assert_allclose(manifold.manifold_radii(ref, block=16),
                             np.sort(d, 1)[:, 3], rtol=1e-5)
