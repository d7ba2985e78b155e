"""MMDiT: joint attention over image and text tokens (SD3, Esser et al. 2024).

Each block holds two weight sets, one per modality (image patches x, text
tokens c): adaLN modulation (shift, scale, gate for attention and MLP) from
the conditioning vector y = time embedding + pooled-text embedding, LayerNorm
without affine parameters, qkv projections, output projection and MLP. The
attention itself is ONE softmax over the concatenated sequence [c; x]
(SD3 Fig. 2b): both modalities attend to both, padding text keys masked.
The last block is 'context pre-only' (its text stream only provides keys and
values, as in SD3). Image tokens get DiT's fixed 2-D sin-cos positions; text
tokens carry the encoder's own positions. Modulations and the final
projection start at zero (adaLN-Zero), so the output is 0 at init.
Text conditioning as in `visgen.models.text_cond` (frozen-encoder
embeddings, or token ids through a trainable `text_encoder`), with the
learned null text for caption dropout / CFG.
"""

from typing import Any

from flax import nnx
import jax
import jax.numpy as jnp

from visgen.models import dit
from visgen.models import layers
from visgen.models import text_cond
from visgen.models import text_encoders


class Stream(nnx.Module):
  """One modality's weights in a joint block."""

  def __init__(self, width: int, *, rngs: nnx.Rngs, mlp_ratio: float,
               pre_only: bool, dtype: Any):
    n_mod = 2 if pre_only else 6
    self.ada = layers.Dense(width, n_mod * width, rngs=rngs,
                            axes=(None, 'embed'), kernel_init=layers.zeros,
                            dtype=dtype)
    self.qkv = layers.Dense(width, 3 * width, rngs=rngs, axes=('embed', 'qkv'),
                            dtype=dtype)
    self.pre_only = pre_only
    if not pre_only:
      hidden = int(width * mlp_ratio)
      self.proj = layers.Dense(width, width, rngs=rngs,
                               axes=('heads', 'embed'), dtype=dtype)
      self.fc1 = layers.Dense(width, hidden, rngs=rngs,
                              axes=('embed', 'mlp'), dtype=dtype)
      self.fc2 = layers.Dense(hidden, width, rngs=rngs,
                              axes=('mlp', 'embed'), dtype=dtype)

  def pre(self, x, y):
    """(q, k, v (B, N, W) each, modulation list) of the stream."""
    mods = jnp.split(self.ada(jax.nn.silu(y)), 2 if self.pre_only else 6,
                     axis=-1)
    h = dit.modulate(layers.layer_norm(x), mods[0], mods[1])
    return jnp.split(self.qkv(h), 3, axis=-1), mods

  def post(self, x, a, mods):
    _, _, gate_a, shift_m, scale_m, gate_m = mods
    x = x + gate_a[:, None] * self.proj(a)
    h = dit.modulate(layers.layer_norm(x), shift_m, scale_m)
    return x + gate_m[:, None] * self.fc2(
        jax.nn.gelu(self.fc1(h), approximate=True))


class MMDiTBlock(nnx.Module):
  """Joint attention block with separate text / image weights."""

  def __init__(self, width: int, heads: int, *, rngs: nnx.Rngs,
               mlp_ratio: float = 4.0, pre_only: bool = False,
               dtype: Any = jnp.float32, attn_fp32: bool = False):
    self.x = Stream(width, rngs=rngs, mlp_ratio=mlp_ratio, pre_only=False,
                    dtype=dtype)
    self.c = Stream(width, rngs=rngs, mlp_ratio=mlp_ratio,
                    pre_only=pre_only, dtype=dtype)
    self.heads = heads
    self.attn_dtype = jnp.float32 if attn_fp32 else dtype

  def __call__(self, x, c, y, c_mask):
    (qx, kx, vx), mx = self.x.pre(x, y)
    (qc, kc, vc), mc = self.c.pre(c, y)
    b, nc, w = c.shape
    split = lambda a: a.reshape(b, a.shape[1], self.heads, -1).transpose(
        0, 2, 1, 3)
    q, k, v = (split(jnp.concatenate(p, axis=1))
               for p in ((qc, qx), (kc, kx), (vc, vx)))
    key_mask = jnp.concatenate(
        [c_mask, jnp.ones(x.shape[:2], bool)], axis=1)
    a = text_encoders.masked_attention(q, k, v, key_mask=key_mask,
                                       dtype=self.attn_dtype)
    a = a.transpose(0, 2, 1, 3).reshape(b, -1, w)
    x = self.x.post(x, a[:, nc:], mx)
    c = None if self.c.pre_only else self.c.post(c, a[:, :nc], mc)
    return x, c


class MMDiT(nnx.Module):
  """(x_t (B, H, W, C), t (B,), cond with text) -> (B, H, W, C or 2C)."""

  def __init__(self, *, rngs: nnx.Rngs, input_size: int = 32,
               in_channels: int = 4, patch: int = 2, width: int = 384,
               depth: int = 12, heads: int = 6, mlp_ratio: float = 4.0,
               text_dim: int = 0, pooled_dim: int = 0,
               text_encoder: dict | None = None, learn_sigma: bool = False,
               t_scale: float = 1000.0, dtype: Any = jnp.float32,
               attn_fp32: bool = False):
    dit.check_geometry(input_size=input_size, patch=patch, width=width,
                       heads=heads)
    if depth < 1:
      raise ValueError(f'MMDiT needs depth >= 1, got {depth}.')
    self.input_size, self.in_channels, self.patch = input_size, in_channels, (
        patch)
    self.out_channels = 2 * in_channels if learn_sigma else in_channels
    self.width = width
    self.text = text_cond.TextInput(rngs=rngs, text_dim=text_dim,
                                    pooled_dim=pooled_dim,
                                    text_encoder=text_encoder, dtype=dtype)
    self.cond_keys = self.text.cond_keys
    self.x_embed = layers.Dense(patch * patch * in_channels, width, rngs=rngs,
                                axes=('conv_in', 'embed'), dtype=dtype)
    self.c_embed = layers.Dense(self.text.text_dim, width, rngs=rngs,
                                axes=(None, 'embed'), dtype=dtype)
    self.t_embed = layers.TimestepEmbedder(width, rngs=rngs, t_scale=t_scale,
                                           dtype=dtype)
    self.pooled_embed = (text_cond.PooledEmbedder(
        self.text.pooled_dim, width, rngs=rngs, dtype=dtype)
                         if self.text.pooled_dim else None)
    self.blocks = nnx.List([
        MMDiTBlock(width, heads, rngs=rngs, mlp_ratio=mlp_ratio,
                   pre_only=i == depth - 1, dtype=dtype, attn_fp32=attn_fp32)
        for i in range(depth)])
    self.final_ada = layers.Dense(width, 2 * width, rngs=rngs,
                                  axes=(None, 'embed'),
                                  kernel_init=layers.zeros, dtype=dtype)
    self.final = layers.Dense(width, patch * patch * self.out_channels,
                              rngs=rngs, axes=('embed', 'conv_out'),
                              kernel_init=layers.zeros, dtype=dtype)

  def __call__(self, x_t, t, cond=None, *, train: bool = False,
               rngs: nnx.Rngs | None = None):
    del train, rngs
    b, p = x_t.shape[0], self.patch
    tokens, gh, gw = dit.patch_tokens(x_t, patch=p, size=self.input_size,
                                      channels=self.in_channels, model='MMDiT')
    cond = layers.check_cond(cond, self.cond_keys, 'MMDiT')
    text, mask, pooled = self.text(cond)
    c = self.c_embed(text)
    x = self.x_embed(tokens)
    x = x + jnp.asarray(dit.pos_embed_2d(self.width, gh, gw))
    y = self.t_embed(jnp.broadcast_to(t, (b,)))
    if self.pooled_embed is not None:
      y = y + self.pooled_embed(pooled)
    for block in self.blocks:
      x, c = block(x, c, y, mask)
    shift, scale = jnp.split(self.final_ada(jax.nn.silu(y)), 2, axis=-1)
    x = self.final(dit.modulate(layers.layer_norm(x), shift, scale))
    oc = self.out_channels
    x = x.reshape(b, gh, gw, p, p, oc).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, gh * p, gw * p, oc).astype(x_t.dtype)
