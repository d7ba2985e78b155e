r"""Segmentation of scene-world images from a generator's self-attention.

  python -m experiments.segmentation --workdir=DIR --generator=GEN_WORKDIR \
      [--digits_generator=workdirs/quickstart] [--num=200] [--tune=40] \
      [--probe_train=1000] [--probe_test=297]

GEN_WORKDIR is any trained workdir of a 32x32 `shapes` generator (pixel or
latent: a latent one sees the scene through its frozen autoencoder) whose model
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

Representation probes: every block output the model records
(`visgen.models.layers.capture_features`: U-Net levels down, middle, up;
DiT/MLP blocks), mean-pooled over space, at t in PROBE_TS, feeds a logistic
regression (scikit-learn) trained on `--probe_train` train scenes to
predict the scene label (shape of the largest object); accuracy on
`--probe_test` test scenes, beside the same probe on the discriminative
`shapes` feature net's pooled features and that net's own classifier.

Writes DIR/results.json ({"diffseg_miou", "kmeans_miou", "supervised_miou",
"diffseg_t", "diffseg_threshold", "tuning": [...], "probes": [{source,
feature, t, accuracy}], "dense": {}}), prints Markdown tables and saves
DIR/segmentation.png (mIoU per method and example segmentations) and
DIR/probes.png (probe accuracy over blocks, one line per t).

Dense prediction as generation (`--dense`, or `--dense_only` without a
generator; experiments/segmentation_dense.py): generative (Marigold-style)
vs discriminative U-Nets for semantic masks, edges and z-order depth, into
"dense": {target: {generative, discriminative}} and "dense_details" of the
same results.json (other keys kept), DIR/dense.png.
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

from experiments import segmentation_dense

TS = (0.2, 0.4, 0.6)
PROBE_TS = (0.1, 0.3, 0.6, 0.9)
THRESHOLDS = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0)


def _scenes(split, num, res):
  """(images, instance masks, labels) of the first `num` scenes."""
  src = shapes.ShapesSource(split=split, resolution=res)
  ex = [src[i] for i in range(num)]
  return (np.stack([e['image'] for e in ex]),
          np.stack([e['instance_mask'][..., 0] for e in ex]),
          np.array([int(e['label']) for e in ex]))


def image_side(b) -> int:
  """The scenes' side: the task's x_shape, or for a latent generator the
  image shape of its autoencoder (attention maps are upsampled to it)."""
  codec = getattr(b.task, 'codec', None)
  return int((codec.image_shape if codec is not None else
              b.task.x_shape)[0])


def _noised(b, images, t, key):
  """(x_t, t, unconditional cond) of uint8 images at time t."""
  task = b.task
  if getattr(task, 'codec', None) is not None:
    # A latent generator: the scene through its frozen autoencoder.
    x0 = task.codec.encode(b.frozen.params, images)
  else:
    x0 = task.to_x0({'image': images}, b.frozen.params)  # the model's space
  n = x0.shape[0]
  tt = jnp.full((n,), t)
  x_t = task.path.sample_xt(x0=x0, eps=jax.random.normal(key, x0.shape),
                            t=tt)
  cond = task.null_cond(b.frozen.params, n)
  return x_t, tt, cond


def _attention_fn(b, state):
  """images uint8 (B, H, W, 3), t -> list of (B, heads, N, N) maps."""
  params = builder.first_ema(state)

  @jax.jit
  def run(images, t, key):
    with attention.capture() as maps:
      b.apply(params, *_noised(b, images, t, key))
    return maps

  return run


def _diffseg_all(maps, res, threshold):
  n = maps[0].shape[0]
  return [diffseg.segment([np.asarray(m[i]) for m in maps], res,
                          threshold=threshold) for i in range(n)]


def _instances(image, shape_map):
  """The supervised parser's objects as an instance label map."""
  found_labels = np.zeros(shape_map.shape, int)
  colour = scene_parser.nearest_colour(image)
  from scipy import ndimage  # pylint: disable=g-import-not-at-top
  k = 0
  for c in np.unique(colour[shape_map > 0]):
    comps, m = ndimage.label((shape_map > 0) & (colour == c))
    for q in range(1, m + 1):
      k += 1
      found_labels[comps == q] = k
  return found_labels


def _features_fn(b, state):
  """images uint8, t -> {feature name: (B, C) spatially mean-pooled}."""
  from visgen.models import layers  # pylint: disable=g-import-not-at-top
  params = builder.first_ema(state)

  @jax.jit
  def run(images, t, key):
    with layers.capture_features() as feats:
      b.apply(params, *_noised(b, images, t, key))
    n = images.shape[0]
    return {k: v.reshape(n, -1, v.shape[-1]).mean(1)
            for k, v in feats.items()}

  return run


def _majority(labels) -> float:
  return float(np.bincount(labels).max() / len(labels))


def _probe(train_x, train_y, test_x, test_y) -> float:
  """Test accuracy of a logistic-regression probe on standardised
  features."""
  from sklearn import linear_model  # pylint: disable=g-import-not-at-top
  from sklearn import pipeline  # pylint: disable=g-import-not-at-top
  from sklearn import preprocessing  # pylint: disable=g-import-not-at-top
  clf = pipeline.make_pipeline(preprocessing.StandardScaler(),
                               linear_model.LogisticRegression(max_iter=2000))
  clf.fit(train_x, train_y)
  return float(clf.score(test_x, test_y))


def _labelled(dataset, split, num, res):
  """(uint8 images, labels): scenes (label = shape of the largest object)
  or digits (the digit)."""
  if dataset == 'shapes':
    images, _, labels = _scenes(split, num, res)
    return images, labels
  from visgen.evaluators import datasets  # pylint: disable=g-import-not-at-top
  d = datasets.load_images(dataset, split=split, size=res, num_examples=num)
  return d['image'], np.asarray(d['label'])


def probes(b, state, res, *, ts, num_train, num_test, batch,
           dataset='shapes'):
  """Linear probes of the label (scenes: shape of the largest object;
  digits: the digit) on every captured block feature at every t, and on
  the discriminative feature net of that dataset (its pooled features, and
  its own classifier beside)."""
  from visgen.evaluators import feature_nets  # pylint: disable=g-import-not-at-top

  tr_im, tr_y = _labelled(dataset, 'train', num_train, res)
  te_im, te_y = _labelled(dataset, 'test', num_test, res)
  run = _features_fn(b, state)
  key = jax.random.key(1)

  def feats(images, t):
    parts = [run(images[i:i + batch], t, jax.random.fold_in(key, i))
             for i in range(0, len(images), batch)]
    return {k: np.concatenate([np.asarray(p[k]) for p in parts])
            for k in parts[0]}

  rows = []
  for t in ts:
    ftr, fte = feats(tr_im, t), feats(te_im, t)
    for name in ftr:
      rows.append(dict(dataset=dataset, source='generator', feature=name,
                       t=t, accuracy=_probe(ftr[name], tr_y, fte[name],
                                            te_y)))
  net = feature_nets.get_feature_net(dataset)
  ntr, nte = net(tr_im), net(te_im)
  rows.append(dict(dataset=dataset, source=f'{dataset} feature net',
                   feature='pool', t=0.0,
                   accuracy=_probe(ntr['pool'], tr_y, nte['pool'], te_y)))
  rows.append(dict(dataset=dataset, source=f'{dataset} feature net',
                   feature='classifier', t=0.0,
                   accuracy=float(np.mean(nte['logits'].argmax(-1) == te_y))))
  return rows


def plot_probes(path, rows, chance):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  gen = [r for r in rows if r['source'] == 'generator']
  names = list(dict.fromkeys(r['feature'] for r in gen))
  fig, ax = plt.subplots(figsize=(7.5, 4))
  for t in sorted({r['t'] for r in gen}):
    acc = {r['feature']: r['accuracy'] for r in gen if r['t'] == t}
    ax.plot(range(len(names)), [acc[n] for n in names], 'o-', label=f't={t}')
  for r in rows:
    if r['source'] != 'generator':
      ax.axhline(r['accuracy'], ls='--' if r['feature'] == 'pool' else ':',
                 color='0.4', label=f'feature net ({r["feature"]})')
  ax.axhline(chance, color='0.8', label='majority class')
  ax.set_xticks(range(len(names)))
  ax.set_xticklabels(names)
  ax.set_ylim(0, 1)
  ax.set_xlabel('block (input -> output)')
  ax.set_ylabel(f'linear-probe accuracy ({rows[0]["dataset"]} label)')
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


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
  p.add_argument('--generator', default=None,
                 help='a trained shapes generator workdir (required unless '
                 '--dense_only)')
  p.add_argument('--num', type=int, default=200)
  p.add_argument('--tune', type=int, default=40)
  p.add_argument('--batch', type=int, default=50)
  p.add_argument('--probe_train', type=int, default=2000)
  p.add_argument('--probe_test', type=int, default=500)
  p.add_argument('--digits_generator', default=None,
                 help='a digits workdir (e.g. the quickstart): probes of '
                 'the digit label on its blocks too')
  segmentation_dense.add_args(p)
  a = p.parse_args(argv)
  os.makedirs(a.workdir, exist_ok=True)
  if a.dense_only:
    return dense_main(a)
  if not a.generator:
    p.error('--generator is required (or pass --dense_only)')
  t0 = time.time()
  config = config_loader.load_workdir(a.generator)
  if 'remat' in config.model:
    config.model.remat = False  # capture needs one trace (same params)
  b, state, step = builder.restore(config, a.generator)
  res = image_side(b)
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

  tr_images, tr_masks, _ = _scenes('train', a.tune, res)
  tuning = []
  for t in TS:
    for th, score in diffseg_scores(tr_images, tr_masks, t,
                                    THRESHOLDS).items():
      tuning.append(dict(t=t, threshold=th, miou=score))
  best = max(tuning, key=lambda r: r['miou'])

  images, masks, _ = _scenes('test', a.num, res)
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
      tuning=tuning,
      probes=probes(b, state, res, ts=PROBE_TS, num_train=a.probe_train,
                    num_test=a.probe_test, batch=a.batch),
      dense={})
  chance = {'shapes': _majority(_labelled('shapes', 'test', a.probe_test,
                                          res)[1])}
  if a.digits_generator:
    dconfig = config_loader.load_workdir(a.digits_generator)
    db, dstate, _ = builder.restore(dconfig, a.digits_generator)
    dres = int(dconfig.data.get('size', 8))
    results['probes'] += probes(db, dstate, dres, ts=PROBE_TS,
                                num_train=a.probe_train,
                                num_test=a.probe_test, batch=a.batch,
                                dataset='digits')
    chance['digits'] = _majority(_labelled('digits', 'test', a.probe_test,
                                           dres)[1])
  results['probe_majority_rate'] = chance
  if a.dense:
    results['dense'], results['dense_details'], dense_ex = (
        segmentation_dense.run_dense(a, a.workdir))
  results['wall_s'] = round(time.time() - t0, 1)
  maps = run(images[:3], best['t'], key)
  segs = _diffseg_all(maps, res, best['threshold'])
  examples = [dict(image=images[i], truth=masks[i], diffseg=segs[i],
                   kmeans=km[i], supervised=sup[i]) for i in range(3)]
  with open(os.path.join(a.workdir, 'results.json'), 'w') as f:
    json.dump(results, f, indent=1)
  plot(os.path.join(a.workdir, 'segmentation.png'), results, examples)
  for ds, rate in chance.items():
    plot_probes(os.path.join(a.workdir, 'probes.png' if ds == 'shapes' else
                             f'probes_{ds}.png'),
                [r for r in results['probes'] if r['dataset'] == ds], rate)
  print('| method | mIoU |\n|---|---|')
  for n in ('diffseg', 'kmeans', 'supervised'):
    print(f'| {n} | {results[n + "_miou"]:.3f} |')
  print(f'DiffSeg t={best["t"]}, threshold={best["threshold"]} (tuned on '
        f'{a.tune} train scenes); {results["wall_s"]} s')
  print('\n| data | probe source | feature | t | accuracy |\n'
        '|---|---|---|---|---|')
  for r in results['probes']:
    print(f'| {r["dataset"]} | {r["source"]} | {r["feature"]} | {r["t"]} | '
          f'{r["accuracy"]:.3f} |')
  print(f'majority-class rates: {chance}')
  if a.dense:
    segmentation_dense.plot(os.path.join(a.workdir, 'dense.png'),
                            results['dense'], results['dense_details'],
                            dense_ex)
    print(segmentation_dense.table(results['dense'],
                                   results['dense_details']))
  return results


def dense_main(a):
  """--dense_only: the dense part, merged into DIR/results.json."""
  path = os.path.join(a.workdir, 'results.json')
  results = {}
  if os.path.exists(path):
    with open(path) as f:
      results = json.load(f)
  dense, details, examples = segmentation_dense.run_dense(a, a.workdir)
  results.update(dense=dense, dense_details=details)
  with open(path, 'w') as f:
    json.dump(results, f, indent=1)
  segmentation_dense.plot(os.path.join(a.workdir, 'dense.png'), dense,
                          details, examples)
  print(segmentation_dense.table(dense, details))
  print(f'dense part: {details["wall_s"]} s')
  return results


if __name__ == '__main__':
  main()
