"""A small residual MLP denoiser for low-dimensional data x of shape (B, D).

Used for 2-D toy distributions and Gaussian-mixture ground-truth checks. The
time embedding (and the class embedding when `num_classes > 0`) is added to
the hidden state before every residual block. With `learn_sigma` the output
has 2 D values, [prediction, v]: v sets the learned reverse-process variance
of improved DDPM (`visgen.objectives.learned_variance`).
"""

from typing import Any

from flax import nnx
import jax
import jax.numpy as jnp

from visgen.models import layers


class MLPBlock(nnx.Module):
  """h + W2 silu(W1 silu(h + emb))."""

  def __init__(self, width: int, *, rngs: nnx.Rngs, dtype: Any):
    self.fc1 = layers.Dense(width, width, rngs=rngs, axes=('embed', 'mlp'),
                            dtype=dtype)
    self.fc2 = layers.Dense(width, width, rngs=rngs, axes=('mlp', 'embed'),
                            dtype=dtype)

  def __call__(self, h: jax.Array, emb: jax.Array) -> jax.Array:
    return h + self.fc2(jax.nn.silu(self.fc1(jax.nn.silu(h + emb))))


class MLPDenoiser(nnx.Module):
  """(x_t (B, D), t (B,), cond) -> (B, D), or (B, 2 D) with learn_sigma."""

  def __init__(self, *, dim: int, rngs: nnx.Rngs, width: int = 256,
               depth: int = 3, num_classes: int = 0, t_scale: float = 1000.0,
               learn_sigma: bool = False, dtype: Any = jnp.float32):
    if dim < 1 or width < 1 or depth < 1:
      raise ValueError(f'dim, width and depth must be >= 1, got {dim}, '
                       f'{width}, {depth}.')
    self.dim = dim
    self.out_dim = 2 * dim if learn_sigma else dim
    self.num_classes = num_classes
    self.cond_keys = ('label',) if num_classes > 0 else ()
    self.inp = layers.Dense(dim, width, rngs=rngs, axes=(None, 'embed'),
                            dtype=dtype)
    self.t_embed = layers.TimestepEmbedder(width, rngs=rngs, t_scale=t_scale,
                                           dtype=dtype)
    self.y_embed = (layers.LabelEmbedder(num_classes, width, rngs=rngs)
                    if num_classes > 0 else None)
    self.blocks = nnx.List(
        [MLPBlock(width, rngs=rngs, dtype=dtype) for _ in range(depth)])
    self.out = layers.Dense(width, self.out_dim, rngs=rngs,
                            axes=('embed', None), dtype=dtype)

  def __call__(self, x_t: jax.Array, t: jax.Array, cond: dict | None = None,
               *, train: bool = False, rngs: nnx.Rngs | None = None
               ) -> jax.Array:
    del train, rngs  # No dropout in this model.
    if x_t.ndim != 2 or x_t.shape[-1] != self.dim:
      raise ValueError(f'MLPDenoiser expects x_t of shape (B, {self.dim}), '
                       f'got {x_t.shape}.')
    cond = layers.check_cond(cond, self.cond_keys, 'MLPDenoiser')
    emb = self.t_embed(jnp.broadcast_to(t, x_t.shape[:1]))
    if self.y_embed is not None:
      emb = emb + self.y_embed(cond['label'])
    h = self.inp(x_t)
    for i, block in enumerate(self.blocks):
      h = block(h, emb)
      layers.record_feature(f'block{i}', h)
    return self.out(jax.nn.silu(h)).astype(x_t.dtype)
