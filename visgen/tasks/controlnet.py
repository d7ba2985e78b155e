"""ControlNet as a task: spatial control of a frozen base generator
(Zhang, Rao & Agrawala 2023; PixArt-delta for DiT bases).

  config.model  = dict(name='controlnet', base=BASE, hint_channels=1)
  config.frozen = dict(base=dict(model=BASE, source='workdir:/runs/base'))
  config.init_from = dict(source='workdir:/runs/base',
                          mapping=visgen.models.controlnet.INIT_MAPPING)
  config.task   = dict(name='controlnet', control='edges', x_shape=(S,S,3),
                       num_classes=4, label_dropout=0.1, control_scale=1.0)

The trainable parameters are the ControlNet's only (the copy of the base's
encoder, the hint encoder and the zero projections); the base is the frozen
component `base` (never in the optimizer, never saved). The denoiser is

  D(x_t, t, c) = base(x_t, t, c; residuals = s * controlnet(x_t, t, c, map))

trained with the base's own objective (path, prediction, weighting, time
distribution: use the base run's). Because every projection into the base
starts at zero, the controlled model equals the base bit for bit at
initialisation. `control_scale` s (traced; 0 = the base) scales the
residuals at sampling; `extra_controls` adds further trained ControlNets on
the same base (sum of scaled residuals). Class-conditional bases keep their
classifier-free guidance over the label (the control map is in both halves).
"""

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from visgen import media as media_lib
from visgen.models import controlnet as cn_lib
from visgen.objectives import loss as loss_lib
from visgen.objectives import precond as precond_lib
from visgen.samplers import guidance as guidance_lib
from visgen.tasks import base
from visgen.tasks import generation
from visgen.tasks import image_cond
from visgen.validate import UserError

FROZEN_BASE = 'base'


class ControlNetTask(generation.GenerationTask):
  """A frozen base under a trainable ControlNet (see the module docstring)."""

  # Its conditions come from data (held-out batches): `visgen.generate`
  # has nothing to ask for; use --mode=sample.
  REQUESTS = ()

  def __init__(self, config, *, apply=None, frozen_apply=None):
    super().__init__(config, apply=apply, frozen_apply=frozen_apply)
    t = config.task
    image_cond.require_pixel_space(self, config.task.name)
    if self.flatten or self.data_key != 'image':
      raise UserError('The controlnet task trains on image batches '
                      "(config.task.data_key='image', flatten=False).")
    if self.learned_variance is not None:
      raise UserError('The controlnet task does not support a learned '
                      'variance base (config.learned_variance).')
    self.control = image_cond.check_kind(t.get('control', 'edges'),
                                         'config.task.control')
    self.control_scale = float(t.get('control_scale', 1.0))
    self.size = int(self.x_shape[0])
    self.hint_channels = image_cond.CONTROLS[self.control]
    model = dict(config.model)
    if model.get('name') != 'controlnet':
      raise UserError("The controlnet task trains a ControlNet: set "
                      "config.model = dict(name='controlnet', base=<the base "
                      "model config>, hint_channels=...).")
    if int(model.get('hint_channels', 1)) != self.hint_channels:
      raise UserError(
          f'config.task.control={self.control!r} has {self.hint_channels} '
          f'channels but config.model.hint_channels='
          f'{model.get("hint_channels", 1)}; set them equal.')
    frozen = config.get('frozen') or {}
    if FROZEN_BASE not in frozen:
      raise UserError(
          'The controlnet task needs the frozen base model: set '
          "config.frozen.base = dict(source='workdir:<base run>', "
          'model=<its model config>).')
    self.config = config
    self.batch_keys = ('image',) + (('label',) if self.num_classes else ()
                                    ) + image_cond.batch_keys(self.control)

  # -- Batch -> (x0, cond) --------------------------------------------------

  def control_map(self, batch: dict) -> jax.Array:
    return image_cond.control_map(batch, self.control, self.size,
                                  what='The controlnet task')

  def cond(self, batch: dict, key: jax.Array | None) -> dict:
    out = super().cond(batch, key)
    out['control'] = self.control_map(batch)
    return out

  def batch_spec(self, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
    spec = super().batch_spec(batch_size)
    spec.update(image_cond.batch_spec(self.control, batch_size, self.size))
    return spec

  # -- The controlled network -----------------------------------------------

  def network(self, params, frozen=None, *, control_scale=None,
              extra_controls: Sequence[tuple] = (), **apply_kw):
    """`(x_t, t, cond) -> prediction` of the base under the control(s).

    extra_controls: (apply, params, cond_key, scale) of further ControlNets
      on the same base; each reads its map from cond[cond_key].
    """
    if self.apply is None or FROZEN_BASE not in self.frozen_apply:
      raise ValueError('This task was built without its networks; build it '
                       'with visgen.builder.build.')
    if frozen is None or FROZEN_BASE not in frozen:
      raise ValueError("The controlnet task needs frozen['base'] (the "
                       "frozen components' params).")
    base_apply, base_params = self.frozen_apply[FROZEN_BASE], frozen[
        FROZEN_BASE]
    scale = self.control_scale if control_scale is None else control_scale

    def fn(x_t, t, cond):
      res = [self.apply(params, x_t, t, cond, **apply_kw)]
      scales = [scale]
      for apply_k, params_k, key_k, scale_k in extra_controls:
        res.append(apply_k(params_k, x_t, t, dict(cond, control=cond[key_k])))
        scales.append(scale_k)
      res = cn_lib.combine(res, scales)
      return base_apply(base_params, x_t, t, cond,
                        **cn_lib.base_kwargs(res))

    return precond_lib.precondition(fn, path=self.path, mode=self.precond)

  def base_network(self, frozen):
    """The uncontrolled base (the reference of the adherence metrics)."""
    base_apply, base_params = self.frozen_apply[FROZEN_BASE], frozen[
        FROZEN_BASE]
    fn = lambda x_t, t, cond: base_apply(base_params, x_t, t, cond)
    return precond_lib.precondition(fn, path=self.path, mode=self.precond)

  # -- Training -------------------------------------------------------------

  def loss(self, params, frozen, task_state, batch, key):
    k_drop, k_loss, k_model = jax.random.split(key, 3)
    x0 = self.to_x0(batch)
    fn = self.network(params, frozen, rngs=k_model, train=True)
    time_state = (task_state or {}).get('time_dist')
    loss, aux = loss_lib.unified_loss(
        fn, x0=x0, cond=self.cond(batch, k_drop), key=k_loss, path=self.path,
        prediction=self.prediction, weighting=self.weighting,
        time_dist=self.time_dist, time_state=time_state)
    return loss, {'mse': aux['mse']}, self.update_state(task_state, aux)

  # -- Sampling -------------------------------------------------------------

  def sample_cond(self, spec) -> dict[str, np.ndarray]:
    """Control maps (and labels) of the first n held-out scenes."""
    n = int(spec['per_class']) * max(self.num_classes, 1) if isinstance(
        spec, dict) else int(spec)
    ex = image_cond.heldout_examples(self.config, n)
    return jax.tree.map(np.asarray, self.eval_cond(ex))

  def eval_cond(self, batch: dict) -> dict:
    return self.cond(batch, None)

  def sample(self, params, frozen, cond: dict, key: jax.Array, *, n: int,
             guidance: Any = 1.0, control_scale: Any = None,
             extra_controls: Sequence[tuple] = (), sampler: dict | None = None,
             uncontrolled: bool = False, return_info: bool = False):
    """n samples for cond['control'] (and labels); `guidance` is the CFG
    scale over labels, `control_scale` the residual scale (both traced)."""
    if 'control' not in cond:
      raise UserError("ControlNet sampling needs cond['control'], a control "
                      f'map (n, {self.size}, {self.size}, '
                      f'{self.hint_channels}).')
    cn_lib.check_control(cond['control'], size=self.size,
                         channels=self.hint_channels)
    denoise = (self.base_network(frozen) if uncontrolled else self.network(
        params, frozen, control_scale=control_scale,
        extra_controls=extra_controls))
    if self.num_classes:
      denoise = guidance_lib.cfg(denoise, scale=guidance,
                                 null_class=self.num_classes)
    out = image_cond.run_sampler(self, denoise, cond, key, n=n,
                                 sampler=sampler, return_info=return_info)
    if return_info:
      return self.from_x(out[0]), out[1]
    return self.from_x(out)

  def to_media(self, samples, cond: dict) -> media_lib.Media:
    """control map | sample panels."""
    m = base.array_media(samples, cond, x_shape=self.x_shape)
    if 'control' in cond:
      m.condition = image_cond.to_uint8(np.asarray(cond['control']),
                                        self.control)
    return m
