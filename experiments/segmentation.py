r"""Segmentation of scene-world images from a generator's self-attention.

  python -m experiments.segmentation --workdir=DIR --generator=GEN_WORKDIR \
      [--num=200] [--tune=40]

GEN_WORKDIR is any trained workdir of a 32x32 `shapes` generator whose model
has self-attention (e.g. configs/t2i_shapes.py: U-Net attention at 8x8, 4x4
and in the middle). For each held-out test scene x0, the generator sees
x_t = alpha(t) x0 + sigma(t) eps with the unconditional (null) condition;
`visgen.models.attention.capture` records every self-attention map, and
DiffSeg (`visgen.segmentation.diffseg`) turns them into a segmentation.
Scored against the scene world's exact instance masks (background + each
object) by Hungarian-matched mIoU, beside:
  * k-means on pixel colours (k = 4: background + up to three objects);
  * the supervised parser (`visgen.evaluators.scene_parser`: a per-pixel
    shape network trained on the ground-truth masks, grouped into objects by
    colour) as the supervised reference.
DiffSeg's t and KL threshold are chosen on `--tune` train scenes (grid
below), then fixed for the test scenes.

Writes DIR/results.json ({"diffseg_miou", "kmeans_miou", "supervised_miou",
"diffseg_t", "diffseg_threshold", "tuning": [...], "probes": [], "dense":
{}} -- representation probes and dense prediction are not built yet),
prints a Markdown table and saves DIR/segmentation.png (mIoU per method and
example segmentations).
"""

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from visgen import builder
from visgen import config_loader
from visgen.data import shapes
from visgen.evaluators import scene_parser
from visgen.models import attention
from visgen.segmentation import diffseg

TS = (0.2, 0.4, 0.6)
THRESHOLDS = (0.3, 0.6, 1.0, 1.5)


def _scenes(split, num, res):
  src = shapes.ShapesSource(split=split, resolution=res)
  ex = [src[i] for i in range(num)]
  return (np.stack([e['image'] for e in ex]),
          np.stack([e['instance_mask'][..., 0] for e in ex]))


def _attention_fn(b, state):
  """images uint8 (B, H, W, 3), t -> list of (B, heads, N, N) maps."""
  task, params = b.task, builder.first_ema(state)

  @jax.jit
  def run(images, t, key):
    x0 = images.astype(jnp.float32) / 127.5 - 1.0
    n = x0.shape[0]
    tt = jnp.full((n,), t)
    eps = jax.random.normal(key, x0.shape)
    x_t = task.path.sample_xt(x0=x0, eps=eps, t=tt)
    cond = (task.null_cond(b.frozen.params, n) if hasattr(task, 'null_cond')
            else {})
    with attention.capture() as maps:
      b.apply(params, x_t, tt, cond)
    return maps

  return run


def _diffseg_all(maps, res, threshold):
  n = maps[0].shape[0]
  return [diffseg.segment([np.asarray(m[i]) for m in maps], res,
                          threshold=threshold) for i in range(n)]


def _instances(image, shape_map):
  """The supervised parser's objects as an instance label map."""
  found_labels = np.zeros(shape_map.shape, int)
  colour = ((image[:, :, None, :].astype(np.float32) -
             shapes.COLOUR_VALUES[None, None].astype(np.float32)) ** 2
            ).sum(-1).argmin(-1)
  from scipy import ndimage  # pylint: disable=g-import-not-at-top
  k = 0
  for c in np.unique(colour[shape_map > 0]):
    comps, m = ndimage.label((shape_map > 0) & (colour == c))
    for q in range(1, m + 1):
      k += 1
      found_labels[comps == q] = k
  return found_labels


def plot(path, results, examples):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  names = ['diffseg', 'kmeans', 'supervised']
  fig = plt.figure(figsize=(11, 4.2))
  ax = fig.add_axes([0.06, 0.15, 0.25, 0.75])
  ax.bar(names, [results[f'{n}_miou'] for n in names],
         color=['tab:blue', 'tab:orange', 'tab:green'])
  ax.set_ylim(0, 1)
  ax.set_ylabel('mIoU (Hungarian, instances + background)')
  ax.set_title(f'{results["num_test"]} test scenes')
  cols = ['image', 'truth', 'diffseg', 'kmeans', 'supervised']
  for r, ex in enumerate(examples):
    for c, key in enumerate(cols):
      a = fig.add_axes([0.36 + c * 0.125, 0.62 - r * 0.29, 0.12, 0.24])
      a.imshow(ex[key], cmap=None if key == 'image' else 'tab10',
               interpolation='nearest')
      a.set_xticks([])
      a.set_yticks([])
      if r == 0:
        a.set_title(key, fontsize=9)
  fig.savefig(path, dpi=100)
  plt.close(fig)


def main(argv=None):
  p = argparse.ArgumentParser(prog='python -m experiments.segmentation')
  p.add_argument('--workdir', required=True)
  p.add_argument('--generator', required=True)
  p.add_argument('--num', type=int, default=200)
  p.add_argument('--tune', type=int, default=40)
  p.add_argument('--batch', type=int, default=50)
  a = p.parse_args(argv)
  os.makedirs(a.workdir, exist_ok=True)
  t0 = time.time()
  config = config_loader.load_workdir(a.generator)
  if 'remat' in config.model:
    config.model.remat = False  # capture needs one trace (same params)
  b, state, step = builder.restore(config, a.generator)
  res = int(config.task.x_shape[0])
  run = _attention_fn(b, state)
  key = jax.random.key(0)

  def diffseg_scores(images, masks, t, thresholds):
    out = {th: [] for th in thresholds}
    for i in range(0, len(images), a.batch):
      maps = run(images[i:i + a.batch], t, jax.random.fold_in(key, i))
      for th in thresholds:
        for seg, m in zip(_diffseg_all(maps, res, th),
                          masks[i:i + a.batch]):
          out[th].append(diffseg.miou(seg, m))
    return {th: float(np.mean(v)) for th, v in out.items()}

  tr_images, tr_masks = _scenes('train', a.tune, res)
  tuning = []
  for t in TS:
    for th, score in diffseg_scores(tr_images, tr_masks, t,
                                    THRESHOLDS).items():
      tuning.append(dict(t=t, threshold=th, miou=score))
  best = max(tuning, key=lambda r: r['miou'])

  images, masks = _scenes('test', a.num, res)
  ds = diffseg_scores(images, masks, best['t'], (best['threshold'],))
  km = [diffseg.kmeans_segment(im, 4) for im in images]
  parser = scene_parser.SceneParser(scene_parser.Recipe(resolution=res))
  sup = [_instances(im, sm) for im, sm in
         zip(images, parser.shape_maps(images))]
  results = dict(
      generator=a.generator, generator_step=int(step), num_test=a.num,
      num_tune=a.tune, diffseg_t=best['t'],
      diffseg_threshold=best['threshold'],
      diffseg_miou=ds[best['threshold']],
      kmeans_miou=float(np.mean([diffseg.miou(s, m)
                                 for s, m in zip(km, masks)])),
      supervised_miou=float(np.mean([diffseg.miou(s, m)
                                     for s, m in zip(sup, masks)])),
      tuning=tuning, probes=[], dense={},
      wall_s=round(time.time() - t0, 1))
  maps = run(images[:3], best['t'], key)
  segs = _diffseg_all(maps, res, best['threshold'])
  examples = [dict(image=images[i], truth=masks[i], diffseg=segs[i],
                   kmeans=km[i], supervised=sup[i]) for i in range(3)]
  with open(os.path.join(a.workdir, 'results.json'), 'w') as f:
    json.dump(results, f, indent=1)
  plot(os.path.join(a.workdir, 'segmentation.png'), results, examples)
  print('| method | mIoU |\n|---|---|')
  for n in ('diffseg', 'kmeans', 'supervised'):
    print(f'| {n} | {results[n + "_miou"]:.3f} |')
  print(f'DiffSeg t={best["t"]}, threshold={best["threshold"]} (tuned on '
        f'{a.tune} train scenes); {results["wall_s"]} s')
  return results


if __name__ == '__main__':
  main()
