"""ADM-style U-Net (Dhariwal & Nichol, 2021; Nichol & Dhariwal, 2021).

Residual blocks with scale-shift GroupNorm conditioning on the time (plus
class) embedding, self-attention at chosen resolutions, channel multipliers
per level, `num_res_blocks` blocks per level (one more on the way up, each
consuming a skip connection), dropout, and an optional learned-variance
output (2x channels). Output convolutions of every residual branch and the
final layer start at zero, as in ADM.

`patch=p` > 1 runs the U-Net on p x p space-to-depth patches (a (S, S, C)
input becomes (S/p, S/p, p*p*C) and the output is folded back): every conv
then costs 1/p^2 of its full-resolution price while the network still
predicts every pixel, the convolutional analogue of a DiT's patch size. On
2 CPU cores this is what makes a 32x32 U-Net trainable in minutes.
`mid_attention=False` drops the middle attention block (attention is the
least efficient op on CPU, and small scenes need none).

Image conditioning and adapters (all off by default, and then the network is
unchanged bit for bit):
* `concat_channels=k` reads `cond['concat']` (B, H, W, k), e.g. the source
  image of InstructPix2Pix or of a DDBM bridge, as extra input channels. It
  enters through its own zero-initialised conv added to `conv_in`'s output,
  which is exactly a conv over the channel concatenation [x_t, concat] whose
  extra input channels start at zero (IP2P's warm start from a base model:
  `init_from` copies every other parameter by path). `concat_init='xavier'`
  gives that conv the ordinary initialisation instead (training from
  scratch: a zero projection learns to read the condition slowly).
* `residuals={'down': [...], 'mid': r}` (ControlNet, Zhang & Agrawala 2023):
  additive residuals for every skip connection (conv_in's output and each
  input block's) and for the middle block's output, from
  `visgen.models.controlnet`.
* `extra_emb` (B, 4 * model_channels) is added to the time (+ class)
  embedding (an instruction embedding computed outside the U-Net).
* Text (LDM, Rombach et al. 2022): `text_dim=D` (LDM's context_dim) or a
  trainable `text_encoder=dict(name=...)` reads the text of cond
  (`visgen.models.text_cond`: token embeddings + mask, or token ids, and
  the learned null text); every attention block then also cross-attends
  from its LayerNormed tokens to the text (SpatialTransformer's cross-
  attention, padding keys masked, output projection zero at init), and
  `pooled_dim` > 0 adds the pooled text's embedding to the time embedding.
"""

import math
from typing import Any
from typing import Sequence

from flax import nnx
import jax
import jax.numpy as jnp

from visgen.models import attention
from visgen.models import dit
from visgen.models import layers
from visgen.models import text_cond
from visgen.models import text_encoders


class Conv(nnx.Module):
  """NHWC convolution with fp32 accumulation; 'SAME' padding."""

  def __init__(self, cin: int, cout: int, *, rngs: nnx.Rngs, k: int = 3,
               stride: int = 1, zero_init: bool = False,
               dtype: Any = jnp.float32):
    # ADM's fan-average uniform init is Xavier-uniform over HWIO fans.
    init = layers.zeros if zero_init else layers.xavier_uniform
    self.kernel = layers.make_param(rngs.params(), init, (k, k, cin, cout),
                                    (None, None, 'conv_in', 'conv_out'))
    self.bias = layers.make_param(rngs.params(), layers.zeros, (cout,),
                                  ('conv_out',))
    self.stride = stride
    self.dtype = dtype

  def __call__(self, x: jax.Array) -> jax.Array:
    y = jax.lax.conv_general_dilated(
        x.astype(self.dtype), self.kernel[...].astype(self.dtype),
        (self.stride, self.stride), 'SAME',
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
        preferred_element_type=jnp.float32)
    return y + self.bias[...]


class GroupNorm(nnx.Module):
  """GroupNorm over (H, W, C/G) with affine parameters; fp32 statistics."""

  def __init__(self, ch: int, *, rngs: nnx.Rngs, groups: int = 32,
               eps: float = 1e-5):
    # ADM's 32 groups; narrow test models fall back to a common divisor.
    self.groups = math.gcd(groups, ch)
    key = rngs.params()
    self.scale = layers.make_param(key, layers.ones, (ch,), ('embed',))
    self.bias = layers.make_param(key, layers.zeros, (ch,), ('embed',))
    self.eps = eps

  def __call__(self, x: jax.Array) -> jax.Array:
    b, h, w, c = x.shape
    per = c // self.groups  # channels per group

    def group_mean(sums_bc):
      # Per-channel sums over (H, W) -> the group's mean, per channel.
      m = sums_bc.reshape(b, self.groups, per).sum(-1) / (h * w * per)
      return jnp.repeat(m, per, axis=-1)[:, None, None, :]

    # Two-pass statistics whose large reductions run over (H, W) only, the
    # channels staying the minor axis: XLA:CPU reduces a (B, H, W, G, C/G)
    # view over (1, 2, 4) 3-7x slower (16x16x32, batch 256: GroupNorm +
    # SiLU forward and backward 49 -> 8 ms), and a U-Net has ~20 of them.
    xf = x.astype(jnp.float32)
    d = xf - group_mean(jnp.sum(xf, axis=(1, 2)))
    var = group_mean(jnp.sum(jnp.square(d), axis=(1, 2)))
    return d * jax.lax.rsqrt(var + self.eps) * self.scale[...] + (
        self.bias[...])


def dropout(x, rate: float, *, train: bool, rngs: nnx.Rngs | None):
  if not train or rate == 0.0:
    return x
  if rngs is None:
    raise ValueError('UNet dropout in training needs rngs (a dropout key).')
  keep = jax.random.bernoulli(rngs.dropout(), 1.0 - rate, x.shape)
  return jnp.where(keep, x / (1.0 - rate), 0.0)


def upsample_nearest2x(x: jax.Array) -> jax.Array:
  """Nearest-neighbour 2x upsampling of NHWC (jax.image.resize 'nearest',
  bit for bit) as a broadcast: its gradient is a 2x2 sum, not the scatter-add
  of resize's gather (fwd+bwd 17x faster on CPU at 8x8x64, batch 256)."""
  b, h, w, c = x.shape
  return jnp.broadcast_to(x[:, :, None, :, None, :],
                          (b, h, 2, w, 2, c)).reshape(b, 2 * h, 2 * w, c)


def space_to_depth(x: jax.Array, p: int) -> jax.Array:
  """(B, H, W, C) -> (B, H/p, W/p, p*p*C), channels ordered (dy, dx, c)."""
  if p == 1:
    return x
  b, h, w, c = x.shape
  x = x.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h // p, w // p, p * p * c)


def depth_to_space(x: jax.Array, p: int) -> jax.Array:
  """The inverse of `space_to_depth`."""
  if p == 1:
    return x
  b, h, w, c = x.shape
  x = x.reshape(b, h, w, p, p, c // (p * p)).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h * p, w * p, c // (p * p))


class ResBlock(nnx.Module):
  """GN-SiLU-conv, scale-shift norm from emb, SiLU-dropout-conv, skip."""

  def __init__(self, cin: int, cout: int, emb_dim: int, *, rngs: nnx.Rngs,
               dropout_rate: float = 0.0, dtype: Any = jnp.float32):
    self.norm1 = GroupNorm(cin, rngs=rngs)
    self.conv1 = Conv(cin, cout, rngs=rngs, dtype=dtype)
    self.emb = layers.Dense(emb_dim, 2 * cout, rngs=rngs,
                            axes=('embed', None), dtype=dtype)
    self.norm2 = GroupNorm(cout, rngs=rngs)
    self.conv2 = Conv(cout, cout, rngs=rngs, zero_init=True, dtype=dtype)
    self.skip = (Conv(cin, cout, rngs=rngs, k=1, dtype=dtype)
                 if cin != cout else None)
    self.dropout_rate = dropout_rate

  def __call__(self, x, emb, *, train: bool, rngs):
    h = self.conv1(jax.nn.silu(self.norm1(x)))
    scale, shift = jnp.split(self.emb(jax.nn.silu(emb)), 2, axis=-1)
    h = self.norm2(h) * (1.0 + scale[:, None, None]) + shift[:, None, None]
    h = dropout(jax.nn.silu(h), self.dropout_rate, train=train, rngs=rngs)
    h = self.conv2(h)
    return (x if self.skip is None else self.skip(x)) + h


class AttnBlock(nnx.Module):
  """GroupNorm then multi-head self-attention over H*W tokens, residual."""

  def __init__(self, ch: int, heads: int, *, rngs: nnx.Rngs,
               dtype: Any = jnp.float32, attn_fp32: bool = False,
               context_dim: int = 0):
    self.norm = GroupNorm(ch, rngs=rngs)
    # Zero output projection: the block starts as the identity (ADM).
    self.attn = attention.SelfAttention(ch, heads, rngs=rngs, dtype=dtype,
                                        attn_fp32=attn_fp32, zero_proj=True)
    self.cross = (text_encoders.Attention(
        ch, heads, rngs=rngs, context_dim=context_dim, dtype=dtype,
        zero_out=True) if context_dim else None)

  def __call__(self, x, ctx=None, ctx_mask=None):
    b, h, w, c = x.shape
    a, _ = self.attn(self.norm(x).reshape(b, h * w, c))
    x = x + a.reshape(b, h, w, c)
    if self.cross is not None:
      if ctx is None:
        raise ValueError('This U-Net attention block cross-attends to text '
                         '(text_dim / text_encoder) but got no text context; '
                         'call it with the text (UNet passes it).')
      tokens = x.reshape(b, h * w, c)
      x = x + self.cross(layers.layer_norm(tokens), context=ctx,
                         key_mask=ctx_mask).reshape(b, h, w, c)
    return x


class UNet(nnx.Module):
  """(x_t (B, H, W, C), t (B,), cond) -> (B, H, W, C or 2C)."""

  def __init__(self, *, rngs: nnx.Rngs, input_size: int = 32,
               in_channels: int = 3, model_channels: int = 128,
               channel_mult: Sequence[int] = (1, 2, 2, 2),
               num_res_blocks: int = 2,
               attention_resolutions: Sequence[int] = (16,),
               num_heads: int = 4, dropout: float = 0.0,
               num_classes: int = 0, learn_sigma: bool = False,
               t_scale: float = 1000.0, dtype: Any = jnp.float32,
               attn_fp32: bool = False, remat: bool = False, patch: int = 1,
               mid_attention: bool = True, concat_channels: int = 0,
               concat_init: str = 'zero',
               text_dim: int = 0, pooled_dim: int = 0,
               text_encoder: dict | None = None, pos_embed: bool = False):
    if patch < 1 or input_size % patch:
      raise ValueError(f'patch must be a positive divisor of input_size; '
                       f'got patch={patch}, input_size={input_size}.')
    inner = input_size // patch
    if inner % 2 ** (len(channel_mult) - 1):
      raise ValueError(f'input_size/patch = {inner} must be divisible by '
                       f'2**(levels-1) = {2 ** (len(channel_mult) - 1)}.')
    ch, emb_dim = model_channels, 4 * model_channels
    self.input_size, self.in_channels = input_size, in_channels
    self.patch = patch
    self.out_channels = 2 * in_channels if learn_sigma else in_channels
    self.num_classes = num_classes
    self.cond_keys = (('label',) if num_classes > 0 else ()) + (
        ('concat',) if concat_channels else ())
    self.concat_channels = concat_channels
    self.remat = remat
    self.text = (text_cond.TextInput(
        rngs=rngs, text_dim=text_dim, pooled_dim=pooled_dim,
        text_encoder=text_encoder, dtype=dtype)
                 if text_dim or text_encoder else None)
    if self.text is not None:
      self.cond_keys += self.text.cond_keys
    self.pooled_embed = (text_cond.PooledEmbedder(
        self.text.pooled_dim, emb_dim, rngs=rngs, dtype=dtype)
                         if self.text is not None and self.text.pooled_dim
                         else None)
    self.t_embed = layers.TimestepEmbedder(
        emb_dim, rngs=rngs, freq_dim=model_channels, t_scale=t_scale,
        dtype=dtype)
    self.y_embed = (layers.LabelEmbedder(num_classes, emb_dim, rngs=rngs)
                    if num_classes > 0 else None)
    self.conv_in = Conv(patch * patch * in_channels, ch, rngs=rngs,
                        dtype=dtype)
    # Optional fixed 2-D sin-cos position embedding (DiT's) added after
    # conv_in: absolute position for layouts ("a circle left of a square")
    # that zero padding alone conveys only weakly on small feature maps.
    self.pos_embed = pos_embed
    self.grid = inner
    if concat_init not in ('zero', 'xavier'):
      raise ValueError(f"concat_init must be 'zero' or 'xavier', got "
                       f'{concat_init!r}.')
    self.concat_in = (Conv(patch * patch * concat_channels, ch, rngs=rngs,
                           zero_init=concat_init == 'zero', dtype=dtype)
                      if concat_channels else None)
    kw = dict(rngs=rngs, dropout_rate=dropout, dtype=dtype)
    akw = dict(rngs=rngs, dtype=dtype, attn_fp32=attn_fp32,
               context_dim=self.text.text_dim if self.text else 0)
    # `res` is the side of the feature map (input_size / patch at the top):
    # attention_resolutions name feature-map sides, as in ADM.
    down, skips, res = [], [ch], inner
    for level, mult in enumerate(channel_mult):
      for _ in range(num_res_blocks):
        blk = [ResBlock(ch, mult * model_channels, emb_dim, **kw)]
        ch = mult * model_channels
        if res in attention_resolutions:
          blk.append(AttnBlock(ch, num_heads, **akw))
        down.append(nnx.List(blk))
        skips.append(ch)
      if level != len(channel_mult) - 1:
        down.append(nnx.List([Conv(ch, ch, rngs=rngs, stride=2,
                                   dtype=dtype)]))
        skips.append(ch)
        res //= 2
    self.down = nnx.List(down)
    mid = [ResBlock(ch, ch, emb_dim, **kw)]
    if mid_attention:
      mid.append(AttnBlock(ch, num_heads, **akw))
    self.mid = nnx.List(mid + [ResBlock(ch, ch, emb_dim, **kw)])
    up = []
    for level, mult in reversed(list(enumerate(channel_mult))):
      for i in range(num_res_blocks + 1):
        blk = [ResBlock(ch + skips.pop(), mult * model_channels, emb_dim,
                        **kw)]
        ch = mult * model_channels
        if res in attention_resolutions:
          blk.append(AttnBlock(ch, num_heads, **akw))
        if level and i == num_res_blocks:
          blk.append(Conv(ch, ch, rngs=rngs, dtype=dtype))  # after 2x up
          res *= 2
        up.append(nnx.List(blk))
    self.up = nnx.List(up)
    self.norm_out = GroupNorm(ch, rngs=rngs)
    self.conv_out = Conv(ch, patch * patch * self.out_channels, rngs=rngs,
                         zero_init=True, dtype=dtype)

  def _run(self, blk, h, emb, train, rngs, ctx=()):
    for layer in blk:
      if isinstance(layer, ResBlock):
        if self.remat:
          h = nnx.remat(lambda m, h, e, r: m(h, e, train=train, rngs=r))(
              layer, h, emb, rngs)
        else:
          h = layer(h, emb, train=train, rngs=rngs)
      elif isinstance(layer, AttnBlock):
        h = layer(h, *ctx)
      else:  # Conv: a downsample (stride 2) or the conv after an upsample.
        if layer.stride == 1:
          h = upsample_nearest2x(h)
        h = layer(h)
    return h

  def __call__(self, x_t: jax.Array, t: jax.Array, cond: dict | None = None,
               *, train: bool = False, rngs: nnx.Rngs | None = None,
               residuals: dict | None = None,
               extra_emb: jax.Array | None = None):
    s = self.input_size
    if x_t.shape[1:] != (s, s, self.in_channels):
      raise ValueError(f'UNet expects x_t of shape (B, {s}, {s}, '
                       f'{self.in_channels}), got {x_t.shape}.')
    cond = layers.check_cond(cond, self.cond_keys, 'UNet')
    emb = self.t_embed(jnp.broadcast_to(t, x_t.shape[:1]))
    if self.y_embed is not None:
      emb = emb + self.y_embed(cond['label'])
    if extra_emb is not None:
      emb = emb + extra_emb
    ctx = ()
    if self.text is not None:
      text, mask, pooled = self.text(cond)
      ctx = (text, mask)
      if self.pooled_embed is not None:
        emb = emb + self.pooled_embed(pooled)
    h = self.conv_in(space_to_depth(x_t, self.patch))
    if self.pos_embed:
      g, c = self.grid, h.shape[-1]
      h = h + jnp.asarray(dit.pos_embed_2d(c, g, g).reshape(g, g, c),
                          h.dtype)
    if self.concat_in is not None:
      c = cond['concat']
      if c.shape != x_t.shape[:1] + (s, s, self.concat_channels):
        raise ValueError(f"UNet expects cond['concat'] of shape (B, {s}, "
                         f'{s}, {self.concat_channels}), got {c.shape}.')
      h = h + self.concat_in(space_to_depth(c.astype(x_t.dtype), self.patch))
    hs = [h]
    for i, blk in enumerate(self.down):
      h = self._run(blk, h, emb, train, rngs, ctx)
      layers.record_feature(f'down{i}', h)
      hs.append(h)
    h = self._run(self.mid, h, emb, train, rngs, ctx)
    layers.record_feature('mid', h)
    if residuals is not None:
      down = list(residuals['down'])
      if len(down) != len(hs):
        raise ValueError(f'UNet residuals: {len(down)} skip residuals for '
                         f'{len(hs)} skip connections.')
      hs = [a + r.astype(a.dtype) for a, r in zip(hs, down)]
      h = h + residuals['mid'].astype(h.dtype)
    for i, blk in enumerate(self.up):
      h = self._run(blk, jnp.concatenate([h, hs.pop()], axis=-1), emb, train,
                    rngs, ctx)
      layers.record_feature(f'up{i}', h)
    h = self.conv_out(jax.nn.silu(self.norm_out(h)))
    return depth_to_space(h, self.patch).astype(x_t.dtype)
