"""DiT: a diffusion transformer with adaLN-Zero (Peebles & Xie, 2023).

Tokens are non-overlapping p x p patches with a fixed 2-D sinusoidal position
embedding; the timestep and class embeddings are summed into one conditioning
vector c that modulates every block through adaptive LayerNorm. The
modulation layers and the final projection start at zero, so every block is
the identity and the network outputs exactly 0 at initialisation.

Precision: parameters are float32; `dtype=jnp.bfloat16` runs the matmuls in
bf16 with float32 accumulation while LayerNorm, softmax and the residual
stream stay float32. `attn_fp32=True` keeps the attention matmuls in float32
too (the guard against bf16 attention overflow).

Imported checkpoints (`visgen.convert`): facebookresearch/DiT weights run
with the defaults; diffusers' DiTTransformer2DModel port differs in two
constants, reproduced by `t_freq_shift=1` (its timestep frequencies
10000^(-i/(half-1))) and `mlp_norm_eps=1e-5` (its feed-forward LayerNorm).

Image conditioning and adapters (off by default; the network is then
unchanged bit for bit): `concat_channels=k` patch-embeds `cond['concat']`
(B, H, W, k) with its own zero-initialised linear added to the token
embedding (channel concatenation whose extra inputs start at zero), and
`residuals` (a list of (B, N, width) arrays, PixArt-delta's ControlNet
from `visgen.models.controlnet`) are added to the outputs of the first
len(residuals) blocks.
"""

import dataclasses
from typing import Any

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from visgen.models import attention
from visgen.models import layers


@dataclasses.dataclass(frozen=True)
class DiTVariant:
  width: int
  depth: int
  heads: int


# Widths, depths and heads from the DiT paper (Table 1).
VARIANTS = {
    'S': DiTVariant(384, 12, 6),
    'B': DiTVariant(768, 12, 12),
    'L': DiTVariant(1024, 24, 16),
    'XL': DiTVariant(1152, 28, 16),
}


def pos_embed_2d(dim: int, grid_h: int, grid_w: int) -> np.ndarray:
  """Fixed sin-cos 2-D position embedding, shape (grid_h * grid_w, dim).

  Half the channels encode the row, half the column (each [sin, cos] at
  geometric frequencies), as in MAE / DiT.
  """
  if dim % 4:
    raise ValueError(f'DiT width must be a multiple of 4, got {dim}.')

  def one_axis(pos, d):
    omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
    out = np.outer(pos.reshape(-1), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)

  gy, gx = np.meshgrid(np.arange(grid_h, dtype=np.float64),
                       np.arange(grid_w, dtype=np.float64), indexing='ij')
  emb = np.concatenate([one_axis(gx, dim // 2), one_axis(gy, dim // 2)], 1)
  return emb.astype(np.float32)


def check_geometry(*, input_size: int, patch: int, width: int,
                   heads: int) -> None:
  """A transformer over patches: patch divides the image side, heads the
  width (ValueError naming the values otherwise)."""
  if input_size % patch:
    raise ValueError(f'patch {patch} must divide input_size {input_size}.')
  if width % heads:
    raise ValueError(f'width {width} is not divisible by heads {heads}.')


def patch_tokens(x: jax.Array, *, patch: int, size: int, channels: int,
                 model: str, what: str = 'x_t') -> tuple[jax.Array, int, int]:
  """(B, size, size, channels) -> ((B, N, p*p*C) channel-last patch tokens,
  grid height, grid width); a wrong input shape is a ValueError naming the
  model and the expected shape."""
  if x.shape[1:] != (size, size, channels):
    raise ValueError(f'{model} expects {what} of shape (B, {size}, {size}, '
                     f'{channels}), got {x.shape}.')
  b, p, g = x.shape[0], patch, size // patch
  x = x.reshape(b, g, p, g, p, channels).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, g * g, p * p * channels), g, g


def modulate(x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
  return x * (1.0 + scale[:, None, :]) + shift[:, None, :]


class DiTBlock(nnx.Module):
  """Pre-LN transformer block whose LayerNorms are modulated by c."""

  def __init__(self, width: int, heads: int, *, rngs: nnx.Rngs,
               mlp_ratio: float = 4.0, dtype: Any = jnp.float32,
               attn_fp32: bool = False, attn_impl: str = 'xla',
               mlp_norm_eps: float = 1e-6):
    hidden = int(width * mlp_ratio)
    self.mlp_norm_eps = mlp_norm_eps
    self.attn = attention.SelfAttention(
        width, heads, rngs=rngs, dtype=dtype, attn_fp32=attn_fp32,
        impl=attn_impl)
    self.fc1 = layers.Dense(width, hidden, rngs=rngs, axes=('embed', 'mlp'),
                            dtype=dtype)
    self.fc2 = layers.Dense(hidden, width, rngs=rngs, axes=('mlp', 'embed'),
                            dtype=dtype)
    self.ada = layers.Dense(width, 6 * width, rngs=rngs,
                            axes=(None, 'embed'), kernel_init=layers.zeros,
                            dtype=dtype)

  def __call__(self, x: jax.Array, c: jax.Array, *,
               return_attn: bool = False):
    mods = jnp.split(self.ada(jax.nn.silu(c)), 6, axis=-1)
    shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = mods
    h = modulate(layers.layer_norm(x), shift_a, scale_a)
    a, probs = self.attn(h, return_attn=return_attn)
    x = x + gate_a[:, None, :] * a
    h = modulate(layers.layer_norm(x, eps=self.mlp_norm_eps), shift_m,
                 scale_m)
    h = self.fc2(jax.nn.gelu(self.fc1(h), approximate=True))
    x = x + gate_m[:, None, :] * h
    return x, probs


class DiT(nnx.Module):
  """(x_t (B, H, W, C), t (B,), cond) -> (B, H, W, C or 2C)."""

  def __init__(self, *, rngs: nnx.Rngs, input_size: int = 32,
               in_channels: int = 3, patch: int = 2,
               variant: str | None = None, width: int = 384,
               depth: int = 12, heads: int = 6, mlp_ratio: float = 4.0,
               num_classes: int = 0, learn_sigma: bool = False,
               t_scale: float = 1000.0, dtype: Any = jnp.float32,
               attn_fp32: bool = False, attn_impl: str = 'xla',
               remat: bool = False, concat_channels: int = 0,
               t_freq_shift: float = 0.0, mlp_norm_eps: float = 1e-6):
    if variant is not None:
      if variant not in VARIANTS:
        raise ValueError(f'Unknown DiT variant {variant!r}. Valid choices: '
                         f'{", ".join(VARIANTS)} (or variant=None with '
                         'width/depth/heads).')
      v = VARIANTS[variant]
      width, depth, heads = v.width, v.depth, v.heads
    if patch not in (1, 2, 4, 8):
      raise ValueError(f'patch must be 1, 2, 4 or 8; got patch={patch}.')
    check_geometry(input_size=input_size, patch=patch, width=width,
                   heads=heads)
    self.input_size = input_size
    self.in_channels = in_channels
    self.out_channels = 2 * in_channels if learn_sigma else in_channels
    self.patch = patch
    self.width = width
    self.num_classes = num_classes
    self.remat = remat
    self.cond_keys = (('label',) if num_classes > 0 else ()) + (
        ('concat',) if concat_channels else ())
    self.concat_channels = concat_channels
    self.dtype = dtype
    self.x_embed = layers.Dense(patch * patch * in_channels, width, rngs=rngs,
                                axes=('conv_in', 'embed'), dtype=dtype)
    self.concat_embed = (
        layers.Dense(patch * patch * concat_channels, width, rngs=rngs,
                     axes=('conv_in', 'embed'), kernel_init=layers.zeros,
                     dtype=dtype) if concat_channels else None)
    self.t_embed = layers.TimestepEmbedder(width, rngs=rngs, t_scale=t_scale,
                                           dtype=dtype,
                                           freq_shift=t_freq_shift)
    self.y_embed = (layers.LabelEmbedder(num_classes, width, rngs=rngs)
                    if num_classes > 0 else None)
    self.blocks = nnx.List([
        DiTBlock(width, heads, rngs=rngs, mlp_ratio=mlp_ratio, dtype=dtype,
                 attn_fp32=attn_fp32, attn_impl=attn_impl,
                 mlp_norm_eps=mlp_norm_eps)
        for _ in range(depth)])
    self.final_ada = layers.Dense(width, 2 * width, rngs=rngs,
                                  axes=(None, 'embed'),
                                  kernel_init=layers.zeros, dtype=dtype)
    self.final = layers.Dense(width, patch * patch * self.out_channels,
                              rngs=rngs, axes=('embed', 'conv_out'),
                              kernel_init=layers.zeros, dtype=dtype)

  def patchify(self, x: jax.Array, channels: int) -> jax.Array:
    """(B, H, W, C) -> (B, N, p*p*C) tokens, checking the shape."""
    return patch_tokens(x, patch=self.patch, size=self.input_size,
                        channels=channels, model='DiT',
                        what='an image input')[0]

  def __call__(self, x_t: jax.Array, t: jax.Array, cond: dict | None = None,
               *, train: bool = False, rngs: nnx.Rngs | None = None,
               return_attn: bool = False, residuals: list | None = None):
    """Returns the prediction, plus a list of per-block attention maps
    (B, heads, N, N) when `return_attn` is set."""
    del train, rngs  # DiT uses no dropout (label dropout is the task's).
    b, p = x_t.shape[0], self.patch
    tokens, gh, gw = patch_tokens(x_t, patch=p, size=self.input_size,
                                  channels=self.in_channels, model='DiT')
    cond = layers.check_cond(cond, self.cond_keys, 'DiT')
    x = self.x_embed(tokens)
    if self.concat_embed is not None:
      x = x + self.concat_embed(self.patchify(cond['concat'].astype(
          x_t.dtype), self.concat_channels))
    x = x + jnp.asarray(pos_embed_2d(self.width, gh, gw))
    c = self.t_embed(jnp.broadcast_to(t, (b,)))
    if self.y_embed is not None:
      c = c + self.y_embed(cond['label'])

    def run_block(block, x, c):
      return block(x, c, return_attn=return_attn)

    if self.remat:
      run_block = nnx.remat(run_block)
    residuals = list(residuals or ())
    if len(residuals) > len(self.blocks):
      raise ValueError(f'DiT residuals: {len(residuals)} for '
                       f'{len(self.blocks)} blocks.')
    maps = []
    for i, block in enumerate(self.blocks):
      x, probs = run_block(block, x, c)
      if i < len(residuals):
        x = x + residuals[i].astype(x.dtype)
      layers.record_feature(f'block{i}', x)
      maps.append(probs)
    shift, scale = jnp.split(self.final_ada(jax.nn.silu(c)), 2, axis=-1)
    x = self.final(modulate(layers.layer_norm(x), shift, scale))
    oc = self.out_channels
    x = x.reshape(b, gh, gw, p, p, oc).transpose(0, 1, 3, 2, 4, 5)
    out = x.reshape(b, gh * p, gw * p, oc).astype(x_t.dtype)
    return (out, maps) if return_attn else out
