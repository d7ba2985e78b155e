r"""shapes-FID against training wall clock for generator recipes on scenes.

  python -m experiments.shapes_curve --workdir=/tmp/shapes_curve \
      --variant=width=32,patch=2 --eval_every=500 --num_samples=500

Trains configs/shapes.py (with the `:args` given by --variant) through the
project's loop, evaluating the EMA model every `--eval_every` steps (the
config's own evaluator: shapes-FID, precision, recall, class accuracy of
the samples). The clock excludes the evaluations themselves, so a point is
"shapes-FID reached after this many seconds of training (compiles and
input pipeline included)". Several variants accumulate in
WORKDIR/curve.json, and WORKDIR/curve.png plots every one of them (log-log
shapes-FID against seconds, with the real-against-real floor and the issue's
4x-floor bound as horizontal lines). Timings are on whatever machine runs
it: on the shared 2-core CPU they vary by +-30% with the load.
"""

import argparse
import json
import os
import time

from absl import logging
import numpy as np
from PIL import Image
from PIL import ImageDraw

from visgen import config_loader
from visgen import evaluations
from visgen import train as train_lib

ROOT = os.path.join(os.path.dirname(__file__), '..')
COLOURS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40),
           (148, 103, 189), (140, 86, 75), (227, 119, 194), (127, 127, 127))


def train_with_curve(config, workdir: str) -> list[dict]:
  """Runs the loop; returns one point per evaluation (train seconds first).

  The loop's evaluations go through `evaluations.run_evals`; wrapping it records
  the wall clock at each call and how long the evaluation itself took.
  """
  points, spent = [], [0.0]
  start = time.time()
  original = evaluations.run_evals

  def timed(b, params, rng):
    t0 = time.time()
    out = original(b, params, rng)
    points.append(dict(train_s=round(t0 - start - spent[0], 1),
                       eval_s=round(time.time() - t0, 1), **out))
    spent[0] += time.time() - t0
    return out

  evaluations.run_evals = timed
  try:
    final = train_lib.train_and_evaluate(config, workdir, start_time=start)
  finally:
    evaluations.run_evals = original
  for p, step in zip(points, _eval_steps(config)):
    p['step'] = step
  points[-1]['steps_per_s'] = final['steps'] / max(points[-1]['train_s'], 1)
  return points


def _eval_steps(config) -> list[int]:
  every = config.eval_every or config.total_steps
  steps = list(range(every, config.total_steps + 1, every))
  if not steps or steps[-1] != config.total_steps:
    steps.append(config.total_steps)  # the final evaluation
  if config.eval_every and config.total_steps % config.eval_every == 0:
    steps.append(config.total_steps)  # in-loop at the end, then the final
  return steps


def plot(curves: dict, path: str, *, floor: float | None,
         size: tuple[int, int] = (640, 420)) -> None:
  """Log-log lines of shapes-FID against training seconds (PIL only)."""
  w, h = size
  img = Image.new('RGB', size, (255, 255, 255))
  d = ImageDraw.Draw(img)
  left, right, top, bottom = 60, w - 170, 20, h - 40
  xs = [p['train_s'] for c in curves.values() for p in c]
  ys = [p['shapes_fid'] for c in curves.values() for p in c]
  if floor:
    ys += [floor, 4 * floor]
  lx0, lx1 = np.log10(max(min(xs), 1)), np.log10(max(xs) * 1.1)
  ly0, ly1 = np.log10(min(ys) * 0.8), np.log10(max(ys) * 1.2)
  sx = lambda x: left + (np.log10(max(x, 1)) - lx0) / max(lx1 - lx0, 1e-9) * (
      right - left)
  sy = lambda y: bottom - (np.log10(y) - ly0) / max(ly1 - ly0, 1e-9) * (
      bottom - top)
  d.rectangle([left, top, right, bottom], outline=(0, 0, 0))
  for e in range(int(np.floor(ly0)), int(np.ceil(ly1)) + 1):
    for m in (1, 2, 5):
      y = m * 10.0 ** e
      if 10 ** ly0 <= y <= 10 ** ly1:
        d.line([left - 4, sy(y), left, sy(y)], fill=(0, 0, 0))
        d.text((5, sy(y) - 6), f'{y:g}', fill=(0, 0, 0))
  for e in range(int(np.floor(lx0)), int(np.ceil(lx1)) + 1):
    for m in (1, 2, 5):
      x = m * 10.0 ** e
      if 10 ** lx0 <= x <= 10 ** lx1:
        d.line([sx(x), bottom, sx(x), bottom + 4], fill=(0, 0, 0))
        d.text((sx(x) - 8, bottom + 6), f'{x:g}', fill=(0, 0, 0))
  d.text(((left + right) // 2 - 60, h - 16), 'training seconds (log)',
         fill=(0, 0, 0))
  d.text((left + 4, top + 2), 'shapes-FID (log)', fill=(0, 0, 0))
  if floor:
    for y, label in ((floor, 'floor'), (4 * floor, '4x floor')):
      d.line([left, sy(y), right, sy(y)], fill=(160, 160, 160))
      d.text((right - 60, sy(y) - 12), label, fill=(120, 120, 120))
  for i, (name, pts) in enumerate(curves.items()):
    col = COLOURS[i % len(COLOURS)]
    xy = [(sx(p['train_s']), sy(p['shapes_fid'])) for p in pts]
    if len(xy) > 1:
      d.line(xy, fill=col, width=2)
    for x, y in xy:
      d.ellipse([x - 3, y - 3, x + 3, y + 3], fill=col)
    d.text((right + 8, top + 14 * i), name[:26], fill=col)
  img.save(path)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[1])
  parser.add_argument('--workdir', required=True, help='Output directory.')
  parser.add_argument('--variant', default='',
                      help="configs/shapes.py args, e.g. 'width=32,patch=2'.")
  parser.add_argument('--eval_every', type=int, default=500)
  parser.add_argument('--num_samples', type=int, default=500,
                      help='Samples per curve point.')
  parser.add_argument('--steps', type=int, default=None,
                      help='Training steps (default: the config\'s).')
  parser.add_argument('--name', default=None,
                      help='Curve name (default: the variant string).')
  parser.add_argument('--plot_only', action='store_true',
                      help='Redraw curve.png from curve.json.')
  args = parser.parse_args(argv)
  logging.set_verbosity(logging.INFO)
  os.makedirs(args.workdir, exist_ok=True)
  path = os.path.join(args.workdir, 'curve.json')
  data = {'curves': {}, 'floor': None}
  if os.path.exists(path):
    with open(path) as f:
      data = json.load(f)
  if not args.plot_only:
    config = config_loader.load(
        os.path.join(ROOT, 'configs/shapes.py') + (
            f':{args.variant}' if args.variant else ''))
    if args.steps:
      config.total_steps = args.steps
    config.eval_every = args.eval_every
    config.eval.features.num_samples = args.num_samples
    name = args.name or args.variant or 'default'
    run_dir = os.path.join(args.workdir, name.replace('=', '').replace(
        ',', '_').replace('/', '_'))
    points = train_with_curve(config, run_dir)
    data['curves'][name] = points
    data['floor'] = points[-1].get('shapes_fid_floor')
    with open(path, 'w') as f:
      json.dump(data, f, indent=1)
    for p in points:
      print(f"{name}: step {p.get('step')} {p['train_s']} s  FID "
            f"{p['shapes_fid']:.2f}  P {p['shapes_precision']:.3f}  R "
            f"{p['shapes_recall']:.3f}  acc {p.get('class_accuracy', 0):.3f}")
  plot(data['curves'], os.path.join(args.workdir, 'curve.png'),
       floor=data['floor'])


if __name__ == '__main__':
  main()
