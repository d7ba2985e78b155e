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

  python -m experiments.shapes_curve --workdir=DIR \
      --add 'NAME=/tmp/probe/res_NAME.json'

adds the points of an `experiments.shapes_probe` run (or any JSON with a
'points' list of {train_s, shapes_fid, ...}) as curve NAME and redraws
DIR/curve.png (matplotlib).
"""

import argparse
import json
import os
import time

from absl import logging
import numpy as np

from visgen import config_loader
from visgen import evaluations
from visgen import train as train_lib

ROOT = os.path.join(os.path.dirname(__file__), '..')
COLOURS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40),
           (148, 103, 189), (140, 86, 75), (227, 119, 194), (127, 127, 127),
           (23, 190, 207))


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


def plot(curves: dict, path: str, *, floor: float | None) -> None:
  """Log-log lines of shapes-FID against training seconds (matplotlib), with
  the real-against-real floor and the issue's 4x-floor bound."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, ax = plt.subplots(figsize=(8.5, 7.0))
  markers = 'osD^v'
  for i, (name, pts) in enumerate(curves.items()):
    xs = [p['train_s'] for p in pts]
    ys = [p['shapes_fid'] for p in pts]
    ax.plot(xs, ys, markers[(i // len(COLOURS)) % len(markers)] + '-',
            color=np.array(COLOURS[i % len(COLOURS)]) / 255, label=name)
  if floor:
    ax.axhline(floor, color='0.6', ls=':', label=f'floor {floor:.2f}')
    ax.axhline(4 * floor, color='0.3', ls='--',
               label=f'4x floor {4 * floor:.1f} (target)')
  ax.set_xscale('log')
  ax.set_yscale('log')
  ax.set_xlabel('training wall clock (s, 2 shared CPU cores)')
  ax.set_ylabel('shapes-FID')
  ax.set_title('32x32 shapes scenes, class-conditional')
  # Below the axes: the legend never hides a point.
  ax.legend(fontsize=7, loc='upper center', bbox_to_anchor=(0.5, -0.13),
            ncol=1, frameon=False)
  ax.grid(True, which='both', alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


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
  parser.add_argument('--add', nargs='*', default=(),
                      help='NAME=RESULT.json: add the points of a probe run '
                      '(experiments/shapes_probe.py) as curve NAME.')
  args = parser.parse_args(argv)
  logging.set_verbosity(logging.INFO)
  os.makedirs(args.workdir, exist_ok=True)
  path = os.path.join(args.workdir, 'curve.json')
  data = {'curves': {}, 'floor': None}
  if os.path.exists(path):
    with open(path) as f:
      data = json.load(f)
  for item in args.add:
    name, _, file = item.rpartition('=')
    with open(file) as f:
      data['curves'][name] = json.load(f)['points']
  if args.add:
    with open(path, 'w') as f:
      json.dump(data, f, indent=1)
  if not args.plot_only and not args.add:
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
