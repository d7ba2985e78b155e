r"""Guided versus unguided class-conditional sampling: the field's table.

  python -m experiments.guidance_tradeoff --workdir=/tmp/guidance
  python -m experiments.guidance_tradeoff --workdir=/tmp/guidance_shapes \
      --dataset=shapes

ADM (Dhariwal & Nichol 2021, Table 4) reports that classifier guidance buys
FID and precision with recall (ImageNet 256: ADM 10.94 / 0.69 / 0.63 against
ADM-G 4.59 / 0.82 / 0.52), and classifier-free guidance trades the same way
with its scale. This reproduces the experiment on the embedded digits:

1. trains (or reuses, from WORKDIR/generator) the quickstart's
   class-conditional flow-matching MLP with the null class (label dropout
   0.1) by the project's loop (configs/quickstart.py);
2. trains (or reuses, from WORKDIR/classifier) a noise-aware classifier on
   x_t of the same path (configs/digits_noisy_classifier.py);
3. samples every row of the table with one compiled sampler (the
   quickstart's Heun, 32 steps): unguided (the conditional model),
   classifier-guided (ADM-G: conditional model + classifier gradient, score
   form) and classifier-free at several scales (scale 0 is the
   unconditional null-class model);
4. scores each row with the evaluator's digits feature net against the
   digits test split: digits-FID, digits-Precision, digits-Recall, digits-KID
   (metrics in the feature space of a classifier trained here, NOT Inception
   metrics; sFID is undefined there: the net has no spatial features), with
   the real-against-real floor (train split vs test split), and the class
   accuracy of the samples under that independent digits classifier.

`--dataset=shapes` runs the same experiment on the scene world's labels (the
shape of the largest visible object, 4 classes) at 32x32 RGB:
configs/shapes.py (the scene generator recipe: latent diffusion on its own
autoencoder stage) and configs/shapes_noisy_classifier.py (trained in the
same latent space, `ae=` the generator's autoencoder), scored by the
`shapes` attribute net against the shapes test split (shapes-FID, ...). Use
one workdir per dataset.

Both tables also give the class accuracy of the real test images under the
evaluator's classifier (beside the floor): the ceiling of the samples'.

Writes WORKDIR/results.json ({"rows": [...], "floor": ..., ...}), class grids
WORKDIR/grids/<guidance>_<scale>.png, WORKDIR/tradeoff.png (FID,
precision, recall and class accuracy against the scale; `--plot_only`
redraws it from results.json), and prints the Markdown table. Re-runs
reuse both trained networks. `--sampler=ddpm` samples ancestrally, with
classifier guidance in ADM's mean-shift form, and writes
results_ddpm.json / grids_ddpm/ beside the default table.
"""

import argparse
import dataclasses
import json
import os
import time

from absl import logging
import jax
import numpy as np

from visgen import config_loader
from visgen import registry
from visgen.classification import guided_sampling
from visgen.evaluators import datasets
from visgen.evaluators import in_loop

ROOT = os.path.join(os.path.dirname(__file__), '..')


@dataclasses.dataclass(frozen=True)
class Dataset:
  """What the experiment trains and scores on one dataset."""

  generator: str  # config file (relative to ROOT) of the generator
  classifier: str  # config file of the noise-aware classifier
  feature_net: str  # visgen.evaluators.feature_nets name (metrics' space)
  reference: str  # 'dataset:split' the samples are compared with
  gen_steps: int  # default training steps
  cls_steps: int
  metric_space: str  # how results.json describes the metrics


DATASETS = registry.Registry('guidance-tradeoff dataset')
DATASETS.register('digits')(Dataset(
    generator='configs/quickstart.py',
    classifier='configs/digits_noisy_classifier.py',
    feature_net='digits', reference='digits:test', gen_steps=3000,
    cls_steps=2000,
    metric_space=("digits feature net (visgen.evaluators.feature_nets "
                  "'digits'), reference: digits test split at 8x8; not "
                  'Inception metrics; sFID undefined (no spatial '
                  'features)')))
DATASETS.register('shapes')(Dataset(
    generator='configs/shapes.py',
    classifier='configs/shapes_noisy_classifier.py',
    feature_net='shapes', reference='shapes:test', gen_steps=0,
    cls_steps=1000,
    metric_space=("shapes attribute net (visgen.evaluators.feature_nets "
                  "'shapes', 32x32 input), "
                  'reference: shapes test split (10000 scenes) at 32x32; '
                  'not Inception metrics; sFID undefined (no spatial '
                  'features)')))


def generator_config(steps: int, *, runlocal: bool = False,
                     dataset: str = 'digits'):
  c = config_loader.load(
      os.path.join(ROOT, DATASETS.get(dataset).generator)
      + (':runlocal' if runlocal else ''))
  if steps:  # 0: the config's own (its run of record)
    c.total_steps = steps
  c.eval = {}  # This experiment evaluates every row itself.
  c.ckpt_every = max(c.total_steps // 3, 1)
  if runlocal:
    c.num_grid_samples = 0  # Smoke runs skip the loop's own sample grid.
  return c


def classifier_config(steps: int, *, runlocal: bool = False,
                      dataset: str = 'digits', ae: str = ''):
  """The noise-aware classifier's config; `ae`: the latent generator's
  autoencoder workdir (the classifier then reads x_t in its latent space)."""
  args = (['runlocal'] if runlocal else []) + ([f'ae={ae}'] if ae else [])
  c = config_loader.load(
      os.path.join(ROOT, DATASETS.get(dataset).classifier)
      + (':' + ','.join(args) if args else ''))
  c.total_steps = steps
  c.ckpt_every = max(steps // 2, 1)
  c.num_grid_samples = 0
  return c


def latent_autoencoder(config) -> str:
  """The autoencoder workdir of a latent generator's config ('' if it
  generates pixels): its classifier must read the same latent space."""
  latent = config.task.get('latent')
  if not latent:
    return ''
  source = str(config.frozen[latent.get('frozen', 'autoencoder')].source)
  kind, _, path = source.partition(':')
  if kind != 'workdir':
    raise ValueError(f'Classifier guidance of a latent generator needs its '
                     f'autoencoder as a workdir source, got {source!r}.')
  return path


def image_size(task) -> int:
  """The side of the images a generator's samples decode to (a latent
  task's x_shape is its latents'): the size of the reference images."""
  codec = getattr(task, 'codec', None)
  return int((codec.image_shape if codec is not None else task.x_shape)[0])


def rows_spec(cfg_scales, cls_scales):
  rows = [('none', 1.0)]
  rows += [('classifier', float(s)) for s in cls_scales]
  rows += [('cfg', float(s)) for s in cfg_scales]
  return rows


def markdown(rows, floor, *, net: str = 'digits') -> str:
  head = (f'| guidance | scale | {net}-FID | sFID | {net}-Precision | '
          f'{net}-Recall | class accuracy |')
  lines = [head, '|' + '---|' * 7]
  for r in rows:
    lines.append(
        f"| {r['guidance']} | {r['scale']:g} | {r['fid']:.2f} | n/a | "
        f"{r['precision']:.3f} | {r['recall']:.3f} | "
        f"{r['class_accuracy']:.3f} |")
  acc = floor.get('class_accuracy')
  lines.append(f"| real test vs train (floor) | - | {floor['fid']:.2f} | "
               f"n/a | {floor['precision']:.3f} | {floor['recall']:.3f} | "
               + ('-' if acc is None else f'{acc:.3f}') + ' |')
  return '\n'.join(lines)


def plot(results: dict, path: str) -> str:
  """FID, precision, recall and class accuracy against the guidance scale
  (one line per guidance kind; the conditional model at scale 1 on both;
  the real-against-real floor dotted), saved as a PNG at `path`."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  rows, floor = results['rows'], results.get('floor', {})
  none = [r for r in rows if r['guidance'] == 'none']
  metrics = (('fid', 'FID'), ('precision', 'precision'),
             ('recall', 'recall'), ('class_accuracy', 'class accuracy'))
  fig, axes = plt.subplots(1, 4, figsize=(15, 3.6))
  for ax, (key, label) in zip(axes, metrics):
    for kind, colour in (('cfg', 'tab:blue'), ('classifier', 'tab:red')):
      pts = sorted([(r['scale'], r[key]) for r in rows
                    if r['guidance'] == kind]
                   + [(1.0, r[key]) for r in none if kind == 'classifier'])
      if pts:
        ax.plot(*zip(*pts), 'o-', color=colour,
                label='classifier-free' if kind == 'cfg' else 'classifier')
    if floor.get(key) is not None:
      ax.axhline(floor[key], color='0.5', ls=':', label='real vs real')
    ax.set_xlabel('guidance scale')
    ax.set_title(label)
    ax.grid(True, alpha=0.3)
  axes[0].legend(fontsize=8)
  fig.suptitle(f"{results.get('dataset', '')}: guidance trade-off "
               f"({results.get('num_samples', '?')} samples per point)")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def run(workdir: str, *, gen_steps: int, cls_steps: int, num_samples: int,
        cfg_scales, cls_scales, batch: int = 500, runlocal: bool = False,
        grids: bool = True, sampler: str | None = None,
        steps: int | None = None, dataset: str = 'digits') -> dict:
  spec = DATASETS.get(dataset)
  t0 = time.time()
  os.makedirs(workdir, exist_ok=True)
  gen = guided_sampling.load_trained(
      generator_config(gen_steps, runlocal=runlocal, dataset=dataset),
      os.path.join(workdir, 'generator'),
      train_if_needed=True)
  t_gen = time.time() - t0
  cls = guided_sampling.load_trained(
      classifier_config(cls_steps, runlocal=runlocal, dataset=dataset,
                        ae=latent_autoencoder(gen.config)),
      os.path.join(workdir, 'classifier'),
      train_if_needed=True)
  t_cls = time.time() - t0 - t_gen
  batch = min(batch, num_samples)
  sampler_cfg = guided_sampling.sampler_override(gen.config.sampler, sampler,
                                                 steps)
  guided = guided_sampling.GuidedSampler(gen, cls, batch=batch,
                                         sampler=sampler_cfg)
  net = spec.feature_net
  ref_name, ref_split = spec.reference.split(':')
  reference = datasets.load_images(ref_name, split=ref_split,
                                   size=image_size(gen.task))
  evaluator = in_loop.InLoopEvaluator(
      feature_net=net, reference=reference, num_samples=num_samples,
      batch_size=batch)
  # The samples' ceiling: the evaluator's accuracy on the real test images
  # (its logits were computed with the reference features).
  real_accuracy = float(np.mean(np.argmax(
      np.concatenate(evaluator.ref.logits), -1) == reference['label']))
  rows = []
  for i, (kind, scale) in enumerate(rows_spec(cfg_scales, cls_scales)):
    t_row = time.time()

    def sample_fn(key, n, kind=kind, scale=scale):
      m = guided(n, key, kind=kind, scale=scale)
      return m.samples, m.labels

    m = evaluator.run(sample_fn, jax.random.key(100 + i))
    row = dict(guidance=kind, scale=scale, fid=m[f'{net}_fid'], sfid=None,
               precision=m[f'{net}_precision'], recall=m[f'{net}_recall'],
               kid=m[f'{net}_kid'],
               class_accuracy=m[f'{net}_class_accuracy'],
               base='unconditional' if (kind, scale) == ('cfg', 0.0)
               else 'conditional',
               wall_time_s=round(time.time() - t_row, 1))
    rows.append(row)
    print(f'{kind:>10} {scale:4g}: FID {row["fid"]:.2f}  P '
          f'{row["precision"]:.3f}  R {row["recall"]:.3f}  acc '
          f'{row["class_accuracy"]:.3f}  ({row["wall_time_s"]} s)',
          flush=True)
    if grids:
      guided.write_grid(os.path.join(workdir, 'grids' + (
          f'_{sampler}' if sampler else ''), f'{kind}_{scale:g}.png'),
                         jax.random.key(7), kind=kind, scale=scale,
                         per_class=10)
  floor = {k2: m[f'{net}_{k2}_floor'] for k2 in ('fid', 'precision',
                                                 'recall', 'kid')}
  floor['class_accuracy'] = real_accuracy
  results = dict(
      dataset=dataset, rows=rows, floor=floor,
      metric_space=spec.metric_space,
      class_accuracy_by=f'the evaluator\'s {net} classifier (independent '
                        'of the guidance classifier)',
      sampler=sampler_cfg, num_samples=num_samples,
      generator=dict(workdir=os.path.join(workdir, 'generator'),
                     step=gen.step),
      classifier=dict(workdir=os.path.join(workdir, 'classifier'),
                      step=cls.step),
      wall_time_s=dict(generator=round(t_gen, 1), classifier=round(t_cls, 1),
                       total=round(time.time() - t0, 1)))
  # Another sampler's table goes beside the default one, not over it.
  suffix = f'_{sampler}' if sampler else ''
  path = os.path.join(workdir, f'results{suffix}.json')
  # experiments.diffusion_classifier adds its keys to the same file when it
  # shares the workdir: keep them.
  if os.path.exists(path):
    with open(path) as f:
      old = json.load(f)
    results = dict(old, **results)
  with open(path, 'w') as f:
    json.dump(results, f, indent=2)
  print(markdown(rows, floor, net=net))
  print('plot:', plot(results, os.path.join(workdir,
                                            f'tradeoff{suffix}.png')))
  print(f"wall time: {results['wall_time_s']}")
  return results


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[1])
  parser.add_argument('--workdir', required=True, help='Output directory.')
  parser.add_argument('--dataset', default='digits', choices=DATASETS.names(),
                      help="'digits' (8x8, 10 classes) or 'shapes' (the "
                      'scene world at 32x32, 4 shape classes).')
  parser.add_argument('--generator_steps', type=int, default=None,
                      help='Default: the dataset\'s (digits 3000; shapes: '
                      'configs/shapes.py\'s own total_steps, its run of '
                      'record, so that workdir can be reused as '
                      'WORKDIR/generator).')
  parser.add_argument('--classifier_steps', type=int, default=None,
                      help='Default: the dataset\'s (digits 2000, shapes '
                      '1000).')
  parser.add_argument('--num_samples', type=int, default=1000,
                      help='Samples per row.')
  parser.add_argument('--cfg_scales', default='0,1.5,2,3,5',
                      help='Classifier-free guidance scales (comma list).')
  parser.add_argument('--classifier_scales', default='0.5,1,2,4',
                      help='Classifier guidance scales (comma list).')
  parser.add_argument('--sampler', default=None,
                      help="Sampler (default: the quickstart's Heun); "
                      "'ddpm' guides with ADM's mean-shift form.")
  parser.add_argument('--steps', type=int, default=None,
                      help='Sampler steps (default: the config\'s).')
  parser.add_argument('--quick', action='store_true',
                      help="Smoke run: the configs' runlocal variants, few "
                      'steps and samples.')
  parser.add_argument('--plot_only', action='store_true',
                      help='Redraw WORKDIR/tradeoff.png from '
                      'WORKDIR/results.json and print its table.')
  args = parser.parse_args(argv)
  logging.set_verbosity(logging.INFO)  # the loop's progress lines
  if args.plot_only:
    with open(os.path.join(args.workdir, 'results.json')) as f:
      results = json.load(f)
    net = DATASETS.get(results.get('dataset', args.dataset)).feature_net
    print(markdown(results['rows'], results['floor'], net=net))
    print('plot:', plot(results, os.path.join(args.workdir, 'tradeoff.png')))
    return
  if args.quick:
    run(args.workdir, gen_steps=20, cls_steps=20, num_samples=40,
        cfg_scales=['0', '3'], cls_scales=['2'], batch=40, runlocal=True,
        dataset=args.dataset)
  else:
    spec = DATASETS.get(args.dataset)
    run(args.workdir, gen_steps=args.generator_steps or spec.gen_steps,
        cls_steps=args.classifier_steps or spec.cls_steps,
        num_samples=args.num_samples, dataset=args.dataset,
        cfg_scales=args.cfg_scales.split(','),
        cls_scales=args.classifier_scales.split(','), sampler=args.sampler,
        steps=args.steps)


if __name__ == '__main__':
  main()
