"""Video generation: class-conditional and image-to-video (first frame
given) on `shapes_video` / `moving_digits`, with the video DiT
(`visgen.models.video_dit`, linear or softmax attention).

  config.data  = dict(name='shapes_video', resolution=16, num_frames=8, ...)
  config.task  = dict(name='video', x_shape=(8, 16, 16, 3), num_classes=4,
                      label_dropout=0.1, first_frame=True,
                      frame_dropout=0.1)
  config.model = dict(name='video_dit', num_frames=8, input_size=16,
                      num_classes=4, first_frame=True, ...)

Batch -> x0 = the clip 'video' (uint8 (B, T, H, W, C) -> [-1, 1]); cond =
{'label': the class with classifier-free dropout (GenerationTask)} plus,
with `first_frame`, {'first_frame': frame 0 of the clip in [-1, 1]}, replaced
per example by zeros (the null frame, as SVD drops its image condition) with
probability `frame_dropout`. Loss, path, time distribution, sampler and
classifier-free guidance on the label are GenerationTask's. Image-to-video
samples keep the given first frame as frame 0 (the model generates the
others; its own frame 0 is replaced). Media are video (`visgen.media`:
GIF preview and ADM-style .npz), the given first frame shown left of each
clip.
"""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from visgen import media as media_lib
from visgen.data import preprocess
from visgen.tasks import base
from visgen.tasks import generation
from visgen.tasks import image_cond
from visgen.validate import UserError


class VideoTask(generation.GenerationTask):
  """Class-conditional / image-to-video generation (module docstring)."""

  def __init__(self, config, *, apply=None, frozen_apply=None):
    t = config.task
    if len(tuple(t.x_shape)) != 4:
      raise UserError(f'config.task.x_shape must be (T, H, W, C) for the '
                      f'video task, got {tuple(t.x_shape)}.')
    if t.get('data_key', 'video') != 'video':
      raise UserError("The video task reads the batch's 'video' clips; "
                      'remove config.task.data_key.')
    if t.get('latent') or t.get('flatten'):
      raise UserError('The video task works in pixel space (no '
                      'config.task.latent / flatten yet).')
    super().__init__(config, apply=apply, frozen_apply=frozen_apply)
    self.data_key = 'video'
    self.first_frame = bool(t.get('first_frame', False))
    self.frame_dropout = float(t.get('frame_dropout', 0.0))
    if not 0.0 <= self.frame_dropout <= 1.0:
      raise UserError('config.task.frame_dropout must be in [0, 1], got '
                      f'{self.frame_dropout}.')
    self.config = config
    self.batch_keys = ('video',) + (('label',) if self.num_classes else ())

  # -- Batch -> (x0, cond) ------------------------------------------------------

  def clip(self, batch: dict) -> jax.Array:
    if 'video' not in batch:
      raise UserError(f"The video task needs 'video' clips in the batch (it "
                      f'has {", ".join(sorted(batch))}); use the '
                      'shapes_video or moving_digits dataset.')
    v = batch['video']
    if tuple(v.shape[1:]) != self.x_shape:
      raise UserError(f"batch['video'] has shape {tuple(v.shape)}, expected "
                      f'(B,) + config.task.x_shape = (B,) + {self.x_shape}; '
                      'match config.data num_frames / resolution.')
    return preprocess.to_float(v) if jnp.issubdtype(
        v.dtype, jnp.integer) else v.astype(jnp.float32)

  def to_x0(self, batch: dict, frozen=None, key=None) -> jax.Array:
    del frozen, key
    return self.clip(batch)

  def from_x(self, x: jax.Array) -> jax.Array:
    return x.reshape((x.shape[0],) + self.x_shape)

  def cond(self, batch: dict, key: jax.Array | None) -> dict:
    k_label = k_frame = None
    if key is not None:
      k_label, k_frame = jax.random.split(key)
    out = super().cond(batch, k_label)
    if self.first_frame:
      ff = self.clip(batch)[:, 0]
      if k_frame is not None and self.frame_dropout > 0:
        drop = jax.random.bernoulli(k_frame, self.frame_dropout,
                                    (ff.shape[0],))
        ff = jnp.where(drop[:, None, None, None], 0.0, ff)
      out['first_frame'] = ff
    return out

  def batch_spec(self, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
    spec = {'video': jax.ShapeDtypeStruct((batch_size,) + self.x_shape,
                                          jnp.uint8)}
    if self.num_classes:
      spec['label'] = jax.ShapeDtypeStruct((batch_size,), jnp.int32)
    return spec

  # -- Sampling -----------------------------------------------------------------

  def sample_cond(self, spec) -> dict[str, np.ndarray]:
    """Labels cycling through the classes (or {'per_class': m}) and, for
    image-to-video, the first frames of held-out test clips."""
    cond = super().sample_cond(spec)
    if not self.first_frame:
      return cond
    n = (int(spec['per_class']) * max(self.num_classes, 1)
         if isinstance(spec, dict) else int(spec))
    ex = image_cond.heldout_examples(self.config, n)
    cond['first_frame'] = np.asarray(
        preprocess.to_float(np.asarray(ex['video'])[:, 0]), np.float32)
    if self.num_classes and not isinstance(spec, dict):
      cond['label'] = np.asarray(ex['label'], np.int32)  # The clips' own.
    return cond

  def eval_cond(self, batch: dict) -> dict:
    return self.cond(batch, None)

  def sample(self, params, frozen, cond: dict, key: jax.Array, *, n: int,
             guidance: Any = 1.0, **kw) -> jax.Array:
    if self.first_frame and 'first_frame' not in cond:
      raise UserError("Image-to-video sampling needs cond['first_frame'] "
                      '(B, H, W, C) in [-1, 1] (task.sample_cond gives '
                      'held-out ones).')
    x = super().sample(params, frozen, cond, key, n=n, guidance=guidance,
                       **kw)
    if self.first_frame:
      x = x.at[:, 0].set(jnp.asarray(cond['first_frame'], x.dtype))
    return x

  def to_media(self, samples, cond: dict) -> media_lib.Media:
    m = base.array_media(samples, cond, x_shape=self.x_shape,
                         num_classes=self.num_classes)
    if self.first_frame and 'first_frame' in cond:
      m.condition = preprocess.to_uint8(np.asarray(cond['first_frame']))
    return m
