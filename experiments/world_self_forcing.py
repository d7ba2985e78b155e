r"""Self-forcing against plain fine-tuning of the world model: a report.

  python -m visgen.main --config=configs/world_shapes.py --workdir=$BASE
  python -m visgen.main --config=configs/world_shapes.py:init=$BASE,steps=600,sf=1 \
      --workdir=$SF
  python -m visgen.main --config=configs/world_shapes.py:init=$BASE,steps=600 \
      --workdir=$PLAIN
  for w in $BASE $SF $PLAIN; do
    python -m visgen.world --workdir=$w --eval --cfg=8 --num=32 --results=$w/eval
  done
  python -m experiments.world_self_forcing --out=DIR base=$BASE/eval \
      plain=$PLAIN/eval self_forcing=$SF/eval

Reads each evaluation's results.json (`visgen.evaluators.world_model`) and
writes DIR/results.json, DIR/results.md (printed) and DIR/self_forcing.png
(action error against drift PSNR, one point per run).
"""

import argparse
import json
import os


def load(spec: str) -> tuple[str, dict]:
  name, _, path = spec.rpartition('=')
  if not name:
    raise SystemExit(f'{spec!r}: pass NAME=EVAL_DIR (a --results folder).')
  f = path if path.endswith('.json') else os.path.join(path, 'results.json')
  if not os.path.exists(f):
    raise SystemExit(f'{f} does not exist: run python -m visgen.world '
                     '--workdir=W --eval --results=DIR first.')
  with open(f) as fh:
    w = json.load(fh)['world']
  return name, dict(
      action_error_px=w['action_error_px'],
      action_error_random_px=w['action_error_random_px'],
      action_error_null_px=w['action_error_null_px'],
      drift_psnr_db=dict(zip(map(str, w['drift']['k']),
                             w['drift']['psnr_db'])),
      drift_unrelated_psnr_db=w['drift']['unrelated_psnr_db'],
      frame_psnr_db=sum(w['frame_psnr_db']) / len(w['frame_psnr_db']),
      x0_mse=w['denoiser_x0_mse'])


def main(argv=None):
  p = argparse.ArgumentParser(prog='python -m experiments.world_self_forcing')
  p.add_argument('--out', required=True)
  p.add_argument('runs', nargs='+', help='NAME=EVAL_DIR')
  a = p.parse_args(argv)
  runs = dict(load(s) for s in a.runs)
  os.makedirs(a.out, exist_ok=True)
  with open(os.path.join(a.out, 'results.json'), 'w') as f:
    json.dump(runs, f, indent=1)
  ks = sorted(next(iter(runs.values()))['drift_psnr_db'], key=int)
  lines = ['| run | action error px | vs random | null actions | drift PSNR dB '
           f'(k = {" / ".join(ks)}) | frame PSNR dB | x0 MSE true / null '
           'actions |', '|---|---:|---:|---:|---|---:|---|']
  for name, r in runs.items():
    lines.append(
        f"| {name} | {r['action_error_px']:.2f} | "
        f"{r['action_error_random_px']:.2f} | {r['action_error_null_px']:.2f}"
        f" | {' / '.join('%.1f' % r['drift_psnr_db'][k] for k in ks)} | "
        f"{r['frame_psnr_db']:.1f} | {r['x0_mse']['actions']:.3f} / "
        f"{r['x0_mse']['null']:.3f} |")
  table = '\n'.join(lines)
  with open(os.path.join(a.out, 'results.md'), 'w') as f:
    f.write(table + '\n')
  print(table)
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(5.5, 4.2))
  for name, r in runs.items():
    ax.scatter(r['drift_psnr_db'][ks[-1]], r['action_error_px'], s=50)
    ax.annotate(name, (r['drift_psnr_db'][ks[-1]], r['action_error_px']),
                textcoords='offset points', xytext=(5, 5))
  first = next(iter(runs.values()))
  ax.axhline(first['action_error_random_px'], ls=':', c='grey',
             label='random actions')
  ax.axvline(first['drift_unrelated_psnr_db'], ls='--', c='grey',
             label='unrelated views')
  ax.set(xlabel=f'drift PSNR after {ks[-1]} steps away and back (dB, higher'
         ' is better)', ylabel='action error px (lower is better)',
         title='world model: self-forcing vs plain fine-tune')
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(os.path.join(a.out, 'self_forcing.png'), dpi=110)
  return runs


if __name__ == '__main__':
  main()
