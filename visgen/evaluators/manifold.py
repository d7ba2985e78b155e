"""Improved precision/recall (Kynkäänniemi et al., 2019) as ADM computes it.

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
Distance blocks run in jitted JAX (on the accelerator when there is one);
radii keep a running k+1 smallest per row instead of a full partition.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

_BLOCK = 10_000


def _sq_distances(u_NxD, v_MxD):
  norm_u = jnp.sum(u_NxD * u_NxD, axis=1)[:, None]
  norm_v = jnp.sum(v_MxD * v_MxD, axis=1)[None, :]
  cross = jnp.matmul(u_NxD, v_MxD.T, precision=jax.lax.Precision.HIGHEST)
  return jnp.maximum(norm_u - 2.0 * cross + norm_v, 0.0)


@functools.partial(jax.jit, static_argnames='k')
def _merge_smallest(best_NxK, rows_NxD, cols_MxD, *, k: int):
  """The k smallest of best and of the distances rows -> cols, per row."""
  d = _sq_distances(rows_NxD, cols_MxD)
  both = jnp.concatenate([best_NxK, d], axis=1)
  return -jax.lax.top_k(-both, k)[0]


@jax.jit
def _inside_block(rows_NxD, centres_MxD, radii_M):
  d = _sq_distances(rows_NxD, centres_MxD)
  return jnp.any(d <= radii_M[None, :], axis=1)


def manifold_radii(
    features_NxD: np.ndarray, *, k: int = 3, block: int = _BLOCK
) -> np.ndarray:
  """Squared distance of each point to its k-th neighbour (self = 0th)."""
  x = np.asarray(features_NxD, np.float32)
  n = x.shape[0]
  if n <= k:
    raise ValueError(
        f'Precision/recall with k={k} needs more than {k} points, got {n}.'
    )
  radii = np.empty(n, np.float32)
  for b1 in range(0, n, block):
    rows = x[b1 : b1 + block]
    # Running k+1 smallest distances per row over the column blocks; column
    # k of the sorted row is ADM's radius (column 0 is the point itself).
    best = jnp.full((rows.shape[0], k + 1), jnp.inf, jnp.float32)
    for b2 in range(0, n, block):
      best = _merge_smallest(best, rows, x[b2 : b2 + block], k=k + 1)
    radii[b1 : b1 + block] = np.asarray(best[:, k])
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
      inside[b1 : b1 + block] |= np.asarray(_inside_block(
          rows, centres_MxD[b2 : b2 + block], radii_M[b2 : b2 + block]))
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
