"""A PyTorch DiT of exactly visgen's DiT shape (the benchmark's peer).

Mirrors `visgen.models.dit.DiT` (Peebles & Xie, 2023) layer for layer, so the
parameter count is identical: linear patch embedding of p x p x C patches
(channel-last, as visgen), fixed 2-D sin-cos position embedding (a buffer),
timestep embedder (t * 1000 -> 256 sinusoid [cos, sin] -> Linear -> SiLU ->
Linear), class table with a null row, `depth` pre-LN blocks with adaLN-Zero
(a Linear(width, 6 width) on SiLU(c): shift / scale / gate for attention and
MLP), LayerNorms without affine parameters (eps 1e-6), fused-qkv attention
(SDPA), tanh-GELU MLP of ratio 4, final adaLN (shift, scale) and a Linear to
p*p*C_out. Zero-initialised exactly where visgen's is (adaLN and final
layers), so the network outputs 0 at initialisation as visgen's does.

torch is the optional extra (`pip install -r requirements-torch.txt`); the
visgen core never imports this file.
"""

import math

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F


def pos_embed_2d(dim: int, gh: int, gw: int) -> np.ndarray:
  """As `visgen.models.dit.pos_embed_2d`: half the channels for the column,
  half for the row, each [sin, cos] at geometric frequencies."""
  def one_axis(pos, d):
    omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
    out = np.outer(pos.reshape(-1), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)
  gy, gx = np.meshgrid(np.arange(gh, dtype=np.float64),
                       np.arange(gw, dtype=np.float64), indexing='ij')
  return np.concatenate([one_axis(gx, dim // 2), one_axis(gy, dim // 2)],
                        1).astype(np.float32)


def timestep_embedding(t: torch.Tensor, dim: int,
                       max_period: float = 10000.0) -> torch.Tensor:
  half = dim // 2
  freqs = torch.exp(-math.log(max_period) * torch.arange(
      half, dtype=torch.float32, device=t.device) / half)
  args = t.float()[:, None] * freqs[None]
  emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
  if dim % 2:
    emb = F.pad(emb, (0, 1))
  return emb


class TimestepEmbedder(nn.Module):
  def __init__(self, dim: int, freq_dim: int = 256, t_scale: float = 1000.0):
    super().__init__()
    self.fc1 = nn.Linear(freq_dim, dim)
    self.fc2 = nn.Linear(dim, dim)
    nn.init.normal_(self.fc1.weight, std=0.02)
    nn.init.normal_(self.fc2.weight, std=0.02)
    nn.init.zeros_(self.fc1.bias)
    nn.init.zeros_(self.fc2.bias)
    self.freq_dim, self.t_scale = freq_dim, t_scale

  def forward(self, t):
    emb = timestep_embedding(t * self.t_scale, self.freq_dim)
    return self.fc2(F.silu(self.fc1(emb)))


def xavier_linear(din: int, dout: int, zero: bool = False) -> nn.Linear:
  lin = nn.Linear(din, dout)
  if zero:
    nn.init.zeros_(lin.weight)
  else:
    nn.init.xavier_uniform_(lin.weight)
  nn.init.zeros_(lin.bias)
  return lin


def layer_norm(x: torch.Tensor) -> torch.Tensor:
  return F.layer_norm(x.float(), x.shape[-1:], eps=1e-6)


def modulate(x, shift, scale):
  return x * (1 + scale[:, None]) + shift[:, None]


class SelfAttention(nn.Module):
  """Fused qkv projection, SDPA, output projection (visgen's layout: the
  qkv output is split on its last axis into q, k, v, each (N, H, Dh))."""

  def __init__(self, width: int, heads: int, zero_proj: bool = False):
    super().__init__()
    self.qkv = xavier_linear(width, 3 * width)
    self.proj = xavier_linear(width, width, zero=zero_proj)
    self.heads = heads

  def forward(self, x):
    b, n, d = x.shape
    h = self.heads
    q, k, v = (a.reshape(b, n, h, d // h).transpose(1, 2)
               for a in self.qkv(x).chunk(3, dim=-1))
    out = F.scaled_dot_product_attention(q, k, v)
    return self.proj(out.transpose(1, 2).reshape(b, n, d))


class DiTBlock(nn.Module):
  def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0):
    super().__init__()
    hidden = int(width * mlp_ratio)
    self.attn = SelfAttention(width, heads)
    self.fc1 = xavier_linear(width, hidden)
    self.fc2 = xavier_linear(hidden, width)
    self.ada = xavier_linear(width, 6 * width, zero=True)

  def forward(self, x, c):
    sa, ca, ga, sm, cm, gm = self.ada(F.silu(c)).chunk(6, dim=-1)
    x = x + ga[:, None] * self.attn(modulate(layer_norm(x), sa, ca))
    h = self.fc2(F.gelu(self.fc1(modulate(layer_norm(x), sm, cm)),
                        approximate='tanh'))
    return x + gm[:, None] * h


class DiT(nn.Module):
  """(x_t (B, H, W, C) channel-last, t (B,), label (B,)) -> (B, H, W, C)."""

  def __init__(self, *, input_size: int = 32, in_channels: int = 3,
               patch: int = 2, width: int = 384, depth: int = 12,
               heads: int = 6, mlp_ratio: float = 4.0, num_classes: int = 0,
               learn_sigma: bool = False, t_scale: float = 1000.0, **unused):
    super().__init__()
    del unused  # visgen-only options (dtype, attn_impl, remat, ...).
    self.input_size, self.in_channels, self.patch = (input_size, in_channels,
                                                     patch)
    self.out_channels = 2 * in_channels if learn_sigma else in_channels
    self.num_classes = num_classes
    g = input_size // patch
    self.x_embed = xavier_linear(patch * patch * in_channels, width)
    self.register_buffer('pos', torch.from_numpy(pos_embed_2d(width, g, g)),
                         persistent=False)
    self.t_embed = TimestepEmbedder(width, t_scale=t_scale)
    self.y_embed = (nn.Embedding(num_classes + 1, width)
                    if num_classes > 0 else None)
    if self.y_embed is not None:
      nn.init.normal_(self.y_embed.weight, std=0.02)
    self.blocks = nn.ModuleList(
        [DiTBlock(width, heads, mlp_ratio) for _ in range(depth)])
    self.final_ada = xavier_linear(width, 2 * width, zero=True)
    self.final = xavier_linear(width, patch * patch * self.out_channels,
                               zero=True)

  def forward(self, x_t, t, label=None):
    b, h, w, ch = x_t.shape
    p = self.patch
    gh, gw = h // p, w // p
    x = x_t.reshape(b, gh, p, gw, p, ch).permute(0, 1, 3, 2, 4, 5)
    x = self.x_embed(x.reshape(b, gh * gw, p * p * ch)) + self.pos
    c = self.t_embed(t)
    if self.y_embed is not None:
      c = c + self.y_embed(label)
    for block in self.blocks:
      x = block(x, c)
    shift, scale = self.final_ada(F.silu(c)).chunk(2, dim=-1)
    x = self.final(modulate(layer_norm(x), shift, scale))
    oc = self.out_channels
    x = x.reshape(b, gh, gw, p, p, oc).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h, w, oc).to(x_t.dtype)
