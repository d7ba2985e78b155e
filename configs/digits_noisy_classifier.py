r"""Noise-aware digits classifier for classifier guidance (ADM recipe, CPU).

  python -m visgen.main --config=configs/digits_noisy_classifier.py \
      --workdir=/tmp/digits_nc

Trains p_phi(y | x_t, t) on x_t of the quickstart's path (rectified flow,
uniform t) for flattened 8x8 digits with a time-conditioned residual MLP
(visgen.classification.noisy_classifier; `:arch=conv` gives ADM's encoder
recipe in miniature, about 4x slower per step on 2 CPU cores). It must share
the path of the generator it guides: override --config.path.name with it.
`:clean` trains the same network on clean x0 (a discriminative classifier);
`:width=512,depth=4` gives the MLP of the quickstart generator's size.
"""

from visgen import config_lib


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, runlocal=False, clean=False, arch='mlp',
                             width=256, depth=3, steps=2000)
  c = config_lib.base_config()
  c.seed = 0
  c.total_steps = arg.steps
  c.log_every = 250
  c.ckpt_every = 1000
  c.ema_decays = (0.999,)
  c.ema_warmup = True

  c.data = dict(name='digits', size=8, batch_size=256)
  c.task = dict(name='noisy_classifier', num_classes=10, flatten=True,
                x_shape=(8, 8, 1), clean=arg.clean)
  c.model = dict(name='noisy_classifier', num_classes=10, x_shape=(8, 8, 1),
                 arch=arg.arch, dtype='float32')
  if arg.arch == 'conv':
    c.model.widths = (32, 64)
  else:
    c.model.width = arg.width
    c.model.depth = arg.depth
  c.path = dict(name='linear')
  c.time_dist = dict(name='uniform')
  c.optim = config_lib.optim(lr=1e-3, warmup_steps=100, schedule='cosine',
                             weight_decay=1e-4, grad_clip=1.0)
  # The sample grid: classifier guidance on an N(0, I) model (see the task);
  # cfg_scale is the loop's one guidance value, here the classifier scale.
  c.sampler = dict(name='euler', steps=16, cfg_scale=4.0)
  c.num_grid_samples = 100
  c.eval = {}

  if arg.runlocal:
    c.total_steps = 4
    c.log_every = 1
    c.ckpt_every = 2
    c.num_grid_samples = 20
    c.data.batch_size = 16
    if arg.arch == 'conv':
      c.model.widths = (8, 16)
    else:
      c.model.width = 32
      c.model.depth = 1
  return c
