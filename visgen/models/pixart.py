"""PixArt-alpha: a DiT with cross-attention to text (Chen et al., 2023).

Differences from DiT (`visgen.models.dit`), as in PixArt-alpha Sec. 2.3:
* adaLN-single: ONE time MLP (`t_block`: SiLU-Linear) maps the time
  embedding to the six modulation vectors (shift, scale, gate for attention
  and MLP), shared by every block; each block adds its own learned table
  (6, width) (`scale_shift_table`, init N(0, 1) / sqrt(width)):
    [shift_a, scale_a, gate_a, shift_m, scale_m, gate_m] = S_i + t0.
* After self-attention every block cross-attends to the text tokens
  (projected by PixArt's caption MLP, GELU-tanh), padding keys masked; the
  cross-attention output projection starts at zero.
* The final layer modulates with its own (2, width) table plus the time
  embedding; its projection starts at zero, so the output is 0 at init.
Conditioning vector: time embedding + (optional) pooled-text embedding
(`pooled_dim` > 0, SD3-style; PixArt-alpha itself has none). Text comes from
cond as described in `visgen.models.text_cond` (embeddings from a frozen
encoder, or token ids through a trainable `text_encoder`), with the learned
null text for caption dropout / CFG.
"""

from typing import Any

from flax import nnx
import jax
import jax.numpy as jnp

from visgen.models import attention
from visgen.models import dit
from visgen.models import layers
from visgen.models import text_cond
from visgen.models import text_encoders


def _table(rngs: nnx.Rngs, rows: int, width: int) -> nnx.Param:
  """PixArt's scale_shift_table: N(0, 1) / sqrt(width)."""
  return layers.make_param(rngs.params(), layers.Init('normal', width**-0.5),
                           (rows, width), (None, 'embed'))


class PixArtBlock(nnx.Module):
  """Self-attention, cross-attention to text, MLP; adaLN-single."""

  def __init__(self, width: int, heads: int, *, rngs: nnx.Rngs,
               mlp_ratio: float = 4.0, dtype: Any = jnp.float32,
               attn_fp32: bool = False):
    hidden = int(width * mlp_ratio)
    self.attn = attention.SelfAttention(width, heads, rngs=rngs, dtype=dtype,
                                        attn_fp32=attn_fp32)
    self.cross = text_encoders.Attention(width, heads, rngs=rngs,
                                         dtype=dtype, zero_out=True)
    self.fc1 = layers.Dense(width, hidden, rngs=rngs, axes=('embed', 'mlp'),
                            dtype=dtype)
    self.fc2 = layers.Dense(hidden, width, rngs=rngs, axes=('mlp', 'embed'),
                            dtype=dtype)
    self.scale_shift_table = _table(rngs, 6, width)

  def __call__(self, x, t0_Bx6xW, ctx, ctx_mask):
    mods = self.scale_shift_table[...][None] + t0_Bx6xW
    shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = (
        mods[:, i] for i in range(6))
    h = dit.modulate(layers.layer_norm(x), shift_a, scale_a)
    x = x + gate_a[:, None] * self.attn(h)[0]
    x = x + self.cross(x, context=ctx, key_mask=ctx_mask)
    h = dit.modulate(layers.layer_norm(x), shift_m, scale_m)
    h = self.fc2(jax.nn.gelu(self.fc1(h), approximate=True))
    return x + gate_m[:, None] * h


class PixArt(nnx.Module):
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
    self.t_embed = layers.TimestepEmbedder(width, rngs=rngs, t_scale=t_scale,
                                           dtype=dtype)
    self.t_block = layers.Dense(width, 6 * width, rngs=rngs,
                                axes=(None, 'embed'), kernel_init=layers.normal,
                                dtype=dtype)
    self.pooled_embed = (text_cond.PooledEmbedder(
        self.text.pooled_dim, width, rngs=rngs, dtype=dtype)
                         if self.text.pooled_dim else None)
    self.caption = text_cond.PooledEmbedder(self.text.text_dim, width,
                                            rngs=rngs, dtype=dtype)
    self.blocks = nnx.List([
        PixArtBlock(width, heads, rngs=rngs, mlp_ratio=mlp_ratio,
                    dtype=dtype, attn_fp32=attn_fp32)
        for _ in range(depth)])
    self.final_table = _table(rngs, 2, width)
    self.final = layers.Dense(width, patch * patch * self.out_channels,
                              rngs=rngs, axes=('embed', 'conv_out'),
                              kernel_init=layers.zeros, dtype=dtype)

  def caption_mlp(self, text):
    # PixArt's caption projection is Linear-GELU(tanh)-Linear.
    c = self.caption
    return c.fc2(jax.nn.gelu(c.fc1(text), approximate=True))

  def __call__(self, x_t, t, cond=None, *, train: bool = False,
               rngs: nnx.Rngs | None = None):
    del train, rngs
    b, p = x_t.shape[0], self.patch
    tokens, gh, gw = dit.patch_tokens(x_t, patch=p, size=self.input_size,
                                      channels=self.in_channels, model='PixArt')
    cond = layers.check_cond(cond, self.cond_keys, 'PixArt')
    text, mask, pooled = self.text(cond)
    ctx = self.caption_mlp(text)
    x = self.x_embed(tokens)
    x = x + jnp.asarray(dit.pos_embed_2d(self.width, gh, gw))
    c = self.t_embed(jnp.broadcast_to(t, (b,)))
    if self.pooled_embed is not None:
      c = c + self.pooled_embed(pooled)
    t0 = self.t_block(jax.nn.silu(c)).reshape(b, 6, self.width)
    for block in self.blocks:
      x = block(x, t0, ctx, mask)
    mods = self.final_table[...][None] + c[:, None]
    x = self.final(dit.modulate(layers.layer_norm(x), mods[:, 0],
                                mods[:, 1]))
    oc = self.out_channels
    x = x.reshape(b, gh, gw, p, p, oc).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, gh * p, gw * p, oc).astype(x_t.dtype)
