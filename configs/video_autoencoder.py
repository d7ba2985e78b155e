r"""Causal 3-D convolutional video autoencoder (KL) on 2 CPU cores.

  python -m visgen.main --config=configs/video_autoencoder.py --workdir=$VAE
  python -m visgen.main \
      --config=configs/video_autoencoder.py:dataset=moving_digits \
      --workdir=$VAE_MD
  python -m visgen.main --config=configs/video_autoencoder.py:runlocal \
      --workdir=/tmp/vae_local

9-frame clips (T = 1 + 4k, k = 2) of `shapes_video` (16x16 RGB bouncing
shapes) or `moving_digits` (16x16 grey, two 8x8 digits) -> latents of
1 + k = 3 frames at 4x4 (f=4) with 8 channels (18x fewer numbers), by the
causal video VAE (`visgen/models/video_autoencoder.py`): replicate-padded
causal 3x3x3 convs, per-frame GroupNorm, frame 0 encoded alone, temporal x4
by two causal stride-2 downsamplings that keep the first frame (CogVideoX /
Wan style), spatial x4 (`:f=8`: x8, with 32x32 clips by default), widths
8 / 16 / 32, DC-AE residual shortcuts around every down/up sampler
(`:residual=False`: the plain stack); 498k parameters. Loss: squared error
+ KL (weight 1e-6, LDM's); no perceptual or GAN term. `:loss=l1` is
available but plateaus on the background colour (18.5 dB on one-frame
clips after 2000 steps). Evaluations in
metrics.json: 'video_reconstruction' (`ae_psnr`, `ae_psnr_first_frame`,
`ae_psnr_later_frames`, `ae_psnr_per_frame`, `ae_flicker`,
`ae_flicker_ratio`, `ae_flicker_motion`, ...; definitions in
`visgen/evaluators/video_ae.py`) on 256 test clips, and 'latent_stats'.
Evaluate a trained run from other code with
`visgen.evaluators.video_ae.evaluate_workdir(WORKDIR, n=256)`; the report
(`python -m experiments.video_autoencoder_report`) writes
experiments/results/video/video_autoencoder.{json,png}.

Measured (2026-12-07, 2 CPU cores shared with others' jobs, 1-minute load
average 1.4-2.6, mean 2.1; batch 8 x 3000 steps, 10-12 steps/s):

  dataset        train   total   PSNR   frame 0  frames 1-8  flicker  ratio
  shapes_video   319 s   328 s   21.7   22.8     21.6        0.049    0.49
  moving_digits  313 s   322 s   20.7   23.7     20.3        0.066    0.76

(PSNR in dB on 256 test clips; flicker = mean |D rec - D x| in [0, 1] pixel
units; ratio = flicker / mean(|e_t| + |e_t+1|): 0 static error, 0.71 for
errors independent across frames, 1 sign-flipping.) Frame 0, encoded alone
into a whole latent frame, is the best reconstructed; frames 4j - 3 (the
first of each 4-frame latent group: 1 and 5) the worst. Reconstructions are
blurred (colour and position right, small shapes lose their outline;
digits legible but soft); for scale, 4x4 average pooling and nearest
upsampling (3 numbers per 4x4 cell and frame, 16x fewer) gives 20.0 dB on
shapes_video. On shapes the errors are temporally coherent (ratio 0.49) but
larger than the true motion (flicker / mean |D x| = 1.7); on digits the
ratio 0.76 is at the level of frame-independent errors. Earlier runs of
the same size: 17.0 dB (L1, no shortcuts, batch 16 x 600 steps), 19.8 dB
(L2 with average-pool shortcuts, widths 8 / 16 / 16), 19.6 dB on digits.
"""

from visgen import config_lib

DATASETS = {'shapes_video': 3, 'moving_digits': 1}
CH_MULT = {4: (1, 2, 4), 8: (1, 2, 4, 4)}


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, runlocal=False, dataset='shapes_video',
                             f=4, res=0, frames=9, steps=3000, batch=8,
                             ch=8, z=8, lr=2e-3, kl_weight=1e-6,
                             loss='l2', residual=True)
  if arg.dataset not in DATASETS:
    raise ValueError(f'Unknown dataset {arg.dataset!r}. Valid choices: '
                     f'{", ".join(DATASETS)}.')
  if arg.f not in CH_MULT:
    raise ValueError(f'f={arg.f}: the video autoencoder downsamples space '
                     'by 4 or 8 (f=4 or f=8).')
  if arg.frames < 1 or (arg.frames - 1) % 4:
    near = 1 + 4 * max(1, round((arg.frames - 1) / 4))
    raise ValueError(
        f'frames={arg.frames}: the causal encoder keeps frame 0 alone and '
        'compresses the rest 4x in time, so frames must be 1 + 4k (5, 9, '
        f'13, ...); e.g. frames={near}.')
  res = arg.res or (16 if arg.f == 4 else 32)
  if res % arg.f:
    raise ValueError(f'res={res} is not divisible by f={arg.f}.')
  channels = DATASETS[arg.dataset]
  c = config_lib.base_config()
  c.seed = 0
  c.total_steps = arg.steps
  c.log_every = 250
  c.ckpt_every = 1000
  c.ema_decays = (0.999,)
  c.ema_warmup = True
  c.data = dict(name=arg.dataset, resolution=res, num_frames=arg.frames,
                batch_size=arg.batch, num_threads=2)
  if arg.dataset == 'moving_digits':
    c.data['digit_size'] = res // 2
  c.task = dict(name='video_autoencoder',
                x_shape=(arg.frames, res, res, channels), rec_loss=arg.loss,
                kl_weight=arg.kl_weight, perceptual_weight=0.0,
                sample_posterior=True, eval_split='test')
  c.model = dict(name='video_autoencoder', input_size=res,
                 num_frames=arg.frames, in_channels=channels, ch=arg.ch,
                 ch_mult=CH_MULT[arg.f], num_res_blocks=1, z_channels=arg.z,
                 double_z=True, norm_groups=8,
                 temporal_downsample=(True, True) + (False,) * (
                     len(CH_MULT[arg.f]) - 3), residual=arg.residual,
                 dtype='float32')
  c.optim = config_lib.optim(lr=arg.lr, warmup_steps=50, schedule='cosine',
                             grad_clip=1.0)
  c.sampler = {}  # Reconstruction needs no sampler.
  c.num_grid_samples = 16  # samples.gif: input | reconstruction.
  c.sample_batch = 16
  c.eval = dict(
      video_reconstruction=dict(split='test', num_clips=256, batch=64),
      latent_stats=dict(split='train', num_images=256, batch=64))
  if arg.runlocal:
    c.total_steps = 4
    c.log_every = 2
    c.ckpt_every = 2
    c.data = dict(name=arg.dataset, resolution=8, num_frames=5,
                  num_examples=32, batch_size=8)
    if arg.dataset == 'moving_digits':
      c.data['digit_size'] = 4
    c.task.x_shape = (5, 8, 8, channels)
    c.model.update(input_size=8, num_frames=5, ch=4, ch_mult=(1, 2, 2),
                   z_channels=2, norm_groups=4, temporal_downsample=(True,
                                                                     True))
    c.num_grid_samples = 4
    c.sample_batch = 4
    c.eval = dict(
        video_reconstruction=dict(split='test', num_clips=8, batch=4),
        latent_stats=dict(split='train', num_images=8, batch=4))
  return c
