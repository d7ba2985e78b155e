"""Unconditional and class-conditional generation (the default task).

Batch -> (x0 in [-1, 1], cond): uint8 'image' batches are mapped with
`preprocess.to_float`; float 'latent' batches (pre-encoded autoencoder
latents) are scaled by `task.latent_scale`. Labels get classifier-free
dropout *per sample*: each label becomes the null class `num_classes` with
probability `label_dropout`, independently. The loss is
`objectives.loss.unified_loss` with the config's path / prediction /
weighting / time distribution; sampling uses the config's sampler with
classifier-free guidance whose scale is a traced value (no recompiles).
"""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from visgen import config_lib
from visgen import interpolants
from visgen import samplers
from visgen.data import preprocess
from visgen.objectives import loss as loss_lib
from visgen.objectives import time_dists
from visgen.objectives import weightings
from visgen.samplers import guidance as guidance_lib
from visgen.tasks import TASKS

# Sampler-config keys that configure guidance, not the sampler: `cfg_scale`
# (read by the loop and passed as `guidance`), `cfg_rescale`, `cfg_interval`,
# `cfg_channels` (see `GenerationTask.sample`).
CFG_KEYS = ('cfg_scale', 'cfg_rescale', 'cfg_interval', 'cfg_channels')


def batch_to_x0(batch: dict, *, data_key: str = 'image',
                latent_scale: float = 1.0, flatten: bool = False) -> jax.Array:
  """x0 in model space: uint8 images -> [-1, 1]; float latents * scale."""
  x = batch[data_key]
  if jnp.issubdtype(x.dtype, jnp.integer):
    x = preprocess.to_float(x)
  else:
    x = x.astype(jnp.float32) * latent_scale
  return x.reshape(x.shape[0], -1) if flatten else x


def drop_labels(key: jax.Array, labels_B: jax.Array, *, p: float,
                null_class: int) -> jax.Array:
  """Replaces each label by `null_class` with probability p, per sample."""
  if p <= 0.0:
    return labels_B
  drop_B = jax.random.bernoulli(key, p, labels_B.shape)
  return jnp.where(drop_B, null_class, labels_B)


@TASKS.register('generation')
class GenerationTask:
  """x0 from images or latents; optional class labels with CFG dropout."""

  def __init__(self, config):
    t = config.task
    self.num_classes = int(t.get('num_classes', 0))
    self.label_dropout = float(t.get('label_dropout', 0.0))
    self.flatten = bool(t.get('flatten', False))
    self.data_key = t.get('data_key', 'image')
    self.latent_scale = float(t.get('latent_scale', 1.0))
    self.x_shape = tuple(t.x_shape)
    name, kw = config_lib.named(config.path)
    self.path = interpolants.get_path(name, **kw)
    self.prediction = config.prediction
    name, kw = config_lib.named(config.weighting)
    self.weighting = weightings.get_weighting(name, **kw)
    name, kw = config_lib.named(config.time_dist)
    self.time_dist = time_dists.get_time_dist(name, **kw)
    self.sampler_cfg = config.sampler
    # The batch entries this task reads (others stay on the host).
    self.batch_keys = (self.data_key,) + (
        ('label',) if self.num_classes else ())

  # -- Batch -> (x0, cond) --------------------------------------------------

  def to_x0(self, batch: dict) -> jax.Array:
    return batch_to_x0(batch, data_key=self.data_key,
                       latent_scale=self.latent_scale, flatten=self.flatten)

  def from_x(self, x: jax.Array) -> jax.Array:
    """Model space -> data space (x_shape; latents unscaled)."""
    x = x.reshape((x.shape[0],) + self.x_shape)
    if self.data_key != 'image':
      x = x / self.latent_scale
    return x

  def cond(self, batch: dict, key: jax.Array | None) -> dict:
    if not self.num_classes:
      return {}
    labels = batch['label'].astype(jnp.int32)
    if key is not None:
      labels = drop_labels(key, labels, p=self.label_dropout,
                           null_class=self.num_classes)
    return {'label': labels}

  # -- Training -------------------------------------------------------------

  def loss(self, apply, params, frozen, batch, key):
    del frozen  # No frozen parts (autoencoder, teacher) in this task yet.
    k_drop, k_loss, k_model = jax.random.split(key, 3)
    x0 = self.to_x0(batch)

    def apply_fn(x_t, t, cond):
      return apply(params, x_t, t, cond, rngs=k_model, train=True)

    loss, aux = loss_lib.unified_loss(
        apply_fn, x0=x0, cond=self.cond(batch, k_drop), key=k_loss,
        path=self.path, prediction=self.prediction, weighting=self.weighting,
        time_dist=self.time_dist)
    return loss, {'mse': aux['mse']}

  # -- Sampling -------------------------------------------------------------

  def sample_cond(self, n: int) -> dict[str, np.ndarray]:
    """Labels 0..K-1, each repeated n // K times (one grid row per class)."""
    if not self.num_classes:
      return {}
    per = max(n // self.num_classes, 1)
    return {'label': np.repeat(np.arange(self.num_classes, dtype=np.int32),
                               per)}

  def grid_rows(self, n: int) -> int:
    return self.num_classes if self.num_classes else int(np.sqrt(n))

  def sample(self, apply, params, frozen, cond: dict, key: jax.Array, *,
             n: int, guidance: Any = 1.0) -> jax.Array:
    """n samples in data space; `guidance` (CFG scale) may be traced.

    Classifier-free guidance (`samplers.guidance.cfg`) with the null class
    as the unconditional half: u + s * (c - u), so s = 1 is the plain
    conditional model (DiT's convention). The sampler config's optional
    `cfg_rescale` (phi, default 0: off), `cfg_interval` ((t_lo, t_hi),
    default None: every t) and `cfg_channels` (DiT's partial guidance,
    default None or 0: every channel) configure it.
    """
    del frozen
    name, kw = config_lib.named(self.sampler_cfg)
    opts = {k: kw.pop(k) for k in CFG_KEYS if k in kw}
    denoise = lambda x_t, t, c: apply(params, x_t, t, c)
    if self.num_classes:
      interval = opts.get('cfg_interval')
      denoise = guidance_lib.cfg(
          denoise, scale=guidance, null_class=self.num_classes,
          rescale=opts.get('cfg_rescale', 0.0),
          interval=None if interval is None else tuple(interval),
          channels=opts.get('cfg_channels') or None)
    shape = (n, int(np.prod(self.x_shape))) if self.flatten else (
        (n,) + self.x_shape)
    steps = kw.pop('steps')
    ts = samplers.make_grid(kw.pop('grid', 'uniform'), steps, path=self.path)
    x = samplers.sample(name, denoise, key=key, shape=shape, cond=cond,
                        path=self.path, prediction=self.prediction, ts=ts,
                        **kw)
    return self.from_x(x)

