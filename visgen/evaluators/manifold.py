"""Improved precision and recall (Kynkäänniemi et al., 2019), as ADM computes it.

ADM's `ManifoldEstimator` (openai/guided-diffusion, evaluations/evaluator.py):
* pairwise *squared* Euclidean distances |u|^2 - 2 u.v + |v|^2, clipped at 0,
  in row/column blocks of 10,000;
* the radius of each point is the squared distance to its k-th nearest
  neighbour in its own set, k = 3, taken as column k of the distances sorted
  per row *including the point itself* (column 0 is the self-distance 0);
* precision = fraction of samples within the radius of at least one
  reference point (d^2 <= r^2_ref); recall = fraction of reference points
  within the radius of at least one sample.

Difference from ADM: ADM evaluates the distance block in float16 and falls
back to float32 only when it overflows; here the block is float32, which
changes a result only for points lying within float16 rounding of a radius.
"""

import numpy as np

_BLOCK = 10_000


def _sq_distances(u_NxD: np.ndarray, v_MxD: np.ndarray) -> np.ndarray:
  norm_u = np.sum(u_NxD * u_NxD, axis=1)[:, None]
  norm_v = np.sum(v_MxD * v_MxD, axis=1)[None, :]
  return np.maximum(norm_u - 2.0 * (u_NxD @ v_MxD.T) + norm_v, 0.0)


def manifold_radii(
    features_NxD: np.ndarray, *, k: int = 3, block: int = _BLOCK
) -> np.ndarray:
  """Squared distance of each point to its k-th nearest neighbour (self = 0th)."""
  x = np.asarray(features_NxD, np.float32)
  n = x.shape[0]
  if n <= k:
    raise ValueError(
        f'Precision/recall with k={k} needs more than {k} points, got {n}.'
    )
  radii = np.empty(n, np.float32)
  for b1 in range(0, n, block):
    rows = x[b1 : b1 + block]
    d = np.concatenate(
        [_sq_distances(rows, x[b2 : b2 + block]) for b2 in range(0, n, block)],
        axis=1,
    )
    radii[b1 : b1 + block] = np.partition(d, k, axis=1)[:, k]
  return radii


def _inside_any(
    points_NxD: np.ndarray,
    centres_MxD: np.ndarray,
    radii_M: np.ndarray,
    block: int,
) -> np.ndarray:
  """Boolean (N,): point lies inside >= 1 hypersphere (centre, radius)."""
  inside = np.zeros(points_NxD.shape[0], bool)
  for b1 in range(0, points_NxD.shape[0], block):
    rows = points_NxD[b1 : b1 + block]
    for b2 in range(0, centres_MxD.shape[0], block):
      d = _sq_distances(rows, centres_MxD[b2 : b2 + block])
      inside[b1 : b1 + block] |= np.any(
          d <= radii_M[None, b2 : b2 + block], axis=1
      )
  return inside


def precision_recall(
    *,
    ref_features: np.ndarray,
    sample_features: np.ndarray,
    k: int = 3,
    block: int = _BLOCK,
) -> tuple[float, float]:
  """(precision, recall) of samples against references on k-NN manifolds."""
  ref = np.asarray(ref_features, np.float32)
  sam = np.asarray(sample_features, np.float32)
  if ref.ndim != 2 or sam.ndim != 2 or ref.shape[1] != sam.shape[1]:
    raise ValueError(
        f'Features must be (N, D) with equal D, got {ref.shape} and '
        f'{sam.shape}.'
    )
  ref_radii = manifold_radii(ref, k=k, block=block)
  sam_radii = manifold_radii(sam, k=k, block=block)
  precision = float(np.mean(_inside_any(sam, ref, ref_radii, block)))
  recall = float(np.mean(_inside_any(ref, sam, sam_radii, block)))
  return precision, recall
