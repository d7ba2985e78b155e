"""Dense prediction as generation (Marigold-style) and its discriminative twin.

  config.task  = dict(name='dense', target='semantic' | 'edges' | 'depth',
                      mode='generative' | 'discriminative',
                      x_shape=(H, W, 3))
  config.model = dict(name='unet', ..., concat_channels=3,
                      in_channels=3 (generative) | DISC_CHANNELS[target])

A scene-world image x (`shapes`: 'image') and a per-pixel target read from
the same example:

  semantic  'semantic_mask' 0..4 (background + the 4 shape classes)
  edges     'edges' 0/255 (object outlines and occlusion boundaries)
  depth     'instance_mask' as a z-order rank: the scene world draws object
            slot k (k = 0 bottom .. n-1 top) with instance id k + 1, so the
            id IS the rank of the object covering the pixel, 1 = farthest
            object, 0 = background (farther than every object).

**Generative** (Marigold, Ke et al. 2024): the target is encoded as a
3-channel image in [-1, 1] (`encode`: semantic as the fixed class palette
`image_cond.MASK_PALETTE`; edges and depth grey, replicated over the three
channels, depth = 2 rank / MAX_RANK - 1), so the denoiser has the shape of
an image generator's and can be warm-started from one (`config.init_from`);
the RGB scene is the condition, by channel concatenation (cond['concat'],
the U-Net's zero-initialised extra input projection). It trains the unified
loss on x0 = the encoded target and samples with the config's sampler from
Gaussian noise. `decode` maps an encoded map back exactly (nearest palette
colour; channel mean > 0; rank = round((mean + 1) / 2 * MAX_RANK)), and
`ensemble` combines K samples of the same input (Marigold's test-time
ensembling): majority vote of the decoded classes (ties: the lower class),
majority of edge votes (mean of the channel means > 0), per-pixel median of
the depth values.

**Discriminative**: the same U-Net (same width, levels, concat projection;
`in_channels` = the number of outputs, DISC_CHANNELS, so only the first
and last convolutions differ in size) called once at t = 0 with the scene
as its x input as well (`_logits`), trained on the same pairs with a per-pixel loss: cross-entropy over the 5
classes (semantic), binary cross-entropy (edges), squared error on the
encoded rank in [-1, 1] (depth). `sample` returns its prediction encoded
like a generative sample (the argmax's palette colour, 2 sigmoid - 1,
clipped depth), so one decoding and one set of metrics serve both.
"""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from visgen import media as media_lib
from visgen.data import shapes as shapes_lib
from visgen.objectives import loss as loss_lib
from visgen.tasks import base
from visgen.tasks import generation
from visgen.tasks import image_cond
from visgen.validate import UserError

TARGETS = {'semantic': 'semantic_mask', 'edges': 'edges',
           'depth': 'instance_mask'}
MODES = ('generative', 'discriminative')
NUM_CLASSES = len(shapes_lib.SHAPES) + 1       # background + 4 shapes
MAX_RANK = shapes_lib.MAX_OBJECTS             # the nearest possible object
DISC_CHANNELS = {'semantic': NUM_CLASSES, 'edges': 1, 'depth': 1}
_PALETTE = image_cond.MASK_PALETTE / 127.5 - 1.0   # (5, 3) in [-1, 1]


def check_target(target: str) -> str:
  if target not in TARGETS:
    raise UserError(f'Unknown dense target {target!r}. Valid targets: '
                    f'{", ".join(TARGETS)} (config.task.target, or '
                    '--target for the experiment).')
  return target


def _xp(x):
  return jnp if isinstance(x, jax.Array) else np


def encode(target: str, entry) -> Any:
  """The batch entry of a target (uint8 (B, H, W, 1)) as a 3-channel image
  (B, H, W, 3) in [-1, 1] (numpy in, numpy out; jax in, jax out)."""
  check_target(target)
  xp = _xp(entry)
  v = entry[..., 0]
  if target == 'semantic':
    return xp.asarray(_PALETTE, xp.float32)[v.astype(xp.int32)]
  if target == 'edges':
    g = (v > 0).astype(xp.float32) * 2.0 - 1.0
  else:
    g = v.astype(xp.float32) * (2.0 / MAX_RANK) - 1.0
  return xp.repeat(g[..., None], 3, axis=-1)


def depth_value(x) -> Any:
  """An encoded depth map (..., 3) -> the rank scale (...,) float, 0 =
  background .. MAX_RANK (continuous; `decode` rounds it)."""
  return (x.mean(-1) + 1.0) * (MAX_RANK / 2.0)


def decode(target: str, x) -> np.ndarray:
  """An encoded map (..., H, W, 3) -> the target's labels (..., H, W) int:
  class (nearest palette colour), edge 0/1 (channel mean > 0), z-order rank
  (0 background .. MAX_RANK). decode(encode(m)) == m exactly."""
  check_target(target)
  x = np.asarray(x, np.float32)
  if target == 'semantic':
    d = ((x[..., None, :] - _PALETTE) ** 2).sum(-1)
    return d.argmin(-1).astype(np.int32)
  if target == 'edges':
    return (x.mean(-1) > 0).astype(np.int32)
  return np.clip(np.round(depth_value(x)), 0, MAX_RANK).astype(np.int32)


def ensemble(target: str, samples) -> np.ndarray:
  """K samples of the same inputs (K, N, H, W, 3) -> one prediction
  (N, H, W): semantic classes by majority vote of the decoded samples
  (ties: the lower class); edges 0/1 by majority of the K votes (mean of
  the channel means > 0; an even split is no edge); depth as the per-pixel
  median of the continuous rank values (float; decode by rounding)."""
  check_target(target)
  s = np.asarray(samples, np.float32)
  if s.ndim != 5 or s.shape[-1] != 3:
    raise ValueError(f'ensemble expects samples of shape (K, N, H, W, 3), '
                     f'got {s.shape}; stack the K samples on a new first '
                     'axis.')
  if target == 'semantic':
    cls = decode(target, s)                                   # (K, N, H, W)
    votes = (cls[..., None] == np.arange(NUM_CLASSES)).sum(0)  # (N,H,W,C)
    return votes.argmax(-1).astype(np.int32)
  if target == 'edges':
    return (s.mean(-1).mean(0) > 0).astype(np.int32)
  return np.median(depth_value(s), axis=0)


class DenseTask(image_cond.HeldoutCond, generation.GenerationTask):
  """Image -> semantic / edge / depth map (see the module docstring)."""

  # Its conditions come from data (held-out batches): use --mode=sample.
  REQUESTS = ()

  def __init__(self, config, *, apply=None, frozen_apply=None):
    super().__init__(config, apply=apply, frozen_apply=frozen_apply)
    t = config.task
    image_cond.require_pixel_space(self, config.task.name)
    self.target = check_target(t.get('target', 'semantic'))
    self.mode = t.get('mode', 'generative')
    if self.mode not in MODES:
      raise UserError(f'config.task.mode={self.mode!r}: valid modes are '
                      f'{", ".join(MODES)}.')
    if self.num_classes or self.flatten or self.learned_variance is not None:
      raise UserError('The dense task takes no class labels, flatten or '
                      'learned variance.')
    if self.path.is_bridge:
      raise UserError('The dense task is conditional diffusion from noise: '
                      'use an ordinary path (e.g. linear), not '
                      f'{config.path["name"]!r}.')
    if tuple(self.x_shape[2:]) != (3,):
      raise UserError(f'config.task.x_shape={tuple(self.x_shape)}: the '
                      'dense task predicts (H, W, 3) encoded maps; set '
                      'x_shape=(res, res, 3).')
    model = dict(config.model)
    if int(model.get('concat_channels', 0)) != 3:
      raise UserError('The dense network reads the RGB scene by channel '
                      'concatenation: set config.model.concat_channels=3 '
                      f'(got {model.get("concat_channels", 0)}).')
    want = 3 if self.mode == 'generative' else DISC_CHANNELS[self.target]
    if int(model.get('in_channels', 3)) != want:
      raise UserError(
          f'The {self.mode} dense network for target {self.target!r} needs '
          f'config.model.in_channels={want} (got '
          f'{model.get("in_channels", 3)}): 3 for the encoded map a '
          'generative model denoises, the number of per-pixel outputs '
          f'({DISC_CHANNELS}) for a discriminative one.')
    self.out_channels = want
    self.size = int(self.x_shape[0])
    self.config = config
    self.target_key = TARGETS[self.target]
    self.batch_keys = ('image', self.target_key)

  # -- Batch -> (x0, cond) --------------------------------------------------

  def _target_entry(self, batch: dict):
    return image_cond._entry(  # pylint: disable=protected-access
        batch, self.target_key, (self.size, self.size, 1),
        f'The dense task (target {self.target!r})')

  def to_x0(self, batch: dict, frozen=None, key=None) -> jax.Array:
    del frozen, key
    return encode(self.target, jnp.asarray(self._target_entry(batch)))

  def cond(self, batch: dict, key: jax.Array | None) -> dict:
    del key
    return {'concat': image_cond.control_map(
        batch, 'image', self.size, what='The dense task (input image)')}

  def batch_spec(self, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
    s = self.size
    return {'image': jax.ShapeDtypeStruct((batch_size, s, s, 3), jnp.uint8),
            self.target_key: jax.ShapeDtypeStruct((batch_size, s, s, 1),
                                                  jnp.uint8)}

  # -- Training -------------------------------------------------------------

  def _logits(self, params, cond: dict, **apply_kw) -> jax.Array:
    """The discriminative network's per-pixel outputs (B, H, W, C): one
    call at t = 0 whose x input is the scene too (RGB padded with zero
    channels when C > 3, its grey level when C < 3). Not x = 0: with a
    zero-initialised concat projection an all-zero input leaves every
    activation spatially constant, GroupNorm maps it to 0 and the weights
    behind the zero-initialised output conv get no gradient (measured: at
    600 steps such a net still predicted one class everywhere)."""
    c = cond['concat']
    ch = self.out_channels
    if ch >= 3:
      x = jnp.concatenate([c, jnp.zeros(c.shape[:-1] + (ch - 3,), c.dtype)],
                          axis=-1)
    else:
      x = jnp.repeat(c.mean(-1, keepdims=True), ch, axis=-1)
    t = jnp.zeros((c.shape[0],), c.dtype)
    return self.apply(params, x, t, cond, **apply_kw)

  def loss(self, params, frozen, task_state, batch, key):
    del frozen
    k_loss, k_model = jax.random.split(key)
    cond = self.cond(batch, None)
    if self.mode == 'generative':
      fn = self.network(params, rngs=k_model, train=True)
      loss, aux = loss_lib.unified_loss(
          fn, x0=self.to_x0(batch), cond=cond, key=k_loss, path=self.path,
          prediction=self.prediction, weighting=self.weighting,
          time_dist=self.time_dist,
          time_state=(task_state or {}).get('time_dist'))
      return loss, {'mse': aux['mse']}, self.update_state(task_state, aux)
    out = self._logits(params, cond, rngs=k_model, train=True)
    v = jnp.asarray(self._target_entry(batch))[..., 0]
    if self.target == 'semantic':
      logp = jax.nn.log_softmax(out, axis=-1)
      per_pixel = -jnp.take_along_axis(
          logp, v.astype(jnp.int32)[..., None], axis=-1)[..., 0]
    elif self.target == 'edges':
      z, y = out[..., 0], (v > 0).astype(out.dtype)
      per_pixel = jnp.maximum(z, 0) - z * y + jnp.log1p(jnp.exp(-jnp.abs(z)))
    else:
      per_pixel = (out[..., 0] - (v.astype(out.dtype) * (2.0 / MAX_RANK)
                                  - 1.0)) ** 2
    per_example = per_pixel.reshape(per_pixel.shape[0], -1).mean(-1)
    return per_example.mean(), {'pixel_loss': per_example}, task_state

  # -- Sampling -------------------------------------------------------------

  def check_cond(self, cond: dict, n: int) -> jax.Array:
    want = (n, self.size, self.size, 3)
    if 'concat' not in cond:
      raise UserError("Dense prediction needs cond['concat'], the input "
                      f'scenes {want} in [-1, 1]; build it with '
                      'task.eval_cond(batch).')
    c = cond['concat']
    if tuple(c.shape) != want:
      raise UserError(
          f"Dense prediction: the condition image cond['concat'] has shape "
          f'{tuple(c.shape)}, expected {want} (n RGB scenes at the '
          "task's resolution, in [-1, 1]); render the scenes at "
          f'resolution {self.size} and pass n={c.shape[0] if c.ndim else 0}'
          ' if that is how many you have.')
    return jnp.asarray(c, jnp.float32)

  def sample(self, params, frozen, cond: dict, key: jax.Array, *, n: int,
             guidance: Any = 1.0, sampler: dict | None = None,
             return_info: bool = False):
    """n encoded target maps (n, H, W, 3) in [-1, 1] for the scenes
    cond['concat']: a sample from noise (generative; `key` draws it), or
    the network's one prediction (discriminative; `key` unused).
    `guidance` is unused."""
    del frozen, guidance
    c = self.check_cond(cond, n)
    if self.mode == 'generative':
      out = image_cond.run_sampler(self, self.network(params), {'concat': c},
                                   key, n=n, sampler=sampler,
                                   return_info=return_info)
      if return_info:
        return self.from_x(out[0]), out[1]
      return self.from_x(out)
    out = self._logits(params, {'concat': c})
    if self.target == 'semantic':
      x = jnp.asarray(_PALETTE, jnp.float32)[out.argmax(-1)]
    elif self.target == 'edges':
      x = jnp.repeat(2.0 * jax.nn.sigmoid(out[..., :1]) - 1.0, 3, axis=-1)
    else:
      x = jnp.repeat(jnp.clip(out[..., :1], -1.0, 1.0), 3, axis=-1)
    return (x, {'nfe': jnp.int32(1)}) if return_info else x

  def to_media(self, samples, cond: dict) -> media_lib.Media:
    """scene | predicted map panels."""
    m = base.array_media(samples, cond, x_shape=self.x_shape)
    if 'concat' in cond:
      m.condition = image_cond.to_uint8(np.asarray(cond['concat']), 'image')
    return m
