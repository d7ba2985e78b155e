"""Optimizer from the config: AdamW, warmup + constant/cosine, clipping, masks.

Gradient accumulation is done by the train step (a scan over micro-batches),
not by optax.MultiSteps, so one optimizer update always equals one step.

Partial training (big_vision style): `optim.trainable` and `optim.freeze`
are regexes over '/'-joined parameter paths (`visgen.param_tree`, e.g.
'blocks/0/fc1/kernel'), matched against the whole path. A parameter is
trained iff it matches some `trainable` regex (None: every parameter) and
no `freeze` regex. The others get exactly zero updates
(`optax.set_to_zero`), no weight decay, no gradient-clipping share and no
optimizer state (optax.multi_transform masks them out of AdamW).
"""

from typing import Any

import jax
import optax

from visgen import param_tree
from visgen.validate import UserError

SCHEDULES = ('constant', 'cosine')
TRAIN, FREEZE = 'train', 'freeze'


def make_schedule(cfg, total_steps: int) -> optax.Schedule:
  """Linear warmup from 0 to `lr`, then constant or cosine decay."""
  if cfg.schedule not in SCHEDULES:
    raise UserError(f'Unknown lr schedule {cfg.schedule!r}. Valid choices: '
                    f'{", ".join(SCHEDULES)}.')
  warmup = int(cfg.get('warmup_steps', 0))
  if cfg.schedule == 'constant':
    if not warmup:
      return optax.constant_schedule(cfg.lr)
    return optax.join_schedules([
        optax.linear_schedule(0.0, cfg.lr, warmup),
        optax.constant_schedule(cfg.lr)], [warmup])
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=cfg.lr, warmup_steps=warmup,
      decay_steps=max(total_steps, warmup + 1),
      end_value=cfg.lr * cfg.get('end_lr_factor', 0.0))


def has_mask(cfg) -> bool:
  return bool(cfg.get('trainable') or cfg.get('freeze'))


def trainable_mask(cfg, params: Any) -> Any:
  """Params-shaped tree of bools: True where `config.optim` trains.

  Raises:
    ValueError: a regex that is invalid or matches no parameter (typos
      would otherwise silently train or freeze everything), or a mask that
      leaves nothing to train.
  """
  train_re = param_tree.compile_patterns(cfg.get('trainable'),
                                         'config.optim.trainable')
  freeze_re = param_tree.compile_patterns(cfg.get('freeze'),
                                          'config.optim.freeze')
  paths = list(param_tree.flatten(params))
  for field, patterns in (('trainable', train_re), ('freeze', freeze_re)):
    for p in patterns:
      if not any(p.fullmatch(path) for path in paths):
        raise UserError(
            f'config.optim.{field} regex {p.pattern!r} matches no parameter '
            '(it must match a whole /-joined path). Some paths: '
            f'{", ".join(paths[:6])}.')

  def one(path, _):
    return ((not train_re or param_tree.matches(train_re, path))
            and not param_tree.matches(freeze_re, path))

  mask = param_tree.map_with_path(one, params)
  if not any(jax.tree.leaves(mask)):
    raise UserError('config.optim.trainable / freeze leave no parameter to '
                    'train; loosen the regexes.')
  return mask


def make_optimizer(cfg, total_steps: int):
  """Returns (optax transformation, lr schedule) for `config.optim`."""
  if cfg.name != 'adamw':
    raise UserError(f'Unknown optimizer {cfg.name!r}. Valid choices: adamw.')
  schedule = make_schedule(cfg, total_steps)
  parts = []
  if cfg.get('grad_clip'):
    parts.append(optax.clip_by_global_norm(cfg.grad_clip))
  parts.append(optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2,
                           eps=cfg.get('eps', 1e-8),
                           weight_decay=cfg.weight_decay))
  tx = optax.chain(*parts)
  if not has_mask(cfg):
    return tx, schedule

  def labels(params):
    return jax.tree.map(lambda t: TRAIN if t else FREEZE,
                        trainable_mask(cfg, params))

  # Clipping sits inside the trained partition: frozen gradients neither
  # count towards the global norm nor get updates.
  return optax.multi_transform({TRAIN: tx, FREEZE: optax.set_to_zero()},
                               labels), schedule
