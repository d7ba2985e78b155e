"""ControlNet: a trainable copy of a frozen base model's encoder, joined to it
through zero-initialised projections (Zhang, Rao & Agrawala 2023).

U-Net base (the paper's design, ADM U-Net of `visgen.models.unet`):

  c_f   = hint(control)                      # small conv stack to the first
                                             # feature resolution, last conv 0
  h_0   = conv_in(x_t) + c_f                 # the copy's input
  h_i   = copy of the base's input block i, h_mid = copy of the middle block
  out   = {'down': [Z_i(h_i)], 'mid': Z_mid(h_mid)}   # Z: zero 1x1 convs

and the base adds `down[i]` to its skip connection i and `mid` to its middle
output (`UNet(..., residuals=out)`). DiT base (PixArt-delta, Chen et al.
2024): the copy of the first N blocks reads the base's token embedding plus
a zero linear of the patch-embedded control map, and block i's output
through a zero linear is added to the base's block i output
(`DiT(..., residuals=out['blocks'])`).

Every path into the base is zero at initialisation, so the controlled model
equals the base bit for bit until the first update. The copy's parameters
have the base's paths ('t_embed/...', 'conv_in/...', 'down/3/0/...',
'blocks/1/...'), so `config.init_from` with `INIT_MAPPING` warm-starts them
from the base's workdir; the new ones ('hint/...', 'zero_*', ...) keep their
(zero) initialisation. Several ControlNets on one base combine as the sum
of their scaled residuals (`combine`); `control_scale` = 0 is the base.
"""

from typing import Any
from typing import Sequence

from flax import nnx
import jax
import jax.numpy as jnp

from visgen.models import dit as dit_lib
from visgen.models import layers
from visgen.models import unet as unet_lib

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}
# init_from mapping: the copy from the base's same paths, new layers fresh.
INIT_MAPPING = (('(hint|zero_|hint_|before_proj).*', None), ('(.*)', r'\1'))
BASES = ('unet', 'dit')


def _base_kwargs(base: dict) -> tuple[str, dict]:
  kw = dict(base)
  name = kw.pop('name', None)
  if name not in BASES:
    raise ValueError(f'ControlNet base must be a model config with name in '
                     f'{BASES}, got name={name!r}.')
  if isinstance(kw.get('dtype'), str):
    kw['dtype'] = DTYPES[kw['dtype']]
  # Output-side options do not exist in the copy.
  for k in ('learn_sigma', 'remat', 'concat_channels'):
    kw.pop(k, None)
  return name, kw


def check_control(control: Any, *, size: int, channels: int,
                  key: str = 'control') -> jax.Array:
  """The control map (B, size, size, channels), or a clear error."""
  shape = tuple(getattr(control, 'shape', ()))
  if len(shape) != 4 or shape[1:] != (size, size, channels):
    raise ValueError(
        f"ControlNet: cond[{key!r}] must be a control map of shape (B, "
        f'{size}, {size}, {channels}) (the base resolution and the '
        f'hint_channels of the ControlNet), got {shape}. Render the '
        'condition at the base model\'s resolution with as many channels '
        'as the ControlNet was built for.')
  return jnp.asarray(control, jnp.float32)


class ControlNet(nnx.Module):
  """(x_t, t, cond with cond[cond_key]) -> residuals for the base model.

  Args:
    base: the frozen base's model config (name 'unet' or 'dit' plus its
      kwargs, as `config.model`); the copy has the same architecture.
    hint_channels: channels of the control map cond[cond_key] (B, S, S, k).
    hint_width: width of the U-Net hint encoder's convs.
    num_blocks: DiT only: how many of the first blocks are copied
      (PixArt-delta: 13 of 28; default depth // 2).
    cond_key: the cond entry holding the control map.
  """

  def __init__(self, *, rngs: nnx.Rngs, base: dict, hint_channels: int = 1,
               hint_width: int = 16, num_blocks: int | None = None,
               cond_key: str = 'control'):
    kind, kw = _base_kwargs(base)
    self.kind, self.cond_key = kind, cond_key
    self.hint_channels = hint_channels
    self.input_size = kw.get('input_size', 32)
    self.cond_keys = (cond_key,) + (('label',) if kw.get('num_classes')
                                    else ())
    if kind == 'unet':
      self._init_unet(rngs, kw, hint_width)
    else:
      self._init_dit(rngs, kw, num_blocks)

  # -- U-Net ----------------------------------------------------------------

  def _init_unet(self, rngs, kw, hint_width):
    # The base's own constructor gives the copy exactly its encoder; the
    # decoder it also builds is dropped.
    full = unet_lib.UNet(rngs=rngs, **kw)
    self.t_embed, self.y_embed = full.t_embed, full.y_embed
    self.conv_in, self.down, self.mid = full.conv_in, full.down, full.mid
    self.patch = full.patch
    dtype = kw.get('dtype', jnp.float32)
    mc = kw.get('model_channels', 128)
    chs = [mc] + [self._out_channels(blk) for blk in self.down]
    p = self.patch
    self.hint = nnx.List([
        unet_lib.Conv(p * p * self.hint_channels, hint_width, rngs=rngs,
                      dtype=dtype),
        unet_lib.Conv(hint_width, hint_width, rngs=rngs, dtype=dtype),
        unet_lib.Conv(hint_width, mc, rngs=rngs, zero_init=True,
                      dtype=dtype)])
    self.zero_down = nnx.List([
        unet_lib.Conv(c, c, rngs=rngs, k=1, zero_init=True, dtype=dtype)
        for c in chs])
    mid_ch = chs[-1]
    self.zero_mid = unet_lib.Conv(mid_ch, mid_ch, rngs=rngs, k=1,
                                  zero_init=True, dtype=dtype)

  @staticmethod
  def _out_channels(blk) -> int:
    last = [m for m in blk if isinstance(m, (unet_lib.ResBlock,
                                             unet_lib.Conv))][-1]
    conv = last.conv2 if isinstance(last, unet_lib.ResBlock) else last
    return int(conv.kernel.shape[-1])

  @staticmethod
  def _run(blk, h, emb, train, rngs):
    for layer in blk:
      if isinstance(layer, unet_lib.ResBlock):
        h = layer(h, emb, train=train, rngs=rngs)
      elif isinstance(layer, unet_lib.AttnBlock):
        h = layer(h)
      else:  # the encoder has only stride-2 downsampling convs
        h = layer(h)
    return h

  def _unet(self, x_t, t, cond, control, train, rngs):
    emb = self.t_embed(jnp.broadcast_to(t, x_t.shape[:1]))
    if self.y_embed is not None:
      emb = emb + self.y_embed(cond['label'])
    c = unet_lib.space_to_depth(control, self.patch)
    for i, conv in enumerate(self.hint):
      c = conv(c)
      if i < len(self.hint) - 1:
        c = jax.nn.silu(c)
    h = self.conv_in(unet_lib.space_to_depth(x_t, self.patch)) + c
    hs = [h]
    for blk in self.down:
      h = self._run(blk, h, emb, train, rngs)
      hs.append(h)
    h = self._run(self.mid, h, emb, train, rngs)
    return {'down': [z(a) for z, a in zip(self.zero_down, hs)],
            'mid': self.zero_mid(h)}

  # -- DiT (PixArt-delta) ---------------------------------------------------

  def _init_dit(self, rngs, kw, num_blocks):
    full = dit_lib.DiT(rngs=rngs, **kw)
    n = len(full.blocks) // 2 if num_blocks is None else int(num_blocks)
    if not 1 <= n <= len(full.blocks):
      raise ValueError(f'ControlNet num_blocks must be in [1, '
                       f'{len(full.blocks)}] (the base depth), got {n}.')
    self.x_embed, self.t_embed = full.x_embed, full.t_embed
    self.y_embed = full.y_embed
    self.blocks = nnx.List(list(full.blocks)[:n])
    self.patch, self.width = full.patch, full.width
    dtype = kw.get('dtype', jnp.float32)
    p, w = self.patch, self.width
    self.hint_embed = layers.Dense(p * p * self.hint_channels, w, rngs=rngs,
                                   axes=('conv_in', 'embed'), dtype=dtype)
    self.before_proj = layers.Dense(w, w, rngs=rngs, axes=('embed', 'embed'),
                                    kernel_init=layers.zeros, dtype=dtype)
    self.zero_blocks = nnx.List([
        layers.Dense(w, w, rngs=rngs, axes=('embed', 'embed'),
                     kernel_init=layers.zeros, dtype=dtype)
        for _ in range(n)])

  def _patchify(self, x):
    b, s, _, ch = x.shape
    p = self.patch
    x = x.reshape(b, s // p, p, s // p, p, ch).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, (s // p) ** 2, p * p * ch)

  def _dit(self, x_t, t, cond, control):
    b, s = x_t.shape[0], self.input_size
    x = self.x_embed(self._patchify(x_t))
    x = x + jnp.asarray(dit_lib.pos_embed_2d(self.width, s // self.patch,
                                             s // self.patch))
    x = x + self.before_proj(self.hint_embed(self._patchify(control)))
    c = self.t_embed(jnp.broadcast_to(t, (b,)))
    if self.y_embed is not None:
      c = c + self.y_embed(cond['label'])
    out = []
    for block, zero in zip(self.blocks, self.zero_blocks):
      x, _ = block(x, c)
      out.append(zero(x))
    return {'blocks': out}

  def __call__(self, x_t: jax.Array, t: jax.Array, cond: dict | None = None,
               *, train: bool = False, rngs: nnx.Rngs | None = None):
    cond = layers.check_cond(cond, self.cond_keys, 'ControlNet')
    control = check_control(cond[self.cond_key], size=self.input_size,
                            channels=self.hint_channels, key=self.cond_key)
    control = control.astype(x_t.dtype)
    if self.kind == 'unet':
      return self._unet(x_t, t, cond, control, train, rngs)
    return self._dit(x_t, t, cond, control)


def scale_residuals(residuals: dict, scale) -> dict:
  """Every residual times `scale` (may be traced)."""
  return jax.tree.map(lambda r: jnp.asarray(scale, r.dtype) * r, residuals)


def combine(residuals: Sequence[dict], scales: Sequence[Any]) -> dict:
  """Several controls on one base: sum_k scale_k * residuals_k."""
  if len(residuals) != len(scales) or not residuals:
    raise ValueError(f'combine: {len(residuals)} residual sets for '
                     f'{len(scales)} scales (need as many, at least one).')
  out = scale_residuals(residuals[0], scales[0])
  for r, s in zip(residuals[1:], scales[1:]):
    out = jax.tree.map(jnp.add, out, scale_residuals(r, s))
  return out


def base_kwargs(residuals: dict | None) -> dict:
  """The keyword arguments that hand residuals to the base's __call__
  (UNet: the dict; DiT: the per-block list)."""
  if residuals is None:
    return {}
  if 'blocks' in residuals:
    return {'residuals': list(residuals['blocks'])}
  return {'residuals': residuals}
