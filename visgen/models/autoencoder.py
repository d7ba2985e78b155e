"""KL autoencoder of Stable Diffusion's AutoencoderKL family (LDM, Rombach et
al. 2022, Sec. 3 and App. G; diffusers' `AutoencoderKL`).

  x (B, H, W, C) in [-1, 1] --encoder--> moments (B, h, w, 2z)
      --quant_conv (1x1)--> (mean, logvar)     h = H / f, f = 2^(levels-1)
  z = mean + exp(logvar / 2) * eps             (diagonal Gaussian posterior)
      --post_quant_conv (1x1)--decoder--> x_rec (B, H, W, C)

Encoder: conv_in; per level `num_res_blocks` ResNet blocks (GroupNorm, SiLU,
3x3 conv, twice, residual; 1x1 shortcut when the width changes) and a
stride-2 3x3 downsample conv with (0, 1) padding (all levels but the last);
a mid block resnet -> single-head self-attention -> resnet; GroupNorm, SiLU,
conv_out to 2z channels (`double_z`) or z. The decoder mirrors it (conv_in,
mid block, `num_res_blocks + 1` resnets per level with a nearest-2x
upsample + conv between levels, GroupNorm, SiLU, conv_out). GroupNorm eps is
1e-6 as in LDM/diffusers.

Parameter names follow diffusers' `AutoencoderKL` module tree so the
importer (`visgen.convert`) is a mapping of names and layouts:
`encoder/down_blocks/<i>/resnets/<j>/{norm1,conv1,norm2,conv2,conv_shortcut}`,
`encoder/down_blocks/<i>/downsamplers/0/conv`,
`{encoder,decoder}/mid_block/{resnets/<0|1>,attentions/0/{group_norm,to_q,
to_k,to_v,to_out}}`, `decoder/up_blocks/<i>/{resnets/<j>,upsamplers/0/conv}`
(up_blocks[0] is the lowest resolution, as in diffusers),
`{encoder,decoder}/{conv_in,conv_norm_out,conv_out}`, `quant_conv`,
`post_quant_conv`. Kernels are HWIO (convs) / (in, out) (linears); GroupNorm
has `scale` / `bias`. Only diffusers' `to_out.0` loses its `.0`.

LDM's configs map as ch = block_out_channels[0], ch_mult =
block_out_channels / ch, num_res_blocks = layers_per_block, z_channels =
latent_channels (SD: ch 128, ch_mult (1, 2, 4, 4), 2 blocks, z 4, f = 8).

Optionally (`disc_layers > 0`) the model also holds LDM's PatchGAN
discriminator (`discriminator/...`, Isola et al. 2017's NLayerDiscriminator:
4x4 convs, stride 2 then 1, LeakyReLU 0.2; GroupNorm instead of BatchNorm,
which would need batch statistics in the state); it is trained by the
`autoencoder` task and ignored by encode/decode.

Calling convention: the loop's `make_apply` calls
`model(x, t, cond, train=..., rngs=..., **kw)`; here `t` and `cond` are
ignored and `method='encode' | 'decode' | 'reconstruct' | 'discriminate'`
picks the computation (default: reconstruct with the posterior mean), so one
apply function serves the task and the frozen components alike.
"""

import math
from typing import Any
from typing import Sequence

from flax import nnx
import jax
import jax.numpy as jnp

from visgen.models import layers
from visgen.models import unet as unet_lib
from visgen.models.unet import Conv

LOGVAR_RANGE = (-30.0, 20.0)  # LDM's DiagonalGaussianDistribution clamp.


class GroupNorm(unet_lib.GroupNorm):
  """The U-Net's GroupNorm (affine `scale`, `bias`, fp32 statistics) with
  SD's eps 1e-6 and no silent fallback: the channels must divide into
  `groups` (a converted checkpoint's layout depends on it)."""

  def __init__(self, ch: int, *, rngs: nnx.Rngs, groups: int = 32,
               eps: float = 1e-6):
    if ch % groups:
      raise ValueError(f'GroupNorm: {ch} channels are not divisible by '
                       f'norm_groups={groups}; choose channel counts that '
                       'are multiples of norm_groups.')
    super().__init__(ch, rngs=rngs, groups=groups, eps=eps)


class ResnetBlock2D(nnx.Module):
  """GN-SiLU-conv3x3, GN-SiLU-dropout-conv3x3, plus the (1x1) shortcut."""

  def __init__(self, cin: int, cout: int, *, rngs: nnx.Rngs, groups: int,
               dropout: float = 0.0, dtype: Any = jnp.float32):
    self.norm1 = GroupNorm(cin, rngs=rngs, groups=groups)
    self.conv1 = Conv(cin, cout, rngs=rngs, dtype=dtype)
    self.norm2 = GroupNorm(cout, rngs=rngs, groups=groups)
    self.conv2 = Conv(cout, cout, rngs=rngs, dtype=dtype)
    self.conv_shortcut = (Conv(cin, cout, rngs=rngs, k=1, dtype=dtype)
                          if cin != cout else None)
    self.dropout = dropout

  def __call__(self, x, *, train: bool = False, rngs=None):
    h = self.conv1(jax.nn.silu(self.norm1(x)))
    h = jax.nn.silu(self.norm2(h))
    if train and self.dropout > 0.0:
      if rngs is None:
        raise ValueError('Autoencoder dropout in training needs rngs.')
      keep = jax.random.bernoulli(rngs.dropout(), 1.0 - self.dropout,
                                  h.shape)
      h = jnp.where(keep, h / (1.0 - self.dropout), 0.0)
    h = self.conv2(h)
    return (x if self.conv_shortcut is None else self.conv_shortcut(x)) + h


class Attention(nnx.Module):
  """Single-head self-attention over the h*w positions (diffusers' VAE
  `Attention`: group_norm, to_q/to_k/to_v/to_out, residual)."""

  def __init__(self, ch: int, *, rngs: nnx.Rngs, groups: int,
               dtype: Any = jnp.float32):
    self.group_norm = GroupNorm(ch, rngs=rngs, groups=groups)
    kw = dict(rngs=rngs, axes=('embed', 'heads'), dtype=dtype)
    self.to_q = layers.Dense(ch, ch, **kw)
    self.to_k = layers.Dense(ch, ch, **kw)
    self.to_v = layers.Dense(ch, ch, **kw)
    self.to_out = layers.Dense(ch, ch, rngs=rngs, axes=('heads', 'embed'),
                               dtype=dtype)
    self.dtype = dtype

  def __call__(self, x):
    b, h, w, c = x.shape
    t = self.group_norm(x).reshape(b, h * w, c)
    q, k, v = self.to_q(t), self.to_k(t), self.to_v(t)
    logits = layers.bmm(q * c**-0.5, k, self.dtype, False, True)
    out = layers.bmm(jax.nn.softmax(logits, axis=-1), v, self.dtype)
    return x + self.to_out(out).reshape(b, h, w, c)


class MidBlock(nnx.Module):
  """resnet -> attention -> resnet at the lowest resolution."""

  def __init__(self, ch: int, *, rngs: nnx.Rngs, groups: int,
               attention: bool, dropout: float, dtype: Any):
    kw = dict(rngs=rngs, groups=groups, dtype=dtype)
    self.resnets = nnx.List([ResnetBlock2D(ch, ch, dropout=dropout, **kw)
                             for _ in range(2)])
    self.attentions = nnx.List([Attention(ch, **kw)] if attention else [])

  def __call__(self, x, *, train=False, rngs=None):
    x = self.resnets[0](x, train=train, rngs=rngs)
    for attn in self.attentions:
      x = attn(x)
    return self.resnets[1](x, train=train, rngs=rngs)


class Sampler(nnx.Module):
  """A 3x3 conv after a nearest 2x upsample (`up`) or with stride 2 and
  (0, 1) padding ('SAME' for even sides: diffusers' Downsample2D)."""

  def __init__(self, ch: int, *, rngs: nnx.Rngs, up: bool, dtype: Any):
    self.conv = Conv(ch, ch, rngs=rngs, stride=1 if up else 2, dtype=dtype)
    self.up = up

  def __call__(self, x):
    if self.up:
      x = unet_lib.upsample_nearest2x(x)
    return self.conv(x)


class Block(nnx.Module):
  """A level: resnets, then an optional down/up sampler (diffusers'
  DownEncoderBlock2D / UpDecoderBlock2D)."""

  def __init__(self, cin: int, cout: int, n: int, *, rngs: nnx.Rngs,
               groups: int, dropout: float, sample: str | None, dtype: Any):
    kw = dict(rngs=rngs, groups=groups, dropout=dropout, dtype=dtype)
    self.resnets = nnx.List([ResnetBlock2D(cin if i == 0 else cout, cout,
                                           **kw) for i in range(n)])
    samplers = ([Sampler(cout, rngs=rngs, up=sample == 'up', dtype=dtype)]
                if sample else [])
    if sample == 'down':
      self.downsamplers = nnx.List(samplers)
    elif sample == 'up':
      self.upsamplers = nnx.List(samplers)

  def __call__(self, x, *, train=False, rngs=None):
    for r in self.resnets:
      x = r(x, train=train, rngs=rngs)
    for s in getattr(self, 'downsamplers', None) or getattr(
        self, 'upsamplers', None) or ():
      x = s(x)
    return x


class Encoder(nnx.Module):
  """Image -> moments (2z channels with double_z) at 1/f resolution."""

  def __init__(self, *, rngs, in_channels, ch, ch_mult, num_res_blocks,
               z_channels, double_z, groups, mid_attention, dropout, dtype):
    widths = [ch * m for m in ch_mult]
    self.conv_in = Conv(in_channels, widths[0], rngs=rngs, dtype=dtype)
    blocks, cin = [], widths[0]
    for i, cout in enumerate(widths):
      last = i == len(widths) - 1
      blocks.append(Block(cin, cout, num_res_blocks, rngs=rngs,
                          groups=groups, dropout=dropout,
                          sample=None if last else 'down', dtype=dtype))
      cin = cout
    self.down_blocks = nnx.List(blocks)
    self.mid_block = MidBlock(cin, rngs=rngs, groups=groups,
                              attention=mid_attention, dropout=dropout,
                              dtype=dtype)
    self.conv_norm_out = GroupNorm(cin, rngs=rngs, groups=groups)
    self.conv_out = Conv(cin, 2 * z_channels if double_z else z_channels,
                         rngs=rngs, dtype=dtype)

  def __call__(self, x, *, train=False, rngs=None):
    h = self.conv_in(x)
    for blk in self.down_blocks:
      h = blk(h, train=train, rngs=rngs)
    h = self.mid_block(h, train=train, rngs=rngs)
    return self.conv_out(jax.nn.silu(self.conv_norm_out(h)))


class Decoder(nnx.Module):
  """Latent (z channels) -> image at f times the resolution."""

  def __init__(self, *, rngs, out_channels, ch, ch_mult, num_res_blocks,
               z_channels, groups, mid_attention, dropout, dtype):
    widths = [ch * m for m in reversed(ch_mult)]
    self.conv_in = Conv(z_channels, widths[0], rngs=rngs, dtype=dtype)
    self.mid_block = MidBlock(widths[0], rngs=rngs, groups=groups,
                              attention=mid_attention, dropout=dropout,
                              dtype=dtype)
    blocks, cin = [], widths[0]
    for i, cout in enumerate(widths):
      last = i == len(widths) - 1
      blocks.append(Block(cin, cout, num_res_blocks + 1, rngs=rngs,
                          groups=groups, dropout=dropout,
                          sample=None if last else 'up', dtype=dtype))
      cin = cout
    self.up_blocks = nnx.List(blocks)
    self.conv_norm_out = GroupNorm(cin, rngs=rngs, groups=groups)
    self.conv_out = Conv(cin, out_channels, rngs=rngs, dtype=dtype)

  def features(self, z, *, train=False, rngs=None):
    """Everything before `conv_out` (LDM's adaptive GAN weight
    differentiates the losses with respect to conv_out's kernel)."""
    h = self.mid_block(self.conv_in(z), train=train, rngs=rngs)
    for blk in self.up_blocks:
      h = blk(h, train=train, rngs=rngs)
    return jax.nn.silu(self.conv_norm_out(h))

  def __call__(self, z, *, train=False, rngs=None):
    return self.conv_out(self.features(z, train=train, rngs=rngs))


class PatchDiscriminator(nnx.Module):
  """PatchGAN (pix2pix / LDM NLayerDiscriminator): a logit per patch."""

  def __init__(self, *, rngs, in_channels, ch, layers_n, groups, dtype):
    convs, norms, cin = [], [], in_channels
    for i in range(layers_n + 1):
      cout = ch * min(2**i, 8)
      convs.append(Conv(cin, cout, rngs=rngs, k=4,
                        stride=2 if i < layers_n else 1, dtype=dtype))
      norms.append(GroupNorm(cout, rngs=rngs, groups=math.gcd(groups, cout))
                   if i else None)
      cin = cout
    self.convs = nnx.List(convs)
    self.norms = nnx.List([n for n in norms if n is not None])
    self.conv_out = Conv(cin, 1, rngs=rngs, k=4, dtype=dtype)

  def __call__(self, x):
    for i, conv in enumerate(self.convs):
      x = conv(x)
      if i:
        x = self.norms[i - 1](x)
      x = jax.nn.leaky_relu(x, 0.2)
    return self.conv_out(x)


class AutoencoderKL(nnx.Module):
  """The KL autoencoder (see the module docstring)."""

  def __init__(self, *, rngs: nnx.Rngs, input_size: int = 32,
               in_channels: int = 3, ch: int = 64,
               ch_mult: Sequence[int] = (1, 2, 2), num_res_blocks: int = 1,
               z_channels: int = 4, double_z: bool = True,
               norm_groups: int = 32, mid_attention: bool = True,
               dropout: float = 0.0, use_quant_conv: bool = True,
               disc_layers: int = 0, disc_channels: int = 64,
               dtype: Any = jnp.float32):
    levels = len(ch_mult)
    if levels < 1 or z_channels < 1:
      raise ValueError('AutoencoderKL needs ch_mult with at least one level '
                       f'and z_channels >= 1; got ch_mult={ch_mult}, '
                       f'z_channels={z_channels}.')
    self.factor = 2 ** (levels - 1)
    if input_size % self.factor:
      raise ValueError(f'input_size={input_size} is not divisible by the '
                       f'downsampling factor 2^(len(ch_mult)-1) = '
                       f'{self.factor}.')
    self.input_size, self.in_channels = input_size, in_channels
    self.z_channels, self.double_z = z_channels, double_z
    self.latent_shape = (input_size // self.factor,) * 2 + (z_channels,)
    self.cond_keys = ()
    kw = dict(rngs=rngs, ch=ch, ch_mult=tuple(ch_mult),
              num_res_blocks=num_res_blocks, z_channels=z_channels,
              groups=norm_groups, mid_attention=mid_attention,
              dropout=dropout, dtype=dtype)
    self.encoder = Encoder(in_channels=in_channels, double_z=double_z, **kw)
    self.decoder = Decoder(out_channels=in_channels, **kw)
    m = 2 * z_channels if double_z else z_channels
    self.quant_conv = (Conv(m, m, rngs=rngs, k=1, dtype=dtype)
                       if use_quant_conv else None)
    self.post_quant_conv = (Conv(z_channels, z_channels, rngs=rngs, k=1,
                                 dtype=dtype) if use_quant_conv else None)
    self.discriminator = (PatchDiscriminator(
        rngs=rngs, in_channels=in_channels, ch=disc_channels,
        layers_n=disc_layers, groups=norm_groups, dtype=dtype)
                          if disc_layers > 0 else None)

  def _check(self, x, what, shape):
    if tuple(x.shape[1:]) != tuple(shape):
      raise ValueError(f'AutoencoderKL.{what} expects (B, '
                       f'{", ".join(map(str, shape))}) inputs, got '
                       f'{tuple(x.shape)}.')

  def encode(self, x, *, train: bool = False, rngs=None):
    """(mean, logvar) of the posterior q(z | x), each (B, h, w, z); x in
    [-1, 1]. Without double_z the posterior is a point mass (logvar at the
    clamp's floor, -30)."""
    self._check(x, 'encode', (self.input_size, self.input_size,
                              self.in_channels))
    m = self.encoder(x, train=train, rngs=rngs)
    if self.quant_conv is not None:
      m = self.quant_conv(m)
    if not self.double_z:
      return m, jnp.full_like(m, LOGVAR_RANGE[0])
    mean, logvar = jnp.split(m, 2, axis=-1)
    return mean, jnp.clip(logvar, *LOGVAR_RANGE)

  def decode_features(self, z, *, train: bool = False, rngs=None):
    """The decoder up to (not including) its conv_out."""
    self._check(z, 'decode', self.latent_shape)
    if self.post_quant_conv is not None:
      z = self.post_quant_conv(z)
    return self.decoder.features(z, train=train, rngs=rngs)

  def decode(self, z, *, train: bool = False, rngs=None):
    """Latents (B, h, w, z) -> images (B, H, W, C) (unclipped)."""
    return self.decoder.conv_out(self.decode_features(z, train=train,
                                                      rngs=rngs))

  def reconstruct(self, x, *, key=None, train: bool = False, rngs=None):
    """decode(z) with z the posterior mean, or a sample when `key` is given."""
    mean, logvar = self.encode(x, train=train, rngs=rngs)
    z = mean if key is None else sample_posterior(key, mean, logvar)
    return self.decode(z, train=train, rngs=rngs)

  def discriminate(self, x):
    """PatchGAN logits (B, h', w', 1) of images x."""
    if self.discriminator is None:
      raise ValueError('This autoencoder has no discriminator; set '
                       'disc_layers > 0 in its model config.')
    return self.discriminator(x)

  def __call__(self, x, t=None, cond=None, *, train: bool = False,
               rngs=None, method: str | None = None, **kw):
    del t, cond
    if method in (None, 'reconstruct'):
      return self.reconstruct(x, train=train, rngs=rngs, **kw)
    if method == 'discriminate':
      return self.discriminate(x)
    if method not in ('encode', 'decode', 'decode_features'):
      raise ValueError(f'Unknown AutoencoderKL method {method!r}. Valid: '
                       'encode, decode, decode_features, reconstruct, '
                       'discriminate.')
    return getattr(self, method)(x, train=train, rngs=rngs, **kw)


def sample_posterior(key, mean, logvar):
  """z = mean + std * eps, eps ~ N(0, I) (the reparameterisation)."""
  return mean + jnp.exp(0.5 * logvar) * jax.random.normal(key, mean.shape,
                                                         mean.dtype)


def kl_divergence(mean, logvar):
  """KL(N(mean, exp(logvar)) || N(0, I)) per example, summed over latent
  dimensions: 0.5 * sum(mean^2 + var - 1 - logvar) (Kingma & Welling 2014,
  App. B; LDM's DiagonalGaussianDistribution.kl)."""
  kl = 0.5 * (jnp.square(mean) + jnp.exp(logvar) - 1.0 - logvar)
  return jnp.sum(kl.reshape(kl.shape[0], -1), axis=-1)
