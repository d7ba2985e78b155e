r"""ControlNet, InstructPix2Pix and diffusion bridges on the same scene pairs.

  python -m experiments.control_editing --workdir=DIR [--res=16 --steps=300]

Trains what it needs under DIR (a run whose metrics.json exists is reused):

  base        class-conditional shapes generator (configs/shapes.py recipe)
  cn_edges    ControlNet (edges) on the frozen base (configs/controlnet_shapes)
  cond_edges  conditional diffusion, edges concatenated (ddbm_shapes, linear)
  ddbm_edges  DDBM bridge edges -> scene (ddbm_shapes, bridge_vp)
  cond_mask, ddbm_mask   the same for semantic mask -> scene
  ip2p        InstructPix2Pix on shapes_edit (configs/ip2p_shapes)
  ddbm_edit   DDBM edit source -> edit target (ddbm_shapes, source=image)

and scores every method on the first `--n_eval` held-out pairs:

* fid: shapes-FID (the `shapes` attribute net) of the outputs against
  `--n_ref` held-out real scenes (n_eval samples: biased upwards, compare
  rows with each other and with the floor, not with published numbers);
* adherence (edges): F1 at 1 px tolerance between a fixed edge detector on
  the output (a pixel is an edge where a 4-neighbour differs by more than
  `EDGE_THRESHOLD` in some channel: the generator of `shapes.edge_map`
  applied to colours) and the condition's edges;
* adherence (masks): mean IoU over {background, object} of the oracle
  segmentation (a pixel is an object where its colour is within
  `OBJECT_DISTANCE` of one of the six object colours, which no background
  colour is) against the condition mask > 0;
* edit_success: the oracle parse of the output (each pixel's nearest
  scene-world colour) agrees with the ground-truth edited scene on >= 90%
  of the edit mask (the instructed change happened) and on >= 95% of the
  rest (nothing else changed); edit_success_objects: the same with the six
  background shades one class (each pixel: which object colour, or
  background), so that the shade of a gradient background, which the
  strict parse splits at half a palette step, does not count as an
  attribute; preservation_psnr: PSNR against the source outside the
  ground-truth edit mask.

The floor holds the metrics of real data (real scenes against their own
conditions, real-against-real FID) and of the uncontrolled base. Sweeps:
ControlNet control_scale, InstructPix2Pix s_I x s_T. DDBM's claim (a bridge
beats conditional diffusion on paired translation at equal NFE) is tested
by the ddbm_* and cond_* rows (NFE in each row).

`--only=edit` trains (or reuses) DIR/ip2p and DIR/ddbm_edit alone and puts
their rows in place of the edit rows of an existing DIR/results.json (e.g. a
copy of a full run's), recording its arguments as `settings_edit`.
"""

import argparse
import importlib.util
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from visgen import builder
from visgen import config_lib
from visgen import logging_lib
from visgen import train
from visgen.data import preprocess
from visgen.data import shapes as shapes_lib
from visgen.evaluators import compare
from visgen.evaluators import dense as dense_metrics
from visgen.evaluators import feature_nets
from visgen.tasks import image_cond

EDGE_THRESHOLD = 40
OBJECT_DISTANCE = 60.0
ROOT = os.path.join(os.path.dirname(__file__), '..')


def load_config(name: str, arg: str):
  spec = importlib.util.spec_from_file_location(
      name, os.path.join(ROOT, 'configs', f'{name}.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


# ----------------------------------------------------------------------------
# Metrics.
# ----------------------------------------------------------------------------


def detect_edges(images: np.ndarray) -> np.ndarray:
  """(N, H, W) bool: a 4-neighbour differs by > EDGE_THRESHOLD somewhere."""
  x = images.astype(np.int32)
  e = np.zeros(x.shape[:3], bool)
  dv = np.abs(x[:, 1:] - x[:, :-1]).max(-1) > EDGE_THRESHOLD
  dh = np.abs(x[:, :, 1:] - x[:, :, :-1]).max(-1) > EDGE_THRESHOLD
  e[:, 1:] |= dv
  e[:, :-1] |= dv
  e[:, :, 1:] |= dh
  e[:, :, :-1] |= dh
  return e


def edge_f1(images: np.ndarray, edges: np.ndarray) -> float:
  """Mean per-image F1 (1 px tolerance) of detected vs condition edges
  (`visgen.evaluators.dense.edge_f1`)."""
  return dense_metrics.edge_f1(detect_edges(images), edges[..., 0] > 0)


def object_mask(images: np.ndarray) -> np.ndarray:
  d = np.linalg.norm(images[..., None, :].astype(np.float32)
                     - shapes_lib.COLOUR_VALUES.astype(np.float32), axis=-1)
  return d.min(-1) < OBJECT_DISTANCE


def mask_miou(images: np.ndarray, masks: np.ndarray) -> float:
  pred, gt = object_mask(images), masks[..., 0] > 0
  ious = []
  for p, g in ((pred, gt), (~pred, ~gt)):
    inter, union = (p & g).sum((1, 2)), (p | g).sum((1, 2))
    ious.append(np.where(union > 0, inter / np.maximum(union, 1), 1.0))
  return float(np.mean(ious))


PALETTE = np.concatenate([shapes_lib.COLOUR_VALUES.astype(np.float32),
                          shapes_lib.BG_VALUES])


def parse_colours(images: np.ndarray) -> np.ndarray:
  d = np.linalg.norm(images[..., None, :].astype(np.float32) - PALETTE,
                     axis=-1)
  return d.argmin(-1)


def object_classes(images: np.ndarray) -> np.ndarray:
  """`parse_colours` with the six background colours merged into one class:
  0-5 the object colours, 6 background (of any shade)."""
  return np.minimum(parse_colours(images), len(shapes_lib.COLOUR_NAMES))


def _agreement(out, target, edit_mask, parse):
  """Per pair: the fractions of edit-mask pixels and of the other pixels
  whose parse agrees with the target's."""
  m = edit_mask[..., 0] > 0
  agree = parse(out) == parse(target)
  inside = (agree & m).sum((1, 2)) / np.maximum(m.sum((1, 2)), 1)
  outside = (agree & ~m).sum((1, 2)) / np.maximum((~m).sum((1, 2)), 1)
  return inside >= 0.9, outside >= 0.95


def edit_scores(out, source, target, edit_mask, *,
                objects: bool = False) -> tuple[float, float]:
  """(edit success rate, preservation PSNR outside the edit mask).

  objects=False: pixels agree when they parse to the same palette colour
  (background shades included, so a gradient background must be kept to
  within half a palette step); True: to the same object colour or both to
  background (`object_classes`: what is where, not the background's shade,
  which the PSNR measures)."""
  ok_in, ok_out = _agreement(out, target, edit_mask,
                             object_classes if objects else parse_colours)
  return float(np.mean(ok_in & ok_out)), _psnr_outside(out, source,
                                                       edit_mask)


def _psnr_outside(out, source, edit_mask) -> float:
  """Mean over pairs of the PSNR against the source outside the edit mask."""
  m = edit_mask[..., 0] > 0
  diff = (out.astype(np.float32) - source.astype(np.float32)) ** 2
  mse = (diff.mean(-1) * ~m).sum((1, 2)) / np.maximum((~m).sum((1, 2)), 1)
  return float(np.mean(10 * np.log10(255.0 ** 2 / np.maximum(mse, 1e-10))))


def edit_metrics(out, source, target, edit_mask) -> dict[str, float]:
  """edit_success (strict), edit_success_objects and preservation_psnr;
  inside_ok / outside_ok (and their _objects twins): the rates at which the
  two halves of each criterion pass on their own (>= 90% of the edit mask,
  >= 95% of the rest). Each parse runs once."""
  r = dict(preservation_psnr=_psnr_outside(out, source, edit_mask))
  for suffix, parse in (('', parse_colours), ('_objects', object_classes)):
    ok_in, ok_out = _agreement(out, target, edit_mask, parse)
    r['edit_success' + suffix] = float(np.mean(ok_in & ok_out))
    r['inside_ok' + suffix] = float(ok_in.mean())
    r['outside_ok' + suffix] = float(ok_out.mean())
  return r


def criterion_check(source, target, edit_mask,
                    sigmas=(1, 2, 3, 4, 6, 8), seed=0) -> list[dict]:
  """How each criterion scores the true targets plus i.i.d. Gaussian noise
  of `sigma` grey levels (rounded to uint8): a criterion that measures the
  edit should stay at 1 for noise far below what the eye sees."""
  rng = np.random.default_rng(seed)
  t = target.astype(np.float32)
  rows = []
  for s in sigmas:
    x = np.clip(np.round(t + s * rng.standard_normal(t.shape)), 0, 255)
    rows.append(dict(sigma=float(s), **edit_metrics(
        x.astype(np.uint8), source, target, edit_mask)))
  return rows


def fid(images: np.ndarray, ref: np.ndarray) -> float:
  net = feature_nets.get_feature_net('shapes')
  return float(compare.compare(net, ref_images=ref, sample_images=images)[
      'fid'])


# ----------------------------------------------------------------------------
# Runs.
# ----------------------------------------------------------------------------


def run(workdir: str, name: str, config) -> str:
  d = os.path.join(workdir, name)
  if os.path.exists(os.path.join(d, 'metrics.json')):
    print(f'[{name}] reusing {d}', flush=True)
    return d
  t0 = time.time()
  train.train_and_evaluate(config, d)
  print(f'[{name}] trained in {time.time() - t0:.0f} s', flush=True)
  return d


def restored(config, d):
  b, state, _ = builder.restore(config, d)
  return b, builder.first_ema(state)


_JITTED = {}


def sample(b, params, cond, n, key, uncontrolled=None, **scales):
  """n samples (uint8) and the NFE; `scales` (control_scale, guidance,
  image_guidance) are traced, so a sweep compiles once."""
  static = {} if uncontrolled is None else {'uncontrolled': uncontrolled}
  tag = (id(b), n, tuple(sorted(scales)), uncontrolled)
  if tag not in _JITTED:
    _JITTED[tag] = jax.jit(lambda p, f, c, k, s: b.task.sample(
        p, f, c, k, n=n, return_info=True, **static, **s))
  scales = {k: jnp.float32(v) for k, v in scales.items()}
  x, info = _JITTED[tag](params, b.frozen.params, cond, key, scales)
  return preprocess.to_uint8(np.asarray(x)), int(info['nfe'])


def main(argv=None):
  p = argparse.ArgumentParser(prog='python -m experiments.control_editing')
  p.add_argument('--workdir', required=True)
  p.add_argument('--res', type=int, default=16)
  p.add_argument('--steps', type=int, default=300)
  p.add_argument('--batch', type=int, default=16)
  p.add_argument('--width', type=int, default=16)
  p.add_argument('--n_eval', type=int, default=64)
  p.add_argument('--n_ref', type=int, default=500)
  p.add_argument('--ddbm_steps', type=int, default=5)
  p.add_argument('--ip2p', default='',
                 help='extra configs/ip2p_shapes.py arguments, e.g. '
                 'steps=6000,patch=1 (later keys win over the common ones)')
  p.add_argument('--quick', action='store_true',
                 help='only the edges rows and the edit rows')
  p.add_argument('--only', default='', choices=('', 'edit'),
                 help='edit: train (or reuse DIR/ip2p, DIR/ddbm_edit) and '
                 'score only the edit rows; they replace the edit rows of an '
                 'existing DIR/results.json, whose other rows are kept')
  a = p.parse_args(argv)
  os.makedirs(a.workdir, exist_ok=True)
  t_start = time.time()
  common = f'res={a.res},steps={a.steps},batch={a.batch},width={a.width}'
  key = jax.random.key(0)
  n = a.n_eval

  def finish(c):
    c.num_grid_samples = 16
    c.eval = {}
    c.ckpt_every = a.steps
    c.data.num_threads = 0
    return c

  if a.only:
    return only_edit(a, common, key, finish)
  # -- The base generator (configs/shapes.py's recipe at this size).
  base_cfg = load_config('shapes', f'steps={a.steps},batch={a.batch},'
                         f'width={a.width}')
  base_cfg.data.resolution = a.res
  base_cfg.task.x_shape = (a.res, a.res, 3)
  base_cfg.model.input_size = a.res
  base_dir = run(a.workdir, 'base', finish(base_cfg))

  shapes_test = image_cond.heldout_examples(
      config_lib_dict('shapes', a.res), max(n, a.n_ref))
  ref = shapes_test['image'][:a.n_ref]
  ev = {k: v[:n] for k, v in shapes_test.items()}
  rows, floor = [], {}
  partial = os.path.join(a.workdir, 'results.json')

  def emit(row):
    rows.append(row)
    print(row, flush=True)
    # Written after every row, so an interrupted run still reports.
    logging_lib.write_json(partial, dict(rows=rows, floor=floor,
                                         settings=vars(a), complete=False))
  floor['fid_real'] = fid(ev['image'], ref)
  floor['edges_adherence_real'] = edge_f1(ev['image'], ev['edges'])
  floor['mask_miou_real'] = mask_miou(ev['image'], ev['semantic_mask'])

  # -- ControlNet on edges, control-scale sweep; the uncontrolled base.
  cn_cfg = finish(load_config('controlnet_shapes',
                              f'{common},base={base_dir},control=edges'))
  cn_dir = run(a.workdir, 'cn_edges', cn_cfg)
  b, params = restored(cn_cfg, cn_dir)
  cond = jax.tree.map(jnp.asarray, b.task.eval_cond(ev))
  x, nfe = sample(b, params, cond, n, key, uncontrolled=True)
  floor['edges_adherence_uncontrolled_base'] = edge_f1(x, ev['edges'])
  floor['fid_uncontrolled_base'] = fid(x, ref)
  for s in (0.5, 1.0, 1.5, 2.0):
    x, nfe = sample(b, params, cond, n, key, control_scale=s)
    emit(dict(task='edges2scene', method='controlnet', nfe=nfe,
              fid=fid(x, ref), adherence=edge_f1(x, ev['edges']),
              edit_success=None, preservation_psnr=None,
              control_scale=s))

  if not a.quick:
    # -- ControlNet on semantic masks (same base), and both ControlNets
    # together: the mask net's residuals added through extra_controls.
    cm_cfg = finish(load_config(
        'controlnet_shapes', f'{common},base={base_dir},control=semantic_mask'))
    cm_dir = run(a.workdir, 'cn_mask', cm_cfg)
    bm, pm = restored(cm_cfg, cm_dir)
    cond_m = jax.tree.map(jnp.asarray, bm.task.eval_cond(ev))
    for s in (1.0, 1.5):
      x, nfe = sample(bm, pm, cond_m, n, key, control_scale=s)
      emit(dict(task='mask2scene', method='controlnet', nfe=nfe,
                fid=fid(x, ref), adherence=mask_miou(x, ev['semantic_mask']),
                edit_success=None, preservation_psnr=None, control_scale=s))
    x, nfe = sample(bm, pm, cond_m, n, key, uncontrolled=True)
    floor['mask_miou_uncontrolled_base'] = mask_miou(x, ev['semantic_mask'])
    # Edges and masks at once (scale 1 each): the edges net is the main
    # control, the mask net an extra one reading cond['mask_control'].
    both = jax.jit(lambda p, f, c, k: b.task.sample(
        p, f, c, k, n=n, return_info=True, control_scale=1.0,
        extra_controls=[(bm.task.apply, pm, 'mask_control', 1.0)]))
    cond_both = dict(cond, mask_control=cond_m['control'])
    x, info = both(params, b.frozen.params, cond_both, key)
    x = preprocess.to_uint8(np.asarray(x))
    emit(dict(task='edges2scene', method='controlnet', nfe=int(info['nfe']),
              fid=fid(x, ref), adherence=edge_f1(x, ev['edges']),
              mask_miou=mask_miou(x, ev['semantic_mask']),
              edit_success=None, preservation_psnr=None,
              control_scale=1.0, controls='edges+semantic_mask'))

  # -- Conditional diffusion vs DDBM on edges and masks (equal NFE).
  tasks = [('edges', 'edges2scene')] + ([] if a.quick else [
      ('semantic_mask', 'mask2scene')])
  for source, task_name in tasks:
    for method, path in (('conditional', 'linear'), ('ddbm', 'bridge_vp')):
      c = finish(load_config('ddbm_shapes', f'{common},source={source},'
                             f'path={path},sampler_steps={a.ddbm_steps}'))
      tag = f'{"cond" if method == "conditional" else "ddbm"}_{source}'
      d = run(a.workdir, tag, c)
      b, params = restored(c, d)
      cond = jax.tree.map(jnp.asarray, b.task.eval_cond(ev))
      x, nfe = sample(b, params, cond, n, key)
      adh = (edge_f1(x, ev['edges']) if source == 'edges'
             else mask_miou(x, ev['semantic_mask']))
      emit(dict(task=task_name, method=method, nfe=nfe,
                fid=fid(x, ref), adherence=adh, edit_success=None,
                preservation_psnr=None))

  # -- Editing: InstructPix2Pix (s_I x s_T grid) and DDBM.
  edit_rows(a, common, key, ref, floor, emit, finish)

  floor['wall_time_s'] = time.time() - t_start
  out = dict(rows=rows, floor=floor, settings=vars(a), complete=True)
  logging_lib.write_json(os.path.join(a.workdir, 'results.json'), out)
  print(table(rows, floor))
  plot(rows, os.path.join(a.workdir, 'control_editing.png'))
  return out


def edit_rows(a, common, key, ref, floor, emit, finish):
  """Trains (or reuses) DIR/ip2p and DIR/ddbm_edit and emits the IP2P
  s_I x s_T grid and the DDBM edit row; adds the edit floors (the identity
  edit, the real edit) to `floor`."""
  n = a.n_eval
  edit_test = image_cond.heldout_examples(
      load_config('ip2p_shapes', f'res={a.res}'), n)
  pair = (edit_test['image'], edit_test['edited_image'],
          edit_test['edit_mask'])
  scores = lambda x: edit_metrics(x, *pair)
  for name, x in (('identity', edit_test['image']),
                  ('real', edit_test['edited_image'])):
    for k, v in scores(x).items():
      floor[f'{k}_{name}'] = v
  c = finish(load_config('ip2p_shapes', ','.join(
      x for x in (common, a.ip2p) if x)))
  c.ckpt_every = min(c.total_steps, 2000)
  d = run(a.workdir, 'ip2p', c)
  with open(os.path.join(d, 'metrics.json')) as f:
    floor['ip2p_train_s'] = round(json.load(f)['train_wall_time_s'], 1)
  b, params = restored(c, d)
  cond = jax.tree.map(jnp.asarray, b.task.eval_cond(edit_test))
  for s_i in (1.0, 1.5, 2.0):
    for s_t in (1.0, 3.0, 5.0):
      x, nfe = sample(b, params, cond, n, key, guidance=s_t,
                      image_guidance=s_i)
      emit(dict(task='edit', method='ip2p', nfe=nfe, fid=fid(x, ref),
                adherence=None, **scores(x), s_I=s_i, s_T=s_t))
  c = finish(load_config('ddbm_shapes', f'{common},source=image,'
                         f'sampler_steps={a.ddbm_steps}'))
  b, params = restored(c, run(a.workdir, 'ddbm_edit', c))
  cond = jax.tree.map(jnp.asarray, b.task.eval_cond(edit_test))
  x, nfe = sample(b, params, cond, n, key)
  emit(dict(task='edit', method='ddbm', nfe=nfe, fid=fid(x, ref),
            adherence=None, **scores(x)))


def only_edit(a, common, key, finish):
  """--only=edit: the edit rows alone, merged into DIR/results.json."""
  path = os.path.join(a.workdir, 'results.json')
  old = dict(rows=[], floor={}, settings={})
  if os.path.exists(path):
    with open(path) as f:
      old = json.load(f)
  ref = image_cond.heldout_examples(
      config_lib_dict('shapes', a.res), a.n_ref)['image']
  rows, floor = [], dict(old['floor'])
  edit_rows(a, common, key, ref, floor,
            lambda r: (rows.append(r), print(r, flush=True)), finish)
  # The new edit rows take the place of the old ones.
  kept = [r for r in old['rows'] if r['task'] != 'edit']
  out = dict(old, rows=kept + rows, floor=floor, settings_edit=vars(a))
  out.setdefault('settings', vars(a))
  logging_lib.write_json(path, out)
  print(table(out['rows'], floor))
  plot(out['rows'], os.path.join(a.workdir, 'control_editing.png'))
  return out


def config_lib_dict(dataset: str, res: int):
  """A config-like object naming a dataset (for heldout_examples)."""
  c = config_lib.base_config()
  c.data = dict(name=dataset, resolution=res, batch_size=1)
  return c


def _fmt(v):
  if v is None:
    return '-'
  return f'{v:.3f}' if isinstance(v, float) else str(v)


def table(rows, floor) -> str:
  keys = ('task', 'method', 'nfe', 'fid', 'adherence', 'edit_success',
          'edit_success_objects', 'preservation_psnr', 'control_scale',
          'controls', 'mask_miou', 's_I', 's_T')
  lines = ['| ' + ' | '.join(keys) + ' |', '|' + '---|' * len(keys)]
  for r in rows:
    lines.append('| ' + ' | '.join(_fmt(r.get(k)) for k in keys) + ' |')
  lines.append('')
  lines += [f'- {k}: {_fmt(v)}' for k, v in floor.items()]
  return '\n'.join(lines)


def plot(rows, path):
  try:
    import matplotlib  # pylint: disable=g-import-not-at-top
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  except ImportError:
    return
  fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
  cn = [r for r in rows if r['method'] == 'controlnet'
        and r['task'] == 'edges2scene' and not r.get('controls')]
  axes[0].plot([r['control_scale'] for r in cn],
               [r['adherence'] for r in cn], 'o-')
  axes[0].set_xlabel('control_scale')
  axes[0].set_ylabel('edge F1 (adherence)')
  axes[0].set_title('ControlNet, edges')
  ip = [r for r in rows if r['method'] == 'ip2p']
  for s_i in sorted({r['s_I'] for r in ip}):
    rr = [r for r in ip if r['s_I'] == s_i]
    axes[1].plot([r['s_T'] for r in rr], [r['edit_success'] for r in rr],
                 'o-', label=f's_I={s_i}')
  axes[1].set_xlabel('s_T')
  axes[1].set_ylabel('edit success')
  axes[1].set_title('InstructPix2Pix')
  axes[1].legend()
  fig.tight_layout()
  fig.savefig(path, dpi=100)


if __name__ == '__main__':
  main(sys.argv[1:])
