"""Video DiT: adaLN-Zero transformer over (T, H, W) patch tokens with linear
(SANA-Video) or softmax attention, Mix-FFN and 3-D rotary positions.

Input x_t (B, T, H, W, C) is cut into (pt, ph, pw) patches -> N = T/pt *
H/ph * W/pw tokens in raster order (time slowest). Positions are 3-D RoPE
inside attention (no additive embedding), so a block rollout only needs the
block's time offset. Conditioning (`cond_keys`):
  'label'        (B,) int class, a table with a null row (DiT);
  'first_frame'  (B, H, W, C) the given first frame (image-to-video),
                 concatenated to every frame's channels (SVD-style); the null
                 condition is all zeros.
  'actions'      (B, T) int per-frame actions (world models, `num_actions`
                 > 0): the action taken just before each frame, embedded by
                 a table with a null row `num_actions` and added to that
                 frame's adaLN conditioning (mean over a time patch's
                 frames), so the conditioning has one group per token-frame.
  'prev_frames'  (B, T, H, W, C) a context frame per frame (`prev_frame`):
                 world models give each block the last frame of the block
                 before it (zeros for the first), concatenated to the
                 frame's channels, so local motion is a short-range copy.

Block-causal mode (`block_frames=F`): frames are blocks of F; tokens attend
to their own block and every earlier one, and t may be given per block
(B, T / F) (diffusion forcing: each block its own noise level). With linear
attention the model also offers the constant-state rollout

  state = model.init_state(batch)
  out, state = model.step(x_block, t, state, cond)   # x_block (B, F, H, W, C)

where `state` holds per layer and head the running sums S = sum relu(k) v^T
(with RoPE) and z = sum relu(k) of every block fed so far (plus the block
position): its size does not grow with the video. The block-causal full
forward equals the step-by-step rollout (tests/test_video_attention.py).
"""

from typing import Any

from flax import nnx
import jax
import jax.numpy as jnp

from visgen.models import layers
from visgen.models import linear_attention as la

FFNS = ('mix', 'mlp')


def modulate(x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
  """x (B, N, D); shift, scale (B, G, D) for G equal consecutive token groups
  (G = 1: one condition per sample; G = blocks: one per block)."""
  b, n, d = x.shape
  g = shift.shape[1]
  x = x.reshape(b, g, n // g, d)
  x = x * (1.0 + scale[:, :, None]) + shift[:, :, None]
  return x.reshape(b, n, d)


def gate(x: jax.Array, g: jax.Array) -> jax.Array:
  b, n, d = x.shape
  return (x.reshape(b, g.shape[1], -1, d) * g[:, :, None]).reshape(b, n, d)


class VideoDiTBlock(nnx.Module):
  """adaLN-Zero block: attention (linear | softmax) then Mix-FFN or MLP."""

  def __init__(self, width: int, heads: int, *, rngs: nnx.Rngs,
               attention: str = 'linear', ffn: str = 'mix',
               mlp_ratio: float = 2.5, dtype: Any = jnp.float32):
    hidden = int(width * mlp_ratio)
    self.attn = la.VideoAttention(width, heads, rngs=rngs, kind=attention,
                                  dtype=dtype)
    self.ffn_kind = ffn
    if ffn == 'mix':
      self.ffn = la.MixFFN(width, hidden, rngs=rngs, dtype=dtype)
    else:
      self.fc1 = layers.Dense(width, hidden, rngs=rngs,
                              axes=('embed', 'mlp'), dtype=dtype)
      self.fc2 = layers.Dense(hidden, width, rngs=rngs,
                              axes=('mlp', 'embed'), dtype=dtype)
    self.ada = layers.Dense(width, 6 * width, rngs=rngs,
                            axes=(None, 'embed'), kernel_init=layers.zeros,
                            dtype=dtype)

  def _ffn(self, h, grid):
    if self.ffn_kind == 'mix':
      return self.ffn(h, grid)
    return self.fc2(jax.nn.gelu(self.fc1(h), approximate=True))

  def _run(self, x, c, grid, attend):
    mods = jnp.split(self.ada(jax.nn.silu(c)), 6, axis=-1)
    shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = mods
    a, extra = attend(modulate(layers.layer_norm(x), shift_a, scale_a))
    x = x + gate(a, gate_a)
    h = self._ffn(modulate(layers.layer_norm(x), shift_m, scale_m), grid)
    return x + gate(h, gate_m), extra

  def __call__(self, x, c, grid, *, angles=None, block_len=None):
    attend = lambda h: (self.attn(h, angles=angles, block_len=block_len),
                        None)
    return self._run(x, c, grid, attend)[0]

  def step(self, x, c, grid, s, z, *, angles=None):
    attend = lambda h: (lambda o, s2, z2: (o, (s2, z2)))(
        *self.attn.step(h, s, z, angles=angles))
    return self._run(x, c, grid, attend)


class VideoDiT(nnx.Module):
  """(x_t (B, T, H, W, C), t (B,) or (B, blocks), cond) -> (B, T, H, W, C)."""

  def __init__(self, *, rngs: nnx.Rngs, num_frames: int = 8,
               input_size: int = 32, in_channels: int = 3,
               patch: tuple[int, int, int] = (1, 4, 4), width: int = 192,
               depth: int = 6, heads: int = 4, mlp_ratio: float = 2.5,
               attention: str = 'linear', ffn: str = 'mix', rope: bool = True,
               num_classes: int = 0, first_frame: bool = False,
               num_actions: int = 0, prev_frame: bool = False,
               block_frames: int | None = None, t_scale: float = 1000.0,
               dtype: Any = jnp.float32, remat: bool = False):
    pt, ph, pw = patch = tuple(int(p) for p in patch)
    if num_frames % pt or input_size % ph or input_size % pw:
      raise ValueError(f'patch {patch} must divide (frames, size, size) = '
                       f'({num_frames}, {input_size}, {input_size}).')
    if attention not in la.KINDS:
      raise ValueError(f'Unknown attention {attention!r}. Valid choices: '
                       f'{", ".join(la.KINDS)}.')
    if ffn not in FFNS:
      raise ValueError(f'Unknown ffn {ffn!r}. Valid choices: '
                       f'{", ".join(FFNS)}.')
    if width % heads:
      raise ValueError(f'width {width} is not divisible by heads {heads}.')
    if block_frames is not None and (block_frames % pt
                                     or num_frames % block_frames):
      raise ValueError(f'block_frames {block_frames} must be a multiple of '
                       f'the time patch {pt} and divide num_frames '
                       f'{num_frames}.')
    if rope:
      la.rope_3d_split(width // heads)  # Validates the head dim.
    self.num_frames, self.input_size = num_frames, input_size
    self.in_channels, self.out_channels = in_channels, in_channels
    self.patch, self.width, self.depth, self.heads = patch, width, depth, heads
    self.attention, self.rope, self.remat = attention, rope, remat
    self.block_frames = block_frames
    self.num_classes, self.first_frame = num_classes, first_frame
    self.num_actions, self.prev_frame = num_actions, prev_frame
    self.cond_keys = (('label',) if num_classes > 0 else ()) + (
        ('first_frame',) if first_frame else ()) + (
            ('actions',) if num_actions > 0 else ()) + (
                ('prev_frames',) if prev_frame else ())
    cin = in_channels * (1 + int(first_frame) + int(prev_frame))
    self.x_embed = layers.Dense(pt * ph * pw * cin, width, rngs=rngs,
                                axes=('conv_in', 'embed'), dtype=dtype)
    self.t_embed = layers.TimestepEmbedder(width, rngs=rngs, t_scale=t_scale,
                                           dtype=dtype)
    self.y_embed = (layers.LabelEmbedder(num_classes, width, rngs=rngs)
                    if num_classes > 0 else None)
    self.a_embed = (layers.LabelEmbedder(num_actions, width, rngs=rngs)
                    if num_actions > 0 else None)
    self.blocks = nnx.List([
        VideoDiTBlock(width, heads, rngs=rngs, attention=attention, ffn=ffn,
                      mlp_ratio=mlp_ratio, dtype=dtype)
        for _ in range(depth)])
    self.final_ada = layers.Dense(width, 2 * width, rngs=rngs,
                                  axes=(None, 'embed'),
                                  kernel_init=layers.zeros, dtype=dtype)
    self.final = layers.Dense(width, pt * ph * pw * in_channels, rngs=rngs,
                              axes=('embed', 'conv_out'),
                              kernel_init=layers.zeros, dtype=dtype)

  # -- Pieces shared by the full forward and the rollout step ---------------

  def _embed(self, x_t, cond):
    b, t, h, w, ch = x_t.shape
    if (h, w, ch) != (self.input_size, self.input_size, self.in_channels):
      raise ValueError(
          f'VideoDiT expects x_t of shape (B, T, {self.input_size}, '
          f'{self.input_size}, {self.in_channels}), got {x_t.shape}.')
    pt, ph, pw = self.patch
    if t % pt:
      raise ValueError(f'{t} frames are not a multiple of the time patch '
                       f'{pt}.')
    x = x_t.astype(jnp.float32)
    if self.first_frame:
      ff = jnp.asarray(cond['first_frame'], jnp.float32)
      if ff.shape != (b, h, w, ch):
        raise ValueError(f"cond['first_frame'] must be (B, H, W, C) = "
                         f'{(b, h, w, ch)}, got {ff.shape}.')
      x = jnp.concatenate([x, jnp.broadcast_to(ff[:, None], x.shape)], -1)
    if self.prev_frame:
      pf = jnp.asarray(cond['prev_frames'], jnp.float32)
      if pf.shape != (b, t, h, w, ch):
        raise ValueError(f"cond['prev_frames'] must be (B, T, H, W, C) = "
                         f'{(b, t, h, w, ch)}, got {pf.shape}.')
      x = jnp.concatenate([x, pf], -1)
    grid = (t // pt, h // ph, w // pw)
    c_in = x.shape[-1]
    x = x.reshape(b, grid[0], pt, grid[1], ph, grid[2], pw, c_in)
    x = x.transpose(0, 1, 3, 5, 2, 4, 6, 7)
    x = x.reshape(b, grid[0] * grid[1] * grid[2], pt * ph * pw * c_in)
    return self.x_embed(x), grid

  def _cond(self, t, cond, b):
    """c (B, G, D): G = 1 for t (B,), G = blocks for t (B, G)."""
    t = jnp.asarray(t, jnp.float32)
    t = jnp.broadcast_to(t, (b,)) if t.ndim < 2 else t
    t2 = t.reshape(b, -1)
    c = self.t_embed(t2.reshape(-1)).reshape(b, t2.shape[1], self.width)
    if self.y_embed is not None:
      c = c + self.y_embed(cond['label'])[:, None]
    return c

  def _add_actions(self, c, cond, frames):
    """c (B, G, D) -> (B, frames, D): each group's conditioning repeated
    over its token-frames plus each token-frame's action embedding (c as
    is without actions)."""
    if self.a_embed is None:
      return c
    b, g, d = c.shape
    pt = self.patch[0]
    a = jnp.asarray(cond['actions'], jnp.int32)
    if a.shape != (b, frames * pt):
      raise ValueError(f"cond['actions'] must be (B, T) = "
                       f'{(b, frames * pt)} (one action per frame), got '
                       f'{a.shape}.')
    e = self.a_embed(a.reshape(-1)).reshape(b, frames, pt, d).mean(2)
    return jnp.repeat(c, frames // g, axis=1) + e

  def _unembed(self, x, c, grid, shape):
    shift, scale = jnp.split(self.final_ada(jax.nn.silu(c)), 2, axis=-1)
    x = self.final(modulate(layers.layer_norm(x), shift, scale))
    b = x.shape[0]
    pt, ph, pw = self.patch
    x = x.reshape(b, *grid, pt, ph, pw, self.out_channels)
    x = x.transpose(0, 1, 4, 2, 5, 3, 6, 7)
    return x.reshape(shape[:-1] + (self.out_channels,))

  def _angles(self, grid, t_offset=0):
    if not self.rope:
      return None
    return la.rope_3d_angles(grid, self.width // self.heads,
                             t_offset=t_offset)

  def _maybe_remat(self, fn):
    return nnx.remat(fn) if self.remat else fn

  # -- Full-sequence forward --------------------------------------------------

  def __call__(self, x_t: jax.Array, t: jax.Array, cond: dict | None = None,
               *, train: bool = False, rngs: nnx.Rngs | None = None,
               state: dict | None = None):
    """The prediction; with `state` (a rollout state) one block step:
    (prediction, new state), so `make_apply`'s apply reaches `step` too."""
    del train, rngs  # No dropout (condition dropout is the task's).
    if state is not None:
      return self.step(x_t, t, state, cond)
    cond = layers.check_cond(cond, self.cond_keys, 'VideoDiT')
    b = x_t.shape[0]
    x, grid = self._embed(x_t, cond)
    c = self._cond(t, cond, b)
    block_len = None
    if self.block_frames is not None:
      block_len = self.block_frames // self.patch[0] * grid[1] * grid[2]
    groups = c.shape[1]
    if groups > 1 and (block_len is None
                       or groups * block_len != x.shape[1]):
      raise ValueError(
          f't of shape {jnp.shape(t)} gives {groups} per-block times; this '
          f'needs block_frames set and {x_t.shape[1]} frames to be '
          f'{groups} blocks of block_frames={self.block_frames}.')
    c = self._add_actions(c, cond, grid[0])
    angles = self._angles(grid)
    run = self._maybe_remat(
        lambda blk, x, c: blk(x, c, grid, angles=angles, block_len=block_len))
    for blk in self.blocks:
      x = run(blk, x, c)
    return self._unembed(x, c, grid, x_t.shape).astype(x_t.dtype)

  # -- Constant-state block rollout (linear attention) ------------------------

  def init_state(self, batch_size: int) -> dict:
    """Zero running sums: 's' (depth, B, heads, Dh, Dh), 'z' (depth, B,
    heads, Dh) and 'pos' the next block's first token-frame (int32)."""
    dh = self.width // self.heads
    return {
        's': jnp.zeros((self.depth, batch_size, self.heads, dh, dh),
                       jnp.float32),
        'z': jnp.zeros((self.depth, batch_size, self.heads, dh), jnp.float32),
        'pos': jnp.zeros((), jnp.int32),
    }

  def step(self, x_block: jax.Array, t: jax.Array, state: dict,
           cond: dict | None = None):
    """(B, F, H, W, C) block at noise level t (B,) -> (prediction, state
    including this block). Feed a block's clean frames (t = 0) once it is
    generated to commit it; the state of denoising calls is discarded."""
    if self.attention != 'linear':
      raise ValueError("VideoDiT.step needs attention='linear' (softmax "
                       'attention has no constant-size state).')
    cond = layers.check_cond(cond, self.cond_keys, 'VideoDiT')
    b = x_block.shape[0]
    x, grid = self._embed(x_block, cond)
    c = self._cond(t, cond, b)
    if c.shape[1] != 1:
      raise ValueError(f'step takes one time per sample (B,), got '
                       f'{jnp.shape(t)}.')
    c = self._add_actions(c, cond, grid[0])
    angles = self._angles(grid, state['pos'])
    new_s, new_z = [], []
    for i, blk in enumerate(self.blocks):
      x, (s, z) = blk.step(x, c, grid, state['s'][i], state['z'][i],
                           angles=angles)
      new_s.append(s)
      new_z.append(z)
    out = self._unembed(x, c, grid, x_block.shape).astype(x_block.dtype)
    new = {'s': jnp.stack(new_s), 'z': jnp.stack(new_z),
           'pos': state['pos'] + grid[0]}
    return out, new


def make_step(graphdef: nnx.GraphDef):
  """step(params, x_block, t, state, cond=None) -> (out, new_state): the
  functional form of `VideoDiT.step` for jitted rollouts."""

  def step(params, x_block, t, state, cond=None):
    return nnx.merge(graphdef, params).step(x_block, t, state, cond)

  return step
