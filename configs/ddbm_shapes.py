r"""Denoising diffusion bridges (DDBM) on scene-world pairs.

  python -m visgen.main --config=configs/ddbm_shapes.py --workdir=/tmp/e2s
  python -m visgen.main --config=configs/ddbm_shapes.py:source=semantic_mask \
      --workdir=/tmp/m2s
  python -m visgen.main --config=configs/ddbm_shapes.py:source=image \
      --workdir=/tmp/edit                    # shapes_edit source -> target
  python -m visgen.main --config=configs/ddbm_shapes.py:path=linear \
      --workdir=/tmp/e2s_cond   # conditional diffusion baseline, same net

x0 is the scene, y the source rendered as a 3-channel image
(visgen/tasks/image_cond.py); the path `bridge_vp` (DDBM's VP bridge, or
`bridge_ve`) pins x_1 = y and x_0 = x0; the U-Net sees [x_t, y]
(concat_channels=3) and predicts x0. Sampling: DDBM's `bridge_heun`
(stochastic step of ratio 0.33, then Heun), NFE = 3 N + 1. With an
ordinary path (`path=linear`) it is conditional diffusion on the same pairs
(velocity prediction, Heun), the baseline of DDBM's comparison.
"""

from visgen import config_lib

RES = 32


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, runlocal=False, res=RES,
                             source='edges',
                             path='bridge_vp', steps=2000, batch=32, lr=1e-3,
                             width=32, sampler_steps=5, churn=0.33)
  c = config_lib.base_config()
  res = 8 if arg.runlocal else arg.res
  c.total_steps = arg.steps
  c.log_every = 100
  c.ckpt_every = 500
  c.ema_decays = (0.999,)
  c.ema_warmup = True
  edit = arg.source == 'image'
  dataset = 'shapes_edit' if edit else 'shapes'
  c.data = dict(name=dataset, resolution=res, batch_size=arg.batch,
                num_threads=2)
  c.task = dict(name='bridge', source=arg.source,
                target='edited_image' if edit else 'image',
                x_shape=(res, res, 3))
  c.model = dict(name='unet', input_size=res, in_channels=3, patch=2,
                 model_channels=arg.width, channel_mult=(1, 2, 2),
                 num_res_blocks=1, attention_resolutions=(),
                 mid_attention=True, num_heads=1, dropout=0.0,
                 concat_channels=3, dtype='float32')
  bridge = arg.path.startswith('bridge')
  c.path = dict(name=arg.path)
  c.prediction = 'x0' if bridge else 'velocity'
  c.weighting = dict(name='uniform')
  c.time_dist = (dict(name='uniform') if bridge else
                 dict(name='logit_normal', mean=0.0, std=1.0))
  c.optim = config_lib.optim(lr=arg.lr, warmup_steps=50, schedule='cosine',
                             grad_clip=1.0)
  if bridge:
    c.sampler = dict(name='bridge_heun', steps=arg.sampler_steps,
                     churn_step_ratio=arg.churn, denoise_final=True)
  else:  # equal NFE: 3 N + 1 of the bridge = Heun with (3 N + 2) / 2 steps
    c.sampler = dict(name='heun', steps=(3 * arg.sampler_steps + 2) // 2)
  c.num_grid_samples = 16
  c.eval = {}
  if arg.runlocal:
    c.total_steps = 4
    c.log_every = 2
    c.ckpt_every = 2
    c.data = dict(name=dataset, resolution=8, num_examples=64, batch_size=8)
    c.model.update(model_channels=8, channel_mult=(1, 2),
                   mid_attention=False)
    c.sampler.steps = 2
    c.num_grid_samples = 4
  return c
