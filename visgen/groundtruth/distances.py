"""Sample-based distances between distributions, for checks against ground
truth: sliced Wasserstein-2 and the (biased) RBF MMD^2."""

import jax
import jax.numpy as jnp


def sliced_wasserstein(x_NxD, y_NxD, key, *, num_projections=256):
  """Sliced Wasserstein-2 distance between two equal-size point sets.

  Projects both sets on random unit directions; in 1-D the optimal coupling
  sorts, so W2^2 of each projection is the mean squared gap of sorted values.
  Returns sqrt of the mean over projections.
  """
  if x_NxD.shape != y_NxD.shape:
    raise ValueError(f'sliced_wasserstein needs equal shapes, got '
                     f'{x_NxD.shape} and {y_NxD.shape}.')
  d = x_NxD.shape[-1]
  dirs = jax.random.normal(key, (d, num_projections))
  dirs = dirs / jnp.linalg.norm(dirs, axis=0, keepdims=True)
  px = jnp.sort(x_NxD @ dirs, axis=0)
  py = jnp.sort(y_NxD @ dirs, axis=0)
  return jnp.sqrt(jnp.mean((px - py) ** 2))


def mmd_rbf(x_NxD, y_MxD, *, bandwidth=1.0):
  """Biased MMD^2 with the Gaussian kernel exp(-|a - b|^2 / (2 h^2))."""
  def k(a, b):
    d2 = jnp.sum(a**2, -1)[:, None] + jnp.sum(b**2, -1)[None] - 2 * a @ b.T
    return jnp.exp(-jnp.maximum(d2, 0.0) / (2 * bandwidth**2))

  return (jnp.mean(k(x_NxD, x_NxD)) + jnp.mean(k(y_MxD, y_MxD))
          - 2 * jnp.mean(k(x_NxD, y_MxD)))
