r"""ADM (Dhariwal & Nichol, 2021) class-conditional U-Net, 64x64 ImageNet
recipe (improved DDPM: cosine schedule, eps prediction).

  python -m visgen.main --config=configs/adm_unet.py --workdir=$W
  python -m visgen.main --config=configs/adm_unet.py:res=32 --workdir=$W

ADM's channel multipliers (1, 2, 3, 4), attention at 32/16/8, 3 res blocks,
scale-shift norm, dropout 0.1, 192 channels, AdamW 3e-4, batch 2048 (accum
allowed), EMA 0.9999. Learned variance (L_hybrid) is not trained by the
unified loss; sampling uses the ODE. Needs ImageNet-64 prepared for TFDS.
"""

from visgen import config_lib


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, res=64, runlocal=False)
  c = config_lib.base_config()
  c.total_steps = 540_000
  c.ckpt_every = 10_000
  c.keep_every = 50_000
  c.ema_decays = (0.9999,)
  c.path = dict(name='ddpm_cosine')
  c.prediction = 'eps'
  c.weighting = dict(name='uniform')
  c.time_dist = dict(name='uniform')
  c.data = config_lib.tfds_data('imagenet64', batch_size=2048, flip=True)
  c.task = dict(name='generation', num_classes=1000, label_dropout=0.1,
                x_shape=(arg.res, arg.res, 3))
  c.model = dict(name='unet', input_size=arg.res, in_channels=3,
                 model_channels=192, channel_mult=(1, 2, 3, 4),
                 num_res_blocks=3, attention_resolutions=(32, 16, 8),
                 num_heads=4, dropout=0.1, num_classes=1000)
  c.model.dtype = 'float32'  # 'bfloat16': bf16 compute, fp32 params.
  c.optim = config_lib.optim(lr=3e-4, grad_clip=1.0, accum_steps=1)
  c.sampler = dict(name='heun', steps=125, cfg_scale=1.0,
                   cfg_rescale=0.0, cfg_interval=(0.0, 1.0), cfg_channels=0)
  c.eval = dict(features=dict(feature_net='inception',
                              reference='imagenet64:train',
                              num_samples=50_000, batch=250))
  if arg.runlocal:
    config_lib.runlocal_data(c, replaces='imagenet64')
    c.task.update(num_classes=4, x_shape=(8, 8, 3))
    config_lib.runlocal_common(c)
    config_lib.tiny_unet(c)
  return c
