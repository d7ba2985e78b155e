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
scales (scales are traced), so a sweep over scales compiles once. Classifier
guidance takes ADM's mean-shift form with the 'ddpm' (ancestral) sampler and
the score form with every other sampler.
"""

import argparse
import dataclasses
import os
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from visgen import config_lib
from visgen import logging_lib
from visgen import sample as sample_lib
from visgen import samplers
from visgen import train as train_lib
from visgen.classification import noisy_classifier
from visgen.data import preprocess
from visgen.samplers import guidance
from visgen.tasks import generation

GUIDANCE_KINDS = ('none', 'cfg', 'classifier')


@dataclasses.dataclass
class Trained:
  """A restored run: its config, `train.build` dict, EMA params and step."""

  config: Any
  build: dict
  params: Any
  step: int

  @property
  def task(self):
    return self.build['task']


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
  _, b, params, step = sample_lib.restore_params(config, workdir)
  return Trained(config, b, params, int(step))


class GuidedSampler:
  """jit(labels, key, cfg_scale, classifier_scale) -> uint8 class samples."""

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
    task = generator.task
    if not task.num_classes:
      raise ValueError('Guided sampling needs a class-conditional generator '
                       '(task.num_classes > 0, trained with label_dropout).')
    if classifier is not None and classifier.task.path != task.path:
      raise ValueError(
          f'The classifier was trained on path {classifier.task.path} but '
          f'the generator on {task.path}: a noise-aware classifier must see '
          'the x_t of the generator\'s own path. Retrain it with '
          '--config.path matching the generator.')
    self.generator, self.classifier, self.batch = generator, classifier, batch
    name, kw = config_lib.named(sampler or generator.config.sampler)
    for key in generation.CFG_KEYS:  # Guidance options, not sampler arguments.
      kw.pop(key, None)
    steps = kw.pop('steps')
    grid = kw.pop('grid', 'uniform')
    shape = ((batch, int(np.prod(task.x_shape))) if task.flatten
             else (batch,) + task.x_shape)
    gen_apply = generator.build['apply']
    cls_apply = classifier.build['apply'] if classifier else None

    def draw(gen_params, cls_params, labels, key, cfg_scale, cls_scale,
             rescale, interval):
      den = lambda x, t, c: gen_apply(gen_params, x, t, c)
      den = guidance.cfg(den, scale=cfg_scale, null_class=task.num_classes,
                         rescale=rescale, interval=interval,
                         channels=cfg_channels)
      run_kw = dict(kw)
      if cls_apply is not None:
        logp = noisy_classifier.log_prob_fn(cls_apply, cls_params)
        if name == 'ddpm':  # ancestral: ADM's mean-shift form
          run_kw['mean_shift'] = guidance.classifier_mean_shift(
              logp, scale=cls_scale, interval=interval)
        else:  # ODE / SDE / DDIM: the score form
          den = guidance.classifier_guidance(
              den, logp, scale=cls_scale, path=task.path,
              prediction=task.prediction, interval=interval)
      ts = samplers.make_grid(grid, steps, path=task.path)
      x = samplers.sample(name, den, key=key, shape=shape,
                          cond={'label': labels}, path=task.path,
                          prediction=task.prediction, ts=ts, **run_kw)
      return task.from_x(x)

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

  def __call__(self, labels: np.ndarray, key, *, kind: str,
               scale: float = 1.0, rescale: float = 0.0,
               interval: tuple[float, float] = (0.0, 1.0)) -> np.ndarray:
    """uint8 images for `labels` (any length; batches of `self.batch`).

    `rescale` (CFG guidance rescale phi) and `interval` (the t range where
    guidance applies) are traced like the scales: no recompiles.
    """
    cfg_s, cls_s = self.scales(kind, scale)
    cls_params = self.classifier.params if self.classifier else None
    out = []
    for i in range(0, len(labels), self.batch):
      chunk = np.asarray(labels[i:i + self.batch], np.int32)
      padded = np.pad(chunk, (0, self.batch - len(chunk)))
      x = self._draw(self.generator.params, cls_params, padded,
                     jax.random.fold_in(key, i), jnp.float32(cfg_s),
                     jnp.float32(cls_s), jnp.float32(rescale),
                     tuple(jnp.float32(v) for v in interval))
      out.append(np.asarray(preprocess.to_uint8(x))[:len(chunk)])
    return np.concatenate(out)

  def write_grid(self, path: str, key, *, kind: str, scale: float = 1.0,
                 per_class: int = 10, **options) -> str:
    """A PNG with one row per class, `per_class` samples each."""
    k = self.generator.task.num_classes
    labels = np.repeat(np.arange(k, dtype=np.int32), per_class)
    images = self(labels, key, kind=kind, scale=scale, **options)
    grid = logging_lib.image_grid(images, k)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    logging_lib.save_png(path, grid, upscale=4)
    return path


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


def load_config(spec: str):
  """configs/X.py[:arg] -> its ConfigDict (as --config would build it)."""
  import importlib.util  # pylint: disable=g-import-not-at-top

  file, _, arg = spec.partition(':')
  mod_spec = importlib.util.spec_from_file_location('visgen_cfg', file)
  module = importlib.util.module_from_spec(mod_spec)
  mod_spec.loader.exec_module(module)
  return module.get_config(arg or None)


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
  args = parser.parse_args(argv)
  logging.set_verbosity(logging.INFO)  # the loop's progress lines
  gen = load_trained(load_config(args.generator_config), args.generator)
  cls = (load_trained(load_config(args.classifier_config), args.classifier)
         if args.classifier else None)
  sampler_cfg = sampler_override(gen.config.sampler, args.sampler,
                                 args.steps)
  sampler = GuidedSampler(gen, cls, batch=gen.task.num_classes *
                          args.per_class, sampler=sampler_cfg,
                          cfg_channels=args.cfg_channels)
  out = args.out or os.path.join(
      args.generator, f'grid_{args.guidance}_{args.scale:g}.png')
  sampler.write_grid(out, jax.random.key(args.seed), kind=args.guidance,
                     scale=args.scale, per_class=args.per_class,
                     rescale=args.rescale, interval=tuple(args.interval))
  print(f'Wrote {out}')


if __name__ == '__main__':
  main()
