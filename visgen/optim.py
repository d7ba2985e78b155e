"""Optimizer from the config: AdamW, warmup + constant/cosine, clipping.

Gradient accumulation is done by the train step (a scan over micro-batches),
not by optax.MultiSteps, so one optimizer update always equals one step.
"""

import optax

SCHEDULES = ('constant', 'cosine')


def make_schedule(cfg, total_steps: int) -> optax.Schedule:
  """Linear warmup from 0 to `lr`, then constant or cosine decay."""
  if cfg.schedule not in SCHEDULES:
    raise ValueError(f'Unknown lr schedule {cfg.schedule!r}. Valid choices: '
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


def make_optimizer(cfg, total_steps: int):
  """Returns (optax transformation, lr schedule) for `config.optim`."""
  if cfg.name != 'adamw':
    raise ValueError(f'Unknown optimizer {cfg.name!r}. Valid choices: adamw.')
  schedule = make_schedule(cfg, total_steps)
  parts = []
  if cfg.get('grad_clip'):
    parts.append(optax.clip_by_global_norm(cfg.grad_clip))
  parts.append(optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2,
                           eps=cfg.get('eps', 1e-8),
                           weight_decay=cfg.weight_decay))
  return optax.chain(*parts), schedule
