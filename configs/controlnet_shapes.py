r"""ControlNet on the frozen 32x32 pixel-space shapes generator.

  python -m visgen.main --config=configs/shapes.py:latent=False \
      --workdir=/tmp/shapes
  python -m visgen.main --config=configs/controlnet_shapes.py:base=/tmp/shapes \
      --workdir=/tmp/controlnet_edges

A trainable copy of the base U-Net's encoder (input blocks + middle block)
reads a scene-world control map (`control=edges` 1 channel, `semantic_mask`
5, `keypoints` 1) through a small hint encoder; zero 1x1 convs add its
features to the frozen base's skip connections and middle output
(visgen/models/controlnet.py). The copy is warm-started from the base
(`init_from`, mapping `controlnet.INIT_MAPPING`); the base is the frozen
component `base`. Path, prediction, weighting, time distribution and
sampler are the base's (read from its config.json; by default
the pixel recipe of configs/shapes.py (`:latent=False`): rectified flow, x0 prediction on the velocity loss,
logit-normal times, Euler 12 steps), CFG 2 over the base's class label,
`control_scale` 1.

Without a trained base (`base=` empty or not a visgen run) a randomly
initialised base is used and the run's log says so: a plumbing check only.
"""

import json
import os

from visgen import config_lib
from visgen.models import controlnet
from visgen.tasks import image_cond

RES = 32


def base_model(res: int, width: int, runlocal: bool) -> dict:
  """configs/shapes.py's U-Net (its runlocal variant with runlocal)."""
  m = dict(name='unet', input_size=res, in_channels=3, patch=2,
           model_channels=width, channel_mult=(1, 2, 2), num_res_blocks=1,
           attention_resolutions=(), mid_attention=True, num_heads=1,
           dropout=0.0, num_classes=4, dtype='float32')
  if runlocal:
    m.update(input_size=8, model_channels=8, channel_mult=(1, 2),
             mid_attention=False)
  return m


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, runlocal=False, res=RES,
                             base='', control='edges',
                             steps=1500, batch=32, lr=1e-3, width=32,
                             hint_width=16, control_scale=1.0,
                             sampler_steps=12, cfg_scale=2.0)
  c = config_lib.base_config()
  res = 8 if arg.runlocal else arg.res
  c.total_steps = arg.steps
  c.log_every = 100
  c.ckpt_every = 500
  c.ema_decays = (0.999,)
  c.ema_warmup = True
  c.data = dict(name='shapes', resolution=res, batch_size=arg.batch,
                num_threads=2)
  base = base_model(res, arg.width, arg.runlocal)
  hint = image_cond.CONTROLS[image_cond.check_kind(arg.control,
                                                   'control')]
  c.task = dict(name='controlnet', control=arg.control, num_classes=4,
                label_dropout=0.1, x_shape=(res, res, 3),
                control_scale=arg.control_scale)
  c.model = dict(name='controlnet', base=base, hint_channels=hint,
                 hint_width=arg.hint_width)
  source = image_cond.base_source(base, arg.base, what='controlnet_shapes')
  c.frozen = dict(base=dict(model=base, source=source))
  c.init_from = dict(source=source, weights='ema',
                     mapping=controlnet.INIT_MAPPING)
  # The base's own objective and sampler (its config.json when the base is
  # a visgen run; else configs/shapes.py's: x0 prediction on the velocity
  # loss, Euler 12).
  c.path = dict(name='linear')
  c.prediction = 'x0'
  c.weighting = dict(name='uniform', space='velocity')
  c.time_dist = dict(name='logit_normal', mean=0.0, std=1.0)
  c.sampler = dict(name='euler', steps=arg.sampler_steps,
                   cfg_scale=arg.cfg_scale)
  base_json = os.path.join(os.path.expanduser(arg.base or '.'),
                           'config.json')
  if arg.base and os.path.exists(base_json):
    with open(base_json) as f:
      run = json.load(f)
    for k in ('path', 'prediction', 'weighting', 'time_dist', 'precond'):
      if run.get(k) is not None:
        c[k] = run[k]
    c.sampler.name = run.get('sampler', {}).get('name', c.sampler.name)
  c.optim = config_lib.optim(lr=arg.lr, warmup_steps=50, schedule='cosine',
                             grad_clip=1.0)
  c.num_grid_samples = 16
  c.eval = {}
  if arg.runlocal:
    c.total_steps = 4
    c.log_every = 2
    c.ckpt_every = 2
    c.data = dict(name='shapes', resolution=8, num_examples=64,
                  batch_size=8)
    c.sampler.steps = 2
    c.num_grid_samples = 4
  return c
