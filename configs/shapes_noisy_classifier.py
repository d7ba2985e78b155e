r"""Noise-aware scene classifier for classifier guidance on `shapes` (CPU).

  python -m visgen.main --config=configs/shapes_noisy_classifier.py \
      --workdir=/tmp/shapes_nc

Trains p_phi(y | x_t, t), y = the dominant shape of a 16x16 RGB `shapes`
scene (4 classes), on x_t of configs/shapes_cfg.py's path (rectified flow,
uniform t) with a time-conditioned residual MLP on the flattened pixels
(visgen.classification.noisy_classifier; `:arch=conv` gives ADM's encoder
recipe in miniature, several times slower per step on 2 CPU cores). It must
share the path of the generator it guides: override --config.path.name with
it. `:clean` trains the same network on clean x0.
"""

from visgen import config_lib

RES = 16


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, runlocal=False, clean=False, arch='mlp',
                             width=512, depth=3, steps=2000)
  c = config_lib.base_config()
  c.seed = 0
  c.total_steps = arg.steps
  c.log_every = 250
  c.ckpt_every = 1000
  c.ema_decays = (0.999,)
  c.ema_warmup = True

  c.data = dict(name='shapes', resolution=RES, batch_size=256,
                num_threads=2)
  c.task = dict(name='noisy_classifier', num_classes=4,
                flatten=arg.arch == 'mlp', x_shape=(RES, RES, 3),
                clean=arg.clean)
  c.model = dict(name='noisy_classifier', num_classes=4,
                 x_shape=(RES, RES, 3), arch=arg.arch, dtype='float32')
  if arg.arch == 'conv':
    c.model.widths = (32, 64)
  else:
    c.model.width = arg.width
    c.model.depth = arg.depth
  c.path = dict(name='linear')
  c.time_dist = dict(name='uniform')
  c.optim = config_lib.optim(lr=1e-3, warmup_steps=100, schedule='cosine',
                             weight_decay=1e-4, grad_clip=1.0)
  # The sample grid: classifier guidance on an N(0, I) data model (see the
  # task); the loop's one guidance value is here the classifier scale.
  c.sampler = dict(name='euler', steps=16, cfg_scale=4.0)
  c.num_grid_samples = 40
  c.eval = {}

  if arg.runlocal:
    c.total_steps = 4
    c.log_every = 1
    c.ckpt_every = 2
    c.num_grid_samples = 8
    c.data = dict(name='shapes', resolution=RES, num_examples=64,
                  batch_size=8)
    if arg.arch == 'conv':
      c.model.widths = (8, 16)
    else:
      c.model.width = 32
      c.model.depth = 1
  return c
