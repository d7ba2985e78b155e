"""Linear attention, Mix-FFN and 3-D rotary positions (SANA / SANA-Video).

ReLU-kernel linear attention (Xie et al., SANA, 2024, eq. 2; Katharopoulos
et al., 2020) replaces softmax(q k^T) by phi(q) phi(k)^T with phi = ReLU:

  out_i = (sum_j v_j phi(k_j)^T) phi(q_i) / (phi(q_i) . sum_j phi(k_j) + eps)

so the (Dh, Dv) key-value sum S = sum_j phi(k_j) v_j^T and the (Dh,) key sum
z = sum_j phi(k_j) are computed once and every query costs O(Dh Dv): O(N) in
tokens instead of O(N^2). The sums are accumulated in float32 whatever the
compute dtype.

Rotary positions with linear attention follow SANA-Video (Chen et al., 2025,
sec. 3.1): the rotation is applied *after* the ReLU and only in the
numerator, phi_r(x_i) = R_i relu(x_i); the denominator keeps the unrotated
relu(q) . sum relu(k), which stays positive (a rotated denominator can cross
zero). Since R_i^T R_j = R_{j-i}, the numerator's scores depend on position
differences only.

Block-causal attention (SANA-Video's long-video mode, like CausVid /
Self-Forcing for softmax): tokens of block b attend to every token of blocks
<= b. With linear attention this is a cumulative sum of per-block (S, z), so
a block-by-block rollout needs only the running sums of the past -- a state
of constant size (Dh x Dv + Dh per head and layer) instead of a growing
key-value cache. `linear_attention_step` is that incremental form and equals
the masked full-sequence form exactly up to float rounding (tested).

Shapes: q, k, v are head-major (B, H, N, Dh) as in `attention.attention_xla`.
"""

import math
from typing import Any

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from visgen.models import layers

EPS = 1e-6
KINDS = ('linear', 'softmax')


# -- 3-D rotary position embeddings ------------------------------------------

def rope_3d_split(head_dim: int) -> tuple[int, int, int]:
  """Rotation pairs per axis (t, h, w) for a head of `head_dim` channels.

  As in Wan / SANA-Video: h and w get head_dim // 6 pairs each and t the
  rest (the time axis gets the largest share).
  """
  if head_dim % 2 or head_dim < 6:
    raise ValueError(f'3-D RoPE needs an even head dim >= 6, got {head_dim}; '
                     'choose width / heads accordingly.')
  hw = head_dim // 6
  return head_dim // 2 - 2 * hw, hw, hw


def rope_3d_angles(grid: tuple[int, int, int], head_dim: int, *,
                   t_offset: Any = 0, theta: float = 10000.0) -> jax.Array:
  """Rotation angles (N, head_dim // 2) of the tokens of a (T, H, W) grid in
  raster order (t slowest), time positions starting at `t_offset` (may be a
  traced integer: a rollout's block position).

  Pair p of axis a with n_a pairs turns by pos_a * theta^(-p / n_a), the
  RoFormer frequencies (Su et al., 2021) per axis.
  """
  gt, gh, gw = grid
  pairs = rope_3d_split(head_dim)
  pos = [jnp.arange(gt, dtype=jnp.float32) + jnp.asarray(t_offset,
                                                         jnp.float32),
         jnp.arange(gh, dtype=jnp.float32), jnp.arange(gw, dtype=jnp.float32)]
  parts = []
  for axis, (n, p) in enumerate(zip(pairs, pos)):
    omega = jnp.asarray(theta ** (-np.arange(n) / n), jnp.float32)
    ang = p[:, None] * omega                           # (len, n)
    shape = [1, 1, 1, n]
    shape[axis] = ang.shape[0]
    parts.append(jnp.broadcast_to(ang.reshape(shape), (gt, gh, gw, n)))
  return jnp.concatenate(parts, -1).reshape(gt * gh * gw, head_dim // 2)


def apply_rope(x: jax.Array, angles: jax.Array) -> jax.Array:
  """Rotates channel pairs (x[2p], x[2p+1]) of x (..., N, Dh) by angles
  (N, Dh/2); an orthogonal map per token, computed in float32."""
  x = x.astype(jnp.float32)
  pairs = x.reshape(x.shape[:-1] + (x.shape[-1] // 2, 2))
  a, b = pairs[..., 0], pairs[..., 1]
  cos, sin = jnp.cos(angles), jnp.sin(angles)
  return jnp.stack([a * cos - b * sin, a * sin + b * cos], -1).reshape(x.shape)


# -- Linear attention ---------------------------------------------------------

def _features(q, k, angles):
  """(numerator q, numerator k, denominator q, denominator k) features."""
  fq = jax.nn.relu(q.astype(jnp.float32))
  fk = jax.nn.relu(k.astype(jnp.float32))
  if angles is None:
    return fq, fk, fq, fk
  return apply_rope(fq, angles), apply_rope(fk, angles), fq, fk


def _check_block(n: int, block_len: int | None) -> int:
  if block_len is None:
    return n
  if block_len <= 0 or n % block_len:
    raise ValueError(f'block_len {block_len} must divide the token count {n}.')
  return block_len


def linear_attention(q: jax.Array, k: jax.Array, v: jax.Array, *,
                     angles: jax.Array | None = None,
                     block_len: int | None = None,
                     eps: float = EPS) -> jax.Array:
  """ReLU linear attention, (B, H, N, Dh) x3 -> (B, H, N, Dv) float32.

  block_len=None: every token attends to all N tokens. block_len=L: tokens
  are N / L consecutive blocks and block b attends to blocks 0..b (a
  cumulative sum of per-block sums; still O(N)).
  """
  qn, kn, qd, kd = _features(q, k, angles)
  v = v.astype(jnp.float32)
  b, h, n, dh = qn.shape
  L = _check_block(n, block_len)
  nb = n // L
  blk = lambda a: a.reshape(b, h, nb, L, a.shape[-1])
  qn, kn, qd, kd, vb = map(blk, (qn, kn, qd, kd, v))
  s = layers.bmm(kn, vb, jnp.float32, True, False)     # (B, H, nb, Dh, Dv)
  z = jnp.sum(kd, axis=3)                              # (B, H, nb, Dh)
  if nb > 1:
    s, z = jnp.cumsum(s, axis=2), jnp.cumsum(z, axis=2)
  num = layers.bmm(qn, s, jnp.float32)                 # (B, H, nb, L, Dv)
  den = jnp.einsum('bhnld,bhnd->bhnl', qd, z)
  out = num / (den[..., None] + eps)
  return out.reshape(b, h, n, v.shape[-1])


def linear_attention_step(q, k, v, state_s, state_z, *,
                          angles: jax.Array | None = None, eps: float = EPS):
  """One block of block-causal linear attention with a constant-size state.

  q, k, v: (B, H, L, Dh) of the current block; state_s (B, H, Dh, Dv) and
  state_z (B, H, Dh) the sums over all past blocks. The block attends to
  itself and the past: returns (out (B, H, L, Dv), s + S_block,
  z + z_block), the new state including this block.
  """
  qn, kn, qd, kd = _features(q, k, angles)
  v = v.astype(jnp.float32)
  s = state_s + layers.bmm(kn, v, jnp.float32, True, False)
  z = state_z + jnp.sum(kd, axis=2)
  num = layers.bmm(qn, s, jnp.float32)
  den = jnp.einsum('bhld,bhd->bhl', qd, z)
  return num / (den[..., None] + eps), s, z


def block_causal_mask(n: int, block_len: int) -> np.ndarray:
  """(N, N) bool: query i may see key j iff block(j) <= block(i)."""
  blocks = np.arange(n) // _check_block(n, block_len)
  return blocks[None, :] <= blocks[:, None]


def linear_attention_reference(q, k, v, *, angles=None, mask=None,
                               eps: float = EPS) -> jax.Array:
  """The same kernel formula with the (N, N) score matrices materialised:
  out_i = sum_j m_ij (phi_r(q_i).phi_r(k_j)) v_j
          / (sum_j m_ij relu(q_i).relu(k_j) + eps). O(N^2); for tests."""
  qn, kn, qd, kd = _features(q, k, angles)
  a = jnp.einsum('bhid,bhjd->bhij', qn, kn)
  d = jnp.einsum('bhid,bhjd->bhij', qd, kd)
  if mask is not None:
    a, d = a * mask, d * mask
  num = jnp.einsum('bhij,bhjd->bhid', a, v.astype(jnp.float32))
  return num / (jnp.sum(d, -1, keepdims=True) + eps)


def softmax_attention(q, k, v, *, angles=None, mask=None,
                      dtype: Any = jnp.float32) -> jax.Array:
  """Softmax attention with optional RoPE on q, k and a boolean (N, N)
  mask (True = may attend); scores and softmax in float32."""
  if angles is not None:
    q, k = apply_rope(q, angles), apply_rope(k, angles)
  logits = layers.bmm(q * q.shape[-1] ** -0.5, k, dtype, False, True)
  if mask is not None:
    logits = jnp.where(mask, logits, -jnp.inf)
  probs = jax.nn.softmax(logits, axis=-1)
  return layers.bmm(probs, v, dtype)


class VideoAttention(nnx.Module):
  """Fused-qkv self-attention over (B, N, D) tokens, `kind` 'linear' (ReLU
  kernel, SANA) or 'softmax', with optional 3-D RoPE angles."""

  def __init__(self, width: int, heads: int, *, rngs: nnx.Rngs,
               kind: str = 'linear', dtype: Any = jnp.float32,
               eps: float = EPS):
    if kind not in KINDS:
      raise ValueError(f'Unknown attention {kind!r}. Valid choices: '
                       f'{", ".join(KINDS)}.')
    if width % heads:
      raise ValueError(f'width {width} is not divisible by heads {heads}.')
    self.qkv = layers.Dense(width, 3 * width, rngs=rngs,
                            axes=('embed', 'qkv'), dtype=dtype)
    self.proj = layers.Dense(width, width, rngs=rngs, axes=('heads', 'embed'),
                             dtype=dtype)
    self.heads, self.kind, self.dtype, self.eps = heads, kind, dtype, eps

  def _qkv(self, x):
    b, n, d = x.shape
    h = self.heads
    return tuple(a.reshape(b, n, h, d // h).transpose(0, 2, 1, 3)
                 for a in jnp.split(self.qkv(x), 3, axis=-1))

  def _out(self, o, x):
    b, n, d = x.shape
    return self.proj(o.transpose(0, 2, 1, 3).reshape(b, n, d))

  def __call__(self, x: jax.Array, *, angles: jax.Array | None = None,
               block_len: int | None = None) -> jax.Array:
    q, k, v = self._qkv(x)
    if self.kind == 'linear':
      o = linear_attention(q, k, v, angles=angles, block_len=block_len,
                           eps=self.eps)
    else:
      mask = (None if block_len is None
              else jnp.asarray(block_causal_mask(x.shape[1], block_len)))
      o = softmax_attention(q, k, v, angles=angles, mask=mask,
                            dtype=self.dtype)
    return self._out(o, x)

  def step(self, x, state_s, state_z, *, angles=None):
    """One block given the past sums: (out, new_s, new_z) (linear only)."""
    if self.kind != 'linear':
      raise ValueError('A constant-size rollout state exists for linear '
                       "attention only; build the model with "
                       "attention='linear'.")
    q, k, v = self._qkv(x)
    o, s, z = linear_attention_step(q, k, v, state_s, state_z, angles=angles,
                                    eps=self.eps)
    return self._out(o, x), s, z


# -- Mix-FFN ------------------------------------------------------------------

class MixFFN(nnx.Module):
  """SANA's Mix-FFN (GLUMBConv): 1x1 expand to 2 x hidden with SiLU, a
  depthwise 3x3 convolution over each frame's (h, w) token grid, a GLU gate
  a * SiLU(g), and a 1x1 projection back to `width`. The convolution is per
  frame, so the block is causal in time (block-by-block rollouts see no
  future frames)."""

  def __init__(self, width: int, hidden: int, *, rngs: nnx.Rngs,
               dtype: Any = jnp.float32):
    self.expand = layers.Dense(width, 2 * hidden, rngs=rngs,
                               axes=('embed', 'mlp'), dtype=dtype)
    self.dw_kernel = layers.make_param(
        rngs.params(), layers.Init('normal', math.sqrt(1.0 / 9.0)),
        (3, 3, 1, 2 * hidden), (None, None, None, 'mlp'))
    self.dw_bias = layers.make_param(rngs.params(), layers.zeros,
                                     (2 * hidden,), ('mlp',))
    self.project = layers.Dense(hidden, width, rngs=rngs,
                                axes=('mlp', 'embed'), dtype=dtype)
    self.hidden, self.dtype = hidden, dtype

  def __call__(self, x: jax.Array, grid: tuple[int, int, int]) -> jax.Array:
    """x (B, N, D) tokens of a (T, H, W) grid in raster order."""
    b, n, _ = x.shape
    gt, gh, gw = grid
    if gt * gh * gw != n:
      raise ValueError(f'MixFFN grid {grid} does not hold {n} tokens.')
    h = jax.nn.silu(self.expand(x)).reshape(b * gt, gh, gw, 2 * self.hidden)
    h = jax.lax.conv_general_dilated(
        h.astype(self.dtype), self.dw_kernel[...].astype(self.dtype), (1, 1),
        'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
        feature_group_count=2 * self.hidden,
        preferred_element_type=jnp.float32) + self.dw_bias[...]
    a, g = jnp.split(h.reshape(b, n, 2 * self.hidden), 2, axis=-1)
    return self.project(a * jax.nn.silu(g))
