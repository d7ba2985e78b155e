r"""DiT (Peebles & Xie, 2023) on ImageNet 256x256 in the SD-VAE latent space.

  python -m visgen.main --config=configs/dit_imagenet.py:variant=XL/2 \
      --workdir=$W
  python -m visgen.main --config=configs/dit_imagenet.py:runlocal --workdir=$W

The paper's recipe: latents 32x32x4 (SD-VAE, scale 0.18215), DiT-XL/2
(width 1152, depth 28, 16 heads, patch 2), class-conditional with 10% label
dropout, batch 256, AdamW lr 1e-4 with no weight decay and no warmup,
EMA 0.9999, eps prediction on the linear-beta DDPM schedule (1000 steps),
CFG 1.5 at sampling. The paper's learned variance (L_vlb) is not trained by
the unified loss, so sampling uses the ODE / DDIM instead of 250-step DDPM.

Needs (1) ImageNet prepared for TFDS (`imagenet256`) and (2) the
autoencoder weight file `autoencoder.path`; a missing one fails with a
message naming both. `runlocal` trains a tiny DiT on procedural mock images
(8x8 RGB 'shapes', 4 classes) with no autoencoder.
"""

from visgen import config_lib

VARIANTS = ('S/2', 'S/4', 'S/8', 'B/2', 'B/4', 'B/8', 'L/2', 'L/4', 'L/8',
            'XL/2', 'XL/4', 'XL/8')


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, variant='XL/2', runlocal=False)
  if arg.variant not in VARIANTS:
    raise ValueError(f'Unknown DiT variant {arg.variant!r}. Valid choices: '
                     f'{", ".join(VARIANTS)}.')
  size, patch = arg.variant.split('/')
  c = config_lib.base_config()
  c.total_steps = 400_000
  c.ckpt_every = 10_000
  c.keep_every = 50_000
  c.ema_decays = (0.9999,)
  c.data = config_lib.tfds_data('imagenet256', batch_size=256, flip=True)
  c.autoencoder = dict(name='sd_vae_ft_ema', scale=0.18215,
                       path=config_lib.visgen_cache(
                           'autoencoders', 'sd_vae_ft_ema.npz'))
  c.task = dict(name='generation', num_classes=1000, label_dropout=0.1,
                x_shape=(32, 32, 4), data_key='latent',
                latent_scale=0.18215)
  c.model = dict(name='dit', input_size=32, in_channels=4, patch=int(patch),
                 variant=size, num_classes=1000, dtype='float32')
  c.path = dict(name='ddpm_linear')
  c.prediction = 'eps'
  c.weighting = dict(name='uniform')
  c.time_dist = dict(name='uniform')
  c.optim = config_lib.optim(lr=1e-4, weight_decay=0.0, grad_clip=0.0)
  c.sampler = dict(name='ddim', steps=250, cfg_scale=1.5,
                   cfg_rescale=0.0, cfg_interval=(0.0, 1.0), cfg_channels=0)
  c.sharding = config_lib.mesh_and_sharding('dp')
  c.eval = dict(features=dict(feature_net='inception',
                              reference='imagenet256:validation',
                              num_samples=50_000, batch=250))
  if arg.runlocal:
    config_lib.runlocal_data(c, replaces='imagenet256 latents')
    c.autoencoder = None
    c.task.update(num_classes=4, x_shape=(8, 8, 3), data_key='image',
                  latent_scale=1.0)
    c.model.update(input_size=8, in_channels=3, patch=2, variant=None,
                   width=32, depth=1, heads=2, num_classes=4)
    config_lib.runlocal_common(c)
  return c
