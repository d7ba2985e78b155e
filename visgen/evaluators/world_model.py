"""Evaluation of an action-conditioned world model against the exact world.

`evaluate(wm)` (wm: `visgen.world.WorldModel`) starts in each of `num` test
worlds with the camera at the map centre, commits the context block (real
frames) and rolls out `length` frames (one batched `WorldSession`):

  action_error_px         mean |shift(generated j -> j+1) - commanded(A_j)|
                          over all pairs, shifts by phase correlation
                          (`world_metrics.estimate_shift`), A random actions
                          (persistence 0.5) that keep the camera inside the
                          map, so the commanded shift is the true one;
  action_error_random_px  the same generated frames against other random
                          actions B (independent of A): the error of a
                          model that moves but ignores its actions;
  action_error_static_px  the error of frames that never move (|commanded|);
  action_error_null_px    a rollout with every action null (the
                          unconditional model) measured against A;
  action_error_oracle_px  the ground-truth frames under A (the estimator's
                          own error; 0 when it is exact);
  denoiser_x0_mse         teacher-forced one-step x0 error at t = 0.9 under
                          the true, null and other actions (does the network
                          read its actions at all?), and of copying the
                          previous frame;
  action_error_by_step_px the model's error per rollout step (frames far
                          past the 8 trained positions included);
  frame_psnr_db           PSNR of generated against ground-truth frames per
                          step (new content entering the view cannot be
                          predicted: only the part carried over can match);
  drift                   right k then left k (k in `ks`): the frame after
                          returning against the original frame (MSE in
                          [0, 1] pixels, PSNR), beside the PSNR between
                          unrelated views (different worlds: no memory) and
                          the ground truth (MSE exactly 0).

`write_results(folder, res)` writes results.json, results.md,
world_eval.png and world_rollout.gif (ground truth | generated).
"""

import os

import numpy as np

from visgen import logging_lib
from visgen import media as media_lib
from visgen.data import preprocess
from visgen.evaluators import world_metrics as wm_lib


def _psnr_of_mse(m: float) -> float:
  return float('inf') if m <= 0 else float(10 * np.log10(1.0 / m))


def _mse(a, b) -> float:
  return float(np.mean((a.astype(np.float64) / 255.0
                        - b.astype(np.float64) / 255.0) ** 2))


def _truth(world, camera, actions):
  out, cam = [world.view(camera)], np.asarray(camera)
  for a in actions:
    cam = world.step(cam, int(a))
    out.append(world.view(cam))
  return np.stack(out), cam


def denoiser_x0_mse(task, params, truth, acts_a, acts_b, *, t: float = 0.9,
                    seed: int = 0) -> dict:
  """One-step check that the network reads its actions: the x0 error
  (pixels in [-1, 1]) of its prediction at noise level t on true clips of
  the trained length (every block at t, teacher-forced context frames),
  given the true actions A, the null action, other actions B, beside
  copying the previous frame. Mean over frames 1..T-1.

  truth (n, T, H, W, C) uint8 paths from frame 0; acts_a their actions
  (n, T - 1); acts_b other actions of the same shape.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  f = task.block_frames
  n_t = min(task.x_shape[0], truth.shape[1]) // f * f
  x0 = jnp.asarray(preprocess.to_float(truth[:, :n_t]))
  eps = jax.random.normal(jax.random.key(seed), x0.shape)
  x_t = (1.0 - t) * x0 + t * eps
  tb = jnp.full((x0.shape[0], n_t // task.block_frames), t)
  prev = task.prev_frames(x0)
  out = {'t': t}
  for name, acts in (('actions', acts_a), ('null', None),
                     ('other_actions', acts_b)):
    a = jnp.full(x0.shape[:2], task.null_action, jnp.int32)
    if acts is not None:  # The null action before frame 0.
      a = a.at[:, 1:].set(jnp.asarray(acts[:, :n_t - 1], jnp.int32))
    cond = {'actions': a}
    if task.prev_frame:
      cond['prev_frames'] = prev
    v = task.apply(params, x_t, tb, cond)
    out[name] = float(jnp.mean((x_t - t * v - x0)[:, 1:] ** 2))
  out['copy_previous'] = float(jnp.mean((x0[:, :-1] - x0[:, 1:]) ** 2))
  return out


def evaluate(wm, *, num: int = 16, length: int = 16, seed: int = 0,
             guidance=None, steps=None, ks=(1, 2, 4)) -> dict:
  """The metrics of the module docstring for the world model `wm`."""
  task = wm.task
  source = wm.test_source()
  num = min(num, len(source))
  worlds = [source.world(i) for i in range(num)]
  f, res = task.block_frames, wm.resolution
  step_px = worlds[0].step_px
  hi = worlds[0].size - res
  centre = np.asarray([hi // 2, hi // 2], np.int32)
  rng = np.random.default_rng(seed)

  ctx, ctx_acts, cams, acts_a, acts_b, truth = [], [], [], [], [], []
  for w in worlds:
    path = wm_lib.in_bounds_actions(w, centre, f - 1 + length, rng)
    frames, _ = _truth(w, centre, path)
    cam = centre
    for a in path[:f - 1]:
      cam = w.step(cam, int(a))
    ctx.append(frames[:f])
    ctx_acts.append(np.concatenate([[task.null_action], path[:f - 1]]))
    cams.append(cam)
    acts_a.append(path[f - 1:])
    acts_b.append(wm_lib.in_bounds_actions(w, cam, length, rng))
    truth.append(frames)
  ctx, ctx_acts = np.stack(ctx), np.stack(ctx_acts).astype(np.int32)
  acts_a, acts_b, truth = np.stack(acts_a), np.stack(acts_b), np.stack(truth)

  def rollout(actions):
    s = wm.session(ctx, ctx_acts, seed=seed, guidance=guidance, steps=steps)
    return preprocess.to_uint8(s.act(actions))

  gen = rollout(acts_a)                                  # (num, length, ...)
  frames = np.concatenate([ctx[:, -1:], gen], axis=1)
  err = lambda fr, ac: np.mean([wm_lib.action_errors(fr[i], ac[i], step_px)
                                for i in range(num)])
  gen_null = rollout(np.full_like(acts_a, task.null_action))
  frames_null = np.concatenate([ctx[:, -1:], gen_null], axis=1)
  static = np.mean([np.linalg.norm(wm_lib.commanded_shift(a, step_px))
                    for a in acts_a.ravel()])
  psnr_steps = [_psnr_of_mse(np.mean([_mse(gen[i, j], truth[i, f + j])
                                      for i in range(num)]))
                for j in range(length)]

  drift = {'k': [], 'mse': [], 'psnr_db': [], 'truth_mse': []}
  for k in ks:
    if centre[0] + k * step_px > hi:
      continue
    path = np.asarray([4] * k + [3] * k, np.int32)
    back = rollout(np.broadcast_to(path, (num, 2 * k)))[:, -1]
    m = float(np.mean([_mse(back[i], ctx[i, -1]) for i in range(num)]))
    t_mse = float(np.mean([
        _mse(_truth(worlds[i], cams[i], path)[0][-1], ctx[i, -1])
        for i in range(num)]))
    drift['k'].append(int(k))
    drift['mse'].append(m)
    drift['psnr_db'].append(_psnr_of_mse(m))
    drift['truth_mse'].append(t_mse)
  unrelated = float(np.mean([_mse(ctx[i, -1], ctx[(i + 1) % num, -1])
                             for i in range(num)])) if num > 1 else 0.0
  drift['unrelated_mse'] = unrelated
  drift['unrelated_psnr_db'] = _psnr_of_mse(unrelated)

  paths = np.concatenate([ctx_acts[:, 1:], acts_a], axis=1)
  other = rng.integers(0, 5, size=paths.shape).astype(np.int32)
  denoiser = denoiser_x0_mse(task, wm.params, truth, paths, other,
                             seed=seed)
  by_step = np.stack([wm_lib.action_errors(frames[i], acts_a[i], step_px)
                      for i in range(num)]).mean(0)
  out = {
      'world': {
          'action_error_px': float(by_step.mean()),
          'action_error_by_step_px': [float(e) for e in by_step],
          'action_error_random_px': float(err(frames, acts_b)),
          'action_error_static_px': float(static),
          'action_error_null_px': float(err(frames_null, acts_a)),
          'action_error_oracle_px': float(err(truth[:, f - 1:], acts_a)),
          'frame_psnr_db': psnr_steps,
          'denoiser_x0_mse': denoiser,
          'drift': drift,
      },
      'setup': {
          'workdir': wm.workdir, 'step': int(wm.step), 'worlds': int(num),
          'length': int(length), 'seed': int(seed),
          'resolution': int(res), 'step_px': int(step_px),
          'block_frames': int(f),
          'guidance': float(wm.session_guidance(guidance)),
          'sampler_steps': int(steps or dict(task.sampler_cfg)['steps']),
      },
      '_media': {'truth': truth, 'generated': np.concatenate([ctx, gen], 1)},
  }
  return out


def summary(res: dict) -> dict:
  """The headline numbers of one evaluation (a guidance sweep's row)."""
  w = res['world']
  return {'cfg': res['setup']['guidance'],
          'action_error_px': w['action_error_px'],
          'action_error_random_px': w['action_error_random_px'],
          'action_error_static_px': w['action_error_static_px'],
          'drift_psnr_db': w['drift']['psnr_db'],
          'frame_psnr_db_mean': float(np.mean(w['frame_psnr_db']))}


def markdown_table(res: dict) -> str:
  w = res['world']
  rows = [
      '| rollout | action error (px) |', '|---|---:|',
      f'| world model, commanded actions A | {w["action_error_px"]:.2f} |',
      f'| same frames vs random actions B | '
      f'{w["action_error_random_px"]:.2f} |',
      f'| frames that never move | {w["action_error_static_px"]:.2f} |',
      f'| world model, null actions (vs A) | '
      f'{w["action_error_null_px"]:.2f} |',
      f'| ground truth under A (estimator) | '
      f'{w["action_error_oracle_px"]:.2f} |',
      '', '| drift: right k, left k | MSE | PSNR dB | truth MSE |',
      '|---:|---:|---:|---:|']
  d = w['drift']
  for k, m, p, t in zip(d['k'], d['mse'], d['psnr_db'], d['truth_mse']):
    rows.append(f'| k = {k} | {m:.4f} | {p:.1f} | {t:.4f} |')
  rows.append(f'| unrelated views | {d["unrelated_mse"]:.4f} | '
              f'{d["unrelated_psnr_db"]:.1f} | |')
  if res.get('cfg_sweep'):
    ks = ', '.join(str(k) for k in d['k'])
    rows += ['', f'| CFG on actions | action error (px) | vs random B | '
             f'drift PSNR dB (k = {ks}) | mean frame PSNR dB |',
             '|---:|---:|---:|---|---:|']
    for r in res['cfg_sweep']:
      rows.append(f'| {r["cfg"]:g} | {r["action_error_px"]:.2f} | '
                  f'{r["action_error_random_px"]:.2f} | '
                  + ' / '.join(f'{p:.1f}' for p in r['drift_psnr_db'])
                  + f' | {r["frame_psnr_db_mean"]:.1f} |')
  x = w.get('denoiser_x0_mse')
  if x:
    rows += ['', f'| one-step x0 MSE at t = {x["t"]} (true clips) | MSE |',
             '|---|---:|',
             f'| true actions | {x["actions"]:.4f} |',
             f'| null actions | {x["null"]:.4f} |',
             f'| other actions B | {x["other_actions"]:.4f} |',
             f'| copy the previous frame | {x["copy_previous"]:.4f} |']
  return '\n'.join(rows)


def write_results(folder: str, res: dict) -> list[str]:
  """results.json, results.md, world_eval.png, world_rollout.gif."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  os.makedirs(folder, exist_ok=True)
  media = res.get('_media')
  body = {k: v for k, v in res.items() if k != '_media'}
  files = [os.path.join(folder, 'results.json'),
           os.path.join(folder, 'results.md'),
           os.path.join(folder, 'world_eval.png')]
  logging_lib.write_json(files[0], body)
  logging_lib.write_text(files[1], markdown_table(res) + '\n')

  w = res['world']
  sweep = res.get('cfg_sweep') or []
  fig, axes = plt.subplots(1, 3 if sweep else 2,
                           figsize=(15 if sweep else 10, 3.8))
  ax1, ax2 = axes[:2]
  names = ['model (A)', 'vs random B', 'static', 'null actions', 'truth']
  vals = [w['action_error_px'], w['action_error_random_px'],
          w['action_error_static_px'], w['action_error_null_px'],
          w['action_error_oracle_px']]
  ax1.bar(names, vals, color=['C0', 'C1', 'C7', 'C2', 'C3'])
  ax1.set_ylabel('shift error (px)')
  ax1.set_title('action following (phase correlation)')
  ax1.tick_params(axis='x', labelrotation=20)
  d = w['drift']
  ax2.plot(d['k'], d['psnr_db'], 'o-', label='world model')
  ax2.axhline(d['unrelated_psnr_db'], color='C7', ls='--',
              label='unrelated views')
  ax2.set_xticks(d['k'])
  ax2.set_xlabel('k (right k, then left k)')
  ax2.set_ylabel('PSNR of revisited frame (dB)')
  ax2.set_title('drift on return')
  ax2.legend()
  if sweep:
    ax3 = axes[2]
    g = [r['cfg'] for r in sweep]
    ax3.plot(g, [r['action_error_px'] for r in sweep], 'o-',
             label='commanded actions A')
    ax3.plot(g, [r['action_error_random_px'] for r in sweep], 's--',
             label='random actions B')
    ax3.axhline(sweep[0]['action_error_static_px'], color='C7', ls=':',
                label='never moves')
    ax3.set_xscale('log')
    ax3.set_xlabel('CFG scale on the actions')
    ax3.set_ylabel('shift error (px)')
    ax3.set_title('action following vs guidance')
    ax3.legend()
  fig.tight_layout()
  with logging_lib.atomic_output(files[2]) as tmp:
    fig.savefig(tmp, format='png', dpi=100)
  plt.close(fig)

  if media is not None:
    k = min(4, len(media['truth']))
    panels = np.concatenate([
        media['truth'][:k],
        np.full(media['truth'][:k].shape[:3] + (1, 3), 128, np.uint8),
        media['generated'][:k]], axis=3)
    files.append(media_lib.write_gif(
        os.path.join(folder, 'world_rollout.gif'),
        media_lib.Media(panels, kind='video'), fps=4.0,
        upscale=max(1, 96 // panels.shape[2])))
  return files
