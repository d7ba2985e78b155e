r"""Quickstart: class-conditional flow matching on the embedded digits (CPU).

  python -m visgen.main --config=configs/quickstart.py --workdir=/tmp/qs

Trains a residual MLP denoiser on scikit-learn's 8x8 handwritten digits
(flattened to 64 values) with the rectified-flow path and velocity
prediction, then writes WORKDIR/samples.png (one row per class) and
WORKDIR/metrics.json (class accuracy of the samples under the digits
classifier, wall time, steps). Runs in a few minutes on 2 CPU cores.
"""

from visgen import config_lib


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, runlocal=False)
  c = config_lib.base_config()
  c.seed = 0
  c.total_steps = 3000
  c.log_every = 250
  c.ckpt_every = 1000
  c.ema_decays = (0.999,)
  c.ema_warmup = True

  c.data = dict(name='digits', size=8, batch_size=256)
  c.task = dict(name='generation', num_classes=10, label_dropout=0.1,
                flatten=True, x_shape=(8, 8, 1))
  c.model = dict(name='mlp', dim=64, width=384, depth=4, num_classes=10,
                 dtype='float32')
  c.path = dict(name='linear')
  c.prediction = 'velocity'
  c.weighting = dict(name='uniform')
  c.time_dist = dict(name='uniform')
  c.optim = config_lib.optim(lr=1e-3, warmup_steps=200, schedule='cosine',
                             grad_clip=1.0)
  c.sampler = dict(name='heun', steps=32, cfg_scale=1.5,
                   cfg_rescale=0.0, cfg_interval=(0.0, 1.0), cfg_channels=0)
  c.num_grid_samples = 100
  c.eval = dict(features=dict(feature_net='digits', reference='digits:test',
                              num_samples=1000, batch=500),
                bits_per_dim=dict(split='test', num_images=297, batch=99,
                                  steps=50))

  if arg.runlocal:
    c.total_steps = 4
    c.log_every = 2
    c.ckpt_every = 2
    c.data.batch_size = 16
    c.model.width = 32
    c.model.depth = 1
    c.sampler.steps = 2
    c.num_grid_samples = 10
    c.eval = {}
  return c
