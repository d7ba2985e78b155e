r"""Class-conditional flow matching on the procedural scene world (CPU).

  python -m visgen.main --config=configs/shapes_cfg.py --workdir=/tmp/scfg

Learns p(x | y) for 16x16 RGB `shapes` scenes, y = the shape of the largest
visible object (4 classes: circle, square, triangle, diamond), with the null
class (label dropout 0.1) for classifier-free guidance. Same recipe as the
quickstart (rectified-flow path, velocity prediction, Heun) with a residual
MLP (width 768) on the flattened 768 pixel values: on 2 shared CPU cores
4000 steps take 5-8 minutes and a 1000-image table row (32 Heun steps with
CFG) 7-20 s. Measured: at 4000 (and 10000) steps its samples are colour
blobs, not yet recognisable shapes (shapes-FID ~290, class accuracy at
chance); a convolutional model is what this data needs, but a U-Net does
not fit the CPU budget (`:model=unet`, a 0.7M-parameter ADM U-Net,
measured 3.7 s per batch-256 step against 0.15 s). Scored by the `shapes`
attribute net (32x32 input: 16x16 images are upsampled), the metrics are
shapes-FID etc., not Inception's.
The guidance experiment (`python -m experiments.guidance_tradeoff
--dataset=shapes`) pairs it with configs/shapes_noisy_classifier.py.
"""

from visgen import config_lib

RES = 16


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, runlocal=False, model='mlp', steps=4000)
  if arg.model not in ('mlp', 'unet'):
    raise ValueError(f'Unknown model {arg.model!r}. Valid choices: mlp, '
                     'unet.')
  c = config_lib.base_config()
  c.seed = 0
  c.total_steps = arg.steps
  c.log_every = 250
  c.ckpt_every = 1000
  c.ema_decays = (0.999,)
  c.ema_warmup = True

  # Scenes are rendered on the fly (~0.2 ms each): two reader threads keep
  # rendering off the training step's critical path.
  c.data = dict(name='shapes', resolution=RES, batch_size=256,
                num_threads=2)
  flat = arg.model == 'mlp'
  c.task = dict(name='generation', num_classes=4, label_dropout=0.1,
                flatten=flat, x_shape=(RES, RES, 3))
  if flat:
    c.model = dict(name='mlp', dim=RES * RES * 3, width=768, depth=4,
                   num_classes=4, dtype='float32')
  else:
    c.model = dict(name='unet', input_size=RES, in_channels=3,
                   model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                   attention_resolutions=(), num_heads=1, dropout=0.0,
                   num_classes=4, dtype='float32')
  c.path = dict(name='linear')
  c.prediction = 'velocity'
  c.weighting = dict(name='uniform')
  c.time_dist = dict(name='uniform')
  c.optim = config_lib.optim(lr=1e-3, warmup_steps=200, schedule='cosine',
                             grad_clip=1.0)
  c.sampler = dict(name='heun', steps=32, cfg_scale=1.5,
                   cfg_rescale=0.0, cfg_interval=(0.0, 1.0), cfg_channels=0)
  c.num_grid_samples = 40
  c.eval = dict(features=dict(feature_net='shapes', reference='shapes:test',
                              num_samples=1000, batch=500))

  if arg.runlocal:
    c.total_steps = 4
    c.log_every = 2
    c.ckpt_every = 2
    c.data = dict(name='shapes', resolution=RES, num_examples=64,
                  batch_size=8)
    if flat:
      c.model.update(width=32, depth=1)
    else:
      config_lib.tiny_unet(c)
    c.sampler.steps = 2
    c.num_grid_samples = 8
    c.eval = {}
  return c
