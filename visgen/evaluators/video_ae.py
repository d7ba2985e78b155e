"""Video autoencoder metrics: per-frame PSNR and temporal flicker (numpy),
and the evaluation of a trained `video_autoencoder` workdir.

Inputs `x` (the clips) and `rec` (their reconstructions) are videos
(N, T, H, W, C), each either uint8 (0..255) or float in [-1, 1]; both are
mapped to [0, 1] (`to_unit`) before anything is measured, so uint8 and float
inputs of the same pixels give the same numbers.

  psnr_per_frame(x, rec) -> (N, T)   10 log10(1 / MSE) of every frame (dB),
                                     MSE over (H, W, C) in [0, 1] units
  flicker(x, rec)        -> dict     the temporal-flicker numbers below

Temporal flicker. With e_t = rec_t - x_t the error of frame t and D the
temporal difference (D a_t = a_{t+1} - a_t), over clips, t = 0 .. T-2 and
pixels:

  flicker        = mean |D rec_t - D x_t| = mean |e_{t+1} - e_t|
                   (pixel units of [0, 1]; 0 for rec = x + c, any static
                   error c, however large: only temporal changes of the
                   error count; what the eye sees as flicker)
  flicker_ratio  = mean |e_{t+1} - e_t| / mean (|e_{t+1}| + |e_t|)  in [0, 1]
                   (triangle inequality): 0 = the error is static, 1 = it
                   flips sign between every two frames everywhere; errors
                   independent across frames (an image autoencoder run per
                   frame, roughly) give 1/sqrt(2) = 0.707 for Gaussian errors
                   — the baseline the ratio is read against
  flicker_motion = flicker / mean |D x_t|: flicker relative to the real
                   motion of the clips (how much of the true frame-to-frame
                   change is misreproduced)
  flicker_per_step[t] = the flicker of the pair (t, t+1) alone (t = 0 is the
                   seam between the separately encoded first frame and the
                   rest)

Ratios are ratios of means over the whole set (not means of per-clip
ratios). `video_metrics` returns all of them plus the PSNRs: the mean over
clips and frames, frame 0 alone (`psnr_first_frame`: the causal encoder
encodes it alone), frames 1.. (`psnr_later_frames`) and per frame index.

`evaluate_workdir(workdir, n=256)` restores a trained run (its EMA params)
and measures its reconstructions of the first n held-out clips:

  from visgen.evaluators import video_ae
  m = video_ae.evaluate_workdir('/tmp/vae', n=256)
  m['ae_psnr'], m['ae_psnr_first_frame'], m['ae_flicker'], ...
"""

from typing import Any

import numpy as np

from visgen import validate

PREFIX = 'ae_'


def to_unit(v) -> np.ndarray:
  """uint8 0..255 or float [-1, 1] -> float64 in [0, 1]."""
  a = np.asarray(v)
  if a.dtype == np.uint8:
    return a.astype(np.float64) / 255.0
  if not np.issubdtype(a.dtype, np.floating):
    raise validate.UserError(f'video metrics take uint8 or float [-1, 1] '
                             f'videos, got dtype {a.dtype}.')
  return (a.astype(np.float64) + 1.0) / 2.0


def _pair(x, rec) -> tuple[np.ndarray, np.ndarray]:
  x, rec = to_unit(x), to_unit(rec)
  if x.shape != rec.shape or x.ndim != 5:
    raise validate.UserError(
        f'video metrics need x and rec of the same shape (N, T, H, W, C); '
        f'got {x.shape} and {rec.shape}.')
  return x, rec


def psnr_per_frame(x, rec) -> np.ndarray:
  """(N, T) PSNR in dB of every frame, pixels in [0, 1] (peak 1); an exact
  frame is capped at 100 dB (MSE floored at 1e-10)."""
  x, rec = _pair(x, rec)
  mse = np.mean(np.square(rec - x), axis=(2, 3, 4))
  return 10.0 * np.log10(1.0 / np.maximum(mse, 1e-10))


def flicker_terms(x, rec) -> dict[str, np.ndarray]:
  """Per clip and step (N, T-1): mean over pixels of |e_{t+1} - e_t|
  ('tde'), of |e_{t+1}| + |e_t| ('bound') and of |x_{t+1} - x_t|
  ('motion'). Needs T >= 2."""
  x, rec = _pair(x, rec)
  if x.shape[1] < 2:
    raise validate.UserError('flicker needs clips of at least 2 frames, got '
                             f'T={x.shape[1]}.')
  e = rec - x
  mean = lambda a: np.mean(a, axis=(2, 3, 4))
  return dict(tde=mean(np.abs(np.diff(e, axis=1))),
              bound=mean(np.abs(e[:, 1:]) + np.abs(e[:, :-1])),
              motion=mean(np.abs(np.diff(x, axis=1))))


def _flicker_summary(terms: dict[str, np.ndarray]) -> dict[str, Any]:
  tde = float(np.mean(terms['tde']))
  bound, motion = float(np.mean(terms['bound'])), float(
      np.mean(terms['motion']))
  return dict(flicker=tde,
              flicker_ratio=tde / bound if bound > 0 else 0.0,
              flicker_motion=tde / motion if motion > 0 else float('nan'),
              flicker_per_step=np.mean(terms['tde'], axis=0).tolist())


def flicker(x, rec) -> dict[str, Any]:
  """flicker, flicker_ratio, flicker_motion, flicker_per_step (module
  docstring) of reconstructions `rec` of clips `x`."""
  return _flicker_summary(flicker_terms(x, rec))


def _psnr_summary(p: np.ndarray) -> dict[str, Any]:
  return dict(psnr=float(np.mean(p)), psnr_first_frame=float(np.mean(p[:, 0])),
              psnr_later_frames=(float(np.mean(p[:, 1:])) if p.shape[1] > 1
                                 else float('nan')),
              psnr_per_frame=np.mean(p, axis=0).tolist())


def video_metrics(x, rec, *, prefix: str = PREFIX) -> dict[str, Any]:
  """PSNRs (mean, first frame, later frames, per frame index) and the
  flicker numbers, keys prefixed (`ae_psnr`, `ae_flicker`, ...)."""
  out = dict(_psnr_summary(psnr_per_frame(x, rec)), clips=int(len(x)))
  if np.shape(x)[1] > 1:
    out.update(flicker(x, rec))
  return {prefix + k: v for k, v in out.items()}


# ----------------------------------------------------------------------------
# Trained runs.
# ----------------------------------------------------------------------------


def reconstructions(b, params, *, split: str = 'test', num: int = 256,
                    batch: int = 64) -> tuple[np.ndarray, np.ndarray]:
  """(clips, reconstructions), uint8 (n, T, H, W, C), of the first
  `num // batch * batch` clips of `split` by a built video autoencoder run
  `b` (`visgen.builder.Built`) with `params` (posterior means, decoded)."""
  import jax  # pylint: disable=g-import-not-at-top
  from visgen import builder  # pylint: disable=g-import-not-at-top
  from visgen.data import preprocess  # pylint: disable=g-import-not-at-top

  task = b.task
  if getattr(task, 'data_key', None) != 'video':
    raise validate.UserError(
        f'Task {b.config.task.name!r} does not reconstruct videos; video '
        'reconstruction metrics need a video_autoencoder run.')
  fn = jax.jit(task.reconstruct)
  reals, recs = [], []
  for bt in builder.heldout_batches(b, split, batch=min(batch, num),
                                    num=num):
    reals.append(np.asarray(bt['video']))
    recs.append(preprocess.to_uint8(np.asarray(fn(params, bt['video']))))
  return np.concatenate(reals), np.concatenate(recs)


def evaluate(b, params, *, split: str = 'test', num: int = 256,
             batch: int = 64, prefix: str = PREFIX) -> dict[str, Any]:
  """`video_metrics` of a built run's reconstructions (uint8-quantised,
  as the image autoencoder's PSNR) of held-out clips."""
  x, rec = reconstructions(b, params, split=split, num=num, batch=batch)
  return video_metrics(x, rec, prefix=prefix)


def load_workdir(workdir: str, *, weights: str = 'ema'):
  """(built run, params, step) of a trained video_autoencoder workdir."""
  from visgen import builder  # pylint: disable=g-import-not-at-top
  from visgen import config_loader  # pylint: disable=g-import-not-at-top

  workdir = validate.resolve_workdir(workdir, create=False)
  try:
    config = config_loader.load_workdir(workdir)
  except (FileNotFoundError, ValueError) as e:
    raise validate.UserError(str(e)) from e
  name = config.task.get('name')
  if name != 'video_autoencoder':
    raise validate.UserError(
        f'{workdir} is a {name!r} run, not a video autoencoder. Fix: train '
        'one with python -m visgen.main --config=configs/video_autoencoder.py'
        ' --workdir=DIR and pass that DIR.')
  b, state, step = builder.restore(config, workdir)
  params = builder.first_ema(state) if weights == 'ema' else state['params']
  return b, params, step


def evaluate_workdir(workdir: str, n: int = 256, *, split: str = 'test',
                     batch: int = 64, weights: str = 'ema'
                     ) -> dict[str, Any]:
  """ae_psnr, ae_psnr_first_frame, ae_psnr_later_frames,
  ae_psnr_per_frame, ae_flicker, ae_flicker_ratio, ae_flicker_motion,
  ae_flicker_per_step, ae_clips and ae_step of the trained video
  autoencoder in `workdir` on the first n clips of `split` (n rounded down
  to a multiple of `batch` when larger than it)."""
  b, params, step = load_workdir(workdir, weights=weights)
  out = evaluate(b, params, split=split, num=n, batch=batch)
  out[PREFIX + 'step'] = int(step)
  return out
