r"""Video generation, the video autoencoder, attention scaling, constant-memory
rollout and the world model, measured in one run (issue 13, item 8).

  python -m experiments.video --workdir=DIR
  python -m experiments.video --workdir=DIR --video_workdir=V \
      --ae_workdir=A --world_workdir=W        # reuse trained runs
  python -m experiments.video --workdir=DIR --parts=ae   # one part again

Parts (`--parts`, default all): video, ae, world, scaling; each part's
results are written to DIR/results.json as soon as it is measured, and an
invocation with fewer parts keeps the others' earlier results.

Trains what it needs under DIR (a run whose metrics.json exists is reused;
`--*_workdir` points at runs trained elsewhere):

  video     class-conditional block-causal linear-attention video DiT on
            `shapes_video` (configs/video_shapes.py, `--video_config` args)
  video_ae  causal 3-D convolutional video autoencoder
            (configs/video_autoencoder.py)
  world     action-conditioned world model on `shapes_world`
            (configs/world_shapes.py)

and measures:

* fvd / fvd_floor: Frechet distance on the project's video feature net
  (`visgen.evaluators.video_metrics`) between `--n` generated clips (rolled
  out block by block with the constant-size state, labels cycling through
  the classes) and `--n` real test clips; the floor is real test clips
  against real train clips of the same number.
* frame_fid (+ floor): all frames pooled as images through the `shapes`
  feature net.
* physics: the first `--context` frames of real test clips are given (the
  class is the clip's own), the model continues them; the oracle tracker
  follows each object and its position error against the exact bouncing
  trajectory is reported beside the tracker's error on the real clips, a
  static and a constant-velocity continuation.
* ae_psnr (+ first frame, flicker): the video autoencoder on held-out clips.
* memory_gib_by_frames: compiled peak of the rollout's per-block program
  plus its state at 16 / 64 / 256 frames (`experiments.attention_scaling`).
* attention_scaling: one attention block's forward + backward time and
  compiled memory against tokens, linear against softmax (same module).
* world: action error of the world model's rollouts (phase correlation)
  against the commanded actions and against random actions; drift = PSNR
  (dB) between a place and the model's view of it after moving away k steps
  and back (largest k), beside unrelated views.

Writes DIR/results.json (the issue's keys at the top level: fvd, fvd_floor,
frame_fid, ae_psnr, memory_gib_by_frames, attention_scaling, world; every
part's details under "parts"), DIR/video.png (attention time against
tokens, memory against length, physics error against frame) and
real.gif / generated.gif / continued.gif, and prints a Markdown table.
"""

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from visgen import builder
from visgen import logging_lib
from visgen import media as media_lib
from visgen.data import preprocess
from experiments import control_editing

def load_config(name: str, arg: str | None):
  return control_editing.load_config(name, arg or None)


def run(workdir: str, name: str, config, given: str | None) -> str:
  """The run's workdir: `given` if set, else DIR/name (trained if new)."""
  if not given:
    return control_editing.run(workdir, name, config)
  if not os.path.exists(os.path.join(given, 'config.json')):
    raise SystemExit(f'--{name}_workdir={given} holds no visgen run '
                     '(no config.json); train one or leave the flag out.')
  print(f'[{name}] reusing {given}', flush=True)
  return given


def restored(d: str):
  from visgen import config_loader  # pylint: disable=g-import-not-at-top
  config = config_loader.load_workdir(d)
  b, state, step = builder.restore(config, d)
  return config, b, builder.first_ema(state), step


def rollouts(task, params, labels, key, *, frames, context=None,
             batch=32) -> np.ndarray:
  """uint8 (N, frames, H, W, C) rolled out in batches of `batch`."""
  out = []
  for i in range(0, len(labels), batch):
    cond = {'label': jnp.asarray(labels[i:i + batch], jnp.int32)}
    ctx = None if context is None else context[i:i + batch]
    x = task.rollout(params, cond, jax.random.fold_in(key, i),
                     num_frames=frames,
                     guidance=dict(task.sampler_cfg).get('cfg_scale', 1.0),
                     context=ctx)
    out.append(preprocess.to_uint8(np.asarray(x)))
  return np.concatenate(out)


def video_part(a, vdir: str) -> dict:
  from visgen.evaluators import video_metrics as vm  # pylint: disable=g-import-not-at-top
  config, b, params, step = restored(vdir)
  task = b.task
  frames, res = int(task.x_shape[0]), int(task.x_shape[1])
  n = a.n
  real = vm.real_clips('test', n, resolution=res, num_frames=frames)
  classes = max(int(task.num_classes), 1)
  key = jax.random.key(a.seed)
  t0 = time.time()
  gen = rollouts(task, params, np.arange(n) % classes, key, frames=frames)
  t_gen = time.time() - t0
  out = dict(step=step, num_clips=n, frames=frames, resolution=res,
             generation_s=t_gen,
             fvd=vm.fvd(gen, real['video']),
             fvd_floor=vm.fvd_floor(n, resolution=res, num_frames=frames),
             frame_fid=vm.frame_fid(gen, real['video']))
  out['frame_fid_floor'] = vm.frame_fid_floor(n, resolution=res,
                                              num_frames=frames)
  # Physics: continue the real clips' first frames (their own labels).
  k = a.context
  ctx = preprocess.to_float(real['video'][:, :k])
  cont = rollouts(task, params, np.asarray(real['label']), key,
                  frames=frames, context=ctx)
  out['physics'] = vm.physics_error(cont, real['positions'],
                                    context_frames=k,
                                    objects=real['objects'],
                                    real_videos=real['video'])
  out['_media'] = dict(generated=gen[:16], continued=cont[:16],
                       real=real['video'][:16])
  return out


def ae_part(a, adir: str) -> dict:
  from visgen.evaluators import video_ae  # pylint: disable=g-import-not-at-top
  return video_ae.evaluate_workdir(adir, n=a.n)


def world_part(a, wdir: str) -> dict:
  from visgen import world as world_lib  # pylint: disable=g-import-not-at-top
  from visgen.evaluators import world_model as eval_lib  # pylint: disable=g-import-not-at-top
  wm = world_lib.WorldModel(wdir)
  res = eval_lib.evaluate(wm, num=a.world_num, length=16, seed=a.seed,
                          guidance=a.world_cfg)
  w = res['world']
  return dict(action_error_px=w['action_error_px'],
              action_error_random_px=w['action_error_random_px'],
              action_error_static_px=w['action_error_static_px'],
              action_error_oracle_px=w['action_error_oracle_px'],
              drift=w['drift']['psnr_db'][-1],
              drift_k=w['drift']['k'][-1],
              drift_psnr_db_by_k=dict(zip(map(str, w['drift']['k']),
                                          w['drift']['psnr_db'])),
              drift_unrelated_psnr_db=w['drift']['unrelated_psnr_db'],
              guidance=res['setup']['guidance'], step=wm.step)


def scaling_part(a) -> tuple[list, dict, dict]:
  from experiments import attention_scaling as sc  # pylint: disable=g-import-not-at-top
  rows = sc.attention_scaling([int(t) for t in a.tokens.split(',')],
                              max_run_gib=a.max_run_gib)
  ro = sc.rollout_memory([16, 64, 256])
  mem = {k: v['rollout_gib'] for k, v in ro['by_frames'].items()}
  return rows, sc.summarize(rows), dict(memory=mem, rollout=ro)


def _f(v, digits=3):
  return 'n/a' if v is None else f'{v:.{digits}g}'


def table(parts: dict) -> str:
  lines = ['| measure | value | reference |', '|---|---:|---|']
  v = parts.get('video')
  if v:
    ph = v['physics']
    lines += [
        f"| FVD (video net, {v['num_clips']} clips) | {_f(v['fvd'])} | "
        f"real-against-real floor {_f(v['fvd_floor'])} |",
        f"| frame shapes-FID | {_f(v['frame_fid'])} | floor "
        f"{_f(v['frame_fid_floor'])} |",
        f"| physics: position error after {v['context']} given frames (px) "
        f"| {_f(ph['error_px'])} (lost {_f(ph['lost_fraction'])}, tracked "
        f"{_f(ph['error_tracked_px'])}) | real clips (tracker floor) "
        f"{_f(ph.get('real_error_px'))}, static "
        f"{_f(ph['static_error_px'])}, constant velocity "
        f"{_f(ph['constant_velocity_error_px'])}, exact bounce "
        f"{_f(ph['bounce_error_px'])} |"]
  ae = parts.get('ae')
  if ae:
    lines.append(f"| video AE per-frame PSNR (dB) | {_f(ae['ae_psnr'])} | "
                 f"first frame {_f(ae.get('ae_psnr_first_frame'))}, flicker "
                 f"{_f(ae.get('ae_flicker'))} |")
  sc = parts.get('scaling')
  if sc:
    m = sc['memory_gib_by_frames']
    s = sc['slopes']
    lines += [
        f"| rollout memory GiB at 16 / 64 / 256 frames | {_f(m['16'])} / "
        f"{_f(m['64'])} / {_f(m['256'])} | 256 / 16 = "
        f"{m['256'] / m['16']:.2f} (bound <= 1.2) |",
        f"| attention time slope (N >= 1024), linear / softmax | "
        f"{_f(s['linear_time_slope'])} / {_f(s['softmax_time_slope'])} | "
        f"memory slopes {_f(s['linear_memory_slope'])} / "
        f"{_f(s['softmax_memory_slope'])} |"]
  w = parts.get('world')
  if w:
    lines += [
        f"| world: action error (px, CFG {_f(w['guidance'])}) | "
        f"{_f(w['action_error_px'])} | random actions "
        f"{_f(w['action_error_random_px'])}, static "
        f"{_f(w['action_error_static_px'])}, estimator floor "
        f"{_f(w['action_error_oracle_px'])} |",
        f"| world: drift, PSNR of a place revisited after {w['drift_k']} "
        f"steps away (dB) | {_f(w['drift'])} | unrelated views "
        f"{_f(w['drift_unrelated_psnr_db'])} |"]
  return '\n'.join(lines)


def plot(parts: dict, path: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(1, 3, figsize=(15, 4.2))
  sc = parts.get('scaling')
  if sc:
    rows = sc['attention_scaling']
    tok = [x['tokens'] for x in rows]
    for kind in ('linear', 'softmax'):
      ys = [x[f'{kind}_s'] for x in rows]
      ax[0].loglog([t for t, y in zip(tok, ys) if y], [y for y in ys if y],
                   'o-', label=f'{kind} attention')
    ax[0].legend()
    ro = sc['rollout']['by_frames']
    fr = sorted(ro, key=int)
    x = [int(f) for f in fr]
    ax[1].plot(x, [ro[f]['rollout_gib'] for f in fr], 'o-',
               label='block rollout (program + state)')
    ax[1].plot(x, [ro[f]['full_sequence_gib'] for f in fr], 's--',
               label='full-sequence forward')
    ax[1].plot(x, [ro[f]['softmax_kv_cache_gib'] for f in fr], '^:',
               label='softmax KV cache')
    ax[1].legend()
  ax[0].set(xlabel='tokens', ylabel='fwd+bwd s (one block)',
            title='attention time against tokens')
  ax[1].set(xlabel='frames', ylabel='GiB', title='memory against length')
  v = parts.get('video')
  if v:
    ph = v['physics']
    k0 = int(ph['context_frames'])
    names = {'error_by_frame_px': 'generated',
             'real_by_frame_px': 'real clips (tracker floor)',
             'static_by_frame_px': 'static',
             'constant_velocity_by_frame_px': 'constant velocity',
             'bounce_by_frame_px': 'exact bounce'}
    for key, label in names.items():
      ys = ph.get(key)
      if ys:
        ax[2].plot(range(k0, k0 + len(ys)), ys, 'o-', label=label)
    ax[2].legend(fontsize=8)
  ax[2].set(xlabel='frame', ylabel='position error (px)',
            title='physics: continuing given frames')
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


PARTS = ('video', 'ae', 'world', 'scaling')


def assemble(parts: dict) -> dict:
  """The issue's top-level keys from the parts measured so far."""
  out = {}
  v, ae, w, sc = (parts.get(k) for k in PARTS)
  if v:
    out.update(fvd=v['fvd'], fvd_floor=v['fvd_floor'],
               frame_fid=v['frame_fid'], physics=v['physics'])
  if ae:
    out['ae_psnr'] = ae['ae_psnr']
  if sc:
    out.update(memory_gib_by_frames=sc['memory_gib_by_frames'],
               attention_scaling=sc['attention_scaling'])
  if w:
    out['world'] = {k: w[k] for k in ('action_error_px',
                                      'action_error_random_px', 'drift')}
  return out


def main(argv=None):
  p = argparse.ArgumentParser(prog='python -m experiments.video')
  p.add_argument('--workdir', required=True)
  p.add_argument('--parts', default=','.join(PARTS),
                 help='comma-separated subset of ' + ', '.join(PARTS) +
                 '; results of earlier invocations in DIR/results.json are '
                 'kept')
  p.add_argument('--video_config', default='',
                 help='arguments of configs/video_shapes.py')
  p.add_argument('--ae_config', default='',
                 help='arguments of configs/video_autoencoder.py')
  p.add_argument('--world_config', default='',
                 help='arguments of configs/world_shapes.py')
  p.add_argument('--video_workdir', default=None)
  p.add_argument('--ae_workdir', default=None)
  p.add_argument('--world_workdir', default=None)
  p.add_argument('--n', type=int, default=256, help='clips per FVD set')
  p.add_argument('--context', type=int, default=2,
                 help='given frames of the physics check')
  p.add_argument('--world_num', type=int, default=32)
  p.add_argument('--world_cfg', type=float, default=8.0)
  p.add_argument('--tokens', default='256,512,1024,2048,4096,8192')
  p.add_argument('--max_run_gib', type=float, default=6.0)
  p.add_argument('--seed', type=int, default=0)
  a = p.parse_args(argv)
  todo = [x for x in a.parts.split(',') if x]
  bad = set(todo) - set(PARTS)
  if bad:
    p.error(f'unknown parts {sorted(bad)}; valid: {", ".join(PARTS)}')
  os.makedirs(a.workdir, exist_ok=True)
  path = os.path.join(a.workdir, 'results.json')
  previous = {}
  if os.path.exists(path):
    with open(path) as f:
      previous = json.load(f)
  parts = dict(previous.get('parts', {}))
  settings = dict(previous.get('settings', {}))
  t_start = time.time()
  media = {}
  for part in todo:
    t0 = time.time()
    if part == 'video':
      d = run(a.workdir, 'video',
              load_config('video_shapes', a.video_config), a.video_workdir)
      r = video_part(a, d)
      media = r.pop('_media')
      r['context'] = a.context
    elif part == 'ae':
      d = run(a.workdir, 'video_ae',
              load_config('video_autoencoder', a.ae_config), a.ae_workdir)
      r = ae_part(a, d)
    elif part == 'world':
      d = run(a.workdir, 'world',
              load_config('world_shapes', a.world_config), a.world_workdir)
      r = world_part(a, d)
    else:
      d = None
      rows, summary, ro = scaling_part(a)
      r = dict(attention_scaling=rows, slopes=summary['slopes'],
               crossover_tokens=summary['crossover_tokens'],
               memory_gib_by_frames=ro['memory'], rollout=ro['rollout'])
    r.update(workdir=d, wall_s=time.time() - t0)
    parts[part] = r
    settings[part] = vars(a)
    results = dict(assemble(parts), parts=parts, settings=settings)
    logging_lib.write_json(path, results)  # After every part.
    print(f'[{part}] measured in {time.time() - t0:.0f} s', flush=True)
  for name, clips in media.items():
    media_lib.write_gif(os.path.join(a.workdir, f'{name}.gif'),
                        media_lib.Media(clips, kind='video'))
  results = dict(assemble(parts), parts=parts, settings=settings,
                 wall_time_s=time.time() - t_start)
  logging_lib.write_json(path, results)
  plot(parts, os.path.join(a.workdir, 'video.png'))
  print(table(parts))
  print(f'wrote {path}')
  return results


if __name__ == '__main__':
  main()
