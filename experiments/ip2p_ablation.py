r"""InstructPix2Pix at 16x16: which design choices make the edit model read
its instruction.

  python -m experiments.ip2p_ablation --workdir=DIR [--variants=a,b,...]

Trains each variant of configs/ip2p_shapes.py under DIR/<variant> (a run
whose metrics.json exists is reused; `f` warm-starts from `e`'s EMA
weights) and scores it on the first `--n_eval` held-out `shapes_edit`
pairs:

* the one-step x0 prediction at t in T_GRID from x_t of the true edit
  target, with the instruction and with the null instruction: squared
  error inside the edit mask (`mse_in`; the gap between the two is how much
  the model uses its instruction) and the fraction of edit-mask pixels whose
  oracle colour is right (`inside`);
* sampled edits over the s_I x s_T grid of experiments.control_editing:
  edit success (strict and object-level) and preservation PSNR
  (`control_editing.edit_scores`);
* edit success against the number of Euler steps (`--nfe_sweep`) at the
  best grid point;
* `criterion_check`: both criteria on the true targets plus i.i.d. noise
  of a few grey levels (`control_editing.criterion_check`), and each
  criterion's inside / outside halves.

Writes DIR/results.json (variants scored by earlier invocations are kept),
a Markdown table and DIR/ip2p_ablation.png (x0 error inside the edit mask
against t, with and without the instruction; edit success against NFE).
"""

import argparse
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

from experiments import control_editing as ce
from visgen import builder
from visgen import config_loader
from visgen import logging_lib
from visgen.data import preprocess
from visgen.data import shapes_edit
from visgen.tasks import image_cond

COMMON = 'res=16,batch=16,width=32,sampler=euler,sampler_steps=16'
# name -> (configs/ip2p_shapes.py arguments, warm start from, what changes)
VARIANTS = {
    'a': ('steps=2000,patch=1,prediction=x0,skip=False,xattn=False,'
          't_mean=0,edit_weight=1', None, 'x0 prediction, patch 1'),
    'b': ('steps=2000,patch=1,prediction=x0,skip=True,xattn=False,t_mean=0,'
          'edit_weight=1', None, '+ source skip'),
    'c': ('steps=2000,patch=1,prediction=x0,skip=True,xattn=True,t_mean=0,'
          'edit_weight=1', None, '+ cross-attention'),
    'd': ('steps=2000,patch=1,prediction=x0,skip=True,xattn=True,t_mean=1,'
          'loss_space=x0,edit_weight=1', None, '+ time shift, x0-space loss'),
    'e': ('steps=6000,patch=1,prediction=x0,skip=True,xattn=True,t_mean=1,'
          'edit_weight=1', None, 'time shift, velocity loss, 6000 steps'),
    'f': ('steps=4000,patch=1,prediction=x0,skip=True,xattn=True,t_mean=1,'
          'edit_weight=5,lr=5e-4', 'e', 'e + 4000 steps, edit weight 5'),
    'g': ('steps=6000,patch=1,prediction=x0,skip=True,xattn=True,t_mean=1,'
          'edit_weight=5,lr=5e-4,sampler_steps=4', 'f',
          'f + 6000 steps (16000 in all), Euler 4'),
    'h': ('steps=7000,patch=1,prediction=x0,skip=True,xattn=True,t_mean=1,'
          'edit_weight=5,lr=5e-4,sampler_steps=4', 'g',
          'g + 7000 steps (23000 in all), Euler 4'),
    # From scratch with what a-h taught: edit weight 5 from the start and
    # times shifted further towards noise (each pair's edit is a function of
    # source and instruction, so only high noise needs the instruction).
    'i': ('steps=32000,patch=1,prediction=x0,skip=True,xattn=True,'
          't_mean=1.5,edit_weight=5,lr=1e-3,sampler_steps=4', None,
          'from scratch: edit weight 5, t_mean 1.5, 32000 steps, Euler 4'),
}
T_GRID = (0.99, 0.9, 0.7, 0.5, 0.3, 0.1)
GRID = [(s_i, s_t) for s_i in (1.0, 1.5, 2.0) for s_t in (1.0, 3.0, 5.0)]


def one_step(b, params, cond, ex, key):
  """Per t: inside accuracy and mse inside the mask, with / without text."""
  x0 = preprocess.to_float(jnp.asarray(ex['edited_image']))
  net = jax.jit(b.task.network(params))
  m = ex['edit_mask'][..., 0] > 0
  eps = jax.random.normal(key, x0.shape)
  out = {}
  for t in T_GRID:
    xt = (1 - t) * x0 + t * eps
    tt = jnp.full((x0.shape[0],), t)
    for name, c in (('text', cond), ('null', b.task.null_text(cond))):
      pred = np.asarray(net(xt, tt, c))
      po = ce.parse_colours(preprocess.to_uint8(pred))
      pt = ce.parse_colours(ex['edited_image'])
      inside = ((po == pt) & m).sum((1, 2)) / m.sum((1, 2))
      err = ((pred - np.asarray(x0)) ** 2).mean(-1)
      out.setdefault(name, {})[str(t)] = dict(
          inside=float(inside.mean()),
          mse_in=float((err * m).sum() / m.sum()))
  return out


def main(argv=None):
  p = argparse.ArgumentParser(prog='python -m experiments.ip2p_ablation')
  p.add_argument('--workdir', required=True)
  p.add_argument('--variants', default=','.join(VARIANTS))
  p.add_argument('--n_eval', type=int, default=64)
  p.add_argument('--nfe_sweep', default='1,2,4,8,16',
                 help='Euler steps tried at the best (s_I, s_T); empty: none')
  a = p.parse_args(argv)
  os.makedirs(a.workdir, exist_ok=True)
  results = {}
  for name in a.variants.split(','):
    if name not in VARIANTS:
      raise SystemExit(f'Unknown variant {name!r}; valid: '
                       f'{", ".join(VARIANTS)}.')
    arg, init, what = VARIANTS[name]
    c = ce.load_config('ip2p_shapes', f'{COMMON},{arg}')
    if init:
      c.init_from = dict(source='workdir:' + os.path.join(a.workdir, init),
                         weights='ema', mapping=(('(.*)', r'\1'),))
    c.num_grid_samples = 16
    c.eval = {}
    c.ckpt_every = min(c.total_steps, 2000)  # a kill loses little
    c.keep_every = 4000  # the checkpoints of `curve`
    c.data.num_threads = 0
    d = ce.run(a.workdir, name, c)
    c = config_loader.load_workdir(d)
    b, params = ce.restored(c, d)
    ex = image_cond.heldout_examples(c, a.n_eval)
    cond = jax.tree.map(jnp.asarray, b.task.eval_cond(ex))
    row = dict(what=what, config=arg, init_from=init, n_eval=a.n_eval,
               one_step=one_step(b, params, cond, ex, jax.random.key(1)),
               sampled=[])
    for s_i, s_t in GRID:
      x, nfe = ce.sample(b, params, cond, a.n_eval, jax.random.key(0),
                         guidance=s_t, image_guidance=s_i)
      kinds = np.asarray(ex['edit_type'])
      by_type = {kind: scores(x[kinds == j], ex, kinds == j)
                 for j, kind in enumerate(shapes_edit.EDIT_TYPES)
                 if (kinds == j).any()}
      row['sampled'].append(dict(
          s_I=s_i, s_T=s_t, nfe=nfe, **scores(x, ex),
          edit_success_by_type={k: v['edit_success']
                                for k, v in by_type.items()},
          edit_success_objects_by_type={
              k: v['edit_success_objects'] for k, v in by_type.items()}))
    # Euler steps at the best grid point (the edit is a function of source
    # and instruction, so few steps may do).
    best = max(row['sampled'], key=lambda r: (r['edit_success'],
                                              r['preservation_psnr']))
    row['nfe_sweep'] = []
    for steps in (int(x) for x in a.nfe_sweep.split(',') if x):
      x, nfe = sample_steps(b, params, cond, a.n_eval, steps, best)
      row['nfe_sweep'].append(dict(steps=steps, nfe=nfe, **scores(x, ex)))
    row['curve'] = curve(b, c, d, cond, ex, a.n_eval, best)
    results[name] = row
    print(name, what, max(r['edit_success'] for r in row['sampled']),
          flush=True)
  # Variants scored by earlier invocations stay in results.json.
  path = os.path.join(a.workdir, 'results.json')
  if os.path.exists(path):
    with open(path) as f:
      results = {**json.load(f)['variants'], **results}
    results = {k: results[k] for k in VARIANTS if k in results}
  # What each criterion makes of the true targets plus invisible noise.
  crit = ce.criterion_check(ex['image'], ex['edited_image'], ex['edit_mask'])
  logging_lib.write_json(path, dict(variants=results, settings=vars(a),
                                    criterion_check=crit))
  print(table(results))
  print(halves_table(results, crit))
  plot(results, os.path.join(a.workdir, 'ip2p_ablation.png'))
  return results


def scores(x, ex, keep=slice(None)):
  """`control_editing.edit_metrics` of outputs x on the pairs ex[keep]."""
  return ce.edit_metrics(x, ex['image'][keep], ex['edited_image'][keep],
                         ex['edit_mask'][keep])


def curve(b, c, d, cond, ex, n, at):
  """Edit success of every checkpoint kept in d (`keep_every`), with the
  config's sampler at s_I = s_T = 1 and at the best grid point `at`."""
  ckpt = builder.checkpointer(b, d, every=1, keep_last=1, read_only=True)
  out = []
  try:
    for step in sorted(ckpt.mngr.all_steps()):
      state, _ = ckpt.restore(b.abstract, step=step)
      params = builder.first_ema(state)
      point = dict(step=int(step))
      for tag, s_i, s_t in (('plain', 1.0, 1.0),
                            ('best', at['s_I'], at['s_T'])):
        x, _ = ce.sample(b, params, cond, n, jax.random.key(0),
                         guidance=s_t, image_guidance=s_i)
        sc = scores(x, ex)
        point[tag] = sc['edit_success']
        point[tag + '_objects'] = sc['edit_success_objects']
      out.append(point)
  finally:
    ckpt.close()
  return out


def sample_steps(b, params, cond, n, steps, at):
  """n edits with the config's sampler at `steps` steps, at the guidance
  scales of `at` (a 'sampled' row)."""
  sampler = dict(b.config.sampler, steps=steps)
  fn = jax.jit(lambda p, f, c, k: b.task.sample(
      p, f, c, k, n=n, return_info=True, sampler=sampler,
      guidance=jnp.float32(at['s_T']), image_guidance=jnp.float32(at['s_I'])))
  x, info = fn(params, b.frozen.params, cond, jax.random.key(0))
  return preprocess.to_uint8(np.asarray(x)), int(info['nfe'])


def table(results) -> str:
  lines = ['| variant | what | mse_in t=0.99 (text / null) | inside t=0.3 '
           '(text / null) | best edit success (s_I, s_T) | object-level '
           'there | preservation PSNR there | there by type (recolour / '
           'move / resize) |', '|---|---|---|---|---|---|---|---|']
  for name, r in results.items():
    hi, lo = r['one_step'], '0.3'
    best = max(r['sampled'], key=lambda x: (x['edit_success'],
                                            x['preservation_psnr']))
    obj = best.get('edit_success_objects')
    lines.append(
        f"| {name} | {r['what']} | {hi['text']['0.99']['mse_in']:.3f} / "
        f"{hi['null']['0.99']['mse_in']:.3f} | "
        f"{hi['text'][lo]['inside']:.3f} / {hi['null'][lo]['inside']:.3f} | "
        f"{best['edit_success']:.3f} ({best['s_I']}, {best['s_T']}) | "
        + ('-' if obj is None else f'{obj:.3f}') + ' | '
        f"{best['preservation_psnr']:.1f} dB | "
        + (' / '.join(f"{best['edit_success_by_type'].get(k, float('nan')):.2f}"
                      for k in shapes_edit.EDIT_TYPES)
           if 'edit_success_by_type' in best else '-') + ' |')
  return '\n'.join(lines)


def halves_table(results, crit) -> str:
  """The two halves of each criterion (inside / outside the edit mask) at
  each variant's best grid point, then the true targets plus noise."""
  lines = ['| edits | preservation PSNR | strict: success (inside ok / '
           'outside ok) | object-level: success (inside ok / outside ok) |',
           '|---|---|---|---|']
  fmt = lambda r, s: (f"{r['edit_success' + s]:.3f} ({r['inside_ok' + s]:.3f}"
                      f" / {r['outside_ok' + s]:.3f})")
  rows = [(f'variant {name}, best (s_I, s_T)', max(
      r['sampled'], key=lambda x: (x['edit_success'],
                                   x['preservation_psnr'])))
          for name, r in results.items()]
  rows += [(f"true target + noise sigma {c['sigma']:g}", c) for c in crit]
  for what, r in rows:
    if 'inside_ok' in r:
      lines.append(f"| {what} | {r['preservation_psnr']:.1f} dB | "
                   f"{fmt(r, '')} | {fmt(r, '_objects')} |")
  return '\n'.join(lines)


def plot(results, path):
  try:
    import matplotlib  # pylint: disable=g-import-not-at-top
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  except ImportError:
    return
  fig, (ax, ax2, ax3) = plt.subplots(1, 3, figsize=(16, 4))
  for i, (name, r) in enumerate(results.items()):
    if r.get('curve'):
      steps = [x['step'] for x in r['curve']]
      ax3.plot(steps, [x['best'] for x in r['curve']], 'o-', color=f'C{i}',
               label=f'{name}, best (s_I, s_T)')
      ax3.plot(steps, [x['plain'] for x in r['curve']], 'o:', color=f'C{i}',
               label=f'{name}, s_I = s_T = 1')
      ax3.plot(steps, [x['best_objects'] for x in r['curve']], 's--',
               color=f'C{i}', label=f'{name}, best, object-level')
  ax3.axhline(0.6, ls='--', color='grey')
  ax3.set_xlabel('training step')
  ax3.set_ylabel('edit success')
  ax3.set_title('during training (kept checkpoints, EMA)')
  if ax3.lines[1:]:
    ax3.legend(fontsize=7)
  for i, (name, r) in enumerate(results.items()):
    if r.get('nfe_sweep'):
      ax2.plot([x['nfe'] for x in r['nfe_sweep']],
               [x['edit_success'] for x in r['nfe_sweep']], 'o-',
               color=f'C{i}', label=f'{name}, strict')
      ax2.plot([x['nfe'] for x in r['nfe_sweep']],
               [x['edit_success_objects'] for x in r['nfe_sweep']], 's--',
               color=f'C{i}', label=f'{name}, object-level')
  ax2.set_xscale('log')
  ticks = sorted({x['nfe'] for r in results.values()
                  for x in r.get('nfe_sweep', [])})
  if ticks:
    ax2.set_xticks(ticks, [str(t) for t in ticks])
    ax2.minorticks_off()
  ax2.set_xlabel('NFE (Euler steps; 3 evaluations each with dual CFG)')
  ax2.set_ylabel('edit success')
  ax2.set_title('at the best (s_I, s_T)')
  ax2.axhline(0.6, ls='--', color='grey')
  if ax2.lines[1:]:
    ax2.legend(fontsize=7)
  for i, (name, r) in enumerate(results.items()):
    colour = f'C{i}'
    for kind, style in (('text', '-'), ('null', ':')):
      ax.plot(T_GRID, [r['one_step'][kind][str(t)]['mse_in'] for t in T_GRID],
              style, color=colour,
              label=f'{name}: {r["what"]}' if kind == 'text' else None)
  ax.set_xlabel('t (noise level)')
  ax.set_ylabel('x0 error inside the edit mask')
  ax.set_title('solid: with the instruction, dotted: null instruction')
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=100)


if __name__ == '__main__':
  main(sys.argv[1:])
