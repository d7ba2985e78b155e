"""A PyTorch ADM U-Net of exactly visgen's U-Net shape (the benchmark's peer).

Mirrors `visgen.models.unet.UNet` (Dhariwal & Nichol, 2021) without its
conditioning adapters (text, concat, ControlNet residuals): space-to-depth
patches, conv_in, `num_res_blocks` ResBlocks per level (GroupNorm with
gcd(32, ch) groups - SiLU - 3x3 conv, scale-shift norm from the time + class
embedding, SiLU - 3x3 conv zero-initialised, 1x1 skip conv when the width
changes), self-attention blocks (GroupNorm, fused-qkv attention, zero output
projection) at `attention_resolutions` and in the middle, stride-2 conv
downsampling, nearest 2x upsampling followed by a conv, skip concatenation
on the way up (one more block per level), GroupNorm - SiLU - conv_out (zero).
Same parameter count as visgen's. Runs in channels_last memory format (the
layout oneDNN's CPU convolutions prefer).
"""

import math

import torch
from torch import nn
import torch.nn.functional as F

from torch_dit import SelfAttention
from torch_dit import TimestepEmbedder


def conv(cin: int, cout: int, k: int = 3, stride: int = 1,
         zero: bool = False) -> nn.Conv2d:
  c = nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2)
  if zero:
    nn.init.zeros_(c.weight)
  else:
    nn.init.xavier_uniform_(c.weight)
  nn.init.zeros_(c.bias)
  return c


def group_norm(ch: int) -> nn.GroupNorm:
  return nn.GroupNorm(math.gcd(32, ch), ch, eps=1e-5)


class ResBlock(nn.Module):
  def __init__(self, cin: int, cout: int, emb_dim: int):
    super().__init__()
    self.norm1, self.conv1 = group_norm(cin), conv(cin, cout)
    self.emb = nn.Linear(emb_dim, 2 * cout)
    nn.init.xavier_uniform_(self.emb.weight)
    nn.init.zeros_(self.emb.bias)
    self.norm2, self.conv2 = group_norm(cout), conv(cout, cout, zero=True)
    self.skip = conv(cin, cout, k=1) if cin != cout else None

  def forward(self, x, emb):
    h = self.conv1(F.silu(self.norm1(x)))
    scale, shift = self.emb(F.silu(emb)).chunk(2, dim=-1)
    h = self.norm2(h) * (1 + scale[:, :, None, None]) + shift[:, :, None,
                                                               None]
    h = self.conv2(F.silu(h))
    return (x if self.skip is None else self.skip(x)) + h


class AttnBlock(nn.Module):
  def __init__(self, ch: int, heads: int):
    super().__init__()
    self.norm = group_norm(ch)
    self.attn = SelfAttention(ch, heads, zero_proj=True)

  def forward(self, x):
    b, c, h, w = x.shape
    tokens = self.norm(x).flatten(2).transpose(1, 2)  # (B, HW, C)
    a = self.attn(tokens).transpose(1, 2).reshape(b, c, h, w)
    return x + a


class Down(nn.Module):
  def __init__(self, ch: int):
    super().__init__()
    self.conv = conv(ch, ch, stride=2)

  def forward(self, x):
    return self.conv(x)


class Up(nn.Module):
  def __init__(self, ch: int):
    super().__init__()
    self.conv = conv(ch, ch)

  def forward(self, x):
    return self.conv(F.interpolate(x, scale_factor=2, mode='nearest'))


class UNet(nn.Module):
  """(x_t (B, H, W, C) channel-last, t (B,), label (B,)) -> (B, H, W, C)."""

  def __init__(self, *, input_size: int = 32, in_channels: int = 3,
               model_channels: int = 128, channel_mult=(1, 2, 2, 2),
               num_res_blocks: int = 2, attention_resolutions=(16,),
               num_heads: int = 4, num_classes: int = 0,
               learn_sigma: bool = False, t_scale: float = 1000.0,
               patch: int = 1, mid_attention: bool = True, **unused):
    super().__init__()
    del unused  # visgen-only options (dtype, dropout, remat, ...).
    ch, emb_dim = model_channels, 4 * model_channels
    self.patch = patch
    self.out_channels = 2 * in_channels if learn_sigma else in_channels
    self.t_embed = TimestepEmbedder(emb_dim, freq_dim=model_channels,
                                    t_scale=t_scale)
    self.y_embed = (nn.Embedding(num_classes + 1, emb_dim)
                    if num_classes > 0 else None)
    self.conv_in = conv(patch * patch * in_channels, ch)
    down, skips, res = [], [ch], input_size // patch
    for level, mult in enumerate(channel_mult):
      for _ in range(num_res_blocks):
        blk = [ResBlock(ch, mult * model_channels, emb_dim)]
        ch = mult * model_channels
        if res in attention_resolutions:
          blk.append(AttnBlock(ch, num_heads))
        down.append(nn.ModuleList(blk))
        skips.append(ch)
      if level != len(channel_mult) - 1:
        down.append(nn.ModuleList([Down(ch)]))
        skips.append(ch)
        res //= 2
    self.down = nn.ModuleList(down)
    mid = [ResBlock(ch, ch, emb_dim)]
    if mid_attention:
      mid.append(AttnBlock(ch, num_heads))
    self.mid = nn.ModuleList(mid + [ResBlock(ch, ch, emb_dim)])
    up = []
    for level, mult in reversed(list(enumerate(channel_mult))):
      for i in range(num_res_blocks + 1):
        blk = [ResBlock(ch + skips.pop(), mult * model_channels, emb_dim)]
        ch = mult * model_channels
        if res in attention_resolutions:
          blk.append(AttnBlock(ch, num_heads))
        if level and i == num_res_blocks:
          blk.append(Up(ch))
          res *= 2
        up.append(nn.ModuleList(blk))
    self.up = nn.ModuleList(up)
    self.norm_out = group_norm(ch)
    self.conv_out = conv(ch, patch * patch * self.out_channels, zero=True)

  @staticmethod
  def _run(blk, h, emb):
    for layer in blk:
      h = layer(h, emb) if isinstance(layer, ResBlock) else layer(h)
    return h

  def forward(self, x_t, t, label=None):
    b, s, _, c = x_t.shape
    p = self.patch
    emb = self.t_embed(t)
    if self.y_embed is not None:
      emb = emb + self.y_embed(label)
    # Space-to-depth (channels ordered (dy, dx, c) as visgen), then NCHW
    # logical layout in channels_last memory.
    x = x_t.reshape(b, s // p, p, s // p, p, c).permute(0, 1, 3, 2, 4, 5)
    x = x.reshape(b, s // p, s // p, p * p * c).permute(0, 3, 1, 2)
    x = x.contiguous(memory_format=torch.channels_last)
    h = self.conv_in(x)
    hs = [h]
    for blk in self.down:
      h = self._run(blk, h, emb)
      hs.append(h)
    h = self._run(self.mid, h, emb)
    for blk in self.up:
      h = self._run(blk, torch.cat([h, hs.pop()], dim=1), emb)
    h = self.conv_out(F.silu(self.norm_out(h)))  # (B, p*p*oc, S/p, S/p)
    oc, g = self.out_channels, s // p
    h = h.permute(0, 2, 3, 1).reshape(b, g, g, p, p, oc)
    h = h.permute(0, 1, 3, 2, 4, 5).reshape(b, s, s, oc)
    return h.to(x_t.dtype)
