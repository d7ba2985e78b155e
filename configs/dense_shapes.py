r"""Dense prediction as generation on the scene world (Marigold-style), and
its discriminative twin (issue 14 item 4).

  python -m visgen.main --config=configs/dense_shapes.py:target=semantic \
      --workdir=/tmp/dense_sem                       # generative
  python -m visgen.main \
      --config=configs/dense_shapes.py:target=semantic,mode=discriminative \
      --workdir=/tmp/dense_sem_disc                  # same U-Net, per-pixel loss
  # Marigold's recipe: fine-tune an image generator of the same architecture
  # (configs/shapes.py:latent=False at the same res / width / patch); the concat
  # projection starts at zero, so step 0 is that generator:
  python -m visgen.main \
      --config=configs/dense_shapes.py:target=depth,init=/tmp/shapes \
      --workdir=/tmp/dense_depth_ft
  python -m experiments.segmentation --workdir=DIR --dense_only   # the table

Targets (visgen/tasks/dense.py): `semantic` (background + 4 shape classes,
encoded in a fixed palette), `edges` (outlines and occlusion boundaries,
grey), `depth` (the z-order rank of the object covering each pixel,
background farthest, grey). The generative model denoises the encoded map
(3 channels, x0 prediction on the rectified-flow path trained on the x0
error at uniform t, as Marigold's uniform timesteps) with the RGB scene
concatenated to its input (`concat_init='xavier'` from scratch); Euler sampling from noise, `sampler_steps`
steps; the experiment ensembles K samples per scene. The discriminative
model is the same U-Net (in_channels = its outputs: 5 / 1 / 1) run once at
x = the scene, t = 0 with cross-entropy / BCE / squared error.

Measured (2026-12-07, 2 shared CPU cores; `python -m experiments.segmentation
--workdir=DIR --dense_only`: res 16, width 16 (292k parameters), 1000 steps of
batch 32 per model, ~100 s each, 10 min 40 s for all six; 200 test scenes),
generative (K = 8 samples ensembled) vs discriminative: semantic mIoU 0.294 vs
0.437, edge F1 0.991 vs 0.999, depth-order accuracy 0.877 vs 0.883 (object
pairs only: 0.512 vs 0.519, chance). From scratch: no image generator of this
size was given (init= is the Marigold fine-tuning path).
"""

from visgen import config_lib
from visgen.tasks import dense
from visgen.validate import UserError

RES = 32
# Warm start from an image generator (configs/shapes.py): everything from
# the same path except the new concat projection (zero: the scene enters
# the network at step 0 with weight 0, Marigold's zero-initialised
# condition channels). The generator's class table has no counterpart.
INIT_MAPPING = (('concat_in/.*', None), ('(.*)', r'\1'))


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, runlocal=False, target='semantic',
                             mode='generative', res=RES, steps=2000,
                             batch=32, lr=1e-3, width=32, patch=2,
                             sampler_steps=8, init='',
                             time_dist='uniform')
  dense.check_target(arg.target)
  c = config_lib.base_config()
  res = 8 if arg.runlocal else arg.res
  c.seed = 0
  c.total_steps = arg.steps
  c.log_every = 100
  c.ckpt_every = 500
  c.ema_decays = (0.999,)
  c.ema_warmup = True
  c.data = dict(name='shapes', resolution=res, batch_size=arg.batch,
                num_threads=2)
  c.task = dict(name='dense', target=arg.target, mode=arg.mode,
                x_shape=(res, res, 3))
  generative = arg.mode == 'generative'
  c.model = dict(name='unet', input_size=res,
                 in_channels=3 if generative else
                 dense.DISC_CHANNELS[arg.target],
                 patch=arg.patch, model_channels=arg.width,
                 channel_mult=(1, 2, 2), num_res_blocks=1,
                 attention_resolutions=(), mid_attention=True, num_heads=1,
                 dropout=0.0, concat_channels=3, dtype='float32',
                 # From scratch the scene's input conv starts like any other
                 # (a zero projection learns to read it far too slowly: at
                 # 1000 steps the generative nets still ignored the scene);
                 # a warm start keeps it at zero (the generator at step 0).
                 concat_init='zero' if arg.init else 'xavier')
  if arg.init:
    if not generative:
      raise UserError('init= warm-starts the generative model from an '
                       'image generator; drop it for mode=discriminative.')
    c.init_from = dict(source='workdir:' + arg.init, weights='ema',
                       mapping=INIT_MAPPING)
  c.path = dict(name='linear')
  c.prediction = 'x0'
  # The x0 error itself (not the velocity error, which weighs small t by
  # 1 / t^2): the large t, where only the scene tells the answer, count.
  c.weighting = dict(name='uniform')
  c.time_dist = (dict(name='logit_normal', mean=0.0, std=1.0)
                 if arg.time_dist == 'logit_normal' else
                 dict(name=arg.time_dist))
  c.optim = config_lib.optim(lr=arg.lr, warmup_steps=50, schedule='cosine',
                             grad_clip=1.0)
  c.sampler = dict(name='euler', steps=arg.sampler_steps)
  c.num_grid_samples = 16
  c.eval = {}
  if arg.runlocal:
    c.total_steps = 4
    c.log_every = 2
    c.ckpt_every = 2
    c.data = dict(name='shapes', resolution=8, num_examples=64, batch_size=8)
    c.model.update(model_channels=8, channel_mult=(1, 2),
                   mid_attention=False)
    c.sampler.steps = 2
    c.num_grid_samples = 4
  return c
