"""Denoising diffusion bridges as a task (DDBM, Zhou et al. 2023): paired
image-to-image translation on a path pinned at both ends.

  config.task  = dict(name='bridge', source='edges', target='image',
                      x_shape=(32, 32, 3))
  config.path  = dict(name='bridge_vp')            # or 'bridge_ve'
  config.model = dict(name='unet', ..., concat_channels=3)
  config.sampler = dict(name='bridge_heun', steps=N, churn_step_ratio=0.33,
                        denoise_final=True)

Pairs: x0 = the target (a scene), y = the source rendered as a 3-channel
image in [-1, 1] (`image_cond.as_image`): edges -> scene and mask -> scene
from `shapes`, edit source -> edit target from `shapes_edit`
(source='image', target='edited_image'). On the bridge path
x_t = alpha(t) x0 + gamma(t) y + sigma(t) eps, so x_1 = y and x_0 = x0; the
network sees [x_t, y] (DDBM's channel concatenation, cond['concat'] = y) and
is trained with the unified loss with y (the target A x0 + B eps + C y of
the prediction kind). Sampling starts at x_{t_max} around y and runs the
config's sampler (DDBM's `bridge_heun`: a stochastic step of ratio
`churn_step_ratio` then Heun; NFE = 3 N (+1 with denoise_final); pass
`return_info=True` to `sample` for the count).

With an ordinary (non-bridge) path the same task is conditional diffusion
on the same pairs (y only through the concatenation; sampling from the
Gaussian prior): DDBM's baseline at equal NFE.
"""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from visgen import media as media_lib
from visgen.objectives import loss as loss_lib
from visgen.tasks import base
from visgen.tasks import generation
from visgen.tasks import image_cond
from visgen.validate import UserError


class BridgeTask(image_cond.HeldoutCond, generation.GenerationTask):
  """DDBM on (source, target) pairs (see the module docstring)."""

  # Its conditions come from data (held-out batches): `visgen.generate`
  # has nothing to ask for; use --mode=sample.
  REQUESTS = ()

  def __init__(self, config, *, apply=None, frozen_apply=None):
    t = config.task
    if not t.get('source'):
      raise UserError(
          "The bridge task needs config.task.source: the batch key of the "
          "bridge's source y (e.g. 'edges' or 'semantic_mask' with the "
          "shapes dataset, 'image' with shapes_edit), and config.task.target "
          "(default 'image'; 'edited_image' for shapes_edit).")
    super().__init__(config, apply=apply, frozen_apply=frozen_apply)
    image_cond.require_pixel_space(self, config.task.name)
    if self.num_classes or self.flatten or self.learned_variance is not None:
      raise UserError('The bridge task takes no class labels, flatten or '
                      'learned variance.')
    self.source_kind = image_cond.check_kind(t.source, 'config.task.source')
    self.target_key = t.get('target', 'image')
    if self.target_key not in ('image', 'edited_image'):
      raise UserError(f'config.task.target={self.target_key!r}: the target '
                      "is an image entry ('image' or 'edited_image').")
    model = dict(config.model)
    want = self.x_shape[-1]
    if int(model.get('concat_channels', 0)) != want:
      raise UserError(
          f'The bridge network reads [x_t, y]: set '
          f'config.model.concat_channels={want} (got '
          f'{model.get("concat_channels", 0)}).')
    self.size = int(self.x_shape[0])
    self.is_bridge = bool(self.path.is_bridge)
    self.config = config
    self.batch_keys = (self.target_key,) + tuple(
        k for k in image_cond.batch_keys(self.source_kind)
        if k != self.target_key)

  # -- Batch -> (x0, y) -----------------------------------------------------

  def to_x0(self, batch: dict, frozen=None, key=None) -> jax.Array:
    del frozen, key
    return image_cond.target_image(
        batch, self.target_key, self.size,
        what=f'The bridge task (target {self.target_key!r})')

  def source(self, batch: dict) -> jax.Array:
    """y: the source as a 3-channel image in [-1, 1]."""
    cmap = image_cond.control_map(batch, self.source_kind, self.size,
                                  what='The bridge task (source y)')
    return image_cond.as_image(cmap, self.source_kind)

  def cond(self, batch: dict, key: jax.Array | None) -> dict:
    del key
    return {'concat': self.source(batch)}

  def batch_spec(self, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
    spec = {self.target_key: jax.ShapeDtypeStruct(
        (batch_size,) + self.x_shape, jnp.uint8)}
    spec.update(image_cond.batch_spec(self.source_kind, batch_size,
                                      self.size))
    return spec

  def x_t(self, x0, y, t, eps):
    """The path's x_t of a pair (x_1 = y and x_0 = x0 on a bridge)."""
    return self.path.sample_xt(x0=x0, eps=eps, t=t,
                               y=y if self.is_bridge else None)

  # -- Training -------------------------------------------------------------

  def loss(self, params, frozen, task_state, batch, key):
    del frozen
    k_loss, k_model = jax.random.split(key)
    x0 = self.to_x0(batch)
    cond = self.cond(batch, None)
    fn = self.network(params, rngs=k_model, train=True)
    loss, aux = loss_lib.unified_loss(
        fn, x0=x0, cond=cond, key=k_loss, path=self.path,
        prediction=self.prediction, weighting=self.weighting,
        time_dist=self.time_dist,
        time_state=(task_state or {}).get('time_dist'),
        y=cond['concat'] if self.is_bridge else None)
    return loss, {'mse': aux['mse']}, self.update_state(task_state, aux)

  # -- Sampling -------------------------------------------------------------

  def sample(self, params, frozen, cond: dict, key: jax.Array, *, n: int,
             guidance: Any = 1.0, sampler: dict | None = None,
             return_info: bool = False):
    """n translations of the sources cond['concat'] (n, H, W, 3) in
    [-1, 1]; `guidance` is unused (no guidance on a bridge)."""
    del frozen, guidance
    if 'concat' not in cond:
      raise UserError("Bridge sampling needs cond['concat'], the source "
                      f'images y (n, {", ".join(map(str, self.x_shape))}) '
                      'in [-1, 1]; build it with eval_cond(batch).')
    y = jnp.asarray(cond['concat'], jnp.float32)
    if tuple(y.shape) != (n,) + self.x_shape:
      raise UserError(f"Bridge sampling: cond['concat'] has shape "
                      f'{tuple(y.shape)}, expected {(n,) + self.x_shape}.')
    out = image_cond.run_sampler(
        self, self.network(params), {'concat': y}, key, n=n,
        y=y if self.is_bridge else None, sampler=sampler,
        return_info=return_info)
    if return_info:
      return self.from_x(out[0]), out[1]
    return self.from_x(out)

  def to_media(self, samples, cond: dict) -> media_lib.Media:
    """source | translation panels."""
    m = base.array_media(samples, cond, x_shape=self.x_shape)
    if 'concat' in cond:
      m.condition = image_cond.to_uint8(np.asarray(cond['concat']), 'image')
    return m
