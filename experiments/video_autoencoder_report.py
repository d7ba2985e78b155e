r"""The report of trained causal video autoencoders
(`configs/video_autoencoder.py`).

  python -m experiments.video_autoencoder_report \
      --out=experiments/results/video \
      shapes_video=/tmp/vae_sv moving_digits=/tmp/vae_md \
      [--load='shapes_video=7.2 (uptime 1-min, 2 cores)' ...]

For each NAME=WORKDIR: the run's metrics.json (per-frame PSNR and flicker of
256 test clips, written by the run's 'video_reconstruction' evaluation;
definitions in `visgen/evaluators/video_ae.py`), its parameter count,
latent shape and wall clock, and, re-measured here on the same clips
through `video_ae.evaluate_workdir` (the call other code makes), the same
numbers. Writes OUT/video_autoencoder.json and OUT/video_autoencoder.png:
input | reconstruction frames of two test clips per run, and PSNR per frame
index (frame 0 is encoded alone).
"""

import argparse
import json
import os

import jax
import numpy as np

from visgen.evaluators import video_ae

KEYS = ('ae_psnr', 'ae_psnr_first_frame', 'ae_psnr_later_frames',
        'ae_psnr_per_frame', 'ae_flicker', 'ae_flicker_ratio',
        'ae_flicker_motion', 'ae_flicker_per_step', 'ae_clips')


def report(name: str, workdir: str, load: str | None) -> tuple[dict, tuple]:
  with open(os.path.join(workdir, 'metrics.json')) as f:
    m = json.load(f)
  b, params, step = video_ae.load_workdir(workdir)
  x, rec = video_ae.reconstructions(b, params, num=256, batch=64)
  again = video_ae.video_metrics(x, rec)
  cfg = b.config
  n_params = int(sum(np.size(v) for v in jax.tree.leaves(
      b.abstract_params)))
  t, h, w, c = cfg.task.x_shape
  s = 2 ** sum(cfg.model.temporal_downsample)
  f = 2 ** (len(cfg.model.ch_mult) - 1)
  row = dict(
      name=name, workdir=workdir, dataset=cfg.data.name, steps=int(step),
      batch=int(cfg.data.batch_size), clip_shape=[t, h, w, c],
      latent_shape=[1 + (t - 1) // s, h // f, w // f,
                    int(cfg.model.z_channels)],
      spatial_factor=f, temporal_factor=s, params=n_params,
      train_wall_time_s=m.get('train_wall_time_s'),
      wall_time_s=m.get('wall_time_s'), load=load,
      **{k: m[k] for k in KEYS},
      latent_scale_factor=m.get('latent_scale_factor'),
      reevaluated={k: again[k] for k in ('ae_psnr', 'ae_psnr_first_frame',
                                         'ae_flicker', 'ae_flicker_ratio')})
  return row, (x[:2], rec[:2])


def figure(rows, clips, path):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  n = len(rows)
  fig = plt.figure(figsize=(12, 2.6 * n + 2.6))
  grid = fig.add_gridspec(n + 1, 1, height_ratios=[1.0] * n + [1.1])
  for i, (r, (x, rec)) in enumerate(zip(rows, clips)):
    ax = fig.add_subplot(grid[i])
    t, h, w, c = x.shape[1:]
    tiles = []
    for k in range(len(x)):
      for v in (x[k], rec[k]):
        row = np.concatenate([np.pad(fr, ((1, 1), (1, 1), (0, 0)),
                                     constant_values=128) for fr in v], 1)
        tiles.append(row)
    img = np.concatenate(tiles, 0)
    ax.imshow(img[..., 0] if c == 1 else img, cmap='gray', vmin=0,
              vmax=255, interpolation='nearest')
    ax.set_xticks([(w + 2) * (j + 0.5) for j in range(t)])
    ax.set_xticklabels([f't={j}' for j in range(t)])
    ax.set_yticks([(h + 2) * (j + 0.5) for j in range(2 * len(x))])
    ax.set_yticklabels(['input', 'recon.'] * len(x))
    ax.set_title(f"{r['name']}: {r['clip_shape']} -> latent "
                 f"{r['latent_shape']}, PSNR {r['ae_psnr']:.1f} dB, "
                 f"flicker {r['ae_flicker']:.4f} (ratio "
                 f"{r['ae_flicker_ratio']:.2f})", fontsize=9)
  ax = fig.add_subplot(grid[n])
  for r in rows:
    ax.plot(r['ae_psnr_per_frame'], 'o-', label=r['name'])
  ax.set_xlabel('frame index (frame 0 encoded alone; latent frame j covers '
                'frames 4j-3..4j)')
  ax.set_ylabel('PSNR (dB), 256 test clips')
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--out', default='experiments/results/video')
  p.add_argument('--load', action='append', default=[],
                 help='NAME=TEXT: the machine load during that run')
  p.add_argument('runs', nargs='+', help='NAME=WORKDIR')
  a = p.parse_args(argv)
  loads = dict(s.split('=', 1) for s in a.load)
  rows, clips = [], []
  for spec in a.runs:
    name, workdir = spec.split('=', 1)
    r, c = report(name, workdir, loads.get(name))
    rows.append(r)
    clips.append(c)
    print(json.dumps({k: v for k, v in r.items()
                      if not isinstance(v, list)}, indent=1))
  os.makedirs(a.out, exist_ok=True)
  with open(os.path.join(a.out, 'video_autoencoder.json'), 'w') as f:
    json.dump(dict(config='configs/video_autoencoder.py', runs=rows), f,
              indent=1)
  figure(rows, clips, os.path.join(a.out, 'video_autoencoder.png'))


if __name__ == '__main__':
  main()
