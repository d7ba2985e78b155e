r"""How shapes-FID responds to degraded REAL scenes (is the score sane?).

  python -m experiments.shapes_fid_sanity --out=experiments/results/shapes_curve

Scores 1000 real train scenes, unchanged and degraded (Gaussian pixel noise,
box blur, both), against the shapes test split with the evaluator the
training loop uses (InLoopEvaluator, `shapes` attribute net): shapes-FID,
precision, recall, class accuracy. Writes OUT/fid_sanity.json and prints a
Markdown table.
"""
import argparse
import json
import os

import jax
import numpy as np

from visgen.evaluators import in_loop
from visgen.data import shapes


def blur(x, k):
  """Box blur of uint8 NHWC with a k x k window (edge padding)."""
  p = k // 2
  xp = np.pad(x.astype(np.float32), ((0, 0), (p, p), (p, p), (0, 0)),
              mode='edge')
  out = np.zeros(x.shape, np.float32)
  for i in range(k):
    for j in range(k):
      out += xp[:, i:i + x.shape[1], j:j + x.shape[2]]
  return out / (k * k)


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--out', required=True)
  ap.add_argument('--n', type=int, default=1000)
  a = ap.parse_args()
  src = shapes.ShapesSource(split='train')
  ex = [src[i] for i in range(a.n)]
  x = np.stack([e['image'] for e in ex])
  y = np.array([e['label'] for e in ex], np.int32)
  ev = in_loop.InLoopEvaluator(feature_net='shapes', reference='shapes:test',
                               num_samples=a.n, image_size=32,
                               batch_size=250)
  rng = np.random.default_rng(0)
  q = lambda f: np.clip(np.round(f), 0, 255).astype(np.uint8)
  variants = {
      'real': x,
      'noise std 8/255': q(x + rng.normal(0, 8, x.shape)),
      'noise std 24/255': q(x + rng.normal(0, 24, x.shape)),
      'box blur 3x3': q(blur(x, 3)),
      'box blur 5x5': q(blur(x, 5)),
      'blur 3x3 + noise 8': q(blur(x, 3) + rng.normal(0, 8, x.shape)),
  }
  rows = []
  for name, imgs in variants.items():
    def sample_fn(key, n, imgs=imgs, done=[0]):
      del key
      s = slice(done[0], done[0] + n)
      done[0] += n
      return imgs[s], y[s]
    m = ev.run(sample_fn, jax.random.key(0))
    rows.append(dict(variant=name, fid=m['shapes_fid'],
                     precision=m['shapes_precision'],
                     recall=m['shapes_recall'],
                     class_accuracy=m['class_accuracy']))
  print('| variant | shapes-FID | precision | recall | class accuracy |')
  print('|---|---|---|---|---|')
  for r in rows:
    print(f"| {r['variant']} | {r['fid']:.2f} | {r['precision']:.3f} | "
          f"{r['recall']:.3f} | {r['class_accuracy']:.3f} |")
  os.makedirs(a.out, exist_ok=True)
  with open(os.path.join(a.out, 'fid_sanity.json'), 'w') as f:
    json.dump(dict(num=a.n, reference='shapes:test (10000)', rows=rows), f,
              indent=1)


if __name__ == '__main__':
  main()
