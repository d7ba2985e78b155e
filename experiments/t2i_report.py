r"""The text-to-image report of one or more `configs/t2i_shapes.py` runs.

  python -m experiments.t2i_report --out=experiments/results/t2i_shapes \
      RECORD=/tmp/t2i [PROBE=/tmp/t2i_probe ...]

Reads each workdir's metrics.json (written by `python -m visgen.main
--config=configs/t2i_shapes.py`: prompt accuracy per category, over CFG
scales, on held-out pairs, the parser's ceiling, shapes-FID) and writes
OUT/results.json (the rows), prints a Markdown table and saves
OUT/prompt_accuracy.png: overall prompt accuracy against the CFG scale for
every run, with the parser's ceiling and the issue's bound of 0.5, and the
per-category accuracy of the first run beside its ceiling. The first run
is the run of record; its metrics.json, config.json and samples.png are
copied to OUT.
"""

import argparse
import json
import os
import shutil

CATEGORIES = ('shape', 'colour', 'size', 'count', 'position')
BOUND = 0.5


def row(name: str, m: dict) -> dict:
  scales = sorted(float(k[len('prompt_accuracy_cfg'):]) for k in m
                  if k.startswith('prompt_accuracy_cfg'))
  return dict(
      name=name, steps=m.get('steps', m.get('step')),
      wall_time_s=m.get('wall_time_s'),
      train_wall_time_s=m.get('train_wall_time_s'),
      prompt_accuracy=m['prompt_accuracy'],
      prompt_accuracy_unguided=m['prompt_accuracy_unguided'],
      prompt_accuracy_heldout=m.get('prompt_accuracy_heldout'),
      prompt_accuracy_ceiling=m['prompt_accuracy_ceiling'],
      prompt_accuracy_latent_ceiling=m.get('prompt_accuracy_latent_ceiling'),
      scale=m.get('prompt_accuracy_scale'),
      cfg={f'{s:g}': m[f'prompt_accuracy_cfg{s:g}'] for s in scales},
      categories={c: m.get(f'prompt_accuracy_{c}') for c in CATEGORIES},
      ceiling_categories={c: m.get(f'prompt_accuracy_ceiling_{c}')
                          for c in CATEGORIES},
      by_objects={k[len('prompt_accuracy_overall_'):]: v for k, v in m.items()
                  if k.startswith('prompt_accuracy_overall_')},
      shapes_fid=m.get('shapes_fid'), shapes_fid_floor=m.get(
          'shapes_fid_floor'), shapes_precision=m.get('shapes_precision'),
      shapes_recall=m.get('shapes_recall'))


def table(rows: list[dict]) -> str:
  scales = sorted({s for r in rows for s in r['cfg']}, key=float)
  head = (['run', 'steps', 'training (min)', 'with evaluations (min)',
           'prompt acc.', 'unguided',
           'held-out pairs', 'ceiling', 'latent ceiling'] + [
               f'CFG {s}' for s in scales] +
          ['shapes-FID (floor)'])
  fmt = lambda v: '—' if v is None else (f'{v:.3g}' if isinstance(
      v, float) else str(v))
  lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
  for r in rows:
    minutes = lambda k: None if r.get(k) is None else r[k] / 60
    cells = [r['name'], fmt(r['steps']), fmt(minutes('train_wall_time_s')),
             fmt(minutes('wall_time_s')), fmt(r['prompt_accuracy']),
             fmt(r['prompt_accuracy_unguided']),
             fmt(r['prompt_accuracy_heldout']),
             fmt(r['prompt_accuracy_ceiling']),
             fmt(r.get('prompt_accuracy_latent_ceiling'))]
    cells += [fmt(r['cfg'].get(s)) for s in scales]
    cells.append(f'{fmt(r["shapes_fid"])} ({fmt(r["shapes_fid_floor"])})')
    lines.append('| ' + ' | '.join(cells) + ' |')
  first = rows[0]
  lines += ['', f'Per category ({first["name"]}, CFG {fmt(first["scale"])}):',
            '', '| category | accuracy | ceiling |', '|---|---|---|']
  for c in CATEGORIES:
    lines.append(f'| {c} | {fmt(first["categories"][c])} | '
                 f'{fmt(first["ceiling_categories"][c])} |')
  for k, v in sorted(first['by_objects'].items()):
    lines.append(f'| overall, captions of {k.replace("obj", " object(s)")} '
                 f'| {fmt(v)} | |')
  return '\n'.join(lines)


def plot(rows: list[dict], path: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.2))
  for r in rows:
    s = sorted(r['cfg'], key=float)
    ax.plot([float(x) for x in s], [r['cfg'][x] for x in s], 'o-',
            label=r['name'])
  ax.axhline(rows[0]['prompt_accuracy_ceiling'], color='k', ls='--',
             label='parser ceiling (real scenes)')
  latent = [r['prompt_accuracy_latent_ceiling'] for r in rows
            if r.get('prompt_accuracy_latent_ceiling') is not None]
  if latent:  # the first run's that reports one (its autoencoder)
    ax.axhline(latent[0], color='0.5', ls='-.',
               label='latent ceiling (real scenes through the AE)')
  ax.axhline(BOUND, color='r', ls=':', label='bound 0.5')
  ax.set_xlabel('CFG scale (0 = unconditional, 1 = unguided)')
  ax.set_ylabel('prompt accuracy (overall)')
  ax.set_ylim(0, 1)
  ax.legend(fontsize=8, loc='upper center', bbox_to_anchor=(0.5, -0.22),
            ncol=2)
  ax.set_title('GenEval-style prompt accuracy vs guidance')
  first = rows[0]
  xs = range(len(CATEGORIES))
  bx.bar([x - 0.2 for x in xs], [first['categories'][c] or 0
                                 for c in CATEGORIES], 0.4,
         label=f'{first["name"]} (CFG {first["scale"]:g})')
  bx.bar([x + 0.2 for x in xs], [first['ceiling_categories'][c] or 0
                                 for c in CATEGORIES], 0.4,
         label='ceiling', color='0.6')
  bx.set_xticks(list(xs), CATEGORIES)
  bx.set_ylim(0, 1)
  bx.legend(fontsize=8)
  bx.set_title('per category')
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog='python -m experiments.t2i_report')
  p.add_argument('--out', required=True)
  p.add_argument('runs', nargs='+', help='NAME=WORKDIR (or NAME=a metrics '
                 'JSON file), the run of record first')
  a = p.parse_args(argv)
  rows, dirs = [], []
  for spec in a.runs:
    name, sep, workdir = spec.rpartition('=')  # names may hold '='
    if not sep:
      p.error(f'{spec!r}: give NAME=WORKDIR')
    # A workdir (its metrics.json) or a metrics file itself (e.g. the
    # eval_<step>.json of `visgen.main --mode=eval`).
    path = workdir if os.path.isfile(workdir) else os.path.join(
        workdir, 'metrics.json')
    if not os.path.isfile(path):
      p.error(f'{path} not found: train the run first (python -m '
              'visgen.main --config=configs/t2i_shapes.py --workdir=...)')
    with open(path) as f:
      rows.append(row(name, json.load(f)))
    dirs.append(os.path.dirname(path))
  os.makedirs(a.out, exist_ok=True)
  with open(os.path.join(a.out, 'results.json'), 'w') as f:
    json.dump(dict(rows=rows, bound=BOUND), f, indent=1)
  for name in ('metrics.json', 'config.json', 'samples.png'):
    src = os.path.join(dirs[0], name)
    if os.path.isfile(src):
      shutil.copy(src, os.path.join(a.out, name))
  plot(rows, os.path.join(a.out, 'prompt_accuracy.png'))
  print(table(rows))
  return 0


if __name__ == '__main__':
  raise SystemExit(main())
