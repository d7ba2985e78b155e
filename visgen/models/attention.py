"""Multi-head self-attention with a fused qkv projection.

Implementations (`impl`):
  'xla':  explicit einsums, scores materialised, softmax in float32.
  'dpa':  `jax.nn.dot_product_attention(implementation='xla')`.
Attention maps can be returned on request (for attention-based probes); the
'xla' path is used whenever they are.
"""

from typing import Any

from flax import nnx
import jax
import jax.numpy as jnp

from visgen.models import layers

IMPLS = ('xla', 'dpa')


def attention_xla(q, k, v, *, dtype, return_attn: bool = False):
  """q, k, v: (B, N, H, Dh) -> (B, N, H, Dh) [, probs (B, H, N, N)]."""
  scale = q.shape[-1] ** -0.5
  logits = jnp.einsum('bqhd,bkhd->bhqk', (q * scale).astype(dtype),
                      k.astype(dtype), preferred_element_type=jnp.float32)
  probs = jax.nn.softmax(logits, axis=-1)
  out = jnp.einsum('bhqk,bkhd->bqhd', probs.astype(dtype), v.astype(dtype),
                   preferred_element_type=jnp.float32)
  return out, (probs if return_attn else None)


class SelfAttention(nnx.Module):
  """Fused-qkv multi-head self-attention over (B, N, D) tokens."""

  def __init__(self, width: int, heads: int, *, rngs: nnx.Rngs,
               dtype: Any = jnp.float32, attn_fp32: bool = False,
               impl: str = 'xla', zero_proj: bool = False):
    if impl not in IMPLS:
      raise ValueError(f'Unknown attention impl {impl!r}. Valid choices: '
                       f'{", ".join(IMPLS)}.')
    self.qkv = layers.Dense(width, 3 * width, rngs=rngs,
                            axes=('embed', 'qkv'), dtype=dtype)
    self.proj = layers.Dense(
        width, width, rngs=rngs, axes=('heads', 'embed'), dtype=dtype,
        kernel_init=layers.zeros if zero_proj else layers.xavier_uniform)
    self.heads = heads
    self.dtype = dtype
    self.attn_dtype = jnp.float32 if attn_fp32 else dtype
    self.impl = impl

  def __call__(self, x: jax.Array, *, return_attn: bool = False):
    b, n, d = x.shape
    qkv = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    if self.impl == 'xla' or return_attn:
      out, probs = attention_xla(q, k, v, dtype=self.attn_dtype,
                                 return_attn=return_attn)
    else:
      dt = self.attn_dtype
      out = jax.nn.dot_product_attention(
          q.astype(dt), k.astype(dt), v.astype(dt), implementation='xla')
      probs = None
    return self.proj(out.reshape(b, n, d)), probs
