"""Multi-head self-attention with a fused qkv projection.

Implementations (`impl`):
  'xla':  explicit einsums, scores materialised, softmax in float32.
  'dpa':  `jax.nn.dot_product_attention(implementation='xla')`.
Attention maps can be returned on request (for attention-based probes); the
'xla' path is used whenever they are.

`capture()` records the maps of every SelfAttention call made inside it,
in call order, without any change to a model or its parameters (DiffSeg,
probes):

  with attention.capture() as maps:
    out = apply(params, x_t, t, cond)     # eager or inside jax.jit
  # maps: [(B, heads, N, N), ...] one per attention call

Inside `jax.jit` return the maps from the traced function. A model built
with `remat` wraps blocks in their own trace: build it without remat to
capture (the parameters are the same).
"""

import contextlib
from typing import Any

from flax import nnx
import jax
import jax.numpy as jnp

from visgen.models import layers

IMPLS = ('xla', 'dpa')
_CAPTURING: list[list] = []  # a stack of open `capture()` lists


@contextlib.contextmanager
def capture():
  """Collects the (B, heads, N, N) attention probabilities of every
  SelfAttention call made while open (see the module docstring)."""
  maps: list = []
  _CAPTURING.append(maps)
  try:
    yield maps
  finally:
    _CAPTURING.remove(maps)


def attention_xla(q, k, v, *, dtype, return_attn: bool = False):
  """q, k, v: (B, H, N, Dh) -> (B, H, N, Dh) [, probs (B, H, N, N)].

  Head-major operands make (B, H) the leading batch dimensions of both
  batched matmuls, which XLA's CPU dot kernels need; token-major einsums
  ('bqhd,bkhd') made XLA insert a transpose around every attention matmul.
  """
  scale = q.shape[-1] ** -0.5
  logits = layers.bmm(q * scale, k, dtype, False, True)
  probs = jax.nn.softmax(logits, axis=-1)
  out = layers.bmm(probs, v, dtype)
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
    h = self.heads
    # Split the fused projection on its last axis: the gradient of a split
    # is one concatenate, while indexing a middle (B, N, 3, H, Dh) axis
    # made XLA build the qkv gradient from three padded copies.
    q, k, v = (a.reshape(b, n, h, d // h)
               for a in jnp.split(self.qkv(x), 3, axis=-1))
    capturing = bool(_CAPTURING)
    if self.impl == 'xla' or return_attn or capturing:
      q, k, v = (a.transpose(0, 2, 1, 3) for a in (q, k, v))
      out, probs = attention_xla(q, k, v, dtype=self.attn_dtype,
                                 return_attn=return_attn or capturing)
      out = out.transpose(0, 2, 1, 3)
      if capturing:
        _CAPTURING[-1].append(probs)
        probs = probs if return_attn else None
    else:
      dt = self.attn_dtype
      out = jax.nn.dot_product_attention(
          q.astype(dt), k.astype(dt), v.astype(dt), implementation='xla')
      probs = None
    return self.proj(out.reshape(b, n, d)), probs
