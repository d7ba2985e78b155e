r"""Video generation, the video autoencoder, attention scaling, constant-memory
rollout and the world model, measured in one run (issue 13, item 8).

  python -m experiments.video --workdir=DIR
  python -m experiments.video --workdir=DIR --video_workdir=V \
      --ae_workdir=A --world_workdir=W        # reuse trained runs

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

Writes DIR/results.json (the issue's keys plus details), DIR/video.png and
prints a Markdown table.
"""

import argparse
import importlib.util
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from visgen import builder
from visgen import logging_lib
from visgen import media as media_lib
from visgen import train
from visgen.data import preprocess

ROOT = os.path.join(os.path.dirname(__file__), '..')


def load_config(name: str, arg: str | None):
  spec = importlib.util.spec_from_file_location(
      name, os.path.join(ROOT, 'configs', f'{name}.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg or None)


def run(workdir: str, name: str, config, given: str | None) -> str:
  """The run's workdir: `given` if set, else DIR/name (trained if new)."""
  if given:
    if not os.path.exists(os.path.join(given, 'config.json')):
      raise SystemExit(f'--{name}_workdir={given} holds no visgen run '
                       '(no config.json); train one or leave the flag out.')
    print(f'[{name}] reusing {given}', flush=True)
    return given
  d = os.path.join(workdir, name)
  if os.path.exists(os.path.join(d, 'metrics.json')):
    print(f'[{name}] reusing {d}', flush=True)
    return d
  t0 = time.time()
  train.train_and_evaluate(config, d)
  print(f'[{name}] trained in {time.time() - t0:.0f} s', flush=True)
  return d


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
  res = eval_lib.evaluate(wm, num=a.world_num, length=16, seed=a.seed)
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


def table(r: dict) -> str:
  ph = r.get('physics', {})
  lines = ['| measure | value | reference |', '|---|---:|---|',
           f"| FVD (video net) | {_f(r['fvd'])} | floor {_f(r['fvd_floor'])} |",
           f"| frame shapes-FID | {_f(r['frame_fid'])} | floor "
           f"{_f(r['video'].get('frame_fid_floor'))} |"]
  if ph:
    lines.append(
        f"| physics: position error after {r['video']['context']} given "
        f"frames (px) | {_f(ph.get('error_px'))} (lost "
        f"{_f(ph.get('lost_fraction'))}) | real clips (tracker floor) "
        f"{_f(ph.get('real_error_px'))}, static "
        f"{_f(ph.get('static_error_px'))}, constant velocity "
        f"{_f(ph.get('constant_velocity_error_px'))}, exact bounce "
        f"{_f(ph.get('bounce_error_px'))} |")
  lines += [f"| video AE per-frame PSNR (dB) | {_f(r['ae_psnr'])} | flicker "
            f"{_f(r['ae'].get('ae_flicker'))} |"]
  m = r['memory_gib_by_frames']
  lines.append(f"| rollout memory GiB 16 / 64 / 256 frames | "
               f"{_f(m['16'])} / {_f(m['64'])} / {_f(m['256'])} | ratio "
               f"256/16 = {m['256'] / m['16']:.2f} (bound <= 1.2) |")
  s = r['attention_slopes']
  lines.append(f"| attention time slope, linear / softmax | "
               f"{s['linear_time_slope']:.2f} / {s['softmax_time_slope']:.2f} | "
               f"memory {s['linear_memory_slope']:.2f} / "
               f"{s['softmax_memory_slope']:.2f} |")
  w = r['world']
  lines += [f"| world: action error (px) | {_f(w['action_error_px'])} | "
            f"random actions {_f(w['action_error_random_px'])}, static "
            f"{_f(w['action_error_static_px'])}, oracle "
            f"{_f(w['action_error_oracle_px'])} |",
            f"| world: drift, PSNR of a revisited place after {w['drift_k']} "
            f"steps away (dB) | {_f(w['drift'])} | unrelated views "
            f"{_f(w['drift_unrelated_psnr_db'])} |"]
  return '\n'.join(lines)


def plot(r: dict, path: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(1, 3, figsize=(15, 4.2))
  rows = r['attention_scaling']
  tok = [x['tokens'] for x in rows]
  for kind in ('linear', 'softmax'):
    ys = [x[f'{kind}_s'] for x in rows]
    ax[0].loglog([t for t, y in zip(tok, ys) if y], [y for y in ys if y],
                 'o-', label=f'{kind} attention')
  ax[0].set(xlabel='tokens', ylabel='fwd+bwd s (one block)',
            title='attention time against tokens')
  ax[0].legend()
  ro = r['rollout']['by_frames']
  fr = sorted(ro, key=int)
  x = [int(f) for f in fr]
  ax[1].plot(x, [ro[f]['rollout_gib'] for f in fr], 'o-',
             label='block rollout (program + state)')
  ax[1].plot(x, [ro[f]['full_sequence_gib'] for f in fr], 's--',
             label='full-sequence forward')
  ax[1].plot(x, [ro[f]['softmax_kv_cache_gib'] for f in fr], '^:',
             label='softmax KV cache')
  ax[1].set(xlabel='frames', ylabel='GiB', title='memory against length')
  ax[1].legend()
  ph = r.get('physics', {})
  curves = {k: v for k, v in ph.items()
            if k.endswith('by_frame_px') and v is not None}
  k0 = int(ph.get('context_frames', 0))
  for name, ys in curves.items():
    label = {'error_by_frame_px': 'generated',
             'real_by_frame_px': 'real clips (tracker floor)'}.get(
                 name, name[:-len('_by_frame_px')])
    ax[2].plot(range(k0, k0 + len(ys)), ys, 'o-', label=label)
  ax[2].set(xlabel='frame', ylabel='position error (px)',
            title='physics: continuation of given frames')
  if curves:
    ax[2].legend()
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main(argv=None):
  p = argparse.ArgumentParser(prog='python -m experiments.video')
  p.add_argument('--workdir', required=True)
  p.add_argument('--video_config', default='steps=2400,batch=16',
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
  p.add_argument('--world_num', type=int, default=16)
  p.add_argument('--tokens', default='256,512,1024,2048,4096,8192')
  p.add_argument('--max_run_gib', type=float, default=6.0)
  p.add_argument('--seed', type=int, default=0)
  a = p.parse_args(argv)
  os.makedirs(a.workdir, exist_ok=True)
  t_start = time.time()

  vdir = run(a.workdir, 'video', load_config('video_shapes', a.video_config),
             a.video_workdir)
  adir = run(a.workdir, 'video_ae',
             load_config('video_autoencoder', a.ae_config), a.ae_workdir)
  wdir = run(a.workdir, 'world', load_config('world_shapes', a.world_config),
             a.world_workdir)
  t_eval = time.time()
  v = video_part(a, vdir)
  media = v.pop('_media')
  v['context'] = a.context
  ae = ae_part(a, adir)
  world = world_part(a, wdir)
  rows, summary, ro = scaling_part(a)
  results = dict(
      fvd=v['fvd'], fvd_floor=v['fvd_floor'], frame_fid=v['frame_fid'],
      ae_psnr=ae['ae_psnr'], memory_gib_by_frames=ro['memory'],
      attention_scaling=rows,
      world={k: world[k] for k in ('action_error_px',
                                   'action_error_random_px', 'drift')},
      physics=v['physics'], video=v, ae=ae, world_details=world,
      attention_slopes=summary['slopes'],
      attention_crossover_tokens=summary['crossover_tokens'],
      rollout=ro['rollout'],
      workdirs=dict(video=vdir, video_ae=adir, world=wdir),
      settings=vars(a), eval_wall_time_s=time.time() - t_eval,
      wall_time_s=time.time() - t_start)
  logging_lib.write_json(os.path.join(a.workdir, 'results.json'), results)
  for name, clips in media.items():
    media_lib.write_gif(os.path.join(a.workdir, f'{name}.gif'),
                        media_lib.Media(clips, kind='video'))
  plot(results, os.path.join(a.workdir, 'video.png'))
  print(table(results))
  print(f"wrote {os.path.join(a.workdir, 'results.json')}")
  return results


if __name__ == '__main__':
  main()
