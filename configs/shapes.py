r"""Class-conditional generation of 32x32 `shapes` scenes on 2 CPU cores.

  python -m visgen.main --config=configs/shapes.py --workdir=/tmp/shapes
  python -m visgen.main --config=configs/shapes.py:ae=/tmp/ae ...   # reuse an AE
  python -m visgen.main --config=configs/shapes.py:latent=False ...  # pixels

Learns p(x | y) for 32x32 RGB scenes of the procedural world
(visgen/data/shapes.py), y = the shape of the largest visible object (4
classes: circle, square, triangle, diamond), with the null class (label
dropout 0.1) for classifier-free guidance. Scored at 32x32 by the `shapes`
attribute net against the test split (shapes-FID, -precision, -recall and
the class accuracy of the samples next to the net's accuracy on real test
scenes, `class_accuracy_real`).

The recipe: latent diffusion (LDM) in one command, three stages.
* Stage 1 (visgen.stages): the scene autoencoder (configs/
  autoencoder_shapes.py, SD's AutoencoderKL family, f=4, 8x8x4 latents,
  L1 + perceptual + KL, batch 16 x 1600 steps) is trained first into
  WORKDIR/stages/autoencoder.
* Stage 2 (an encoding stage): the first 50,000 train scenes are encoded
  once with its EMA weights (posterior means) into WORKDIR/stages/latents,
  so the generator's step runs no encoder (`:cache=0` encodes on the fly).
* The generator: latents normalised per channel (EDM2, std 0.5); an ADM
  U-Net on the 8x8x4 latents, width 64, channel_mult (1, 2), one res block
  per level, attention 4x4 in the middle (2.81M parameters, 0.12 s per step
  at batch 32 on 2 idle cores); rectified flow with x0 prediction trained
  on the velocity error (JiT, Li & He 2025), logit-normal times (SD3),
  AdamW lr 1e-3 cosine, EMA 0.999 with warm-up, batch 32 x LATENT_STEPS;
  Euler 60 steps, classifier-free guidance scale 2.
Every stage counts in the run's wall clock; the stages' metrics are copied
to metrics.json['stages'].

Measured (run of record, idle machine, 2026-12-07, `python -m visgen.main
--config=configs/shapes.py`): 22 min 48 s wall clock (autoencoder stage
474 s: PSNR 26.8 dB, reconstruction shapes-FID 6.49; encoding 83 s;
generator 6500 steps at ~9.4 steps/s; final evaluation of 1000 samples),
shapes-FID 11.7 (floor 3.51, bound 4x = 14.0: met), precision 0.793
(bound 0.7: met), recall 0.867, class accuracy 0.857 (real scenes 0.919;
bound 0.8x = 0.735: met).

What made it (experiments/shapes_probe.py, 500 samples): small batches.
At equal training time (270 s, latent U-Net, constant lr) batch 16 / 32 /
64 / 128 reached shapes-FID 28.8 / 27.0 / 47.8 / 89.5 (3211 / 1861 / 921 /
461 steps): on 2 cores the images/s hardly grow with the batch, so steps
are what the budget buys. The same for the autoencoder: batch 16 x 1600
steps in less time than 32 x 800 takes reconstruction shapes-FID from 9.45
to 6.49. Pre-encoding takes the encoder (24% of the step's FLOPs) out of
the step. Not better: 8 latent channels (reconstruction 8.50, but the
generator's FID 64.7 against ~48 at 931 steps), latent std 0.3 or 1.0
instead of 0.5 (49.5 / 48.0 against 47.8).

Why latent: after ~930 steps the pixel-space patch-2 U-Net scores
shapes-FID 170 (Euler 40) with blob samples, the same budget in latent
space ~40-48 (x0 prediction; velocity prediction 66); a width-96 latent
U-Net (6.3M) was no better per second; a latent DiT (7.4M, 64 tokens) was
3x slower per step.

`latent=False` keeps the earlier pixel-space recipe (patch-2 U-Net, width
32, channel_mult (1, 2, 2), 1.15M, 4000 steps, Euler 12 in its run of
record): 30 min 43 s, shapes-FID 143.7, precision 0.729, recall 0.595,
class accuracy 0.311, blobs without geometry. ControlNet / InstructPix2Pix
/ dense-prediction warm starts use that pixel-space generator.
"""

from visgen import config_lib

RES = 32
# Training steps of the runs of record (latent: 22.8 min in all on 2 idle
# cores; pixel: 30.7 min).
LATENT_STEPS = 6500
PIXEL_STEPS = 4000


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, runlocal=False, latent=True, ae='',
                             ae_steps=1600, ae_batch=16, z=4, cache=50000,
                             steps=0, batch=0, width=0,
                             lr=1e-3, patch=2, blocks=1, mult='',
                             mid_attention=True, dtype='float32',
                             time_dist='logit_normal', prediction='x0',
                             sampler='euler', sampler_steps=0,
                             cfg_scale=2.0, arch='unet', depth=6, heads=4)
  latent = arg.latent or bool(arg.ae)
  c = config_lib.base_config()
  c.seed = 0
  c.total_steps = arg.steps or (LATENT_STEPS if latent else PIXEL_STEPS)
  c.log_every = 100
  c.ckpt_every = 1000
  c.ema_decays = (0.999,)
  c.ema_warmup = True

  # Scenes are rendered on the fly: reader threads keep rendering off the
  # training step's critical path.
  batch = arg.batch or (32 if latent else 64)
  c.data = dict(name='shapes', resolution=RES, batch_size=batch,
                num_threads=2)
  c.task = dict(name='generation', num_classes=4, label_dropout=0.1,
                x_shape=(RES, RES, 3))
  width = arg.width or (64 if latent else 32)
  mult = tuple(int(m) for m in (arg.mult or ('12' if latent else '122')))
  c.model = dict(name='unet', input_size=RES, in_channels=3,
                 patch=arg.patch, model_channels=width,
                 channel_mult=mult, num_res_blocks=arg.blocks,
                 attention_resolutions=(), mid_attention=arg.mid_attention,
                 num_heads=1, dropout=0.0, num_classes=4, dtype=arg.dtype)
  if latent:
    # Latent diffusion: the frozen scene autoencoder (configs/
    # autoencoder_shapes.py, f=4) encodes each batch to 8x8x4 latents,
    # normalised per channel (EDM2); samples are decoded to 32x32 scenes.
    # Without `ae=WORKDIR` the autoencoder is trained first, as the stage
    # WORKDIR/stages/autoencoder of this run (visgen.stages).
    config_lib.scene_latents(c, ae=arg.ae, ae_steps=arg.ae_steps,
                             ae_batch=arg.ae_batch, z=arg.z, cache=arg.cache,
                             batch=batch, runlocal=arg.runlocal, res=RES)
    if arg.arch == 'dit':
      c.model = dict(name='dit', input_size=RES // 4, in_channels=arg.z,
                     patch=1, width=width, depth=arg.depth,
                     heads=arg.heads, num_classes=4, dtype=arg.dtype)
    else:
      c.model.update(input_size=RES // 4, in_channels=arg.z, patch=1)
  c.path = dict(name='linear')
  c.prediction = arg.prediction
  if arg.prediction == 'x0':
    # JiT (Li & He 2025): predict the clean image, train on the velocity
    # error (x0 error / t: the same uniform flow-matching loss).
    c.weighting = dict(name='uniform', space='velocity')
  else:
    c.weighting = dict(name='uniform')
  if arg.time_dist == 'logit_normal':
    c.time_dist = dict(name='logit_normal', mean=0.0, std=1.0)
  else:
    c.time_dist = dict(name=arg.time_dist)
  c.optim = config_lib.optim(lr=arg.lr, warmup_steps=100, schedule='cosine',
                             grad_clip=1.0)
  c.sampler = dict(name=arg.sampler,
                   steps=arg.sampler_steps or (60 if latent else 12),
                   cfg_scale=arg.cfg_scale, cfg_rescale=0.0,
                   cfg_interval=(0.0, 1.0), cfg_channels=0)
  c.num_grid_samples = 40
  c.sample_batch = 250
  c.eval = dict(features=dict(feature_net='shapes', reference='shapes:test',
                              num_samples=1000, batch=250))

  if arg.runlocal:
    c.total_steps = 4
    c.log_every = 2
    c.ckpt_every = 2
    if latent:  # scene_latents: 64 scenes, the 8x8 -> 4x4x4 autoencoder
      c.model.update(input_size=4, model_channels=8, channel_mult=(1,),
                     mid_attention=False)
    else:
      c.data = dict(name='shapes', resolution=8, num_examples=64,
                    batch_size=8)
      c.task.x_shape = (8, 8, 3)
      c.model.update(input_size=8, model_channels=8, channel_mult=(1, 2),
                     mid_attention=False)
    c.sampler.steps = 2
    c.num_grid_samples = 8
    c.eval = {}
  return c
