r"""Class-conditional sampling from trained checkpoints, with any guidance.

  python -m visgen.classification.guided_sampling \
      --generator_config=configs/quickstart.py --generator=DIR/generator \
      --classifier_config=configs/digits_noisy_classifier.py \
      --classifier=DIR/classifier --guidance=classifier --scale=2 \
      --out=DIR/grid.png

writes a class grid (one row per class) from the generator's EMA parameters
with guidance 'none' (the conditional model), 'cfg' (classifier-free, scale s;
s = 0 is the unconditional null-class model) or 'classifier' (the noise-aware
classifier's gradient on the conditional model, scale s; ADM-G). For
classifier-free guidance alone `python -m visgen.main --mode=sample
--config.sampler.cfg_scale=S` does the same without a classifier.

`GuidedSampler` compiles one sampling function for all guidance kinds and
scales (scales are traced), so a sweep over scales compiles once. It is the
generator task's own `sample` with the classifier task's `guide`: classifier
guidance takes ADM's mean-shift form with the 'ddpm' (ancestral) sampler and
the score form with every other sampler. Runs are built and restored by
`visgen.builder`; configs are read by `visgen.config_loader`.
"""

import argparse
import dataclasses
import math
import os
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp

from visgen import builder
from visgen import config_loader
from visgen import media as media_lib
from visgen import train as train_lib
from visgen.tasks import base as tasks_base
from visgen import validate

GUIDANCE_KINDS = ('none', 'cfg', 'classifier')


@dataclasses.dataclass
class Trained:
  """A restored run: its config, built parts, EMA params and step."""

  config: Any
  build: builder.Built
  params: Any
  step: int

  @property
  def task(self):
    return self.build.task


def load_trained(config, workdir: str, *, train_if_needed: bool = False
                 ) -> Trained:
  """Restores the latest checkpoint of `workdir` (training it first, or
  resuming it to `config.total_steps`, when `train_if_needed`)."""
  if train_if_needed:
    ckpt_dir = os.path.join(workdir, 'checkpoints')
    steps = [int(d) for d in os.listdir(ckpt_dir) if d.isdigit()] if (
        os.path.isdir(ckpt_dir)) else []
    if not steps or max(steps) < config.total_steps:
      train_lib.train_and_evaluate(config, workdir)
  # EMA params of the latest checkpoint, fingerprint checked.
  b, state, step = builder.restore(config, workdir)
  return Trained(config, b, builder.first_ema(state), int(step))


class GuidedSampler:
  """jit(cond, key, cfg_scale, classifier_scale, ...) -> class samples."""

  def __init__(self, generator: Trained, classifier: Trained | None = None,
               *, batch: int, sampler: dict | None = None,
               cfg_channels: int | None = None):
    """Builds the jitted sampler.

    Args:
      generator: the class-conditional run (with the null class).
      classifier: optional noise-aware classifier run on the same path.
      batch: samples per compiled call.
      sampler: sampler config (default: the generator config's `sampler`).
      cfg_channels: DiT's partial CFG on the first channels (reproductions
        only; see `visgen.samplers.guidance`).
    """
    self.generator, self.classifier, self.batch = generator, classifier, batch
    task = generator.task
    cls_task = classifier.task if classifier else None
    frozen = generator.build.frozen.params

    def draw(gen_params, cls_params, cond, key, cfg_scale, cls_scale,
             rescale, interval):
      guide = cls_task.guide(cls_params) if cls_task else None
      return task.sample(
          gen_params, frozen, cond, key, n=batch, guidance=cfg_scale,
          sampler=sampler, cfg=dict(rescale=rescale, interval=interval,
                                    channels=cfg_channels),
          classifier=guide, classifier_scale=cls_scale)

    self._draw = jax.jit(draw)

  def scales(self, kind: str, scale: float) -> tuple[float, float]:
    """(cfg scale, classifier scale) of a guidance kind at `scale`."""
    if kind not in GUIDANCE_KINDS:
      raise ValueError(f'Unknown guidance {kind!r}. Valid choices: '
                       f'{", ".join(GUIDANCE_KINDS)}.')
    if kind == 'classifier' and self.classifier is None:
      raise ValueError("guidance='classifier' needs a trained noise-aware "
                       'classifier (configs/digits_noisy_classifier.py).')
    if kind == 'none':
      return 1.0, 0.0
    return (scale, 0.0) if kind == 'cfg' else (1.0, scale)

  def __call__(self, spec, key, *, kind: str, scale: float = 1.0,
               rescale: float = 0.0,
               interval: tuple[float, float] = (0.0, 1.0)
               ) -> media_lib.Media:
    """Media of samples for the conditions `task.sample_cond(spec)` (n, or
    {'per_class': m}), drawn in batches of `self.batch`.

    `rescale` (CFG guidance rescale phi) and `interval` (the t range where
    guidance applies) are traced like the scales: no recompiles.
    """
    cfg_s, cls_s = self.scales(kind, scale)
    task = self.generator.task
    cls_params = self.classifier.params if self.classifier else None
    cond = task.sample_cond(spec)
    if not cond:
      raise ValueError('Guided sampling needs a class-conditional generator '
                       '(task.num_classes > 0, trained with label_dropout).')
    num = len(jax.tree.leaves(cond)[0])
    out = []
    for i in range(0, num, self.batch):
      k = min(self.batch, num - i)
      part = tasks_base.cond_slice(cond, i, k, self.batch)
      x = self._draw(self.generator.params, cls_params, part,
                     jax.random.fold_in(key, i), jnp.float32(cfg_s),
                     jnp.float32(cls_s), jnp.float32(rescale),
                     tuple(jnp.float32(v) for v in interval))
      out.append(task.to_media(x, part).select(slice(0, k)))
    return media_lib.concat(out)

  def write_grid(self, path: str, key, *, kind: str, scale: float = 1.0,
                 per_class: int = 10, **options) -> str:
    """A PNG with one row per class, `per_class` samples each."""
    m = self(dict(per_class=per_class), key, kind=kind, scale=scale,
             **options)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    return media_lib.write_png(path, media_lib.preview(m, per_row=per_class))


def sampler_override(sampler_cfg, name: str | None = None,
                     steps: int | None = None) -> dict:
  """The config's sampler dict with another name (its own options dropped)
  and/or step count."""
  out = dict(sampler_cfg)
  if name and name != out['name']:
    out = dict(name=name, steps=out['steps'], grid=out.get('grid', 'uniform'))
  if steps:
    out['steps'] = steps
  return out


def main(argv=None):
  parser = argparse.ArgumentParser(
      description='Class grid from a trained generator with guidance.')
  parser.add_argument('--generator_config', default='configs/quickstart.py',
                      help='Config (configs/X.py[:arg]) of the generator.')
  parser.add_argument('--generator', required=True,
                      help='Workdir of the generator run.')
  parser.add_argument('--classifier_config',
                      default='configs/digits_noisy_classifier.py',
                      help='Config of the noise-aware classifier run.')
  parser.add_argument('--classifier', default=None,
                      help='Workdir of the noise-aware classifier run.')
  parser.add_argument('--guidance', default='cfg', choices=GUIDANCE_KINDS)
  parser.add_argument('--scale', type=float, default=1.5)
  parser.add_argument('--rescale', type=float, default=0.0,
                      help='CFG guidance rescale phi (Lin et al.).')
  parser.add_argument('--interval', type=float, nargs=2, default=(0.0, 1.0),
                      metavar=('T_LO', 'T_HI'),
                      help='Guide only for t in [T_LO, T_HI].')
  parser.add_argument('--cfg_channels', type=int, default=None,
                      help="DiT's partial CFG on the first channels "
                      '(reproductions only).')
  parser.add_argument('--per_class', type=int, default=10)
  parser.add_argument('--out', default=None,
                      help='Output PNG (default: in the generator workdir).')
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--sampler', default=None,
                      help="Sampler name (e.g. 'ddpm' for the ancestral "
                      "mean-shift form); default: the generator config's.")
  parser.add_argument('--steps', type=int, default=None,
                      help='Sampler steps (default: the config\'s).')
  parser.add_argument('--verbose', action='store_true',
                      help='Show the traceback of errors.')
  args = parser.parse_args(argv)
  logging.set_verbosity(logging.INFO)  # the loop's progress lines
  # Workdirs may be relative or start with ~: absolute once, here; bad
  # input is one line (exit 2) before any work.
  status = validate.run_cli(lambda: _run(args), verbose=args.verbose)
  if status:
    raise SystemExit(status)


def _run(args):
  """main's work, with absolute paths and validated configs."""
  args.generator = validate.resolve_workdir(args.generator, create=False,
                                            flag='--generator')
  if args.classifier:
    args.classifier = validate.resolve_workdir(
        args.classifier, create=False, flag='--classifier')
  args.out = validate.check_output_file(args.out, flag='--out')
  for flag in ('scale', 'rescale'):
    v = getattr(args, flag)
    validate.check_arg(f'--{flag}', v, math.isfinite(v), 'a finite number')
  lo, hi = args.interval
  validate.check_arg('--interval', (lo, hi), 0 <= lo <= hi <= 1,
                     'T_LO T_HI with 0 <= T_LO <= T_HI <= 1')
  validate.check_arg('--per_class', args.per_class, args.per_class >= 1,
                     'an integer >= 1')
  gen_config = config_loader.load(args.generator_config)
  validate.check_config(gen_config, mode='sample')
  gen = load_trained(gen_config, args.generator)
  cls = None
  if args.classifier:
    cls_config = config_loader.load(args.classifier_config)
    validate.check_config(cls_config, mode='sample')
    cls = load_trained(cls_config, args.classifier)
  sampler_cfg = sampler_override(gen.config.sampler, args.sampler,
                                 args.steps)
  grid_cond = gen.task.sample_cond(dict(per_class=args.per_class))
  sampler = GuidedSampler(
      gen, cls, batch=max(len(a) for a in jax.tree.leaves(grid_cond) or [1]),
      sampler=sampler_cfg, cfg_channels=args.cfg_channels)
  out = args.out or os.path.join(
      args.generator, f'grid_{args.guidance}_{args.scale:g}.png')
  sampler.write_grid(out, jax.random.key(args.seed), kind=args.guidance,
                     scale=args.scale, per_class=args.per_class,
                     rescale=args.rescale, interval=tuple(args.interval))
  print(f'Wrote {out}')


if __name__ == '__main__':
  main()
