r"""The dense-prediction part of `python -m experiments.segmentation` (issue 14
item 4): dense prediction as generation against a discriminative network.

  python -m experiments.segmentation --workdir=DIR --dense_only \
      [--dense_res=16 --dense_steps=600 --dense_batch=32 --dense_width=16 \
       --dense_eval=200 --dense_k=1,2,4,8 --dense_sampler_steps=8 \
       --dense_init=SHAPES_WORKDIR]

For each target (semantic, edges, depth; visgen/tasks/dense.py) it trains,
through the project's loop (`train.train_and_evaluate`, runs under
DIR/dense/<target>_<mode>, reused when their metrics.json exists):

  generative      configs/dense_shapes.py: the encoded target map denoised
                  from noise with the scene concatenated (Marigold-style);
                  from scratch, or warm-started from an image generator of
                  the same architecture with --dense_init (Marigold's
                  recipe; configs/shapes.py at the same res / width)
  discriminative  the same U-Net run once at t = 0 (x = the scene) with a per-pixel
                  loss (cross-entropy / BCE / squared error)

on the same data (the `shapes` train split), steps, batch and optimiser,
and scores both on the first --dense_eval test scenes:

  semantic  mIoU over background + the 4 shape classes (dataset-level
            confusion; `visgen.evaluators.dense.semantic_miou`)
  edges     edge F1 at 1 px tolerance (`evaluators.dense.edge_f1`, the
            control experiments' adherence metric)
  depth     depth-order accuracy (`evaluators.dense.depth_order_accuracy`:
            per image, the mean over pairs of distinct z-order regions,
            background included, of the fraction of their pixel pairs
            ordered correctly; `depth_objects`: object pairs only)

The generative score is that of the ensemble of K samples per scene
(`tasks.dense.ensemble`: majority vote / median) for each K in --dense_k
(nested: the first K of the same draws); `dense[target]['generative']` is
the largest K's.
"""

import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from visgen import builder
from visgen import config_loader
from visgen import train
from visgen.evaluators import dense as metrics
from visgen.tasks import dense as dense_lib
from visgen.tasks import image_cond

ROOT = os.path.join(os.path.dirname(__file__), '..')
METRIC = {'semantic': 'mIoU', 'edges': 'edge F1', 'depth': 'depth-order acc'}


def add_args(p):
  p.add_argument('--dense', action='store_true',
                 help='also run dense prediction as generation (item 4)')
  p.add_argument('--dense_only', action='store_true',
                 help='run only the dense part; merges into an existing '
                 'DIR/results.json (no --generator needed)')
  p.add_argument('--dense_targets', default='semantic,edges,depth')
  p.add_argument('--dense_res', type=int, default=16)
  p.add_argument('--dense_steps', type=int, default=1000)
  p.add_argument('--dense_batch', type=int, default=32)
  p.add_argument('--dense_width', type=int, default=16)
  p.add_argument('--dense_eval', type=int, default=200)
  p.add_argument('--dense_k', default='1,2,4,8')
  p.add_argument('--dense_sampler_steps', type=int, default=8)
  p.add_argument('--dense_init', default='',
                 help='an image-generator workdir of the same architecture '
                 'to fine-tune from (Marigold); default: from scratch')


def _config(a, target, mode):
  arg = (f'target={target},mode={mode},res={a.dense_res},'
         f'steps={a.dense_steps},batch={a.dense_batch},'
         f'width={a.dense_width},sampler_steps={a.dense_sampler_steps}')
  if a.dense_init and mode == 'generative':
    arg += f',init={a.dense_init}'
  c = config_loader.load(os.path.join(ROOT, 'configs', 'dense_shapes.py')
                         + ':' + arg)
  c.ckpt_every = a.dense_steps
  c.log_every = max(a.dense_steps // 4, 1)
  c.data.num_threads = 0
  c.num_grid_samples = 0  # scored below; no grid (one compile less)
  return c


def _train(c, d, name):
  if os.path.exists(os.path.join(d, 'metrics.json')):
    print(f'[dense {name}] reusing {d}', flush=True)
  else:
    t0 = time.time()
    train.train_and_evaluate(c, d)
    print(f'[dense {name}] trained in {time.time() - t0:.0f} s', flush=True)
  b, state, step = builder.restore(c, d)
  with open(os.path.join(d, 'metrics.json')) as f:
    import json  # pylint: disable=g-import-not-at-top
    m = json.load(f)
  return b, builder.first_ema(state), int(step), m


def score(target, pred, ex):
  """The target's metric of a prediction (N, H, W) on held-out examples."""
  if target == 'semantic':
    return metrics.semantic_miou(pred, ex['semantic_mask'][..., 0])
  if target == 'edges':
    return metrics.edge_f1(pred, ex['edges'][..., 0] > 0)
  return metrics.depth_order_accuracy(pred, ex['instance_mask'][..., 0])


def run_dense(a, workdir):
  """(dense {target: {generative, discriminative}}, details, examples)."""
  ks = sorted({int(k) for k in str(a.dense_k).split(',')})
  targets = [dense_lib.check_target(t.strip())
             for t in a.dense_targets.split(',')]
  t_start = time.time()
  dense, details, examples = {}, dict(targets={}), {}
  ex = None
  for target in targets:
    row = dict(metric=METRIC[target])
    outs = {}
    for mode in ('generative', 'discriminative'):
      c = _config(a, target, mode)
      d = os.path.join(workdir, 'dense', f'{target}_{mode[:4]}')
      b, params, step, m = _train(c, d, f'{target} {mode}')
      if ex is None:
        ex = image_cond.heldout_examples(c, a.dense_eval)
      cond = jax.tree.map(jnp.asarray, b.task.eval_cond(ex))
      n = a.dense_eval
      run = jax.jit(lambda p, f, cc, k, b=b, n=n: b.task.sample(
          p, f, cc, k, n=n, return_info=True))
      t0 = time.time()
      draws, nfe = [], 0
      for i in range(ks[-1] if mode == 'generative' else 1):
        x, info = run(params, b.frozen.params, cond,
                      jax.random.fold_in(jax.random.key(0), i))
        draws.append(np.asarray(x))
        nfe = int(info['nfe'])
      samples = np.stack(draws)                       # (K, N, H, W, 3)
      info = dict(params=int(sum(x.size for x in jax.tree.leaves(params))),
                  steps=step, final_loss=m.get('final_loss'),
                  train_wall_s=round(float(m.get('train_wall_time_s', 0)), 1),
                  eval_wall_s=round(time.time() - t0, 1), nfe=nfe,
                  init=(a.dense_init or 'scratch') if mode == 'generative'
                  else 'scratch')
      if mode == 'generative':
        curve = {}
        for k in ks:
          pred = dense_lib.ensemble(target, samples[:k])
          curve[k] = score(target, pred, ex)
          if target == 'depth':
            info.setdefault('objects_only', {})[k] = (
                metrics.depth_order_accuracy(
                    pred, ex['instance_mask'][..., 0], objects_only=True))
        info['by_k'] = curve
        info['score'] = curve[ks[-1]]
        info['k'] = ks[-1]
      else:
        pred = dense_lib.ensemble(target, samples)
        info['score'] = score(target, pred, ex)
        if target == 'depth':
          info['objects_only'] = metrics.depth_order_accuracy(
              pred, ex['instance_mask'][..., 0], objects_only=True)
      outs[mode] = pred
      row[mode] = info
      print(f'[dense {target} {mode}] {METRIC[target]} '
            f'{info["score"]:.3f}', flush=True)
    dense[target] = {mode: float(row[mode]['score'])
                     for mode in ('generative', 'discriminative')}
    details['targets'][target] = row
    examples[target] = outs
  details['settings'] = dict(
      res=a.dense_res, steps=a.dense_steps, batch=a.dense_batch,
      width=a.dense_width, num_eval=a.dense_eval, ks=ks,
      sampler='euler', sampler_steps=a.dense_sampler_steps,
      init=a.dense_init or 'scratch (no image generator of this '
      'architecture given)')
  details['wall_s'] = round(time.time() - t_start, 1)
  examples['input'] = ex
  return dense, details, examples


def table(dense, details) -> str:
  k = details['settings']['ks'][-1]
  lines = [f'| target | metric | generative (K={k}) | generative (K=1) | '
           'discriminative | params gen / disc |', '|---|---|---|---|---|---|']
  for t, r in details['targets'].items():
    g, d = r['generative'], r['discriminative']
    lines.append(f'| {t} | {r["metric"]} | {dense[t]["generative"]:.3f} | '
                 f'{g["by_k"][min(g["by_k"])]:.3f} | '
                 f'{dense[t]["discriminative"]:.3f} | '
                 f'{g["params"]} / {d["params"]} |')
  if 'depth' in details['targets']:
    r = details['targets']['depth']
    lines.append(f'| depth (object pairs only) | depth-order acc | '
                 f'{r["generative"]["objects_only"][k]:.3f} | '
                 f'{r["generative"]["objects_only"][min(r["generative"]["objects_only"])]:.3f} | '
                 f'{r["discriminative"]["objects_only"]:.3f} | |')
  return '\n'.join(lines)


def plot(path, dense, details, examples, num_examples=3):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  targets = list(details['targets'])
  fig = plt.figure(figsize=(4 * len(targets), 7.2))
  for i, t in enumerate(targets):
    r = details['targets'][t]
    ax = fig.add_axes([0.06 + i / len(targets), 0.58,
                       0.8 / len(targets), 0.36])
    by_k = r['generative']['by_k']
    ks = sorted(int(k) for k in by_k)
    ax.plot(ks, [by_k[k] for k in ks], 'o-', color='tab:blue',
            label='generative (ensemble of K)')
    ax.axhline(dense[t]['discriminative'], color='tab:orange', ls='--',
               label='discriminative')
    ax.set_xscale('log', base=2)
    ax.set_xticks(ks)
    ax.set_xticklabels(ks)
    ax.set_ylim(0, 1)
    ax.set_xlabel('K samples ensembled')
    ax.set_ylabel(r['metric'])
    ax.set_title(t)
    if i == 0:
      ax.legend(fontsize=8, loc='lower right')
  ex = examples['input']
  gts = {'semantic': ex['semantic_mask'][..., 0],
         'edges': (ex['edges'][..., 0] > 0).astype(int),
         'depth': ex['instance_mask'][..., 0]}
  cols = [('input', None)] + [(f'{t} {what}', t) for t in targets
                              for what in ('truth', 'gen', 'disc')]
  w = 0.94 / len(cols)
  for r in range(num_examples):
    for c, (name, t) in enumerate(cols):
      a = fig.add_axes([0.03 + c * w, 0.33 - r * 0.155, w * 0.95, 0.14])
      if t is None:
        a.imshow(ex['image'][r], interpolation='nearest')
      else:
        img = {'truth': gts[t], 'gen': examples[t]['generative'],
               'disc': examples[t]['discriminative']}[name.split()[-1]]
        a.imshow(img[r], cmap='tab10' if t == 'semantic' else 'viridis',
                 vmin=0, vmax={'semantic': 9, 'edges': 1,
                               'depth': dense_lib.MAX_RANK}[t],
                 interpolation='nearest')
      a.set_xticks([])
      a.set_yticks([])
      if r == 0:
        a.set_title(name, fontsize=7)
  fig.savefig(path, dpi=100)
  plt.close(fig)
