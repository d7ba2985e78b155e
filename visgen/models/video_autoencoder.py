"""Causal 3-D convolutional KL autoencoder for video (the family of
CogVideoX's, Wan's and SANA-Video's video VAEs, at toy size).

  x (B, T, H, W, C) in [-1, 1], T = 1 + s*k
      --encoder--> moments (B, 1 + k, H/f, W/f, 2z) --> (mean, logvar)
  z = mean + exp(logvar / 2) * eps
      --decoder--> x_rec (B, 1 + s*k, H, W, C)

with s = 2^(number of temporal downsamplings) (4 by default) and f =
2^(len(ch_mult) - 1) (4 or 8).

Causality. Every 3-D convolution is causal in time: a kernel of kt frames
sees the current frame and the kt - 1 frames before it, and the sequence is
padded on the past side only, with kt - 1 copies of frame 0 (replicate
padding, as CogVideoX's CausalConv3d and SANA-Video's VAE; Wan pads with
zeros). Normalisation is a GroupNorm per frame (statistics over H, W and
the group's channels of one frame), so it mixes no time steps either. A
temporal downsampling is a causal conv with kt = 3 and stride 2 in time
(and 2 in space): output frame i sees input frames 2i - 2 .. 2i, frame 0
three copies of input frame 0, so 1 + 2m frames give 1 + m and the first
frame stays encoded alone (Wan's `downsample3d` likewise keeps the first
frame out of the temporal stride). Two of them (the default): latent frame
j depends on input frames 0 .. 4j only, and latent frame 0 on frame 0 only
(an image is a one-frame video). A temporal upsampling mirrors it: frame 0
stays one frame, every later frame is repeated twice (1 + m -> 1 + 2m, as
CogVideoX's Upsample3D), then nearest 2x in space and a causal 3x3x3 conv;
decoded frame t depends on latent frames 0 .. ceil(t / 4) only. So encoding
and decoding can both run on a growing video (tests check this exactly).

Encoder: causal conv_in; per level `num_res_blocks` ResNet blocks (per-frame
GroupNorm, SiLU, causal 3x3x3 conv, twice, residual) and a downsampler to
the next level's width ch * ch_mult[i + 1] (all levels but the last;
temporal stride where `temporal_downsample` says); a mid block of two
ResNet blocks (no attention); GroupNorm, SiLU, conv_out to 2z channels;
1x1x1 quant_conv. The decoder mirrors it (`num_res_blocks + 1` blocks per
level, upsamplers to the next narrower width).

Residual autoencoding (`residual=True`, DC-AE, Chen et al. 2025; Wan
2.2's AvgDown3D / DupUp3D). Downsamplers add a parameter-free shortcut: the
input's 2x2 cells (x 2 frames when temporal: frame 0 paired with itself,
then frames (2i - 1, 2i), causal) stacked on channels channel-major as
pixel_unshuffle does, then adjacent channels averaged down to the output
width. Upsamplers add the inverse: channels repeated up to 4x (8x) the
output width and unstacked into 2x2 (x 2 frame) cells, frame 0 keeping
one. The posterior mean adds the encoder features' channels averaged down
to z; the decoder's conv_in output adds z's channels repeated. The convs
then learn residuals around a fixed pack / unpack path. Measured on
one-frame 16x16 shapes (width 8, L2 loss, batch 8): 19.5 dB after 1200
steps without the shortcuts, 23.2 dB after 1600 with them (in an
average-pool form; the plain stack lingers near the "background colour
only" reconstruction for thousands of steps).

Parameter names follow `visgen.models.autoencoder` (encoder/down_blocks/...,
decoder/up_blocks/..., quant_conv, post_quant_conv); conv kernels are
(kt, kh, kw, in, out).

Calling convention as the image autoencoder's: `model(x, t, cond,
method='encode' | 'decode' | 'decode_features' | 'reconstruct')` (t and cond
ignored), so the autoencoder task's machinery and frozen components reuse
it; `sample_posterior` and `kl_divergence` are the image autoencoder's.
"""

from typing import Any
from typing import Sequence

from flax import nnx
import jax
import jax.numpy as jnp

from visgen.models import autoencoder as ae_lib
from visgen.models import layers
from visgen.validate import UserError

LOGVAR_RANGE = ae_lib.LOGVAR_RANGE
sample_posterior = ae_lib.sample_posterior
kl_divergence = ae_lib.kl_divergence


def _same_pad(n: int, k: int, s: int) -> tuple[int, int]:
  """XLA's 'SAME' padding of one side (diffusers' (0, 1) for k 3, s 2)."""
  out = -(-n // s)
  total = max((out - 1) * s + k - n, 0)
  return total // 2, total - total // 2


class CausalConv3d(nnx.Module):
  """(B, T, H, W, C) conv: kt frames back in time (replicate-padded with
  frame 0, no future frames), 'SAME' in space; strides (st, ss, ss)."""

  def __init__(self, cin: int, cout: int, *, rngs: nnx.Rngs, kt: int = 3,
               k: int = 3, st: int = 1, ss: int = 1, zero_init: bool = False,
               dtype: Any = jnp.float32):
    init = layers.zeros if zero_init else layers.xavier_uniform
    self.kernel = layers.make_param(
        rngs.params(), init, (kt, k, k, cin, cout),
        (None, None, None, 'conv_in', 'conv_out'))
    self.bias = layers.make_param(rngs.params(), layers.zeros, (cout,),
                                  ('conv_out',))
    self.kt, self.k, self.st, self.ss = kt, k, st, ss
    self.dtype = dtype

  def __call__(self, x: jax.Array) -> jax.Array:
    kt, st, cin = self.kt, self.st, x.shape[-1]
    if kt > 1:  # The past side only: kt - 1 copies of frame 0.
      x = jnp.concatenate([jnp.repeat(x[:, :1], kt - 1, axis=1), x], axis=1)
    b, t = x.shape[:2]
    t_out = (t - kt) // st + 1
    # Output frame i reads padded frames st*i .. st*i + kt - 1: stacked on
    # channels, one 2-D conv over the B * t_out frames computes the 3-D
    # conv (3-5x faster than XLA's 3-D conv on CPU, same result).
    x = jnp.concatenate([x[:, j:j + st * (t_out - 1) + 1:st]
                         for j in range(kt)], axis=-1)
    x = x.reshape((b * t_out,) + x.shape[2:])
    kernel = self.kernel[...].transpose(1, 2, 0, 3, 4).reshape(
        self.k, self.k, kt * cin, -1)
    pad = [_same_pad(x.shape[1], self.k, self.ss),
           _same_pad(x.shape[2], self.k, self.ss)]
    y = jax.lax.conv_general_dilated(
        x.astype(self.dtype), kernel.astype(self.dtype), (self.ss, self.ss),
        pad, dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
        preferred_element_type=jnp.float32)
    return (y + self.bias[...]).reshape((b, t_out) + y.shape[1:])


class FrameGroupNorm(ae_lib.GroupNorm):
  """The image autoencoder's GroupNorm applied to every frame on its own
  (a norm over T would let later frames change earlier ones)."""

  def __call__(self, x):
    b, t = x.shape[:2]
    y = super().__call__(x.reshape((b * t,) + x.shape[2:]))
    return y.reshape(x.shape)


class ResnetBlock3D(nnx.Module):
  """GN-SiLU-causal conv, GN-SiLU-causal conv, plus the (1x1x1) shortcut."""

  def __init__(self, cin: int, cout: int, *, rngs: nnx.Rngs, groups: int,
               dtype: Any):
    self.norm1 = FrameGroupNorm(cin, rngs=rngs, groups=groups)
    self.conv1 = CausalConv3d(cin, cout, rngs=rngs, dtype=dtype)
    self.norm2 = FrameGroupNorm(cout, rngs=rngs, groups=groups)
    self.conv2 = CausalConv3d(cout, cout, rngs=rngs, dtype=dtype)
    self.conv_shortcut = (CausalConv3d(cin, cout, rngs=rngs, kt=1, k=1,
                                       dtype=dtype) if cin != cout else None)

  def __call__(self, x):
    h = self.conv1(jax.nn.silu(self.norm1(x)))
    h = self.conv2(jax.nn.silu(self.norm2(h)))
    return (x if self.conv_shortcut is None else self.conv_shortcut(x)) + h


def space_to_channel(x, temporal: bool):
  """(B, T, H, W, C) -> (B, T', H/2, W/2, 4C or 8C), channel-major
  (c, [dt,] dy, dx) as PyTorch's pixel_unshuffle: each 2x2 (x 2 frames)
  cell stacked on channels; in time frame 0 is paired with itself, then
  frames (2i - 1, 2i) (T = 1 + 2m -> 1 + m, causal)."""
  b, t, h, w, c = x.shape
  x = x.reshape(b, t, h // 2, 2, w // 2, 2, c)
  x = x.transpose(0, 1, 2, 4, 6, 3, 5)  # (b, t, h', w', c, dy, dx)
  if temporal:
    x = jnp.concatenate([x[:, :1], x], axis=1)
    x = x.reshape(b, (t + 1) // 2, 2, h // 2, w // 2, c, 2, 2)
    x = x.transpose(0, 1, 3, 4, 5, 2, 6, 7)  # (..., c, dt, dy, dx)
  return x.reshape(x.shape[:4] + (-1,))


def channel_to_space(x, temporal: bool):
  """The inverse of `space_to_channel` (frame 0 keeps its later copy)."""
  b, t, h, w, n = x.shape
  k = 8 if temporal else 4
  c = n // k
  if temporal:
    x = x.reshape(b, t, h, w, c, 2, 2, 2).transpose(0, 1, 5, 2, 3, 4, 6, 7)
    x = x.reshape(b, 2 * t, h, w, c, 2, 2)[:, 1:]
    t = 2 * t - 1
  x = x.reshape(b, t, h, w, c, 2, 2).transpose(0, 1, 2, 5, 3, 6, 4)
  return x.reshape(b, t, 2 * h, 2 * w, c)


def match_channels(x, c: int):
  """x's channels averaged in adjacent groups down to c, or each repeated
  up to c (DC-AE's parameter-free shortcuts; the two are inverse on
  repeated channels)."""
  n = x.shape[-1]
  if n % c == 0:
    return x.reshape(x.shape[:-1] + (c, n // c)).mean(axis=-1)
  return jnp.repeat(x, c // n, axis=-1)


def _check_ratio(a: int, b: int, what: str):
  if a % b and b % a:
    raise UserError(f'residual=True averages / repeats channels between '
                    f'{what}: {a} and {b}; one must divide the other (or set '
                    'residual=False).')


class Downsample3D(nnx.Module):
  """cin -> cout channels, stride 2 in space and, with `temporal`, a causal
  stride 2 in time (kt = 3: 1 + 2m frames -> 1 + m, frame 0 alone); with
  `residual`, plus DC-AE's shortcut: the input's 2x2 (x 2 frames) cells
  stacked on channels (`space_to_channel`), averaged down to cout (Wan
  2.2's AvgDown3D)."""

  def __init__(self, cin: int, cout: int, *, rngs: nnx.Rngs, temporal: bool,
               residual: bool, dtype):
    self.conv = CausalConv3d(cin, cout, rngs=rngs, kt=3,
                             st=2 if temporal else 1, ss=2, dtype=dtype)
    self.temporal, self.residual, self.cout = temporal, residual, cout
    if residual:
      _check_ratio(cin * (8 if temporal else 4), cout, 'a downsampler')

  def __call__(self, x):
    y = self.conv(x)
    if not self.residual:
      return y
    return y + match_channels(space_to_channel(x, self.temporal), self.cout)


class Upsample3D(nnx.Module):
  """cin -> cout channels: nearest 2x in space and, with `temporal`, frame 0
  kept once and every later frame twice (1 + m -> 1 + 2m), then a causal
  3x3x3 conv; with `residual`, plus DC-AE's shortcut: the input's channels
  repeated and unstacked into 2x2 (x 2 frames) cells (`channel_to_space`,
  Wan 2.2's DupUp3D)."""

  def __init__(self, cin: int, cout: int, *, rngs: nnx.Rngs, temporal: bool,
               residual: bool, dtype):
    self.conv = CausalConv3d(cin, cout, rngs=rngs, dtype=dtype)
    self.temporal, self.residual, self.cout = temporal, residual, cout
    if residual:
      _check_ratio(cin, cout * (8 if temporal else 4), 'an upsampler')

  def __call__(self, x):
    y = x
    if self.temporal:
      y = jnp.concatenate([y[:, :1], jnp.repeat(y[:, 1:], 2, axis=1)], axis=1)
    y = self.conv(jnp.repeat(jnp.repeat(y, 2, axis=2), 2, axis=3))
    if not self.residual:
      return y
    k = 8 if self.temporal else 4
    return y + channel_to_space(match_channels(x, self.cout * k),
                                self.temporal)


class Block3D(nnx.Module):
  """A level: ResNet blocks (cin -> cout), then an optional down/up sampler
  to `next_ch` channels (the next level's width)."""

  def __init__(self, cin: int, cout: int, n: int, *, rngs: nnx.Rngs,
               groups: int, sample: str | None, temporal: bool,
               residual: bool, next_ch: int | None, dtype: Any):
    self.resnets = nnx.List([
        ResnetBlock3D(cin if i == 0 else cout, cout, rngs=rngs, groups=groups,
                      dtype=dtype) for i in range(n)])
    kw = dict(rngs=rngs, temporal=temporal, residual=residual, dtype=dtype)
    if sample == 'down':
      self.downsamplers = nnx.List([Downsample3D(cout, next_ch, **kw)])
    elif sample == 'up':
      self.upsamplers = nnx.List([Upsample3D(cout, next_ch, **kw)])

  def __call__(self, x):
    for r in self.resnets:
      x = r(x)
    for s in getattr(self, 'downsamplers', None) or getattr(
        self, 'upsamplers', None) or ():
      x = s(x)
    return x


class MidBlock3D(nnx.Module):
  def __init__(self, ch: int, *, rngs: nnx.Rngs, groups: int, dtype: Any):
    self.resnets = nnx.List([ResnetBlock3D(ch, ch, rngs=rngs, groups=groups,
                                           dtype=dtype) for _ in range(2)])

  def __call__(self, x):
    for r in self.resnets:
      x = r(x)
    return x


class Encoder3D(nnx.Module):
  """Video -> moments (2z channels) at 1/f space, 1/s time (+ frame 0)."""

  def __init__(self, *, rngs, in_channels, widths, num_res_blocks, out_ch,
               groups, temporal, residual, dtype):
    self.conv_in = CausalConv3d(in_channels, widths[0], rngs=rngs,
                                dtype=dtype)
    blocks, cin = [], widths[0]
    for i, cout in enumerate(widths):
      last = i == len(widths) - 1
      nxt = None if last else widths[i + 1]
      blocks.append(Block3D(cin, cout, num_res_blocks, rngs=rngs,
                            groups=groups, sample=None if last else 'down',
                            temporal=not last and temporal[i],
                            residual=residual, next_ch=nxt, dtype=dtype))
      cin = nxt or cout
    self.down_blocks = nnx.List(blocks)
    self.mid_block = MidBlock3D(cin, rngs=rngs, groups=groups, dtype=dtype)
    self.conv_norm_out = FrameGroupNorm(cin, rngs=rngs, groups=groups)
    self.conv_out = CausalConv3d(cin, out_ch, rngs=rngs, dtype=dtype)

  def features(self, x):
    """The residual stream after the mid block (before the output head)."""
    h = self.conv_in(x)
    for blk in self.down_blocks:
      h = blk(h)
    return self.mid_block(h)

  def __call__(self, x):
    return self.conv_out(jax.nn.silu(self.conv_norm_out(self.features(x))))


class Decoder3D(nnx.Module):
  """Latent video (z channels) -> video, mirroring the encoder."""

  def __init__(self, *, rngs, out_channels, widths, num_res_blocks,
               z_channels, groups, temporal, residual, dtype):
    widths = list(reversed(widths))
    temporal = list(reversed(temporal))  # up level i mirrors down L-2-i
    self.conv_in = CausalConv3d(z_channels, widths[0], rngs=rngs,
                                dtype=dtype)
    self.mid_block = MidBlock3D(widths[0], rngs=rngs, groups=groups,
                                dtype=dtype)
    blocks, cin = [], widths[0]
    for i, cout in enumerate(widths):
      last = i == len(widths) - 1
      nxt = None if last else widths[i + 1]
      blocks.append(Block3D(cin, cout, num_res_blocks + 1, rngs=rngs,
                            groups=groups, sample=None if last else 'up',
                            temporal=not last and temporal[i],
                            residual=residual, next_ch=nxt, dtype=dtype))
      cin = nxt or cout
    self.up_blocks = nnx.List(blocks)
    self.conv_norm_out = FrameGroupNorm(cin, rngs=rngs, groups=groups)
    self.conv_out = CausalConv3d(cin, out_channels, rngs=rngs, dtype=dtype)

  def features(self, z, shortcut=None):
    """Everything before conv_out; `shortcut` (B, T, h, w, C0) is added
    to conv_in's output (the latent's channels duplicated)."""
    h = self.conv_in(z)
    if shortcut is not None:
      h = h + shortcut
    h = self.mid_block(h)
    for blk in self.up_blocks:
      h = blk(h)
    return jax.nn.silu(self.conv_norm_out(h))

  def __call__(self, z):
    return self.conv_out(self.features(z))


class VideoAutoencoderKL(nnx.Module):
  """The causal video KL autoencoder (see the module docstring).

  Attributes: `factor` (spatial f), `temporal_factor` (s), `latent_shape`
  ((1 + (num_frames - 1) / s, input_size / f, input_size / f, z)).
  Encoding is fully convolutional: any T = 1 + s*k frames and any side
  divisible by f are accepted, not only (num_frames, input_size).
  """

  def __init__(self, *, rngs: nnx.Rngs, input_size: int = 16,
               num_frames: int = 9, in_channels: int = 3, ch: int = 16,
               ch_mult: Sequence[int] = (1, 2, 2), num_res_blocks: int = 1,
               z_channels: int = 8, double_z: bool = True,
               norm_groups: int = 8,
               temporal_downsample: Sequence[bool] | None = None,
               residual: bool = True, use_quant_conv: bool = True,
               dtype: Any = jnp.float32):
    levels = len(ch_mult)
    if levels < 1 or z_channels < 1:
      raise UserError('video_autoencoder needs ch_mult with at least one '
                      f'level and z_channels >= 1; got ch_mult={ch_mult}, '
                      f'z_channels={z_channels}.')
    if temporal_downsample is None:  # CogVideoX: the first two levels.
      temporal_downsample = [i < 2 for i in range(levels - 1)]
    temporal = [bool(t) for t in temporal_downsample]
    if len(temporal) != levels - 1:
      raise UserError(f'temporal_downsample={tuple(temporal_downsample)} '
                      f'needs one entry per downsampler: len(ch_mult) - 1 = '
                      f'{levels - 1}.')
    self.factor = 2 ** (levels - 1)
    self.temporal_factor = 2 ** sum(temporal)
    self.input_size, self.num_frames = input_size, num_frames
    self.in_channels, self.z_channels = in_channels, z_channels
    self.double_z = double_z
    self._check_video((1, num_frames, input_size, input_size, in_channels),
                      'the model config (num_frames, input_size)')
    self.latent_shape = (1 + (num_frames - 1) // self.temporal_factor,
                         input_size // self.factor,
                         input_size // self.factor, z_channels)
    self.cond_keys = ()
    widths = [ch * m for m in ch_mult]
    if residual:
      _check_ratio(widths[-1], z_channels, 'the last width and z_channels')
    self.residual = residual
    kw = dict(rngs=rngs, widths=widths, num_res_blocks=num_res_blocks,
              groups=norm_groups, temporal=temporal, residual=residual,
              dtype=dtype)
    m = 2 * z_channels if double_z else z_channels
    self.encoder = Encoder3D(in_channels=in_channels, out_ch=m, **kw)
    self.decoder = Decoder3D(out_channels=in_channels, z_channels=z_channels,
                             **kw)
    self.quant_conv = (CausalConv3d(m, m, rngs=rngs, kt=1, k=1, dtype=dtype)
                       if use_quant_conv else None)
    self.post_quant_conv = (CausalConv3d(z_channels, z_channels, rngs=rngs,
                                         kt=1, k=1, dtype=dtype)
                            if use_quant_conv else None)
    self.discriminator = None

  def _check_video(self, shape, what):
    s, f = self.temporal_factor, self.factor
    if len(shape) != 5 or shape[-1] != self.in_channels:
      raise UserError(f'video_autoencoder: {what} must be (B, T, H, W, '
                      f'{self.in_channels}) videos, got {tuple(shape)}.')
    t, h, w = shape[1:4]
    if t < 1 or (t - 1) % s:
      raise UserError(
          f'video_autoencoder: {what} has T={t} frames; the causal encoder '
          f'keeps frame 0 alone and compresses the rest by {s}, so T must '
          f'be 1 + {s}k (e.g. {1 + s * max(1, (t - 1) // s)}). Fix: set '
          f'num_frames to 1 + {s}k.')
    if h % f or w % f:
      raise UserError(f'video_autoencoder: {what} has {h}x{w} frames, not '
                      f'divisible by the spatial factor f={f} '
                      '(2^(len(ch_mult)-1)); use a multiple of f.')

  def encode(self, x, *, train: bool = False, rngs=None):
    """(mean, logvar) of q(z | x), each (B, 1 + (T-1)/s, H/f, W/f, z)."""
    del train, rngs
    self._check_video(x.shape, 'the input')
    enc = self.encoder
    h = enc.features(x)
    m = enc.conv_out(jax.nn.silu(enc.conv_norm_out(h)))
    if self.quant_conv is not None:
      m = self.quant_conv(m)
    if self.double_z:
      mean, logvar = jnp.split(m, 2, axis=-1)
    else:
      mean, logvar = m, jnp.full_like(m, LOGVAR_RANGE[0])
    if self.residual:  # DC-AE: the features' channels averaged to z.
      mean = mean + match_channels(h, self.z_channels)
    return mean, jnp.clip(logvar, *LOGVAR_RANGE)

  def decode_features(self, z, *, train: bool = False, rngs=None):
    del train, rngs
    if z.ndim != 5 or z.shape[-1] != self.z_channels:
      raise UserError(f'video_autoencoder.decode expects (B, T, h, w, '
                      f'{self.z_channels}) latents, got {tuple(z.shape)}.')
    shortcut = (match_channels(z, self.decoder.conv_in.bias.shape[0])
                if self.residual else None)  # DC-AE: z's channels repeated
    if self.post_quant_conv is not None:
      z = self.post_quant_conv(z)
    return self.decoder.features(z, shortcut)

  def decode(self, z, *, train: bool = False, rngs=None):
    """Latents (B, 1 + k, h, w, z) -> videos (B, 1 + s*k, h*f, w*f, C)."""
    return self.decoder.conv_out(self.decode_features(z, train=train,
                                                      rngs=rngs))

  def reconstruct(self, x, *, key=None, train: bool = False, rngs=None):
    mean, logvar = self.encode(x, train=train, rngs=rngs)
    z = mean if key is None else sample_posterior(key, mean, logvar)
    return self.decode(z, train=train, rngs=rngs)

  def __call__(self, x, t=None, cond=None, *, train: bool = False,
               rngs=None, method: str | None = None, **kw):
    del t, cond
    if method in (None, 'reconstruct'):
      return self.reconstruct(x, train=train, rngs=rngs, **kw)
    if method not in ('encode', 'decode', 'decode_features'):
      raise ValueError(f'Unknown video_autoencoder method {method!r}. '
                       'Valid: encode, decode, decode_features, reconstruct.')
    return getattr(self, method)(x, train=train, rngs=rngs, **kw)
