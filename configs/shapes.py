r"""Class-conditional generation of 32x32 `shapes` scenes on 2 CPU cores.

  python -m visgen.main --config=configs/shapes.py --workdir=/tmp/shapes

Learns p(x | y) for 32x32 RGB scenes of the procedural world
(visgen/data/shapes.py), y = the shape of the largest visible object (4
classes: circle, square, triangle, diamond), with the null class (label
dropout 0.1) for classifier-free guidance. Scored at 32x32 by the `shapes`
attribute net against the test split (shapes-FID, -precision, -recall and
the class accuracy of the samples next to the net's accuracy on real test
scenes, `class_accuracy_real`).

The recipe (measured on 2 CPU cores shared with 5-8 other jobs; see
experiments/shapes_curve.py and experiments/results/shapes_curve/):
* a small ADM U-Net on 2x2 space-to-depth patches (`patch=2`: the convs run
  at 16x16, 8x8, 4x4, while the output is still per pixel), width 32,
  channel_mult (1, 2, 2), one res block per level, attention only 4x4 in the
  middle: 1.15M parameters, 0.58-0.62 s per step at batch 64 (the fastest
  step of the candidates measured: DiT patch 4 width 256 depth 6, 7.4M, 1.75
  s; width 192, 4.2M, 1.15 s; DiT patch 2 width 128, 1.9M, 3.2 s; U-Net
  patch 1 width 16, 0.29M, 0.89 s; all at load average 16-18);
* rectified flow with x0 prediction trained on the velocity error
  (`prediction='x0'`, weighting uniform in velocity space; JiT, Li & He
  2025): at 400 steps it removes the per-pixel noise texture that velocity
  prediction leaves (shapes-FID 409 against 509, 300 samples each),
  logit-normal times (SD3), EMA 0.999 with warm-up;
* Euler sampling, 12 steps, classifier-free guidance scale 2. Heun with x0
  prediction diverges to saturated colours (shapes-FID 379, precision 0.20
  on the same checkpoint): use `sampler=euler` (the default).

Measured on an idle machine (2026-12-07), `python -m visgen.main
--config=configs/shapes.py:steps=4000` (what fits 30 minutes at 2.3 steps/s):
30 min 43 s wall clock (training 1735 s), shapes-FID 143.7 (floor 3.51),
precision 0.729, recall 0.595, class accuracy 0.311 (real scenes 0.919):
still blobs without geometry, the bound NOT reached.

Measured earlier, `python -m visgen.main --config=configs/shapes.py`, 2000 steps,
batch 64 (2026-12-02, load average 16-18 on 2 cores, this run at
autogroup priority): 1181 s of training (1.7 steps/s), final loss 0.112;
the same checkpoint re-evaluated with the Euler sampler (`--mode=eval`, 81 s):
shapes-FID 178.5 (floor 3.51), precision 0.74, recall 0.57, class accuracy
0.275 (chance 0.25; real scenes 0.919). Samples: clean flat backgrounds
and coloured blobs of the right colours, sizes and positions, no geometry
yet; the label changes the output only slightly (mean |dx| 0.03-0.09 on
[-1, 1] between labels at the same noise): the model has not learned shapes,
so the class cannot show. The issue's bound (shapes-FID <= 14, class
accuracy >= 0.73 in 30 min) is NOT reached: at ~1.7 steps/s, 30 minutes
buy ~3000 steps (190k scenes seen) and shapes-FID falls slowly with steps
(the curve: 375 -> 246 -> 186 over 500 -> 2000 steps for velocity).
"""

from visgen import config_lib

RES = 32
# Training steps of the run of record (30 minutes on 2 idle cores).
LATENT_STEPS = 2800
PIXEL_STEPS = 4000


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, runlocal=False, latent=True, ae='',
                             ae_steps=800, steps=0, batch=64, width=0,
                             lr=1e-3, patch=2, blocks=1, mult='',
                             mid_attention=True, dtype='float32',
                             time_dist='logit_normal', prediction='x0',
                             sampler='euler', sampler_steps=40,
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
  c.data = dict(name='shapes', resolution=RES, batch_size=arg.batch,
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
    if arg.ae:
      source = 'workdir:' + arg.ae
    else:
      c.stages = dict(autoencoder=dict(
          config='configs/autoencoder_shapes.py:' + (
              'runlocal' if arg.runlocal else f'steps={arg.ae_steps}')))
      source = 'stage:autoencoder'
    c.frozen = dict(autoencoder=dict(source=source))
    c.task.x_shape = (RES // 4, RES // 4, 4)
    c.task.latent = dict(frozen='autoencoder', image_shape=(RES, RES, 3),
                         normalize='channel')
    if arg.arch == 'dit':
      c.model = dict(name='dit', input_size=RES // 4, in_channels=4,
                     patch=1, width=width, depth=arg.depth,
                     heads=arg.heads, num_classes=4, dtype=arg.dtype)
    else:
      c.model.update(input_size=RES // 4, in_channels=4, patch=1)
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
  c.sampler = dict(name=arg.sampler, steps=arg.sampler_steps,
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
    c.data = dict(name='shapes', resolution=8, num_examples=64, batch_size=8)
    if latent:  # the runlocal autoencoder: 8x8 -> 4x4x4
      c.task.update(x_shape=(4, 4, 4), latent=dict(
          frozen='autoencoder', image_shape=(8, 8, 3), normalize='channel'))
      c.model.update(input_size=4, model_channels=8, channel_mult=(1,),
                     mid_attention=False)
    else:
      c.task.x_shape = (8, 8, 3)
      c.model.update(input_size=8, model_channels=8, channel_mult=(1, 2),
                     mid_attention=False)
    c.sampler.steps = 2
    c.num_grid_samples = 8
    c.eval = {}
  return c
